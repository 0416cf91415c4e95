"""Exact deduplication by `messageId` within a window, on files (embedded) or Redis."""

from headwater.processing.dedupe.file_store import FileDedupeStore
from headwater.processing.dedupe.step import DUPLICATE, Dedupe
from headwater.processing.dedupe.store import DedupeStore, open_dedupe_store

__all__ = ["DUPLICATE", "Dedupe", "DedupeStore", "FileDedupeStore", "open_dedupe_store"]
