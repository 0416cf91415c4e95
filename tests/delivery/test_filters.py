"""Destination filters: the integrations object, types, events and `where` conditions."""

from __future__ import annotations

import json
import operator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.config import FilterConfig
from headwater.delivery import filters
from headwater.delivery.filters import (
    FILTERED_CONDITION,
    FILTERED_EVENT,
    FILTERED_TYPE,
    INTEGRATIONS_DISABLED,
    UNREADABLE,
    ConditionError,
    DestinationFilter,
    compile_filter,
)

NAME = "Webhook"

# one config per way of reading a message: nothing set, `type`/`event` only, the whole message
NO_FILTERS = FilterConfig()
TYPES_ONLY = FilterConfig(types=list(filters.CALL_TYPES))
WITH_WHERE = FilterConfig(where="true = true")
EVERY_PATH = pytest.mark.parametrize(
    "config", [NO_FILTERS, TYPES_ONLY, WITH_WHERE], ids=["no-filters", "types", "where"]
)

ORDER: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u1",
    "properties": {
        "total": 120,
        "price": 9.5,
        "currency": "EUR",
        "order id": "A-1",
        "a.b": 1,
        "tags": ["vip", "new", 3],
        "coupon": None,
        "paid": True,
        "items": 0,
        "quote": 'say "hi"\\',
        "in": "keyword",
        "2fa": True,
        "café": "crème",
        "empty": "",
    },
    "context": {"app": {"name": "Web"}},
}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def check(config: FilterConfig, message: dict[str, Any], name: str = NAME) -> str | None:
    return compile_filter(name, config).check(encode(message))


def matches(condition: str, message: dict[str, Any] = ORDER) -> bool:
    """Whether `condition` lets `message` through (anything else than a condition fails)."""
    reason = check(FilterConfig(where=condition), message)
    assert reason in (None, FILTERED_CONDITION)
    return reason is None


# --- the integrations object ------------------------------------------------------------------

INTEGRATIONS = [
    # (integrations, the destination gets the message)
    (None, True),
    ({}, True),
    ({NAME: True}, True),
    ({NAME: False}, False),
    ({NAME: {"apiKey": "k"}}, True),
    ({NAME: {}}, True),
    ({NAME: None}, True),  # ignored: as if absent
    ({NAME: None, "All": False}, False),
    ({NAME: 0}, True),
    ({NAME: 0, "All": False}, False),
    ({NAME: "false"}, True),
    ({NAME: "true", "All": False}, False),
    ({NAME: [], "All": False}, False),
    ({"All": False}, False),
    ({"All": True}, True),
    ({"All": False, NAME: True}, True),
    ({"All": False, NAME: {"apiKey": "k"}}, True),
    ({"All": True, NAME: False}, False),
    ({"All": 0}, True),  # only `false` disables
    ({"All": None}, True),
    ({"all": False}, True),  # case-sensitive
    ({"webhook": False}, True),
    ({"WEBHOOK": False}, True),
    ({"All": False, "webhook": True}, False),
    ({"Other": False}, True),
    ({"All": False, "Other": True}, False),
    ("All", True),  # not an object: ignored
    (["All"], True),
    (False, True),
    (3, True),
]


@EVERY_PATH
@pytest.mark.parametrize(("integrations", "gets"), INTEGRATIONS)
def test_integrations(config: FilterConfig, integrations: Any, gets: bool) -> None:
    message = {"type": "track", "event": "x", "integrations": integrations}
    if integrations is None:
        del message["integrations"]
    assert check(config, message) == (None if gets else INTEGRATIONS_DISABLED)


def test_integrations_use_the_exact_destination_name() -> None:
    message = {"type": "track", "integrations": {"All": False, "Google Analytics 4": True}}
    assert check(NO_FILTERS, message, "Google Analytics 4") is None
    assert check(NO_FILTERS, message, "Google Analytics") == INTEGRATIONS_DISABLED


