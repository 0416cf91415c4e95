"""Identity resolution settings in the control plane: declared in `headwater.yaml` (a
workspace's `identity:`) or set through the admin API (`/admin/v1/workspaces/<ws>/identity`).

A workspace's settings declared in the file are kept as declared at every start; a workspace
whose file entry says nothing of identity keeps what the admin API set. The processor reads
them again whenever the control plane's version changes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from headwater.config import Config, IdentityConfig, check_identity
from headwater.control.store import (
    MANAGED_BY_API,
    MANAGED_BY_CONFIG,
    ControlError,
    ControlStore,
    now_ms,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS identity_settings(
    workspace_id TEXT PRIMARY KEY REFERENCES workspaces(id),
    settings TEXT NOT NULL,
    managed_by TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
"""


class IdentityCatalog:
    """Each workspace's identity settings (Segment's defaults where none were set)."""

    def __init__(self, store: ControlStore) -> None:
        self.store = store
        store.conn.executescript(SCHEMA)

    def put(
        self, workspace: str, settings: Any, *, managed_by: str = MANAGED_BY_API
    ) -> IdentityConfig:
        """Set `workspace`'s settings (an `IdentityConfig` or its JSON shape)."""
        ws = self.store.workspace(workspace)
        try:
            config = msgspec.convert(settings, IdentityConfig)
            check_identity(ws.name, config)
        except (msgspec.ValidationError, ValueError) as exc:
            raise ControlError(
                f"invalid identity settings: {exc}", code="validation_error"
            ) from None
        text = msgspec.json.encode(config).decode()
        row = (ws.id, text, managed_by)
        same = self.store.conn.execute(
            "SELECT 1 FROM identity_settings WHERE workspace_id=? AND settings=? AND managed_by=?",
            row,
        ).fetchone()
        if not same:  # unchanged settings keep the version (nothing to reload)
            with self.store.transaction():
                self.store.conn.execute(
                    "INSERT OR REPLACE INTO identity_settings VALUES(?,?,?,?)", (*row, now_ms())
                )
        return config

    def get(self, workspace: str) -> IdentityConfig:
        """`workspace`'s settings (the defaults if none were set)."""
        ws = self.store.workspace(workspace)
        row = self.store.conn.execute(
            "SELECT settings FROM identity_settings WHERE workspace_id=?", (ws.id,)
        ).fetchone()
        return IdentityConfig() if row is None else _settings(row[0])

    def all(self) -> dict[str, IdentityConfig]:
        """The settings of every workspace that has some, by workspace name."""
        rows = self.store.conn.execute(
            "SELECT w.name, s.settings FROM identity_settings AS s "
            "JOIN workspaces AS w ON w.id = s.workspace_id"
        ).fetchall()
        return {name: _settings(text) for name, text in rows}

    def apply_config(self, config: Config) -> None:
        """Keep the settings the file declares, as declared."""
        for ws in config.workspaces:
            if ws.identity is not None:
                self.put(ws.name, ws.identity, managed_by=MANAGED_BY_CONFIG)


def _settings(text: str) -> IdentityConfig:
    return msgspec.json.decode(text, type=IdentityConfig)
