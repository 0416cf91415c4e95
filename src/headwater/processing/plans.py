"""Tracking plans (Segment Protocols): rules compiled once, enforced per source.

A plan's rules are JSON Schemas of whole messages (as Segment writes them: a track event's
properties are under `properties.properties`). The source connected to a plan decides what
happens to what the plan does not expect (`Enforcement`):

- a track event the plan does not name: `allow` it, or `block` it (outcome `blocked`, reason
  `unplanned_event`);
- properties (traits for identify and group) the rule does not declare: `allow` them, or `omit`
  them from the message;
- a message that breaks its rules: `allow` it, `omit` the offending fields, or `block` it
  (outcome `blocked`, reason `violation`).

What was omitted and what was violated is recorded on the message, as Segment does, in
`context.protocols`: `{"omitted": ["properties.x"], "violations": [{type, field,
description}]}`. Messages of sources without a plan are not decoded at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fastjsonschema
import msgspec

from headwater.config import Config, Enforcement, TrackingPlanConfig, compile_schema
from headwater.control.plans import PlanCatalog
from headwater.control.store import stable_id
from headwater.events.stamp import decode_stamp, encode_stamp
from headwater.processing.plan_fields import FieldChecks, RuleCheck, field_checks
from headwater.processing.runtime import Item
from headwater.processing.steps import routing

BLOCKED = "blocked"
UNPLANNED_EVENT = "unplanned_event"
VIOLATION = "violation"
FORWARDED = "forwarded"  # how a blocked message reaches the source it is forwarded to
VIOLATION_GENERATED = "Violation Generated"
VIOLATION_GENERATED_VIA = "violation_generated"
MAX_SHORTCUTS = 10_000  # (call type, event) pairs whose short-path check a source remembers
MAX_OMISSIONS = 50  # fields omitted one at a time (each re-validation finds the next violation)

Validator = Any  # a compiled fastjsonschema function
_UNMADE: Any = object()


@dataclass
class CompiledPlan:
    """A plan's validators, compiled once, and the properties each rule declares."""

    name: str
    common: Validator | None
    rules: dict[str, Validator]  # "track:<event>", "identify", "group", "page", "screen"
    declared: dict[str, set[str] | None] = field(default_factory=dict)  # None: any
    checks: FieldChecks | None = None  # the short path, when the rules allow one


def compile_plan(plan: TrackingPlanConfig) -> CompiledPlan:
    """Compile every schema of `plan` (ValueError if one is not a usable JSON Schema)."""
    r = plan.rules
    schemas: dict[str, dict[str, Any]] = {f"track:{e}": s for e, s in r.track.items()}
    for kind in ("identify", "group", "page", "screen"):
        schema = getattr(r, kind)
        if schema is not None:
            schemas[kind] = schema
    return CompiledPlan(
        plan.name,
        compile_schema(r.common) if r.common is not None else None,
        {key: compile_schema(s) for key, s in schemas.items()},
        {key: _declared(key, s) for key, s in schemas.items()},
        field_checks(r.common, schemas),
    )


def _bag(key: str) -> str:
    """Where a call type carries its free-form fields."""
    return "traits" if key in ("identify", "group") else "properties"


def _declared(key: str, schema: dict[str, Any]) -> set[str] | None:
    bag = schema.get("properties", {}).get(_bag(key), {})
    props = bag.get("properties") if isinstance(bag, dict) else None
    return set(props) if isinstance(props, dict) else None


@dataclass
class SourcePlan:
    """A source's plan and enforcement; `forward_*` are source ids to forward to (or None)."""

    plan: CompiledPlan
    enforcement: Enforcement
    forward_blocked: str | None = None
    forward_violations: str | None = None
    # the short path's check by (call type, event), made on first use
    shortcuts: dict[tuple[str, str | None], RuleCheck | None] = field(default_factory=dict)


def plans_by_source(config: Config) -> dict[str, SourcePlan]:
    """Every declared source connected to a plan, by source id."""
    out: dict[str, SourcePlan] = {}
    for ws in config.workspaces:
        compiled = {p.name: compile_plan(p) for p in ws.tracking_plans}
        for src in ws.sources:
            if src.tracking_plan is not None:
                sid = stable_id("src", ws.name, src.name)
                out[sid] = source_plan(ws.name, compiled[src.tracking_plan], src.enforcement)
    return out


def plans_from_catalog(catalog: PlanCatalog) -> dict[str, SourcePlan]:
    """Every source connected to a plan in the control plane, by source id."""
    compiled: dict[tuple[str, str], CompiledPlan] = {}
    out: dict[str, SourcePlan] = {}
    for conn in catalog.connections():
        key = (conn.source.workspace, conn.plan)
        if key not in compiled:
            plan = catalog.get(*key)
            compiled[key] = compile_plan(TrackingPlanConfig(plan.name, plan.rules))
        out[conn.source.id] = source_plan(conn.source.workspace, compiled[key], conn.enforcement)
    return out