def test_a_destination_named_all_follows_its_key() -> None:
    assert check(NO_FILTERS, {"integrations": {"All": False}}, "All") == INTEGRATIONS_DISABLED


def test_the_word_integrations_elsewhere_changes_nothing() -> None:
    message = {"type": "track", "event": "integrations", "properties": {"integrations": False}}
    assert check(NO_FILTERS, message) is None


def test_integrations_are_checked_first() -> None:
    config = FilterConfig(types=["identify"], events=["x"], where="userId = 1")
    message = {"type": "track", "event": "y", "integrations": {NAME: False}}
    assert check(config, message) == INTEGRATIONS_DISABLED


# --- types and events -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "type_", "reason"),
    [
        (["track"], "track", None),
        (["track"], "Track", None),
        (["track"], "TRACK", None),
        (["Track", "IDENTIFY"], "identify", None),
        (["track"], "identify", FILTERED_TYPE),
        (["identify", "group"], "page", FILTERED_TYPE),
        (["track"], None, FILTERED_TYPE),
        (["track"], 5, FILTERED_TYPE),
        (["track"], ["track"], FILTERED_TYPE),
        ([], "track", FILTERED_TYPE),  # an empty list lets nothing through
    ],
)
def test_types(types: list[str], type_: Any, reason: str | None) -> None:
    message = {"event": "x"} if type_ is None else {"type": type_, "event": "x"}
    assert check(FilterConfig(types=types), message) == reason
    assert check(FilterConfig(types=types, where="1 = 1"), message) == reason


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "track", "event": "Order Completed"}, None),
        ({"type": "Track", "event": "Order Completed"}, None),
        ({"type": "track", "event": "Signed Up"}, None),
        ({"type": "track", "event": "order completed"}, FILTERED_EVENT),  # case-sensitive
        ({"type": "track", "event": "Order Refunded"}, FILTERED_EVENT),
        ({"type": "TRACK", "event": "Order Refunded"}, FILTERED_EVENT),
        ({"type": "track"}, FILTERED_EVENT),
        ({"type": "track", "event": None}, FILTERED_EVENT),
        ({"type": "track", "event": ["Order Completed"]}, FILTERED_EVENT),
        ({"type": "identify", "traits": {}}, None),  # only track messages are filtered
        ({"type": "page", "name": "Home", "event": "Other"}, None),
        ({"type": "screen"}, None),
        ({}, None),
    ],
)
def test_events(message: dict[str, Any], reason: str | None) -> None:
    events = ["Order Completed", "Signed Up"]
    assert check(FilterConfig(events=events), message) == reason
    assert check(FilterConfig(events=events, where="1 = 1"), message) == reason


def test_types_before_events_before_the_condition() -> None:
    config = FilterConfig(types=["identify"], events=["x"], where="userId = 1")
    assert check(config, {"type": "track", "event": "y"}) == FILTERED_TYPE
    config = FilterConfig(types=["track"], events=["x"], where="userId = 1")
    assert check(config, {"type": "track", "event": "y"}) == FILTERED_EVENT
    assert check(config, {"type": "track", "event": "x"}) == FILTERED_CONDITION
    assert check(config, {"type": "track", "event": "x", "userId": 1}) is None


def test_every_filter_must_pass() -> None:
    config = FilterConfig(types=["track", "identify"], events=["x"], where="userId = 1")
    assert check(config, {"type": "identify", "userId": 1}) is None
    assert check(config, {"type": "identify", "userId": 2}) == FILTERED_CONDITION


@pytest.mark.parametrize("types", [["tracks"], ["track", "purchase"], [""]])
def test_unknown_call_types_are_refused(types: list[str]) -> None:
    with pytest.raises(ValueError, match=r"'Webhook'.*unknown call type.*known: alias, group"):
        compile_filter(NAME, FilterConfig(types=types))


