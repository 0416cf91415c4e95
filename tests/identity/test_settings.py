"""Identity settings per identifier type (`headwater.identity.settings`) and their validation
in `headwater.yaml` (`headwater.config.check_identity`)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from headwater.config import (
    ConfigError,
    IdentityConfig,
    IdentityTypeConfig,
    load_config,
)
from headwater.identity.settings import WEEK_MS, identity_settings

DAY_MS = 86_400_000


def rules_of(kind: str, config: IdentityConfig | None = None) -> tuple[int, int | None, int]:
    r = identity_settings(config).rules(kind)
    return (r.limit, r.period_ms, r.priority)


# -- defaults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("user_id", (1, None, 1)),
        ("email", (5, WEEK_MS, 2)),
        ("ios.id", (5, WEEK_MS, 3)),
        ("android.idfa", (5, WEEK_MS, 3)),
        ("push_token", (5, WEEK_MS, 3)),
        ("anonymous_id", (5, WEEK_MS, 4)),
        ("crm_id", (5, WEEK_MS, 5)),
        ("stripe_customer_id", (5, WEEK_MS, 5)),
    ],
)
def test_segment_defaults(kind: str, expected: tuple[int, int | None, int]) -> None:
    assert rules_of(kind) == expected
    assert WEEK_MS == 7 * DAY_MS


def test_default_caps() -> None:
    s = identity_settings()
    assert (s.max_merges, s.max_identifiers) == (100, 1000)
    assert identity_settings(IdentityConfig()) == s


# -- overrides ----------------------------------------------------------------------------------


def test_overrides_replace_only_what_they_set() -> None:
    config = IdentityConfig(
        types={
            "email": IdentityTypeConfig(limit=2, period="1d"),
            "anonymous_id": IdentityTypeConfig(priority=6),
            "user_id": IdentityTypeConfig(period=3600),
            "crm_id": IdentityTypeConfig(limit=1, period="ever", priority=2),
            "shop_id": IdentityTypeConfig(blocked=["guest"]),
        },
        max_merges=3,
        max_identifiers=20,
    )
    assert rules_of("email", config) == (2, DAY_MS, 2)
    assert rules_of("anonymous_id", config) == (5, WEEK_MS, 6)
    assert rules_of("user_id", config) == (1, 3_600_000, 1)
    assert rules_of("crm_id", config) == (1, None, 2)
    assert rules_of("shop_id", config) == (5, WEEK_MS, 5)
    assert rules_of("other_id", config) == (5, WEEK_MS, 5)
    assert rules_of("ios.id", config) == (5, WEEK_MS, 3)
    s = identity_settings(config)
    assert (s.max_merges, s.max_identifiers) == (3, 20)


@pytest.mark.parametrize(
    ("period", "ms"),
    [("ever", None), ("500ms", 500), ("30m", 1_800_000), ("12h", 43_200_000), ("2w", 2 * WEEK_MS)],
)
def test_periods(period: str, ms: int | None) -> None:
    config = IdentityConfig(types={"email": IdentityTypeConfig(period=period)})
    assert identity_settings(config).rules("email").period_ms == ms


# -- blocked values -----------------------------------------------------------------------------


BLOCKED_BY_DEFAULT = ["null", "NULL", " Null ", "none", "nil", "Undefined", "anonymous"]
BLOCKED_BY_DEFAULT += ["ANONYMOUS", "unknown", "N/A", "[object Object]", "-1"]
BLOCKED_BY_DEFAULT += ["", "0", "000", "---", "00000000-0000-0000-0000-000000000000"]


@pytest.mark.parametrize("value", BLOCKED_BY_DEFAULT)
def test_default_blocked_values_ignore_case(value: str) -> None:
    s = identity_settings()
    for kind in ("user_id", "anonymous_id", "email", "ios.id", "crm_id"):
        assert s.rules(kind).blocks(value), (kind, value)


@pytest.mark.parametrize("value", ["u1", "nullable", "anon", "0x0", "10", "a-0", "-2", "n/a/b"])
def test_ordinary_values_are_not_blocked(value: str) -> None:
    assert not identity_settings().rules("user_id").blocks(value)


def test_a_types_own_blocked_values_ignore_case_and_replace_the_defaults() -> None:
    config = IdentityConfig(types={"email": IdentityTypeConfig(blocked=[" Test@Shop.io ", "X"])})
    email = identity_settings(config).rules("email")
    assert email.blocks("test@shop.io") and email.blocks("TEST@SHOP.IO") and email.blocks("x")
    assert not email.blocks("null")  # the list set instead of the defaults ...
    assert email.blocks("0000")  # ... while the default pattern still applies
    assert identity_settings(config).rules("user_id").blocks("null")  # other types: defaults


def test_blocked_patterns_are_searched() -> None:
    patterns = [r"@example\.(com|org)$", r"^test-"]
    config = IdentityConfig(types={"email": IdentityTypeConfig(blocked_patterns=patterns)})
    email = identity_settings(config).rules("email")
    assert email.blocks("qa@example.com") and email.blocks("a.b@example.org")
    assert email.blocks("test-1@shop.io")
    assert not email.blocks("qa@example.community") and not email.blocks("my-test-1@shop.io")
    assert email.blocks("NULL")  # the default values still apply
    assert not email.blocks("0000")  # the patterns set instead of the default one


# -- validation of headwater.yaml ----------------------------------------------------------------


def write(tmp_path: Path, identity: str) -> Path:
    path = tmp_path / "headwater.yaml"
    text = "workspaces:\n  - name: shop\n    identity:\n" + textwrap.indent(identity, " " * 6)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, identity: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, identity))
    return str(info.value)


def test_access_tokens_and_identity_are_accepted_under_a_workspace(tmp_path: Path) -> None:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            workspaces:
              - name: shop
                access_tokens: [tok_1, tok_2]
                sources: [{name: web, write_keys: [wk1]}]
                identity:
                  enabled: true
                  max_merges: 10
                  max_identifiers: 50
                  types:
                    email: {limit: 3, period: 1d, priority: 2, blocked: [a@b.c]}
                    crm_id: {limit: 1, period: ever, blocked_patterns: ["^test-"]}
                    user_id: {period: 3600}
            """
        ),
        encoding="utf-8",
    )
    ws = load_config(path).workspaces[0]
    assert ws.access_tokens == ["tok_1", "tok_2"]
    assert ws.identity.enabled and ws.identity.max_merges == 10
    s = identity_settings(ws.identity)
    assert (s.rules("email").limit, s.rules("email").period_ms) == (3, DAY_MS)
    assert s.rules("email").blocks("A@B.C")
    assert (s.rules("crm_id").limit, s.rules("crm_id").period_ms) == (1, None)
    assert s.rules("crm_id").blocks("test-9") and s.rules("user_id").period_ms == 3_600_000
    assert s.max_identifiers == 50


