"""The short path of tracking plans agrees with the whole-message check: a message it lets
through is one the full check would leave untouched, on generated messages and plans."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.config import Enforcement, PlanRules, TrackingPlanConfig
from headwater.processing.plan_fields import field_checks
from headwater.processing.plans import SourcePlan, TrackingPlans, compile_plan
from headwater.processing.runtime import Item

SOURCE = "src_t"
EVENTS = ["Order Completed", "Signed Up", "Other"]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from(["", "EUR", "x", "a@b.c"]),
)
PROPS = st.dictionaries(
    st.sampled_from(["revenue", "currency", "plan", "extra"]), VALUES, max_size=4
)

RULES: dict[str, Any] = {
    "common": {"properties": {"userId": {"type": ["string", "null"]}}, "required": ["type"]},
    "track": {
        "Order Completed": {
            "properties": {
                "properties": {
                    "type": "object",
                    "properties": {
                        "revenue": {"type": "number", "minimum": 0},
                        "currency": {"type": "string", "enum": ["EUR", "USD"]},
                    },
                    "required": ["revenue"],
                }
            }
        },
        "Signed Up": {"properties": {"properties": {"type": "object"}}},
    },
    "identify": {
        "properties": {"traits": {"type": "object", "properties": {"plan": {"type": "string"}}}}
    },
}


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["track", "identify", "page", None]))
    msg: dict[str, Any] = {"messageId": "m-1"}
    if kind is not None:
        msg["type"] = kind
    if draw(st.booleans()):
        msg["userId"] = draw(st.one_of(st.none(), st.integers(0, 3), st.just("u-1")))
    if kind == "track" or draw(st.booleans()):
        msg["event"] = draw(st.sampled_from(EVENTS))
    if draw(st.booleans()):
        msg["properties"] = draw(st.one_of(PROPS, st.integers(0, 1)))
    if draw(st.booleans()):
        msg["traits"] = draw(st.one_of(PROPS, st.just("x")))
    if draw(st.booleans()):
        msg["context"] = {"library": {"name": "analytics-python"}}
    return msg


ENFORCEMENT = st.builds(
    Enforcement,
    unplanned_events=st.sampled_from(["allow", "block"]),
    unplanned_properties=st.sampled_from(["allow", "omit"]),
    violations=st.sampled_from(["allow", "omit", "block"]),
)


@settings(max_examples=400, deadline=None)
@given(messages(), ENFORCEMENT)
def test_what_the_short_path_lets_through_the_full_check_leaves_untouched(
    msg: dict[str, Any], enforcement: Enforcement
) -> None:
    plan = compile_plan(TrackingPlanConfig("p", msgspec.convert(RULES, PlanRules)))
    assert plan.checks is not None  # these rules name their fields: the short path applies
    step = TrackingPlans({SOURCE: SourcePlan(plan, enforcement)})
    raw = msgspec.json.encode(msg)
    short = step._passes(Item(SOURCE, raw), step.plans[SOURCE])

    item = Item(SOURCE, raw)
    full = step._check(item, step.plans[SOURCE])
    untouched = (
        full is not None and not full[3] and not item.outcome and item.message is raw
    )  # no violation, no block, nothing omitted
    if short:
        assert untouched, (msg, enforcement, full, item)


def test_the_step_gives_the_same_results_with_and_without_the_short_path() -> None:
    plan = compile_plan(TrackingPlanConfig("p", msgspec.convert(RULES, PlanRules)))
    slow = compile_plan(TrackingPlanConfig("p", msgspec.convert(RULES, PlanRules)))
    slow.checks = None
    mode = Enforcement(unplanned_properties="omit", violations="omit")
    bodies = [
        {"type": "track", "event": "Order Completed", "properties": {"revenue": 3}},
        {"type": "track", "event": "Order Completed", "properties": {"revenue": -1}},
        {"type": "track", "event": "Order Completed", "properties": {"revenue": 3, "x": 1}},
        {"type": "track", "event": "Signed Up", "userId": 7},
        {"type": "identify", "traits": {"plan": 5}},
        {"event": "Other"},
    ]
    out = []
    for compiled in (plan, slow):
        step = TrackingPlans({SOURCE: SourcePlan(compiled, mode)})
        items = [Item(SOURCE, msgspec.json.encode(b)) for b in bodies]
        step(items)
        out.append([(i.message, i.outcome, i.violations) for i in items])
    assert out[0] == out[1]
    assert out[0][0][2] is None and out[0][1][2]  # the first passes, the second does not


def test_a_rule_that_may_read_any_field_has_no_short_path() -> None:
    named = {"properties": {"userId": {"type": "string"}}}
    assert field_checks(named, {}) is not None
    for root in (
        {"additionalProperties": False, "properties": {"userId": {}}},
        {"allOf": [named]},
        {"properties": {"properties": {"$ref": "#/definitions/p"}}},
        {"type": "array"},
    ):
        assert field_checks(root, {}) is None, root
        assert field_checks(None, {"track:E": root}) is None, root
