"""Destinations in the control plane: declared in `headwater.yaml` (a workspace's
`destinations:`) or made through the admin API (`/admin/v1/destinations`).

The file is the source of truth for what it declares: a declared destination is stored as
declared (taking over an API-made one of the same name) and cannot be changed or deleted
through the API. One that an earlier file declared and this one does not is disabled, never
deleted, and handed over to the API (which may then change or delete it). Every write is
checked as the file is (`config.check_destinations`) and bumps `version()`, which a router
polls to pick up changes.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from headwater.config import Config, DestinationConfig, parse_duration
from headwater.control.store import (
    MANAGED_BY_API,
    MANAGED_BY_CONFIG,
    ControlError,
    ControlStore,
    Workspace,
    now_ms,
)
from headwater.delivery.destinations.base import check_destination, destination_types
from headwater.delivery.filters import compile_filter
from headwater.delivery.routes import destination_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS destinations(
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    config TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    managed_by TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE(workspace_id, name)
);
INSERT OR IGNORE INTO settings VALUES('destinations_version', '0');
"""

# the same row for all three: (id, workspace_id, name, type, config, enabled, managed_by, ms)
_INSERT = "INSERT INTO destinations VALUES(?1,?2,?3,?4,?5,?6,?7,?8)"
_UPSERT = "INSERT OR REPLACE INTO destinations VALUES(?1,?2,?3,?4,?5,?6,?7,?8)"
_UPDATE = (
    "UPDATE destinations SET workspace_id=?2, name=?3, type=?4, config=?5, enabled=?6, "
    "managed_by=?7, updated_ms=?8 WHERE id=?1"
)
_SAME = (
    "SELECT 1 FROM destinations WHERE id=? AND workspace_id=? AND name=? AND type=? "
    "AND config=? AND enabled=? AND managed_by=?"
)
_SELECT = (
    "SELECT d.id, w.name, d.name, d.type, d.config, d.enabled, d.managed_by, d.updated_ms "
    "FROM destinations d JOIN workspaces w ON w.id = d.workspace_id "
)
_BUMP = "UPDATE settings SET value = CAST(value AS INTEGER) + 1 WHERE key='destinations_version'"

MASK = "***"
SECRET_SETTINGS = frozenset({"secret", "write_key", "password", "token"})
_SECRET_HEADER_PARTS = ("token", "key", "secret")
_STORED_APART = frozenset({"name", "type", "enabled"})  # columns of their own


@dataclass(frozen=True, slots=True)
class StoredDestination:
    """A destination as the control plane keeps it."""

    id: str
    workspace: str
    config: DestinationConfig
    managed_by: str
    updated_ms: int

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ref(self) -> str:
        """The human reference `workspace/name`."""
        return f"{self.workspace}/{self.config.name}"


