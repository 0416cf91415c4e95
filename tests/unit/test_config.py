"""`headwater.yaml` (`headwater.config`): defaults, sizes, durations and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.config import (
    Config,
    ConfigError,
    SourceConfig,
    load_config,
    parse_duration,
    parse_size,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "headwater.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


# -- parse_size / parse_duration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("10b", 10),
        ("512KB", 512 * 1024),
        ("64MB", 64 * 1024**2),
        ("64mb", 64 * 1024**2),
        (" 10 GB ", 10 * 1024**3),
        ("2TB", 2 * 1024**4),
        ("1.5KB", 1536),
        ("0.5MB", 512 * 1024),
    ],
)
def test_parse_size(value: int | str, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "MB", "-1MB", "1PB", "1e3", "ten", "1 2MB", "1.KB"])
def test_parse_size_refuses_other_strings(value: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(value)


@pytest.mark.parametrize(("value", "size"), [("64M", 64 * 1024**2), ("512k", 512 * 1024)])
def test_parse_size_with_a_unit_without_b(value: str, size: int) -> None:
    try:
        parsed = parse_size(value)
    except ValueError:
        return  # refusing it as "not a size" would be fine too
    assert parsed == size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0.25, 0.25),
        ("30", 30.0),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("30m", 1800.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        (" 1.5 H ", 5400.0),
    ],
)
def test_parse_duration(value: int | float | str, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize("value", ["", "s", "-5s", "5y", "5 min", "1e3", "forever"])
def test_parse_duration_refuses_other_strings(value: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


@given(st.integers(0, 10**6), st.sampled_from(["", "b", "kb", "mb", "gb", "tb"]))
def test_parse_size_units_are_binary(n: int, unit: str) -> None:
    factor = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}[unit]
    assert parse_size(f"{n}{unit}") == n * factor
    assert parse_size(f"{n}{unit.upper()}") == n * factor


# -- load_config ---------------------------------------------------------------------------------


def test_no_file_gives_the_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.log.partitions == 8
    assert config.log.backend == "embedded"
    assert config.log.fsync == "always"
    assert parse_size(config.log.segment_bytes) == 64 * 1024**2
    assert parse_duration(config.log.retention.max_age) == 7 * 86400
    assert config.gateway.trusted_proxies == []
    assert config.workspaces == []


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_file_gives_the_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)) == Config()


def test_a_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
data: /var/lib/headwater
log:
  partitions: 16
  fsync: interval
  fsync_interval: 20ms
  segment_bytes: 128MB
  retention:
    max_age: 30d
    max_bytes: 1TB
gateway:
  trusted_proxies: [10.0.0.0/8]
  max_concurrent_requests: 64
  public_url: https://collect.example.com
workspaces:
  - name: acme
    sources:
      - name: web
        write_keys: [wk_web_1, wk_web_2]
      - name: backend
        enabled: false
""",
    )
    config = load_config(str(path))
    assert config.data == "/var/lib/headwater"
    assert config.log.partitions == 16
    assert config.log.fsync == "interval"
    assert parse_duration(config.log.fsync_interval) == 0.02
    assert parse_size(config.log.retention.max_bytes) == 1024**4
    assert config.gateway.trusted_proxies == ["10.0.0.0/8"]
    assert config.gateway.public_url == "https://collect.example.com"
    (ws,) = config.workspaces
    assert ws.name == "acme"
    assert ws.sources == [
        SourceConfig("web", ["wk_web_1", "wk_web_2"], True),
        SourceConfig("backend", [], False),
    ]


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    assert "not valid YAML" in config_error(tmp_path, "log: [unclosed\n")


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("- a\n- b\n", "object"),
        ("bogus: 1\n", "bogus"),
        ("log:\n  partitons: 4\n", "partitons"),
        ("log:\n  partitions: many\n", "partitions"),
        ("log:\n  partitions: 0\n", "partitions"),
        ("log:\n  partitions: 1025\n", "partitions"),
        ("log:\n  backend: kafka\n", "backend"),
        ("log:\n  fsync: never\n", "fsync"),
        ("log:\n  segment_bytes: lots\n", "not a size"),
        ("log:\n  retention:\n    max_bytes: 1PB\n", "not a size"),
        ("log:\n  retention:\n    max_age: forever\n", "not a duration"),
        ("log:\n  fsync_interval: soon\n", "not a duration"),
        ("workspaces:\n  - sources: []\n", "name"),
        ("workspaces:\n  - name: a\n    sources:\n      - name: s\n        keys: [k]\n", "keys"),
        ("gateway:\n  trusted_proxies: 10.0.0.1\n", "trusted_proxies"),
    ],
)
def test_invalid_configs_say_what_is_wrong(tmp_path: Path, text: str, mentions: str) -> None:
    message = config_error(tmp_path, text)
    assert mentions in message
    assert "headwater.yaml" in message


def test_partitions_bounds_are_inclusive(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "log:\n  partitions: 1\n")).log.partitions == 1
    assert load_config(write(tmp_path, "log:\n  partitions: 1024\n")).log.partitions == 1024


def test_duplicate_workspaces(tmp_path: Path) -> None:
    text = "workspaces:\n  - name: acme\n  - name: acme\n"
    assert "workspace 'acme' is declared twice" in config_error(tmp_path, text)


def test_duplicate_sources_in_a_workspace(tmp_path: Path) -> None:
    text = "workspaces:\n  - name: acme\n    sources:\n      - name: web\n      - name: web\n"
    assert "source 'web' is declared twice" in config_error(tmp_path, text)


def test_the_same_source_name_in_two_workspaces_is_fine(tmp_path: Path) -> None:
    text = (
        "workspaces:\n"
        "  - name: a\n    sources: [{name: web}]\n"
        "  - name: b\n    sources: [{name: web}]\n"
    )
    config = load_config(write(tmp_path, text))
    assert [ws.sources[0].name for ws in config.workspaces] == ["web", "web"]


def test_a_write_key_for_two_sources(tmp_path: Path) -> None:
    text = """
workspaces:
  - name: a
    sources: [{name: web, write_keys: [k1]}]
  - name: b
    sources: [{name: app, write_keys: [k2, k1]}]
"""
    assert "write key 'k1'" in config_error(tmp_path, text)


def test_config_structs_are_frozen() -> None:
    config = load_config(None)
    with pytest.raises(AttributeError):
        config.data = "/tmp/x"  # type: ignore[misc]


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "headwater.yaml"
    path.write_bytes(b"data: caf\xe9\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_a_size_without_b_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "log:\n  segment_bytes: 64M\n")
    try:
        config = load_config(path)
    except ConfigError:
        return  # refusing it with a clear error would be fine too
    assert parse_size(config.log.segment_bytes) == 64 * 1024**2