# --- conditions -------------------------------------------------------------------------------

CONDITIONS = [
    # numbers
    ("properties.total > 100", True),
    ("properties.total > 120", False),
    ("properties.total >= 120", True),
    ("properties.total < 120", False),
    ("properties.total <= 120", True),
    ("properties.total = 120", True),
    ("properties.total == 120", True),
    ("properties.total = 120.0", True),
    ("properties.total = 1.2e2", True),
    ("properties.total != 120", False),
    ("properties.total != 121", True),
    ("properties.total > -1", True),
    ("properties.total>-1", True),
    ("properties.price < 10", True),
    ("properties.price = 9.5", True),
    ("properties.price > 9.49", True),
    ("properties.total > 1E2", True),
    # strings
    ('properties.currency = "EUR"', True),
    ('properties.currency = "eur"', False),
    ('properties.currency != "USD"', True),
    ('properties.currency < "USD"', True),
    ('properties.currency >= "EUR"', True),
    ('event > "Order"', True),
    ('properties.empty = ""', True),
    (r'properties.quote = "say \"hi\"\\"', True),
    (r'properties."café" = "cr\u00e8me"', True),
    ('properties.café = "crème"', True),
    # top-level fields
    ('event = "Order Completed"', True),
    ('type = "track"', True),
    ('userId = "u1"', True),
    ('userId = "U1"', False),
    # nested and quoted paths
    ('context.app.name = "Web"', True),
    ('properties."order id" = "A-1"', True),
    ('properties."a.b" = 1', True),
    ("properties.a.b = null", True),
    ('properties.in = "keyword"', True),  # keywords are names after a dot
    ("properties.2fa = true", True),
    # missing fields are null
    ("properties.missing = null", True),
    ("properties.coupon = null", True),
    ("properties.total = null", False),
    ("properties.missing != null", False),
    ("properties.total != null", True),
    ("properties.missing = 0", False),
    ('properties.missing = ""', False),
    ("properties.missing = false", False),
    ('properties.missing != "x"', True),
    ("context.app.version = null", True),
    ("context.nothing.deep.down = null", True),
    ("properties.total.value = null", True),  # under a number
    ("properties.tags.vip = null", True),  # under an array
    ("anonymousId = null", True),
    # type mismatches
    ("properties.currency > 1", False),
    ("properties.currency < 1", False),
    ('properties.total > "100"', False),
    ('properties.total < "100"', False),
    ('properties.total = "120"', False),
    ("properties.paid = 1", False),
    ("properties.paid = true", True),
    ("properties.paid != 1", True),
    ("properties.items = false", False),
    ("properties.items = 0", True),
    ("properties.paid > false", False),
    ("properties.paid >= true", False),
    ("properties.tags > 1", False),
    ("properties.tags = 1", False),
    ("properties.missing < 1", False),
    ("properties.missing > 1", False),
    ("properties.missing >= null", False),
    ("not (properties.missing > 1)", True),
    # a value on the left, two fields
    ("100 < properties.total", True),
    ("120 <= properties.total", True),
    ("121 <= properties.total", False),
    ('"EUR" = properties.currency', True),
    ("null = properties.missing", True),
    ("properties.total > properties.price", True),
    ("properties.total < properties.price", False),
    ("properties.total = properties.total", True),
    ("properties.tags = properties.tags", True),
    ("properties.currency > properties.total", False),
    ("properties.missing = properties.coupon", True),
    ("1 = 1.0", True),
    ("true = 1", False),
    # in
    ('properties.currency in ["USD", "EUR"]', True),
    ('properties.currency in ["usd", "eur"]', False),
    ("properties.total in [1, 120.0]", True),
    ('properties.total in ["120"]', False),
    ("properties.paid in [1]", False),
    ("properties.paid in [true]", True),
    ("properties.items in [false]", False),
    ("properties.items in [0]", True),
    ("properties.missing in [null]", True),
    ("properties.coupon in [1, null]", True),
    ('properties.missing in ["x"]', False),
    ("properties.total in []", False),
    ('properties.tags in ["vip"]', False),  # an array is not a member
    ('properties.currency IN ["EUR"]', True),
    ('"EUR" in ["USD", "EUR"]', True),
    # contains
    ('contains(event, "Order")', True),
    ('contains(event, "order")', False),
    ('contains(event, "")', True),
    ('contains(properties.tags, "vip")', True),
    ('contains(properties.tags, "vi")', False),
    ("contains(properties.tags, 3)", True),
    ("contains(properties.tags, 3.0)", True),
    ("contains(properties.tags, true)", False),
    ('contains(properties.total, "1")', False),
    ('contains(properties.missing, "x")', False),
    ("contains(properties.currency, 1)", False),
    ('contains(context.app, "name")', False),  # not for objects
    # match
    ('match(event, "Order *")', True),
    ('match(event, "Order")', False),  # the whole string
    ('match(event, "order *")', False),  # case-sensitive
    ('match(event, "Order Complete?")', True),
    ('match(event, "Order Complete??")', False),
    ('match(event, "*Completed")', True),
    ('match(event, "*")', True),
    ('match(event, "O*r*d")', True),
    ('match(properties.currency, "E.R")', False),  # only * and ? are special
    ('match(properties.currency, "E[U]R")', False),
    ('match(properties."order id", "A-?")', True),
    ('match(properties.total, "*")', False),
    ('match(properties.missing, "*")', False),
    ('match(properties.empty, "*")', True),
    # exists
    ("exists(properties.total)", True),
    ("exists(properties.items)", True),
    ("exists(properties.empty)", True),
    ("exists(properties.coupon)", False),
    ("exists(properties.missing)", False),
    ('exists(properties."order id")', True),
    ("exists(context.app)", True),
    # and, or, not, parentheses
    ('properties.total > 100 and properties.currency = "EUR"', True),
    ('properties.total > 100 and properties.currency = "USD"', False),
    ('properties.total > 500 or properties.currency = "EUR"', True),
    ('properties.total > 500 or properties.currency = "USD"', False),
    ('event = "Order Completed" or properties.total > 500 and userId = "x"', True),
    ('(event = "Order Completed" or properties.total > 500) and userId = "x"', False),
    ('userId = "x" and properties.total > 500 or event = "Order Completed"', True),
    ('userId = "x" and (properties.total > 500 or event = "Order Completed")', False),
    ('not properties.total > 500 and userId = "x"', False),  # not binds tighter than and
    ('not (properties.total > 500 and userId = "x")', True),
    ('not properties.total > 500 or userId = "x"', True),
    ("not exists(properties.total)", False),
    ("not not exists(properties.total)", True),
    ("not(properties.total = 1)", True),
    ("((properties.total = 120))", True),
    ('NOT properties.total = 1 AND userId = "u1" Or FALSE = TRUE', True),
    ('CONTAINS(event, "Order") and Exists(userId) and MATCH(event, "*")', True),
    ("properties.total = NULL", False),
    # around the operators, white space is optional
    ('(properties.total>100)and(properties.currency=="EUR")', True),
    ('properties.currency in["EUR"]', True),
]


