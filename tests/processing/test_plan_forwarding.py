"""Tracking plans that forward: blocked messages to another source as they arrived, and one
`Violation Generated` track event per violation to another; what an item records of its
violations (`Item.violations`, `Item.original`); and forwarding targets checked at load."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from headwater.config import Config, ConfigError, load_config
from headwater.control.store import stable_id
from headwater.events.stamp import Stamp, encode_stamp
from headwater.log.records import Record, Run, encode_run
from headwater.processing.plans import (
    BLOCKED,
    FORWARDED,
    UNPLANNED_EVENT,
    VIOLATION,
    VIOLATION_GENERATED,
    VIOLATION_GENERATED_VIA,
    TrackingPlans,
    plans_by_source,
)
from headwater.processing.runtime import PROCESSED, Item, StageRunner, StageSpec
from headwater.processing.steps import ProfileKey
from tests.processing._helpers import GROUP, caught_up, open_logs, read_all, wait_for

WS = "acme"
WEB = stable_id("src", WS, "web")
QUARANTINE = stable_id("src", WS, "quarantine")
AUDIT = stable_id("src", WS, "audit")

RULES: dict[str, Any] = {
    "common": {"properties": {"userId": {"type": "string"}}},
    "track": {
        "Order Completed": {
            "properties": {
                "properties": {
                    "type": "object",
                    "properties": {
                        "revenue": {"type": "number"},
                        "currency": {"type": "string"},
                        "coupon": {"type": "string"},
                    },
                    "required": ["revenue"],
                }
            }
        }
    },
    "identify": {
        "properties": {"traits": {"type": "object", "properties": {"email": {"type": "string"}}}}
    },
    "page": {
        "properties": {"properties": {"type": "object", "properties": {"path": {"type": "string"}}}}
    },
}

RECEIVED_AT = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
STAMP = encode_stamp(Stamp(RECEIVED_AT))
POSITION = "0:40:7"


def config(**enforcement: str) -> Config:
    return msgspec.convert(
        {
            "workspaces": [
                {
                    "name": WS,
                    "tracking_plans": [{"name": "main", "rules": RULES}],
                    "sources": [
                        {"name": "web", "tracking_plan": "main", "enforcement": enforcement},
                        {"name": "quarantine"},
                        {"name": "audit"},
                    ],
                }
            ]
        },
        Config,
    )


def step(**enforcement: str) -> TrackingPlans:
    return TrackingPlans(plans_by_source(config(**enforcement)))


def raw(message: dict[str, Any]) -> bytes:
    # spaces after separators: what the client sent is kept byte for byte, not re-encoded
    return json.dumps(message, separators=(", ", ": ")).encode()


def enforce(
    s: TrackingPlans,
    message: dict[str, Any] | bytes,
    stamp: bytes | None = STAMP,
    source: str = WEB,
) -> tuple[Item, list[Item]]:
    """Run the step on one item; returns it and the items the step made."""
    data = message if isinstance(message, bytes) else raw(message)
    item = Item(source, data, stamp=stamp, position=POSITION)
    items = [item]
    s(items)
    assert items[0] is item
    return item, items[1:]


def body(data: bytes) -> dict[str, Any]:
    return dict(json.loads(data))


def order(**props: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-order",
        "userId": "u1",
        "properties": props,
    }


def unplanned() -> dict[str, Any]:
    return {"type": "track", "event": "Nope", "messageId": "m-nope", "userId": "u1"}


def made_via(made: list[Item], via: str) -> list[Item]:
    return [m for m in made if m.via == via]


# -- blocked messages forwarded -----------------------------------------------------------------


def test_an_unplanned_event_blocked_is_forwarded_as_it_arrived() -> None:
    data = raw({**unplanned(), "properties": {"a": [1, 2]}, "context": {"x": "y"}})
    item, made = enforce(step(unplanned_events="block", forward_blocked_to="quarantine"), data)
    assert (item.outcome, item.reason) == (BLOCKED, UNPLANNED_EVENT)
    assert item.message == data
    assert len(made) == 1
    fwd = made[0]
    assert fwd.source_id == QUARANTINE
    assert fwd.message == data  # byte for byte: not re-encoded, nothing added
    assert fwd.stamp == STAMP
    assert fwd.position == POSITION
    assert fwd.via == FORWARDED
    assert (fwd.outcome, fwd.reason) == ("", "")
    assert fwd.key == ""  # keyed by the steps after this one
    assert fwd.violations is None and fwd.original is None


def test_without_forwarding_a_blocked_message_makes_no_item() -> None:
    item, made = enforce(step(unplanned_events="block"), unplanned())
    assert (item.outcome, item.reason) == (BLOCKED, UNPLANNED_EVENT)
    assert made == []
    item, made = enforce(step(violations="block"), order(revenue="ten"))
    assert (item.outcome, item.reason) == (BLOCKED, VIOLATION)
    assert made == []


def test_a_message_blocked_for_a_violation_is_forwarded_unchanged() -> None:
    data = raw(order(revenue="ten", currency="USD", extra=1))
    s = step(unplanned_properties="omit", violations="block", forward_blocked_to="quarantine")
    item, made = enforce(s, data)
    assert (item.outcome, item.reason) == (BLOCKED, VIOLATION)
    assert [(m.source_id, m.via) for m in made] == [(QUARANTINE, FORWARDED)]
    # the original bytes: not the message with `extra` omitted, no context.protocols
    assert made[0].message == data
    assert (made[0].stamp, made[0].position, made[0].outcome) == (STAMP, POSITION, "")


def test_a_violation_of_the_common_rule_blocks_and_forwards_too() -> None:
    data = raw({"type": "page", "userId": 5, "messageId": "m-p", "properties": {"path": "/"}})
    item, made = enforce(step(violations="block", forward_blocked_to="quarantine"), data)
    assert (item.outcome, item.reason) == (BLOCKED, VIOLATION)
    assert [(m.source_id, m.message, m.via) for m in made] == [(QUARANTINE, data, FORWARDED)]


@pytest.mark.parametrize("mode", ["allow", "omit"])
def test_violations_not_blocked_are_not_forwarded(mode: str) -> None:
    item, made = enforce(
        step(violations=mode, forward_blocked_to="quarantine"), order(revenue="ten")
    )
    assert not item.outcome
    assert made == []
    assert body(item.message)["context"]["protocols"]["violations"]


def test_unplanned_events_allowed_are_not_forwarded() -> None:
    item, made = enforce(
        step(unplanned_events="allow", forward_blocked_to="quarantine"), unplanned()
    )
    assert not item.outcome and made == []


def test_valid_messages_and_sources_without_a_plan_make_nothing() -> None:
    s = step(
        unplanned_events="block",
        violations="block",
        forward_blocked_to="quarantine",
        forward_violations_to="audit",
    )
    item, made = enforce(s, order(revenue=3, currency="EUR"))
    assert not item.outcome and made == []
    assert item.violations is None and item.original is None
    # the quarantine source has no plan: what is forwarded to it is not enforced again
    item, made = enforce(s, unplanned(), source=QUARANTINE)
    assert not item.outcome and made == []


def test_items_made_by_a_step_are_not_enforced_again() -> None:
    """A forwarded item of the unit passes through (even into a source with a plan)."""
    s = step(unplanned_events="block", forward_blocked_to="quarantine")
    fwd = Item(WEB, raw(unplanned()), stamp=STAMP, position=POSITION, via=FORWARDED)
    items = [fwd]
    s(items)
    assert items == [fwd] and not fwd.outcome


# -- Violation Generated ------------------------------------------------------------------------


def test_one_violation_generated_event_per_violation() -> None:
    msg = order(revenue=1, currency=5, coupon=6)
    msg["anonymousId"] = "a1"
    msg["timestamp"] = "2026-03-01T12:00:29.000Z"
    item, made = enforce(step(violations="omit", forward_violations_to="audit"), msg)
    assert not item.outcome
    recorded = body(item.message)["context"]["protocols"]["violations"]
    assert [v["field"] for v in recorded] == ["properties.currency", "properties.coupon"]
    assert len(made) == 2
    for i, (event, violation) in enumerate(zip(made, recorded, strict=True)):
        assert event.source_id == AUDIT
        assert event.via == VIOLATION_GENERATED_VIA
        assert (event.stamp, event.position, event.outcome, event.reason) == (
            STAMP,
            POSITION,
            "",
            "",
        )
        assert body(event.message) == {
            "type": "track",
            "event": VIOLATION_GENERATED,
            "messageId": f"m-order-violation-{i}",
            "userId": "u1",
            "anonymousId": "a1",
            "timestamp": "2026-03-01T12:00:29.000Z",
            "properties": {
                "violationType": "type",
                "violationField": violation["field"],
                "violationDescription": violation["description"],
                "eventName": "Order Completed",
                "eventType": "track",
                "originalMessageId": "m-order",
                "sourceId": WEB,
            },
        }


def test_an_unplanned_event_blocked_makes_a_violation_event_and_is_forwarded() -> None:
    s = step(
        unplanned_events="block", forward_blocked_to="quarantine", forward_violations_to="audit"
    )
    data = raw(unplanned())
    item, made = enforce(s, data)
    assert (item.outcome, item.reason) == (BLOCKED, UNPLANNED_EVENT)
    assert [m.message for m in made_via(made, FORWARDED)] == [data]
    [event] = made_via(made, VIOLATION_GENERATED_VIA)
    assert event.source_id == AUDIT
    props = body(event.message)["properties"]
    assert props["violationType"] == UNPLANNED_EVENT
    assert props["violationField"] == "event"
    assert "Nope" in props["violationDescription"]
    assert (props["eventName"], props["eventType"]) == ("Nope", "track")
    assert (props["originalMessageId"], props["sourceId"]) == ("m-nope", WEB)
    assert body(event.message)["messageId"] == "m-nope-violation-0"


def test_a_blocking_violation_makes_one_violation_event() -> None:
    s = step(violations="block", forward_blocked_to="quarantine", forward_violations_to="audit")
    item, made = enforce(s, order(revenue="ten", currency=5))
    assert (item.outcome, item.reason) == (BLOCKED, VIOLATION)
    assert item.violations == [("Order Completed", "type", "properties.revenue")]
    [event] = made_via(made, VIOLATION_GENERATED_VIA)
    assert body(event.message)["properties"]["violationField"] == "properties.revenue"
    assert len(made_via(made, FORWARDED)) == 1


@pytest.mark.parametrize(
    ("kind", "message", "field"),
    [
        ("identify", {"type": "identify", "traits": {"email": 42}}, "traits.email"),
        ("page", {"type": "page", "properties": {"path": 7}}, "properties.path"),
    ],
)
def test_violation_events_of_other_call_types_have_no_event_name(
    kind: str, message: dict[str, Any], field: str
) -> None:
    msg = {**message, "messageId": f"m-{kind}", "userId": "u1"}
    item, made = enforce(step(forward_violations_to="audit"), msg)
    assert item.violations == [(kind, "type", field)]
    [event] = made
    props = body(event.message)["properties"]
    assert props["eventName"] is None
    assert props["eventType"] == kind
    assert props["violationField"] == field
    assert props["originalMessageId"] == f"m-{kind}"


@pytest.mark.parametrize(
    ("path_type", "data", "violation"),
    [
        ("track", b'{"event":"Nope","userId":"u1","messageId":"m-t"}', ("Nope", UNPLANNED_EVENT)),
        (
            "identify",
            b'{"userId":"u1","traits":{"email":42},"messageId":"m-i"}',
            ("identify", "type"),
        ),
        ("page", b'{"userId":"u1","properties":{"path":7},"messageId":"m-p"}', ("page", "type")),
    ],
)
def test_the_call_type_implied_by_the_path_is_the_event_type(
    path_type: str, data: bytes, violation: tuple[str, str]
) -> None:
    """A message sent to /v1/track, /v1/identify, ... may have no `type`: the stamp says it."""
    stamp = encode_stamp(Stamp(RECEIVED_AT, path_type=path_type))
    s = step(unplanned_events="block", forward_violations_to="audit")
    item, made = enforce(s, data, stamp=stamp)
    assert [(e, t) for e, t, _f in item.violations or []] == [violation]
    [event] = made
    props = body(event.message)["properties"]
    assert props["eventType"] == path_type
    assert props["eventName"] == ("Nope" if path_type == "track" else None)
    # the request's stamp, but without the path's type: the event stays a track event
    assert event.stamp == encode_stamp(Stamp(RECEIVED_AT))


def test_violation_events_are_the_same_on_a_replay() -> None:
    msg = order(revenue=1, currency=5, coupon=6)
    msg["timestamp"] = "2026-03-01T12:00:29.000Z"
    data = raw(msg)
    runs = []
    for _ in range(2):
        s = step(violations="omit", unplanned_events="block", forward_violations_to="audit")
        _item, made = enforce(s, data)
        runs.append([(m.source_id, m.message, m.stamp, m.position) for m in made])
        assert [body(m.message)["messageId"] for m in made] == [
            "m-order-violation-0",
            "m-order-violation-1",
        ]
    assert runs[0] == runs[1]  # byte for byte: a replay is dropped as a duplicate downstream


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ({"userId": "u1"}, {"userId": "u1"}),
        ({"anonymousId": "a1"}, {"anonymousId": "a1"}),
        ({"userId": "u1", "anonymousId": "a1"}, {"userId": "u1", "anonymousId": "a1"}),
    ],
)
def test_violation_events_keep_the_user_of_the_message(
    ids: dict[str, str], expected: dict[str, str]
) -> None:
    msg = {"type": "track", "event": "Nope", "messageId": "m-x", **ids}
    _item, made = enforce(step(unplanned_events="block", forward_violations_to="audit"), msg)
    event = body(made[0].message)
    assert {k: event[k] for k in ("userId", "anonymousId") if k in event} == expected


def test_no_violation_events_without_forwarding() -> None:
    _item, made = enforce(step(violations="omit"), order(revenue="ten", currency=5))
    assert made == []


# -- what an item records -----------------------------------------------------------------------


def test_item_violations_list_event_type_and_field() -> None:
    item, _ = enforce(step(unplanned_events="block"), unplanned())
    assert item.violations == [("Nope", UNPLANNED_EVENT, "event")]
    item, _ = enforce(step(violations="omit"), order(revenue=1, currency=5, coupon=6))
    assert item.violations == [
        ("Order Completed", "type", "properties.currency"),
        ("Order Completed", "type", "properties.coupon"),
    ]
    # omitting a required property that breaks its rule makes it missing: two violations
    item, _ = enforce(step(violations="omit"), order(revenue="ten"))
    assert item.violations == [
        ("Order Completed", "type", "properties.revenue"),
        ("Order Completed", "required", "properties"),
    ]
    item, _ = enforce(step(), order(currency="USD"))  # a required property missing
    assert item.violations == [("Order Completed", "required", "properties")]
    item, _ = enforce(step(), {"type": "page", "userId": 5, "properties": {"path": 7}})
    assert item.violations == [("page", "type", "userId"), ("page", "type", "properties.path")]


def test_item_original_is_the_message_as_it_arrived() -> None:
    data = raw(order(revenue="ten", currency="USD", extra=True))
    item, _ = enforce(step(unplanned_properties="omit", violations="omit"), data)
    assert not item.outcome
    assert item.original == data  # before the omissions
    out = body(item.message)
    assert "revenue" not in out["properties"] and "extra" not in out["properties"]
    assert sorted(out["context"]["protocols"]["omitted"]) == [
        "properties.extra",
        "properties.revenue",
    ]
    blocked, _ = enforce(step(unplanned_events="block"), raw(unplanned()))
    assert blocked.original == raw(unplanned()) == blocked.message


def test_a_message_allowed_with_violations_keeps_its_original() -> None:
    data = raw(order(revenue="ten"))
    item, _ = enforce(step(violations="allow"), data)
    assert item.original == data
    assert item.message != data  # context.protocols added


def test_omitting_unplanned_properties_alone_keeps_the_original() -> None:
    data = raw(order(revenue=1, extra=True))
    item, _ = enforce(step(unplanned_properties="omit"), data)
    assert item.message != data
    assert item.original == data


def test_unreadable_messages_are_left_to_later_steps() -> None:
    s = step(
        unplanned_events="block", forward_blocked_to="quarantine", forward_violations_to="audit"
    )
    for data in (b"not json", b"[1]"):
        item, made = enforce(s, data)
        assert not item.outcome and made == []
        assert item.violations is None and item.original is None


# -- configuration ------------------------------------------------------------------------------


def write_config(tmp_path: Path, enforcement: str, sources: str = "") -> Path:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        f"""
workspaces:
  - name: acme
    tracking_plans:
      - name: main
        rules: {{track: {{Order Completed: {{}}}}}}
    sources:
      - name: web
        tracking_plan: main
        enforcement: {enforcement}
      - name: quarantine
{sources}
  - name: other
    sources:
      - name: elsewhere
