"""Exact deduplication by `messageId` within a window, on SQLite (embedded) or Redis."""

from headwater.processing.dedupe.sqlite_store import SqliteDedupeStore
from headwater.processing.dedupe.step import DUPLICATE, Dedupe
from headwater.processing.dedupe.store import DedupeStore, open_dedupe_store

__all__ = ["DUPLICATE", "Dedupe", "DedupeStore", "SqliteDedupeStore", "open_dedupe_store"]
