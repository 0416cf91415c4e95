"""The control-plane store: workspaces, sources and their write keys, in SQLite.

Every change bumps a version number, so gateways can cache the write keys and reload them only
when something changed. Write keys are stored as they are (they ship inside browser pages and are
shown in listings); the admin token is stored only as a SHA-256 hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import xxhash

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workspaces(
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    managed_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sources(
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    managed_by TEXT NOT NULL,
    UNIQUE(workspace_id, name)
);
CREATE TABLE IF NOT EXISTS write_keys(
    key TEXT PRIMARY KEY,
    source_id TEXT NOT NULL REFERENCES sources(id),
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    disabled INTEGER NOT NULL DEFAULT 0,
    managed_by TEXT NOT NULL
);
INSERT OR IGNORE INTO settings VALUES('version', '0');
"""

MANAGED_BY_CONFIG = "config"
MAX_GRACE_SECONDS = 366 * 86400
MANAGED_BY_API = "api"


class ControlError(Exception):
    """A control-plane request that cannot be done (unknown name, duplicate, ...)."""

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    name: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class WriteKey:
    key: str
    created_ms: int
    expires_ms: int | None
    disabled: bool

    def active(self, now_ms: int) -> bool:
        """Whether the key authenticates requests at `now_ms`."""
        return not self.disabled and (self.expires_ms is None or now_ms < self.expires_ms)


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    workspace_id: str
    workspace: str
    name: str
    enabled: bool
    created_ms: int
    write_keys: tuple[WriteKey, ...]

    @property
    def ref(self) -> str:
        """The human reference `workspace/source`."""
        return f"{self.workspace}/{self.name}"


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What a write key authenticates as, as the gateway caches it."""

    source_id: str
    workspace_id: str
    source_name: str
    expires_ms: int | None


def stable_id(prefix: str, *names: str) -> str:
    """The id of a named object, the same in every data directory: gateways of one fleet, each
    with its own control plane, stamp the same source with the same id."""
    return f"{prefix}_{xxhash.xxh3_64_hexdigest(chr(0).join(names).encode())}"


def new_write_key() -> str:
    return f"wk_{secrets.token_urlsafe(24)}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ControlStore:
    """SQLite-backed control plane; safe to use from several processes at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    # -- version and cache support ------------------------------------------------------------

    def version(self) -> int:
        """A number that changes whenever anything in the control plane changes."""
        row = self._conn.execute("SELECT value FROM settings WHERE key='version'").fetchone()
        return int(row[0])

    def key_grants(self) -> dict[str, KeyGrant]:
        """Every usable write key of every enabled source (expiry checked by the caller)."""
        rows = self._conn.execute(
            "SELECT k.key, s.id, s.workspace_id, s.name, k.expires_ms FROM write_keys k "
            "JOIN sources s ON s.id = k.source_id WHERE k.disabled = 0 AND s.enabled = 1"
        ).fetchall()
        return {key: KeyGrant(sid, wid, name, exp) for key, sid, wid, name, exp in rows}

    # -- workspaces ---------------------------------------------------------------------------

    def create_workspace(self, name: str, *, managed_by: str = MANAGED_BY_API) -> Workspace:
        _check_name(name, "workspace")
        with self.transaction():
            if self._find_workspace(name) is not None:
                raise ControlError(
                    f"workspace {name!r} already exists", status=409, code="conflict"
                )
            ws = Workspace(stable_id("ws", name), name, now_ms())
            self._conn.execute(
                "INSERT INTO workspaces VALUES(?,?,?,?)",
                (ws.id, ws.name, ws.created_ms, managed_by),
            )
        return ws

    def ensure_workspace(self, name: str, *, managed_by: str) -> Workspace:
        """The workspace called `name`, created if missing."""
        found = self._find_workspace(name)
        return found if found is not None else self.create_workspace(name, managed_by=managed_by)

    def list_workspaces(self) -> list[Workspace]:
        rows = self._conn.execute("SELECT id, name, created_ms FROM workspaces ORDER BY name")
        return [Workspace(*r) for r in rows]

    def workspace(self, name_or_id: str) -> Workspace:
        found = self._find_workspace(name_or_id)
        if found is None:
            raise ControlError(f"no workspace {name_or_id!r}", status=404, code="not_found")
        return found

    def _find_workspace(self, name_or_id: str) -> Workspace | None:
        row = self._conn.execute(
            "SELECT id, name, created_ms FROM workspaces WHERE name=? OR id=?",
            (name_or_id, name_or_id),
        ).fetchone()
        return Workspace(*row) if row else None

    # -- sources ------------------------------------------------------------------------------

    def create_source(
        self,
        workspace: str,
        name: str,
        *,
        write_keys: list[str] | None = None,
        managed_by: str = MANAGED_BY_API,
    ) -> Source:
        """Create a source with the given write keys (`None`: one new key; `[]`: none yet)."""
        _check_name(name, "source")
        ws = self.workspace(workspace)
        keys = [new_write_key()] if write_keys is None else write_keys
        with self.transaction():
            if self._conn.execute(
                "SELECT 1 FROM sources WHERE workspace_id=? AND name=?", (ws.id, name)
            ).fetchone():
                raise ControlError(
                    f"source {ws.name}/{name} already exists", status=409, code="conflict"
                )
            sid = stable_id("src", ws.name, name)
            self._conn.execute(
                "INSERT INTO sources VALUES(?,?,?,1,?,?)", (sid, ws.id, name, now_ms(), managed_by)
            )
            for key in keys:
                self._insert_key(sid, key, managed_by)
        return self.source(sid)

    def list_sources(self, workspace: str | None = None) -> list[Source]:
        sql = (
            "SELECT s.id FROM sources s JOIN workspaces w ON w.id = s.workspace_id "
            "{} ORDER BY w.name, s.name"
        )
        if workspace is None:
            rows = self._conn.execute(sql.format("")).fetchall()
        else:
            ws = self.workspace(workspace)
            rows = self._conn.execute(sql.format("WHERE s.workspace_id=?"), (ws.id,)).fetchall()
        return [self.source(r[0]) for r in rows]

    def source(self, ref: str) -> Source:
        """A source by id or by `workspace/name`."""
        if "/" in ref:
            ws_name, _, name = ref.partition("/")
            row = self._conn.execute(
                "SELECT s.id FROM sources s JOIN workspaces w ON w.id = s.workspace_id "
                "WHERE w.name=? AND s.name=?",
                (ws_name, name),
            ).fetchone()
        else:
            row = self._conn.execute("SELECT id FROM sources WHERE id=?", (ref,)).fetchone()
        if row is None:
            raise ControlError(f"no source {ref!r}", status=404, code="not_found")
        sid = row[0]
        s = self._conn.execute(
            "SELECT s.id, s.workspace_id, w.name, s.name, s.enabled, s.created_ms FROM sources s "
            "JOIN workspaces w ON w.id = s.workspace_id WHERE s.id=?",
            (sid,),
        ).fetchone()
        keys = tuple(
            WriteKey(k, c, e, bool(d))
            for k, c, e, d in self._conn.execute(
                "SELECT key, created_ms, expires_ms, disabled FROM write_keys "
                "WHERE source_id=? ORDER BY created_ms, key",
                (sid,),
            )
        )
        return Source(s[0], s[1], s[2], s[3], bool(s[4]), s[5], keys)

    def config_sources_not_in(self, ids: set[str]) -> list[str]:
        """Ids of enabled sources the config file created that are not in `ids`."""
        rows = self._conn.execute(
            "SELECT id FROM sources WHERE managed_by=? AND enabled=1", (MANAGED_BY_CONFIG,)
        )
        return [r[0] for r in rows if r[0] not in ids]

    def set_source_enabled(self, ref: str, enabled: bool) -> Source:
        src = self.source(ref)
        with self.transaction():
            self._conn.execute("UPDATE sources SET enabled=? WHERE id=?", (int(enabled), src.id))
        return self.source(src.id)

    def rotate_write_key(self, ref: str, *, grace_seconds: float = 86400.0) -> tuple[Source, str]:
        """Issue a new write key; the source's other keys stop working after `grace_seconds`."""
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise ControlError(f"the grace period must be 0 to {MAX_GRACE_SECONDS} seconds")
        src = self.source(ref)
        key = new_write_key()
        expires = now_ms() + int(grace_seconds * 1000)
        with self.transaction():
            self._conn.execute(
                "UPDATE write_keys SET expires_ms = min(coalesce(expires_ms, ?), ?) "
                "WHERE source_id=? AND disabled=0",
                (expires, expires, src.id),
            )
            self._insert_key(src.id, key, MANAGED_BY_API)
        return self.source(src.id), key

    def disable_write_key(self, key: str) -> None:
        with self.transaction():
            cur = self._conn.execute("UPDATE write_keys SET disabled=1 WHERE key=?", (key,))
            if cur.rowcount == 0:
                raise ControlError("no such write key", status=404, code="not_found")

    def sync_write_keys(self, source_id: str, keys: list[str]) -> None:
        """Make the config-managed keys of a source exactly `keys` (others of the config off).

        A key the config gave another source moves here (a source renamed in the file keeps
        its key); a key created through the API or CLI for another source is a conflict.
        """
        with self.transaction():
            for key in keys:
                row = self._conn.execute(
                    "SELECT source_id, managed_by FROM write_keys WHERE key=?", (key,)
                ).fetchone()
                if row is None:
                    self._insert_key(source_id, key, MANAGED_BY_CONFIG)
                elif row[0] != source_id and row[1] != MANAGED_BY_CONFIG:
                    raise ControlError(
                        f"write key {key!r} already belongs to another source",
                        status=409,
                        code="conflict",
                    )
                else:
                    self._conn.execute(
                        "UPDATE write_keys SET source_id=?, disabled=0, expires_ms=NULL, "
                        "managed_by=? WHERE key=?",
                        (source_id, MANAGED_BY_CONFIG, key),
                    )
            marks = ",".join("?" * len(keys)) or "''"
            self._conn.execute(
                f"UPDATE write_keys SET disabled=1 WHERE source_id=? AND managed_by=? "  # noqa: S608
                f"AND key NOT IN ({marks})",
                (source_id, MANAGED_BY_CONFIG, *keys),
            )

    def _insert_key(self, source_id: str, key: str, managed_by: str) -> None:
        if not key or len(key) > 200 or any(c.isspace() or c in ":/" for c in key):
            raise ControlError(
                f"invalid write key {key!r}: 1-200 characters, no spaces, ':' or '/'"
            )
        try:
            self._conn.execute(
                "INSERT INTO write_keys VALUES(?,?,?,NULL,0,?)",
                (key, source_id, now_ms(), managed_by),
            )
        except sqlite3.IntegrityError as exc:
            raise ControlError(
                "that write key is already in use", status=409, code="conflict"
            ) from exc

    # -- admin token --------------------------------------------------------------------------

    def has_admin_token(self) -> bool:
        row = self._conn.execute("SELECT 1 FROM settings WHERE key='admin_token_sha256'")
        return row.fetchone() is not None

    def set_admin_token(self, token: str) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO settings VALUES('admin_token_sha256', ?)",
                (hash_token(token),),
            )

    def admin_token_hash(self) -> str | None:
        row = self._conn.execute(
            "SELECT value FROM settings WHERE key='admin_token_sha256'"
        ).fetchone()
        return str(row[0]) if row else None

    def check_admin_token(self, token: str) -> bool:
        stored = self.admin_token_hash()
        return stored is not None and hmac.compare_digest(stored, hash_token(token))

    # -- for the modules that keep more in the same database (`control.plans`) --------------

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    def transaction(self) -> _Transaction:
        """`BEGIN IMMEDIATE` ... `COMMIT` (nestable) that bumps the version."""
        return _Transaction(self._conn)


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT` that also bumps the control-plane version."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._depth = 0

    def __enter__(self) -> None:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._depth:
            return
        if exc_type is None:
            self._conn.execute(
                "UPDATE settings SET value = CAST(value AS INTEGER) + 1 WHERE key='version'"
            )
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")


def _check_name(name: str, what: str) -> None:
    if not name or len(name) > 100 or "/" in name or name.strip() != name:
        raise ControlError(f"invalid {what} name {name!r}: 1-100 characters, no '/'")