"""
    )
    return path


@pytest.mark.parametrize("option", ["forward_blocked_to", "forward_violations_to"])
@pytest.mark.parametrize("target", ["nowhere", "elsewhere"])  # unknown, or another workspace's
def test_forwarding_to_an_undeclared_source_is_a_config_error(
    tmp_path: Path, option: str, target: str
) -> None:
    path = write_config(tmp_path, f"{{{option}: {target}}}")
    with pytest.raises(ConfigError, match=f"forwards to '{target}'.*does not declare"):
        load_config(path)


def test_forwarding_targets_resolve_to_source_ids_of_the_workspace(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "{unplanned_events: block, forward_blocked_to: quarantine, forward_violations_to: audit}",
        "      - name: audit\n",
    )
    plans = plans_by_source(load_config(path))
    assert set(plans) == {WEB}
    assert plans[WEB].forward_blocked == QUARANTINE
    assert plans[WEB].forward_violations == AUDIT
    no_forwarding = plans_by_source(config(unplanned_events="block"))[WEB]
    assert (no_forwarding.forward_blocked, no_forwarding.forward_violations) == (None, None)


# -- through a stage ----------------------------------------------------------------------------


def run_stage(tmp_path: Path, stamp: bytes, messages: list[bytes]) -> dict[str, list[Record]]:
    """The processor's way: plans then profile keys, messages read as stored with their
    stamp; returns what `events` holds per source, read as its readers read it (stamped)."""

    async def main() -> dict[str, list[Record]]:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=2)
        s = step(
            unplanned_events="block",
            violations="block",
            forward_blocked_to="quarantine",
            forward_violations_to="audit",
        )
        try:
            await ingest.append([Run(0, encode_run(WEB, stamp, messages), len(messages))])
            runner = StageRunner(StageSpec(GROUP, [s, ProfileKey()], ingest, events, stamped=False))
            runner.assign(0)
            try:
                await wait_for(lambda: caught_up(ingest, GROUP))
            finally:
                await runner.stop()
            assert runner.metrics.counts[(WEB, BLOCKED, UNPLANNED_EVENT)] == 1
            assert runner.metrics.counts[(QUARANTINE, PROCESSED, "")] == 1
            assert runner.metrics.counts[(AUDIT, PROCESSED, "")] == 1
            out: dict[str, list[Record]] = {}
            for records in (await read_all(events)).values():
                for r in records:
                    out.setdefault(r.source_id, []).append(r)
            return out
        finally:
            await ingest.close()
            await events.close()

    return asyncio.run(main())


def test_through_a_stage_blocked_messages_and_violation_events_reach_their_sources(
    tmp_path: Path,
) -> None:
    sent = b'{"type":"track","event":"Nope","userId":"u1","messageId":"m-1"}'
    valid = b'{"type":"track","event":"Order Completed","userId":"u2","messageId":"m-2",' + (
        b'"properties":{"revenue":1}}'
    )
    out = run_stage(tmp_path, encode_stamp(Stamp(RECEIVED_AT, ip="10.0.0.1")), [sent, valid])
    assert [body(r.message)["messageId"] for r in out[WEB]] == ["m-2"]
    [forwarded] = out[QUARANTINE]
    assert body(forwarded.message)["event"] == "Nope"
    assert body(forwarded.message)["receivedAt"].startswith("2026-03-01T12:00:30")
    [event] = out[AUDIT]
    stored = body(event.message)
    assert (stored["type"], stored["event"]) == ("track", VIOLATION_GENERATED)
    assert stored["messageId"] == "m-1-violation-0"
    assert stored["properties"]["eventName"] == "Nope"


def test_violation_events_of_a_single_message_path_stay_track_events(tmp_path: Path) -> None:
    sent = b'{"userId":"u1","traits":{"email":42},"messageId":"m-1"}'
    stamp = encode_stamp(Stamp(RECEIVED_AT, path_type="identify"))

    async def main() -> list[Record]:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=2)
        s = step(violations="allow", forward_violations_to="audit")
        try:
            await ingest.append([Run(0, encode_run(WEB, stamp, [sent]), 1)])
            runner = StageRunner(StageSpec(GROUP, [s, ProfileKey()], ingest, events, stamped=False))
            runner.assign(0)
            try:
                await wait_for(lambda: caught_up(ingest, GROUP))
            finally:
                await runner.stop()
            records = [r for rs in (await read_all(events)).values() for r in rs]
            return [r for r in records if r.source_id == AUDIT]
        finally:
            await ingest.close()
            await events.close()

    [event] = asyncio.run(main())
    stored = body(event.message)
    assert stored["event"] == VIOLATION_GENERATED
    assert stored["type"] == "track"