def source_plan(workspace: str, plan: CompiledPlan, enforcement: Enforcement) -> SourcePlan:
    """`plan` as enforced by a source of `workspace` (forwarding targets named in it)."""
    e = enforcement
    return SourcePlan(
        plan,
        e,
        None if e.forward_blocked_to is None else stable_id("src", workspace, e.forward_blocked_to),
        None
        if e.forward_violations_to is None
        else stable_id("src", workspace, e.forward_violations_to),
    )


class TrackingPlans:
    """The processor step that enforces each source's tracking plan."""

    name = "tracking_plans"

    def __init__(self, plans: dict[str, SourcePlan]) -> None:
        self.plans = plans

    def reload(self, plans: dict[str, SourcePlan]) -> None:
        """Enforce `plans` from the next unit on (the control plane changed)."""
        self.plans = plans

    def __call__(self, items: list[Item]) -> None:
        if not self.plans:
            return
        plans = self.plans
        made: list[Item] = []
        for item in items:
            planned = plans.get(item.source_id)
            if planned is None or item.outcome or item.via:
                continue
            if planned.plan.checks is not None:  # the short path, inlined: the common case
                head = item.head if item.original is None else None
                kind, event = (head.type, head.event) if head is not None else (None, None)
                if type(kind) is str and (event is None or type(event) is str):  # _remembered
                    check = planned.shortcuts.get((kind, event), _UNMADE)
                    if check is _UNMADE:
                        check = self._shortcut(planned, kind, event)
                    if check is not None and check.passes(item.message):
                        continue  # nothing to record, nothing to change
                elif self._passes(item, planned):
                    continue
            self._enforce(item, planned, made)
        items.extend(made)

    def _enforce(self, item: Item, planned: SourcePlan, made: list[Item]) -> None:
        """The whole check of a message that did not pass the short path."""
        original = item.message
        checked = self._check(item, planned)
        if checked is None:
            return
        msg, kind, label, violations = checked
        if violations:
            item.violations = [(label, v["type"], v["field"]) for v in violations]
        if violations or item.outcome or item.message is not original:
            item.original = original
        if planned.forward_violations is not None and violations:
            target = planned.forward_violations
            made.extend(violation_events(item, msg, kind, label, violations, target))
        if item.outcome == BLOCKED and planned.forward_blocked is not None:
            made.append(
                Item(
                    planned.forward_blocked,
                    original,
                    stamp=item.stamp,
                    position=item.position,
                    via=FORWARDED,
                )
            )

    def _passes(self, item: Item, planned: SourcePlan) -> bool:
        """Whether the item passes its plan as it is, from the fields the rules name (False
        also when unsure: `_check` then looks at the whole message)."""
        head = routing(item)
        if head is None:
            return False
        kind = head.type
        if kind is None and item.stamp is not None:
            kind = decode_stamp(item.stamp).path_type
        check = self._shortcut(planned, kind, head.event)
        return check is not None and check.passes(item.message)

    @staticmethod
    def _shortcut(planned: SourcePlan, kind: Any, event: Any) -> RuleCheck | None:
        """The short-path check of a message of call type `kind` (and `event`), remembered
        for string pairs (None: the short path cannot say yes; the whole check decides)."""
        plan, mode, checks = planned.plan, planned.enforcement, planned.plan.checks
        assert checks is not None
        key = f"track:{event}" if kind == "track" else str(kind)
        check: RuleCheck | None
        if key not in plan.rules:
            if kind == "track" and mode.unplanned_events == "block":
                check = None
            else:
                check = checks.check(None, None)
        else:
            omit = mode.unplanned_properties == "omit" and plan.declared.get(key) is not None
            check = checks.check(key, _bag(key) if omit else None)
        if _remembered(kind, event):
            if len(planned.shortcuts) >= MAX_SHORTCUTS:
                planned.shortcuts.clear()  # many event names: remember the recent ones
            planned.shortcuts[(kind, event)] = check
        return check

    def _check(
        self, item: Item, planned: SourcePlan
    ) -> tuple[dict[str, Any], str, str, list[dict[str, str]]] | None:
        """Enforce the plan on one item: its message as checked, its call type, its event name
        (or call type) and the violations found (None: the message is not an object)."""
        try:
            msg = msgspec.json.decode(item.message)
        except msgspec.DecodeError:
            return None  # not readable: the steps after this one give it its outcome
        if not isinstance(msg, dict):
            return None
        kind = msg.get("type")
        if kind is None and item.stamp is not None:
            kind = decode_stamp(item.stamp).path_type  # a single-message path implies it
        plan, mode = planned.plan, planned.enforcement
        key = f"track:{msg.get('event')}" if kind == "track" else str(kind)
        rule = plan.rules.get(key)
        label = str(msg.get("event")) if kind == "track" else str(kind)
        if rule is None and kind == "track" and mode.unplanned_events == "block":
            item.stop(BLOCKED, UNPLANNED_EVENT)
            why = f"the tracking plan does not name the event {label!r}"
            found = [{"type": UNPLANNED_EVENT, "field": "event", "description": why}]
            return msg, str(kind), label, found
        omitted: list[str] = []
        bag_name = _bag(key)
        declared = plan.declared.get(key)
        bag = msg.get(bag_name)
        unplanned: set[str] = set()
        if mode.unplanned_properties == "omit" and declared is not None and isinstance(bag, dict):
            unplanned = bag.keys() - declared
        if not unplanned and _valid(msg, plan.common, rule):  # the common case, kept short
            return msg, str(kind), label, []
        if unplanned and isinstance(bag, dict):
            for name in [n for n in bag if n in unplanned]:
                del bag[name]
                omitted.append(f"{bag_name}.{name}")
        violations: list[dict[str, str]] = []
        for validator in (plan.common, rule):
            if validator is None:
                continue
            for _ in range(MAX_OMISSIONS):
                try:
                    validator(msg)
                    break
                except fastjsonschema.JsonSchemaValueException as exc:
                    path = [str(p) for p in (exc.path or [])[1:]]
                    violations.append(
                        {
                            "type": str(exc.rule or "invalid"),
                            "field": ".".join(path),
                            "description": exc.message,
                        }
                    )
                    if mode.violations == "block":
                        item.stop(BLOCKED, VIOLATION)
                        break
                    if mode.violations != "omit" or exc.rule == "required":
                        break  # a missing field cannot be omitted (nor its parent instead)
                    if not _omit(msg, path):
                        break
                    omitted.append(".".join(path))
            if item.outcome:
                return msg, str(kind), label, violations
        if omitted or violations:
            context = msg.get("context")
            if not isinstance(context, dict):
                context = msg["context"] = {}
            context["protocols"] = {"omitted": omitted, "violations": violations}
            item.message = msgspec.json.encode(msg)
        return msg, str(kind), label, violations