@pytest.mark.parametrize(("condition", "expected"), CONDITIONS)
def test_conditions(condition: str, expected: bool) -> None:
    assert matches(condition) is expected


@pytest.mark.parametrize(
    "message",
    [{"type": "track"}, {"properties": None}, {"properties": "total"}, {"properties": [120]}],
)
def test_conditions_on_messages_without_the_field(message: dict[str, Any]) -> None:
    assert matches("properties.total = null", message)
    assert not matches("properties.total > 100", message)
    assert not matches("exists(properties.total)", message)


def test_function_names_are_fields_when_not_called() -> None:
    assert matches('match = "x"', {"match": "x"})
    assert matches("exists = null", {})


# --- invalid conditions -----------------------------------------------------------------------

INVALID = [
    # (condition, 1-based position, what the message says)
    ("", 1, "empty condition"),
    ("   ", 4, "empty condition"),
    ("properties.total >", 19, "expected a field or a value, found the end"),
    ("properties.total > 100 and", 27, "expected a field or a value, found the end"),
    ("properties.total 100", 18, "expected a comparison"),
    ("properties.total", 17, "expected a comparison"),
    ("(properties.total > 1", 22, "expected ')' to close the '(' at character 1"),
    ("properties.total > 1)", 21, "expected 'and', 'or' or the end, found ')'"),
    ("properties.total < 1 < 2", 22, "expected 'and', 'or' or the end, found '<'"),
    ("properties.total = = 1", 20, "expected a field or a value, found '='"),
    ('event = "abc', 9, "unterminated string"),
    ("event = 'abc'", 9, "double-quoted"),
    (r'event = "a\qb"', 9, "invalid escape"),
    ("event # 1", 7, "unexpected character '#'"),
    ('event ! "x"', 7, "unexpected character '!'"),
    ('event in "a"', 10, 'expected a list like ["a", 1] after \'in\', found the value "a"'),
    ('event in ["a" "b"]', 15, "expected ',' or ']'"),
    ('event in ["a",]', 15, "expected a field or a value, found ']'"),
    (
        "event in [userId]",
        11,
        "expected a value (a string, a number, true, false or null), found 'userId'",
    ),
    ("foo(event)", 1, "unknown function 'foo'"),
    ("match(event, 1)", 14, "expected a string pattern for match(), found the value 1"),
    (
        'contains("x", "y")',
        10,
        'expected a field as the first argument of contains(), found the value "x"',
    ),
    ("contains(event)", 15, "expected ','"),
    ('exists(event, "x")', 13, "expected ')'"),
    ("properties. = 1", 13, "expected a field name after '.'"),
    ("properties.total > 1.", 20, "invalid number '1.'"),
    ("properties.total > 12abc", 20, "invalid number '12abc'"),
    ("and = 1", 1, "expected a field or a value, found 'and'"),
    ("not", 4, "expected a field or a value, found the end"),
    ("event = 1 and or userId = 1", 15, "found 'or'"),
    ('userId = "x" xor event = "y"', 14, "expected 'and', 'or' or the end, found 'xor'"),
]