def test_an_empty_identity_section_gives_the_defaults(tmp_path: Path) -> None:
    ws = load_config(write(tmp_path, "types: {}\n")).workspaces[0]
    assert ws.identity == IdentityConfig()
    assert ws.access_tokens == []


def test_a_bad_regex(tmp_path: Path) -> None:
    message = config_error(tmp_path, "types:\n  email: {blocked_patterns: ['(unclosed']}\n")
    assert "blocked pattern '(unclosed'" in message and "'email'" in message
    assert "workspace 'shop'" in message


@pytest.mark.parametrize("limit", [0, -3])
def test_a_limit_under_one(tmp_path: Path, limit: int) -> None:
    message = config_error(tmp_path, f"types:\n  email: {{limit: {limit}}}\n")
    assert "the limit of 'email' must be at least 1" in message


def test_a_priority_under_one(tmp_path: Path) -> None:
    message = config_error(tmp_path, "types:\n  crm_id: {priority: 0}\n")
    assert "the priority of 'crm_id' must be at least 1" in message


@pytest.mark.parametrize("period", ["a week", "Ever", "forever", "7 days", "1y"])
def test_a_bad_period(tmp_path: Path, period: str) -> None:
    message = config_error(tmp_path, f"types:\n  email: {{period: '{period}'}}\n")
    assert "the period of 'email'" in message and repr(period) in message
    assert "'ever'" in message


@pytest.mark.parametrize("period", ["-1", "-0.5", ".inf", ".nan"])
def test_an_unusable_numeric_period(tmp_path: Path, period: str) -> None:
    """A negative period makes the limit never count anything; .inf and .nan pass validation
    but then make identity_settings raise (OverflowError, ValueError)."""
    message = config_error(tmp_path, f"types:\n  email: {{period: {period}}}\n")
    assert "the period of 'email'" in message


@pytest.mark.parametrize("name", ["Email", "crm id", "", "crm/id", "é", "x" * 65])
def test_a_bad_type_name(tmp_path: Path, name: str) -> None:
    message = config_error(tmp_path, f"types:\n  '{name}': {{limit: 2}}\n")
    assert f"{name!r} is not an identifier type" in message


@pytest.mark.parametrize("cap", ["max_merges", "max_identifiers"])
def test_caps_under_one(tmp_path: Path, cap: str) -> None:
    message = config_error(tmp_path, f"{cap}: 0\n")
    assert "max_merges and max_identifiers must be at least 1" in message


@pytest.mark.parametrize(
    ("identity", "words"),
    [
        ("types:\n  email: {limt: 2}\n", "limt"),
        ("types:\n  email: {limit: two}\n", "limit"),
        ("types:\n  email: {blocked: null@x}\n", "blocked"),
        ("max_merge: 3\n", "max_merge"),
    ],
)
def test_unknown_keys_and_wrong_types(tmp_path: Path, identity: str, words: str) -> None:
    assert words in config_error(tmp_path, identity)