def _remembered(kind: Any, event: Any) -> bool:
    """Whether the short-path check of (`kind`, `event`) is remembered (plain strings)."""
    return type(kind) is str and (event is None or type(event) is str)


def violation_events(
    item: Item,
    msg: dict[str, Any],
    kind: str,
    label: str,
    violations: list[dict[str, str]],
    target: str,
) -> list[Item]:
    """One `Violation Generated` track event per violation of `msg`, for source `target`
    (message ids derived from the original's, so a replay makes the same events)."""
    made = []
    message_id = str(msg.get("messageId", ""))
    for i, v in enumerate(violations):
        event: dict[str, Any] = {
            "type": "track",
            "event": VIOLATION_GENERATED,
            "messageId": f"{message_id}-violation-{i}",
            "properties": {
                "violationType": v["type"],
                "violationField": v["field"],
                "violationDescription": v["description"],
                "eventName": label if kind == "track" else None,
                "eventType": kind,
                "originalMessageId": message_id,
                "sourceId": item.source_id,
            },
        }
        for who in ("userId", "anonymousId", "timestamp"):
            if msg.get(who) not in (None, ""):
                event[who] = msg[who]
        if "userId" not in event and "anonymousId" not in event:
            event["anonymousId"] = message_id
        made.append(
            Item(
                target,
                msgspec.json.encode(event),
                stamp=_without_path_type(item.stamp),
                position=item.position,
                via=VIOLATION_GENERATED_VIA,
            )
        )
    return made


def _without_path_type(stamp: bytes | None) -> bytes | None:
    """The request's stamp for a message of another type than its path implies (a
    `Violation Generated` track event made from a `/v1/identify` call stays a track event)."""
    if stamp is None:
        return None
    decoded = decode_stamp(stamp)
    if decoded.path_type is None:
        return stamp
    return encode_stamp(msgspec.structs.replace(decoded, path_type=None))


def _valid(msg: dict[str, Any], common: Validator | None, rule: Validator | None) -> bool:
    try:
        if common is not None:
            common(msg)
        if rule is not None:
            rule(msg)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def _omit(msg: dict[str, Any], path: list[str]) -> bool:
    """Remove the field at `path`; False if there is none to remove (e.g. a missing one)."""
    node: Any = msg
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if not path or not isinstance(node, dict) or path[-1] not in node:
        return False
    del node[path[-1]]
    return True
