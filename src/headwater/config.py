"""Typed configuration: `headwater.yaml` validated at the edge into frozen structs.

Every option has a default, so an empty file (or none) runs a working embedded Headwater.
Sizes accept integers (bytes) or strings like "64MB"; durations accept seconds or strings like
"7d", "12h", "30m", "500ms".
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message says where."""


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "512KB" or "10GB" (binary units)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?b?)\s*", value.lower())
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 512KB, 64MB, 10GB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).rstrip("b")])


def parse_duration(value: int | float | str) -> float:
    """Seconds from a number or a string such as "500ms", "30m", "7d"."""
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", value.lower())
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 30s, 12h, 7d)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]


class Enforcement(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What a source does with messages its tracking plan does not expect."""

    unplanned_events: Literal["allow", "block"] = "allow"
    unplanned_properties: Literal["allow", "omit"] = "allow"
    violations: Literal["allow", "omit", "block"] = "allow"
    # another source of the workspace that receives blocked messages as they arrived, and one
    # that receives a `Violation Generated` track event per violation
    forward_blocked_to: str | None = None
    forward_violations_to: str | None = None


class SourceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A source declared in the file; its write keys are exactly the ones listed."""

    name: str
    write_keys: list[str] = []
    enabled: bool = True
    tracking_plan: str | None = None
    enforcement: Enforcement = Enforcement()


class PlanRules(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """JSON Schemas of whole messages: one per track event name, one per other call type, and
    one common to every message."""

    common: dict[str, Any] | None = None
    track: dict[str, dict[str, Any]] = {}
    identify: dict[str, Any] | None = None
    group: dict[str, Any] | None = None
    page: dict[str, Any] | None = None
    screen: dict[str, Any] | None = None


class TrackingPlanConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A tracking plan (Segment Protocols): rules that sources connected to it enforce."""

    name: str
    rules: PlanRules = PlanRules()


class IdentityTypeConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How identity resolution treats one identifier type (unset: Segment's default)."""

    limit: int | None = None  # values of this type a profile may hold within `period`
    period: int | float | str | None = None  # a duration, or "ever"
    priority: int | None = None  # 1 is the highest: dropped last when a limit is hit
    blocked: list[str] | None = None  # values never used to match (whole, ignoring case)
    blocked_patterns: list[str] | None = None  # regular expressions (`re.search`)


class IdentityConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Identity resolution settings of a workspace, by identifier type."""

    enabled: bool = False
    types: dict[str, IdentityTypeConfig] = {}
    max_merges: int = 100  # merges a profile may take part in
    max_identifiers: int = 1000  # identifiers a profile may hold
    recent_events: int | float | str = "14d"  # how long a profile keeps its events


class FilterConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Which events a destination gets: every filter that is set must let an event through."""

    types: list[str] | None = None  # call types (track, identify, page, screen, group, alias)
    events: list[str] | None = None  # names of track events
    where: str | None = None  # a condition on the message, e.g. `properties.total > 100`


class DestinationConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A destination: where the events of some sources of the workspace go, and how."""

    name: str  # also the key of a message's `integrations` object (case-sensitive)
    type: str  # webhook, segment, ...
    sources: list[str] = []  # names of the workspace's sources ([]: every source)
    settings: dict[str, Any] = {}
    filters: FilterConfig = FilterConfig()
    enabled: bool = True
    retry_period: int | float | str = "4h"  # then an event that still fails is a dead letter
    ordered: bool | None = None  # one profile's events in order (None: as the type says)


class WorkspaceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A workspace, its tracking plans and its sources, its identity settings, the access
    tokens of its Profile API (the space id is the workspace's name), and its destinations."""

    name: str
    sources: list[SourceConfig] = []
    tracking_plans: list[TrackingPlanConfig] = []
    identity: IdentityConfig | None = None  # None: as the admin API set it (else the defaults)
    access_tokens: list[str] = []
    destinations: list[DestinationConfig] = []


class RetentionConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How long and how much the log keeps; the oldest segments go first."""

    max_age: int | float | str = "7d"
    max_bytes: int | str = "20GB"


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The log every stage reads and writes: embedded files, or NATS JetStream streams."""

    backend: Literal["embedded", "jetstream"] = "embedded"
    partitions: int = 8
    # jetstream only: where, how replicated, under which names, how leases expire
    url: str = "nats://127.0.0.1:4222"
    replicas: int = 1
    prefix: str = "headwater"
    duplicate_window: int | float | str = "10m"
    lease_ttl: int | float | str = "6s"
    fsync: Literal["always", "interval"] = "always"
    fsync_interval: int | float | str = "50ms"
    segment_bytes: int | str = "64MB"
    max_pending_bytes: int | str = "32MB"
    min_free_disk: int | str = "64MB"
    retention: RetentionConfig = RetentionConfig()


class DedupeConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Exact deduplication by `messageId` in the processor."""

    enabled: bool = True
    window: int | float | str = "7d"


class StateConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where processing steps keep their state: SQLite files under `--data`, or Redis (shared by
    every processor, so a partition that moves keeps its state)."""

    backend: Literal["embedded", "redis"] = "embedded"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "headwater"


class AccountingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How long the delivery overview keeps its counts: per minute, then per hour."""

    minute_retention: int | float | str = "48h"
    retention: int | float | str = "90d"


class DeliveryConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where routers keep retry jobs and dead letters: SQLite under `--data`, or PostgreSQL
    (shared by every router of a fleet)."""

    backend: Literal["embedded", "postgres"] = "embedded"
    url: str = "postgresql://127.0.0.1:5432/headwater"
    schema: str = "headwater"
    retry_base: int | float | str = "10s"  # the first retry's wait, doubling after each
    retry_max: int | float | str = "30m"  # the longest wait between two retries


class GatewayConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The Tracking API."""

    trusted_proxies: list[str] = []
    max_concurrent_requests: int = 100
    public_url: str | None = None


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The whole of `headwater.yaml`."""

    data: str | None = None
    log: LogConfig = LogConfig()
    gateway: GatewayConfig = GatewayConfig()
    dedupe: DedupeConfig = DedupeConfig()
    state: StateConfig = StateConfig()
    accounting: AccountingConfig = AccountingConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    workspaces: list[WorkspaceConfig] = []


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a config file; `None` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {p}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    try:
        config = msgspec.convert(raw, Config)
        _check(config)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"{p}: {exc}") from exc
    return config


def _check(config: Config) -> None:
    log = config.log
    if not 1 <= log.partitions <= 1024:
        raise ValueError("log.partitions must be between 1 and 1024")
    for size in (
        log.segment_bytes,
        log.max_pending_bytes,
        log.min_free_disk,
        log.retention.max_bytes,
    ):
        parse_size(size)
    for duration in (
        log.fsync_interval,
        log.retention.max_age,
        log.duplicate_window,
        config.dedupe.window,
        config.accounting.minute_retention,
        config.accounting.retention,
        config.delivery.retry_base,
        config.delivery.retry_max,
    ):
        parse_duration(duration)
    if not 1 <= log.replicas <= 5:
        raise ValueError("log.replicas must be between 1 and 5")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", config.delivery.schema):
        raise ValueError("delivery.schema must be a PostgreSQL identifier (letters, digits, _)")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", log.prefix):
        raise ValueError("log.prefix must be 1 to 32 letters, digits, '_' or '-'")
    if not 2.0 <= parse_duration(log.lease_ttl) <= 300.0:
        raise ValueError("log.lease_ttl must be between 2s and 5m")
    seen_ws: set[str] = set()
    seen_keys: set[str] = set()
    for ws in config.workspaces:
        if ws.name in seen_ws:
            raise ValueError(f"workspace {ws.name!r} is declared twice")
        seen_ws.add(ws.name)
        for plan in ws.tracking_plans:
            check_plan(ws.name, plan)
        if ws.identity is not None:
            check_identity(ws.name, ws.identity)
        plans = {plan.name for plan in ws.tracking_plans}
        if len(plans) != len(ws.tracking_plans):
            raise ValueError(f"a tracking plan is declared twice in workspace {ws.name!r}")
        names: set[str] = set()
        for src in ws.sources:
            e = src.enforcement
            for target in (e.forward_blocked_to, e.forward_violations_to):
                if target is not None and target not in {s.name for s in ws.sources}:
                    raise ValueError(
                        f"source {src.name!r} forwards to {target!r}, which workspace "
                        f"{ws.name!r} does not declare"
                    )
            if src.tracking_plan is not None and src.tracking_plan not in plans:
                raise ValueError(
                    f"source {src.name!r} names tracking plan {src.tracking_plan!r}, which "
                    f"workspace {ws.name!r} does not declare"
                )
            if src.name in names:
                raise ValueError(f"source {src.name!r} is declared twice in workspace {ws.name!r}")
            names.add(src.name)
            for key in src.write_keys:
                if key in seen_keys:
                    raise ValueError(f"write key {key!r} is declared for more than one source")
                seen_keys.add(key)
        check_destinations(ws)


def check_destinations(ws: WorkspaceConfig) -> None:
    """Names unique, sources declared, the type known, its settings and filters usable."""
    if not ws.destinations:
        return
    from headwater.delivery.destinations.base import check_destination
    from headwater.delivery.filters import compile_filter

    sources = {s.name for s in ws.sources}
    seen: set[str] = set()
    for d in ws.destinations:
        where = f"destination {d.name!r} of workspace {ws.name!r}"
        if d.name in seen:
            raise ValueError(f"{where} is declared twice")
        seen.add(d.name)
        for source in d.sources:
            if source not in sources:
                raise ValueError(f"{where} listens to source {source!r}, which is not declared")
        if parse_duration(d.retry_period) <= 0:
            raise ValueError(f"{where}: retry_period must be positive")
        try:
            check_destination(d.type, d.settings)
            compile_filter(d.name, d.filters)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def _no_remote_ref(uri: str) -> Any:
    raise ValueError(f"$ref to {uri!r}: a rule can only refer to itself (no remote schemas)")


# fastjsonschema fetches remote `$ref`s with urlopen unless a handler answers for the scheme
_REF_HANDLERS = {scheme: _no_remote_ref for scheme in ("http", "https", "file", "ftp", "data")}


def compile_schema(schema: Any) -> Any:
    """A compiled validator for `schema` (never fetches anything); ValueError if it is not a
    usable JSON Schema."""
    import fastjsonschema

    try:
        return fastjsonschema.compile(schema, handlers=_REF_HANDLERS)
    except ValueError:
        raise
    except Exception as exc:  # fastjsonschema raises what it meets: TypeError, re.error, ...
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def check_plan(workspace: str, plan: TrackingPlanConfig) -> None:
    """Every rule of a plan must compile as a JSON Schema."""
    r = plan.rules
    named = {f"track {e!r}": schema for e, schema in r.track.items()}
    for kind in ("common", "identify", "group", "page", "screen"):
        if getattr(r, kind) is not None:
            named[kind] = getattr(r, kind)
    for what, schema in named.items():
        try:
            compile_schema(schema)
        except ValueError as exc:
            raise ValueError(
                f"tracking plan {plan.name!r} of workspace {workspace!r}: the {what} rule is "
                f"not a valid JSON Schema: {exc}"
            ) from None


def check_identity(workspace: str, identity: IdentityConfig) -> None:
    """Limits, periods and blocked patterns of a workspace's identity settings must be usable."""
    where = f"workspace {workspace!r}, identity"
    if parse_duration(identity.recent_events) <= 0:
        raise ValueError(f"{where}: recent_events must be longer than 0")
    if identity.max_merges < 1 or identity.max_identifiers < 1:
        raise ValueError(f"{where}: max_merges and max_identifiers must be at least 1")
    for name, t in identity.types.items():
        if not re.fullmatch(r"[a-z0-9_.-]{1,64}", name):
            raise ValueError(f"{where}: {name!r} is not an identifier type (a-z, 0-9, _ . -)")
        if t.limit is not None and t.limit < 1:
            raise ValueError(f"{where}: the limit of {name!r} must be at least 1")
        if t.priority is not None and t.priority < 1:
            raise ValueError(f"{where}: the priority of {name!r} must be at least 1")
        if t.period is not None and t.period != "ever":
            try:
                period = parse_duration(t.period)
            except ValueError as exc:
                raise ValueError(f"{where}: the period of {name!r}: {exc} or 'ever'") from None
            if not 0 < period < 100 * 365 * 86_400:  # also refuses NaN
                raise ValueError(
                    f"{where}: the period of {name!r} must be longer than 0 and shorter than "
                    "100 years, or 'ever'"
                )
        for pattern in t.blocked_patterns or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                why = f"{where}: blocked pattern {pattern!r} of {name!r}: {exc}"
                raise ValueError(why) from None