@pytest.mark.parametrize(("condition", "position", "reason"), INVALID)
def test_invalid_conditions(condition: str, position: int, reason: str) -> None:
    with pytest.raises(ConditionError) as info:
        compile_filter(NAME, FilterConfig(where=condition))
    error = info.value
    assert isinstance(error, ValueError)
    assert error.position == position
    assert reason in error.reason
    text = str(error)
    assert text.startswith(f"destination 'Webhook': invalid filter condition {condition!r}: ")
    assert text.endswith(f"at character {position}")


def test_nesting_is_limited() -> None:
    assert matches("not " * 50 + "userId = 1", {"userId": 1})
    assert matches("not " * 49 + "userId = 1", {"userId": 2})
    assert matches("(" * 50 + 'userId = "u1"' + ")" * 50)
    for too_deep in ["not " * 51 + "userId = 1", "(" * 51 + "userId = 1" + ")" * 51]:
        with pytest.raises(ConditionError, match="more than 50 levels") as info:
            compile_filter(NAME, FilterConfig(where=too_deep))
        assert info.value.position == (201 if too_deep.startswith("not") else 51)


def test_long_chains_of_and_or_are_fine() -> None:
    ors = " or ".join(f"userId = {n}" for n in range(3000))
    assert matches(ors, {"userId": 2999})
    assert not matches(ors, {"userId": 3000})
    ands = " and ".join(f"userId != {n}" for n in range(3000))
    assert matches(ands, {"userId": 3000})
    assert not matches(ands, {"userId": 1500})


