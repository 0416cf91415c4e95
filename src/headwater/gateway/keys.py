"""The gateway's in-memory view of write keys, reloaded when the control plane changes."""

from __future__ import annotations

import time

from headwater.control.store import ControlStore, KeyGrant


class KeyCache:
    """Write key -> source, for the hot path.

    `refresh()` runs every second, and on every lookup miss (so a key created a moment ago
    through another worker or the CLI works at once); it costs one read of the control plane's
    version number (a few microseconds) unless something changed.
    """

    def __init__(self, store: ControlStore) -> None:
        self._store = store
        self._version = -1
        self._grants: dict[str, KeyGrant] = {}
        self.refresh()

    def refresh(self) -> None:
        version = self._store.version()
        if version != self._version:
            self._grants = self._store.key_grants()
            self._version = version

    def lookup(self, key: object) -> KeyGrant | None:
        """The grant of an active write key, or None (unknown, disabled or expired)."""
        if type(key) is not str:
            return None
        grant = self._grants.get(key)
        if grant is None:
            self.refresh()
            grant = self._grants.get(key)
            if grant is None:
                return None
        if grant.expires_ms is not None and time.time_ns() // 1_000_000 >= grant.expires_ms:
            return None
        return grant