class DestinationCatalog:
    """The destinations of every workspace, in the control store's database."""

    def __init__(self, store: ControlStore) -> None:
        self.store = store
        self._conn = store.conn
        self._conn.executescript(SCHEMA)

    # -- reading ------------------------------------------------------------------------------

    def all(self, workspace: str | None = None) -> list[StoredDestination]:
        """Every destination (of `workspace`, if given), by workspace and name."""
        if workspace is None:
            rows = self._conn.execute(_SELECT + "ORDER BY w.name, d.name").fetchall()
        else:
            ws = self.store.workspace(workspace)
            rows = self._conn.execute(
                _SELECT + "WHERE d.workspace_id=? ORDER BY d.name", (ws.id,)
            ).fetchall()
        return [_stored(row) for row in rows]

    def get(self, ref: str) -> StoredDestination:
        """A destination by id or by `workspace/name`."""
        if "/" in ref:
            ws_name, _, name = ref.partition("/")
            row = self._conn.execute(
                _SELECT + "WHERE w.name=? AND d.name=?", (ws_name, name)
            ).fetchone()
        else:
            row = self._conn.execute(_SELECT + "WHERE d.id=?", (ref,)).fetchone()
        if row is None:
            raise ControlError(f"no destination {ref!r}", status=404, code="not_found")
        return _stored(row)

    def version(self) -> tuple[int, int]:
        """(how many destinations, how many writes so far): changes with every write."""
        row = self._conn.execute(
            "SELECT (SELECT count(*) FROM destinations), CAST(value AS INTEGER) FROM settings "
            "WHERE key='destinations_version'"
        ).fetchone()
        return int(row[0]), int(row[1])

    # -- writing ------------------------------------------------------------------------------

    def create(
        self, workspace: str, config: DestinationConfig, *, managed_by: str = MANAGED_BY_API
    ) -> StoredDestination:
        """Add a destination to `workspace` (409 `conflict` if the name is taken)."""
        ws = self.store.workspace(workspace)
        self._check(ws, config)
        did = destination_id(ws.name, config.name)
        if self._conn.execute("SELECT 1 FROM destinations WHERE id=?", (did,)).fetchone():
            raise ControlError(
                f"destination {ws.name}/{config.name} already exists", status=409, code="conflict"
            )
        return self._write(_INSERT, ws, config, managed_by)

    def update(self, ref: str, changes: Mapping[str, Any]) -> StoredDestination:
        """Change some fields of an API-managed destination (any but `name`); a secret setting
        given as `MASK` (as answers show it) keeps its stored value."""
        current = self._api_managed(ref)
        if not isinstance(changes, Mapping):
            raise _invalid("the changes must be a JSON object")
        if "name" in changes:
            raise _invalid("name: a destination cannot be renamed (create another one)")
        fields = {**msgspec.to_builtins(current.config), **changes}
        if isinstance(fields["settings"], dict):
            fields["settings"] = keep_masked(fields["settings"], current.config.settings)
        merged = parse_destination(fields)
        ws = self.store.workspace(current.workspace)
        self._check(ws, merged)
        return self._write(_UPDATE, ws, merged, current.managed_by)

    def delete(self, ref: str) -> StoredDestination:
        """Delete an API-managed destination; returns what it was."""
        current = self._api_managed(ref)
        with self.store.transaction():
            cur = self._conn.execute("DELETE FROM destinations WHERE id=?", (current.id,))
            if cur.rowcount == 0:
                raise ControlError(f"no destination {ref!r}", status=404, code="not_found")
            self._conn.execute(_BUMP)
        return current

    def apply_config(self, config: Config) -> None:
        """Store the destinations the file declares as declared; disable the ones an earlier
        file declared and this one does not, and hand them over to the API."""
        declared: set[str] = set()
        for ws_conf in config.workspaces:
            if not ws_conf.destinations:
                continue
            ws = self.store.workspace(ws_conf.name)
            for dest in ws_conf.destinations:
                self._check(ws, dest)
                declared.add(self._write(_UPSERT, ws, dest, MANAGED_BY_CONFIG).id)
        stale = self._conn.execute(
            "SELECT id FROM destinations WHERE managed_by=?", (MANAGED_BY_CONFIG,)
        ).fetchall()
        for (did,) in stale:
            if did not in declared:
                old = self.get(did)
                off = msgspec.structs.replace(old.config, enabled=False)
                self._write(_UPDATE, self.store.workspace(old.workspace), off, MANAGED_BY_API)

    # -- helpers ------------------------------------------------------------------------------

    def _api_managed(self, ref: str) -> StoredDestination:
        found = self.get(ref)
        if found.managed_by == MANAGED_BY_CONFIG:
            raise ControlError(
                f"destination {found.ref} is declared in the configuration file; change it there",
                status=409,
                code="managed_by_config",
            )
        return found

    def _write(
        self, sql: str, ws: Workspace, config: DestinationConfig, managed_by: str
    ) -> StoredDestination:
        """Run `sql` on the destination's row, unless the row is already so (a write that
        changes nothing keeps the version: nothing to reload)."""
        did = destination_id(ws.name, config.name)
        row = (did, ws.id, config.name, config.type, _rest(config), int(config.enabled), managed_by)
        if self._conn.execute(_SAME, row).fetchone() is None:
            try:
                with self.store.transaction():
                    if self._conn.execute(sql, (*row, now_ms())).rowcount == 0:
                        raise ControlError(f"no destination {did!r}", status=404, code="not_found")
                    self._conn.execute(_BUMP)
            except sqlite3.IntegrityError:
                raise ControlError(
                    f"destination {ws.name}/{config.name} already exists",
                    status=409,
                    code="conflict",
                ) from None
        return self.get(did)

    def _check(self, ws: Workspace, config: DestinationConfig) -> None:
        """What `config.check_destinations` checks in the file, against the stored sources."""
        name = config.name
        if not name or len(name) > 100 or "/" in name or name.strip() != name:
            raise _invalid(f"name: invalid destination name {name!r}: 1-100 characters, no '/'")
        known = destination_types()
        if config.type not in known:
            raise _invalid(
                f"type: unknown destination type {config.type!r} (known: {', '.join(known)})"
            )
        sources = {s.name for s in self.store.list_sources(ws.id)}
        missing = [s for s in config.sources if s not in sources]
        if missing:
            raise _invalid(f"sources: workspace {ws.name!r} has no source {missing[0]!r}")
        try:
            period = parse_duration(config.retry_period)
        except ValueError as exc:
            raise _invalid(f"retry_period: {exc}") from None
        if not 0 < period < math.inf:
            raise _invalid(f"retry_period: must be positive, got {config.retry_period!r}")
        for field, check in (
            ("settings", lambda: check_destination(config.type, config.settings)),
            ("filters", lambda: compile_filter(name, config.filters)),
        ):
            try:
                check()
            except ValueError as exc:
                raise _invalid(f"{field}: {exc}") from None