def test_deeply_nested_fields_compared_do_not_crash() -> None:
    deep: Any = 1
    for _ in range(400):
        deep = [deep]
    message = {"properties": {"a": deep, "b": deep}}
    assert compile_filter(NAME, FilterConfig(where="properties.a = properties.b")).check(
        encode(message)
    ) in (None, UNREADABLE)


# --- unreadable messages ----------------------------------------------------------------------

UNREADABLE_MESSAGES = [
    b"",
    b"not json",
    b"[1, 2]",
    b'"integrations"',
    b"null",
    b"3",
    b"{",
    b'{"type": "track", "integrations": {}',
    b'{"type": "track"} trailing',
    b'{"type": "tr\xffck"}',
    b'["integrations", {"All": false}]',
    b'{"integrations": ' + b"[" * 100_000,
]


@pytest.mark.parametrize("message", UNREADABLE_MESSAGES)
@pytest.mark.parametrize(
    "config",
    [TYPES_ONLY, FilterConfig(events=["x"]), WITH_WHERE],
    ids=["types", "events", "where"],
)
def test_unreadable_messages(config: FilterConfig, message: bytes) -> None:
    assert compile_filter(NAME, config).check(message) == UNREADABLE


def test_without_filters_only_messages_naming_integrations_are_read() -> None:
    no_filters = compile_filter(NAME, NO_FILTERS)
    assert no_filters.check(b'["integrations"]') == UNREADABLE
    assert no_filters.check(b'{"integrations": ') == UNREADABLE
    assert no_filters.check(b"not json") is None  # the fast path does not decode


def test_fast_path_decodes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refuse:
        def decode(self, _: bytes) -> Any:
            raise AssertionError("decoded")

    for decoder in ("_HEAD", "_JSON"):
        monkeypatch.setattr(filters, decoder, Refuse())
    assert compile_filter(NAME, NO_FILTERS).check(encode(ORDER)) is None


def test_without_conditions_the_whole_message_is_not_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refuse:
        def decode(self, _: bytes) -> Any:
            raise AssertionError("decoded")

    monkeypatch.setattr(filters, "_JSON", Refuse())
    message = encode({**ORDER, "integrations": {NAME: False}})
    assert compile_filter(NAME, NO_FILTERS).check(message) == INTEGRATIONS_DISABLED
    assert compile_filter(NAME, TYPES_ONLY).check(message) == INTEGRATIONS_DISABLED


def test_a_filter_tells_its_destination_and_config() -> None:
    config = FilterConfig(types=["track"])
    compiled = compile_filter(NAME, config)
    assert isinstance(compiled, DestinationFilter)
    assert (compiled.name, compiled.config) == (NAME, config)
    assert NAME in repr(compiled)


# --- properties -------------------------------------------------------------------------------

FIELDS = ["properties.a", "properties.b", 'properties."x y"', "properties.nope", "event"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False).map(lambda f: round(f, 1)),
    st.sampled_from(["", "a", "b", "ab"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.just("a"), SCALARS))
MESSAGES = st.fixed_dictionaries(
    {"type": st.just("track"), "event": st.sampled_from(["a", "b", "ab"])},
    optional={
        "properties": st.fixed_dictionaries({}, optional={"a": VALUES, "b": VALUES, "x y": VALUES})
    },
)
OPERATORS = ["=", "!=", "<", "<=", ">", ">="]
FIELD = st.sampled_from(FIELDS)


def literal(value: Any) -> str:
    return json.dumps(value)


