"""Tracking-plan enforcement: every mode, every call type, and what lands in context.protocols."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from headwater.config import Config, ConfigError, load_config
from headwater.control.store import stable_id
from headwater.processing.plans import (
    BLOCKED,
    UNPLANNED_EVENT,
    VIOLATION,
    TrackingPlans,
    plans_by_source,
)
from headwater.processing.runtime import Item

RULES: dict[str, Any] = {
    "common": {"properties": {"userId": {"type": "string"}}},
    "track": {
        "Order Completed": {
            "properties": {
                "properties": {
                    "type": "object",
                    "properties": {"revenue": {"type": "number"}, "currency": {"type": "string"}},
                    "required": ["revenue"],
                }
            }
        }
    },
}
for kind in ("identify", "group"):
    RULES[kind] = {
        "properties": {
            "traits": {
                "type": "object",
                "properties": {
                    "email": {"type": "string", "format": "email"},
                    "plan": {"type": "string"},
                },
            }
        }
    }
for kind in ("page", "screen"):
    RULES[kind] = {
        "properties": {"properties": {"type": "object", "properties": {"path": {"type": "string"}}}}
    }

SOURCE = stable_id("src", "acme", "web")


def step(
    unplanned_events: str = "allow", unplanned_properties: str = "allow", violations: str = "allow"
) -> TrackingPlans:
    config = msgspec.convert(
        {
            "workspaces": [
                {
                    "name": "acme",
                    "tracking_plans": [{"name": "main", "rules": RULES}],
                    "sources": [
                        {
                            "name": "web",
                            "tracking_plan": "main",
                            "enforcement": {
                                "unplanned_events": unplanned_events,
                                "unplanned_properties": unplanned_properties,
                                "violations": violations,
                            },
                        },
                        {"name": "app"},
                    ],
                }
            ]
        },
        Config,
    )
    return TrackingPlans(plans_by_source(config))


def run(s: TrackingPlans, message: dict[str, Any], source: str = SOURCE) -> Item:
    item = Item(source, json.dumps(message).encode())
    s([item])
    return item


def body(item: Item) -> dict[str, Any]:
    return dict(json.loads(item.message))


def order(**props: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "userId": "u1", "properties": props}


def bag_message(kind: str, **fields: Any) -> dict[str, Any]:
    bag = "traits" if kind in ("identify", "group") else "properties"
    msg: dict[str, Any] = {"type": kind, "userId": "u1", bag: fields}
    if kind == "group":
        msg["groupId"] = "g1"
    return msg


def test_a_planned_valid_message_passes_untouched() -> None:
    item = run(step(violations="block"), order(revenue=10, currency="USD"))
    assert not item.outcome
    assert "protocols" not in body(item).get("context", {})


def test_sources_without_a_plan_are_not_touched() -> None:
    raw = json.dumps(order(revenue="oops")).encode()
    item = Item(stable_id("src", "acme", "app"), raw)
    step(violations="block")([item])
    assert not item.outcome and item.message == raw


@pytest.mark.parametrize("mode", ["allow", "block"])
def test_unplanned_track_events(mode: str) -> None:
    item = run(step(unplanned_events=mode), {"type": "track", "event": "Nope", "userId": "u1"})
    if mode == "block":
        assert (item.outcome, item.reason) == (BLOCKED, UNPLANNED_EVENT)
    else:
        assert not item.outcome


@pytest.mark.parametrize("kind", ["track", "identify", "group", "page", "screen"])
@pytest.mark.parametrize("mode", ["allow", "omit"])
def test_unplanned_properties_and_traits(kind: str, mode: str) -> None:
    s = step(unplanned_properties=mode)
    if kind == "track":
        item = run(s, order(revenue=1, extra="x"))
        bag, field = "properties", "extra"
    else:
        fields = (
            {"email": "a@example.com", "extra": "x"}
            if kind in ("identify", "group")
            else {"path": "/", "extra": "x"}
        )
        item = run(s, bag_message(kind, **fields))
        bag, field = ("traits" if kind in ("identify", "group") else "properties"), "extra"
    assert not item.outcome
    out = body(item)
    if mode == "omit":
        assert field not in out[bag]
        assert out["context"]["protocols"]["omitted"] == [f"{bag}.{field}"]
    else:
        assert out[bag][field] == "x"
        assert "protocols" not in out.get("context", {})


@pytest.mark.parametrize("kind", ["track", "identify", "group", "page", "screen"])
@pytest.mark.parametrize("mode", ["allow", "omit", "block"])
def test_violations_every_mode_every_call_type(kind: str, mode: str) -> None:
    s = step(violations=mode)
    if kind == "track":
        item = run(s, order(revenue="ten", currency="USD"))
        field = "properties.revenue"
    elif kind in ("identify", "group"):
        item = run(s, bag_message(kind, email=42, plan="pro"))
        field = "traits.email"
    else:
        item = run(s, bag_message(kind, path=7))
        field = "properties.path"
    if mode == "block":
        assert (item.outcome, item.reason) == (BLOCKED, VIOLATION)
        return
    assert not item.outcome
    out = body(item)
    protocols = out["context"]["protocols"]
    assert protocols["violations"][0]["field"] == field
    assert protocols["violations"][0]["type"] == "type"
    bag, name = field.split(".")
    if mode == "omit":
        assert name not in out[bag] and protocols["omitted"] == [field]
    else:
        assert name in out[bag] and protocols["omitted"] == []


def test_a_missing_required_property_is_recorded_and_cannot_be_omitted() -> None:
    item = run(step(violations="omit"), order(currency="USD"))
    assert not item.outcome
    violations = body(item)["context"]["protocols"]["violations"]
    assert violations[0]["type"] == "required"


def test_the_common_rule_applies_to_every_call_type() -> None:
    item = run(step(violations="block"), {"type": "page", "userId": 5, "properties": {"path": "/"}})
    assert (item.outcome, item.reason) == (BLOCKED, VIOLATION)


def test_context_is_kept_when_protocols_are_recorded() -> None:
    msg = order(revenue="x")
    msg["context"] = {"library": {"name": "analytics.js"}}
    out = body(run(step(), msg))
    assert out["context"]["library"] == {"name": "analytics.js"}
    assert out["context"]["protocols"]["violations"]


def test_a_bad_schema_or_an_unknown_plan_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "workspaces:\n  - name: a\n    tracking_plans:\n      - name: p\n"
        "        rules: {identify: {type: 12}}\n"
    )
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(
        "workspaces:\n  - name: a\n    sources:\n      - {name: web, tracking_plan: nope}\n"
    )
    with pytest.raises(ConfigError, match="does not declare"):
        load_config(unknown)


def test_the_type_implied_by_a_single_message_path_counts() -> None:
    """A message sent to /v1/track may have no `type`: its stamp says what the path implied."""
    from datetime import UTC, datetime

    from headwater.events.stamp import Stamp, encode_stamp

    stamp = encode_stamp(Stamp(datetime.now(UTC), path_type="track"))
    item = Item(SOURCE, b'{"event":"Nope","userId":"u1"}', stamp=stamp)
    step(unplanned_events="block")([item])
    assert (item.outcome, item.reason) == (BLOCKED, UNPLANNED_EVENT)