def parse_destination(data: Any) -> DestinationConfig:
    """A `DestinationConfig` from its JSON shape (400 `validation_error` naming the field)."""
    try:
        return msgspec.convert(data, DestinationConfig)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None


def _invalid(message: str) -> ControlError:
    return ControlError(f"invalid destination: {message}", code="validation_error")


def _rest(config: DestinationConfig) -> str:
    """The fields without a column of their own, as JSON (keys sorted: equal configs, equal
    text)."""
    fields = msgspec.to_builtins(config)
    rest = {k: v for k, v in fields.items() if k not in _STORED_APART}
    return msgspec.json.encode(rest, order="sorted").decode()


def _stored(row: tuple[Any, ...]) -> StoredDestination:
    did, workspace, name, type_, rest, enabled, managed_by, updated_ms = row
    fields = {**msgspec.json.decode(rest), "name": name, "type": type_, "enabled": bool(enabled)}
    return StoredDestination(
        did, workspace, msgspec.convert(fields, DestinationConfig), managed_by, updated_ms
    )


# -- secrets in answers ---------------------------------------------------------------------------


def secret_header(name: str) -> bool:
    """Whether a header's value is a secret: `Authorization`, or a name with token/key/secret."""
    lowered = name.lower()
    return lowered == "authorization" or any(p in lowered for p in _SECRET_HEADER_PARTS)


def mask_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` with the value of every secret setting and header shown as `MASK`."""
    masked = {k: MASK if k in SECRET_SETTINGS and v is not None else v for k, v in settings.items()}
    headers = settings.get("headers")
    if isinstance(headers, dict):
        masked["headers"] = {k: MASK if secret_header(k) else v for k, v in headers.items()}
    return masked


def keep_masked(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """`new` settings where every secret sent back as `MASK` is the stored value again."""
    kept = {
        k: old[k] if k in SECRET_SETTINGS and v == MASK and k in old else v for k, v in new.items()
    }
    headers, old_headers = new.get("headers"), old.get("headers")
    if isinstance(headers, dict) and isinstance(old_headers, dict):
        stored = {k.lower(): v for k, v in old_headers.items()}
        kept["headers"] = {
            k: stored[k.lower()] if v == MASK and secret_header(k) and k.lower() in stored else v
            for k, v in headers.items()
        }
    return kept


def destination_json(dest: StoredDestination) -> dict[str, Any]:
    """How the admin API and the CLI show a destination (secrets masked)."""
    c = dest.config
    return {
        "id": dest.id,
        "workspace": dest.workspace,
        "name": c.name,
        "type": c.type,
        "sources": list(c.sources),
        "settings": mask_settings(c.settings),
        "filters": msgspec.to_builtins(c.filters),
        "enabled": c.enabled,
        "retry_period": c.retry_period,
        "ordered": c.ordered,
        "managed_by": dest.managed_by,
        "updated_at": iso_ms(dest.updated_ms),
    }


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC, e.g. `2024-05-01T12:00:00.123Z`."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