SIMPLE = st.one_of(
    st.builds(lambda f, o, v: f"{f} {o} {literal(v)}", FIELD, st.sampled_from(OPERATORS), SCALARS),
    st.builds(
        lambda f, vs: f"{f} in [{', '.join(map(literal, vs))}]",
        FIELD,
        st.lists(SCALARS, max_size=3),
    ),
    st.builds(lambda f: f"exists({f})", FIELD),
    st.builds(lambda f, v: f"contains({f}, {literal(v)})", FIELD, SCALARS),
    st.builds(
        lambda f, p: f"match({f}, {literal(p)})", FIELD, st.sampled_from(["*", "a*", "?", ""])
    ),
)
GENERATED_CONDITIONS = st.recursive(
    SIMPLE,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) or ({b})", inner, inner),
        st.builds(lambda a: f"not ({a})", inner),
    ),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(GENERATED_CONDITIONS, GENERATED_CONDITIONS, MESSAGES)
def test_not_and_or_follow_logic(a: str, b: str, message: dict[str, Any]) -> None:
    ma, mb = matches(a, message), matches(b, message)
    assert matches(f"not ({a})", message) is not ma
    assert matches(f"({a}) and ({b})", message) is (ma and mb)
    assert matches(f"({a}) or ({b})", message) is (ma or mb)
    assert matches(f"not ({a}) and not ({b})", message) is matches(f"not ({a} or {b})", message)


def kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    return "number" if isinstance(value, int | float) else type(value).__name__


def reference(op: str, a: Any, b: Any) -> bool:
    """The comparison semantics, spelled out."""
    kinds = {"True": "bool", "False": "bool"}
    equal = kinds.get(kind(a), kind(a)) == kinds.get(kind(b), kind(b)) and a == b
    if op in ("=", "!="):
        return equal if op == "=" else not equal
    ordered = kind(a) == kind(b) and kind(a) in ("number", "str")
    compare = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]
    return ordered and compare(a, b)


@settings(max_examples=300, deadline=None)
@given(VALUES, st.sampled_from(OPERATORS), SCALARS)
def test_comparisons_follow_the_reference(value: Any, op: str, lit: Any) -> None:
    message = {"properties": {"a": value}}
    expected = reference(op, value, lit)
    assert matches(f"properties.a {op} {literal(lit)}", message) is expected
    flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
    assert matches(f"{literal(lit)} {flipped} properties.a", message) is expected
    assert matches(f"properties.a {op} properties.b", {"properties": {"a": value, "b": lit}}) is (
        expected
    )
    in_list = any(reference("=", value, x) for x in [lit, "zz"])
    assert matches(f'properties.a in [{literal(lit)}, "zz"]', message) is in_list


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.booleans())
def test_string_literals_take_json_escapes(text: str, ascii_only: bool) -> None:
    message = {"properties": {"s": text}}
    assert matches(f"properties.s = {json.dumps(text, ensure_ascii=ascii_only)}", message)
    assert matches(f"properties.{json.dumps('s')} = {json.dumps(text)}", message)
    key = json.dumps(text, ensure_ascii=ascii_only)
    assert matches(f"properties.{key} = 1", {"properties": {text: 1}})


INTEGRATION_VALUES = st.one_of(st.none(), st.booleans(), st.integers(0, 1), st.just({}))


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["track", "Track", "identify", "page", 1]),
            "event": st.sampled_from(["a", "b", None]),
            "integrations": st.one_of(
                st.dictionaries(st.sampled_from([NAME, "All", "all", "Other"]), INTEGRATION_VALUES),
                INTEGRATION_VALUES,
            ),
        },
    ),
    st.one_of(st.none(), st.lists(st.sampled_from(["track", "identify", "page"]), max_size=2)),
    st.one_of(st.none(), st.lists(st.sampled_from(["a", "b"]), max_size=1)),
)
def test_every_way_of_reading_agrees(
    message: dict[str, Any], types: list[str] | None, events: list[str] | None
) -> None:
    head = check(FilterConfig(types=types, events=events), message)
    assert check(FilterConfig(types=types, events=events, where="1 = 1"), message) == head
    if types is None and events is None:
        assert check(NO_FILTERS, message) == head
