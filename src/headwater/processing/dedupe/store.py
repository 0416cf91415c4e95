"""Where deduplication remembers which position first claimed each `messageId`.

A claim is `(message_id, position)`, the position being where the message sits in the input
log (partition, batch, index): the same message read again after a crash has the same position,
so it finds its own claim and is not a duplicate of itself. A different position claiming an
id that is remembered within the window is a duplicate. Memory stays bounded: the embedded
store keeps 16 bytes of fingerprint per claim in RAM and the claims on disk, Redis expires keys
by itself.
"""

from __future__ import annotations

import logging
from typing import Protocol

from headwater.config import Config, parse_duration
from headwater.paths import DataPaths

log = logging.getLogger(__name__)


class DedupeStore(Protocol):
    """Remembers claims for `window_ms`; one owner per key (the input is partitioned by it)."""

    waits: bool  # whether claiming waits on the network (the step then claims in a thread)

    def claim(self, claims: list[tuple[str, str]], now_ms: int) -> list[bool]:
        """For each (message_id, position), in order: True if another position claimed the id
        within the window (a duplicate); else False, and the id is now claimed by `position`."""
        ...

    def expire(self, now_ms: int) -> int:
        """Forget claims older than the window; returns how many went."""
        ...

    def close(self) -> None: ...


def open_dedupe_store(config: Config, paths: DataPaths) -> DedupeStore | None:
    """The store the configuration asks for (None: deduplication is off)."""
    if not config.dedupe.enabled:
        return None
    window_ms = int(parse_duration(config.dedupe.window) * 1000)
    if config.state.backend == "redis":
        import redis

        from headwater.processing.dedupe.redis_store import RedisDedupeStore

        client = redis.Redis.from_url(config.state.url, socket_timeout=10)
        return RedisDedupeStore(client, config.state.prefix, window_ms)
    from headwater.processing.dedupe.file_store import FileDedupeStore, migrate_sqlite

    store = FileDedupeStore(paths.root / "state" / "dedupe", window_ms)
    earlier = paths.root / "state" / "dedupe.db"  # the layout of earlier versions
    if earlier.exists():
        moved = migrate_sqlite(earlier, store)
        log.info("dedupe: moved %d claims from %s to %s", moved, earlier, store.directory)
    return store
