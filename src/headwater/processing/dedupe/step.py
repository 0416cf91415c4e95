"""The dedupe step: a message whose `messageId` another position claimed ends `duplicate`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec

from headwater.processing.dedupe.store import DedupeStore
from headwater.processing.runtime import Item

DUPLICATE = "duplicate"
REASON = "message_id_seen"


class _Id(msgspec.Struct):
    messageId: str | int | None = None


_id = msgspec.json.Decoder(_Id)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Dedupe:
    """Exact deduplication by `messageId` within the store's window (global across
    workspaces). Idempotent under replay: a message claims its id with its position in the
    input log, so reading it again after a crash finds its own claim."""

    name = "dedupe"

    def __init__(self, store: DedupeStore, clock_ms: Callable[[], int] = now_ms) -> None:
        self.store = store
        self.clock_ms = clock_ms

    def __call__(self, items: list[Item]) -> None:
        todo, claims = self._claims(items)
        if claims:
            self._settle(todo, self.store.claim(claims, self.clock_ms()))

    async def run(self, items: list[Item]) -> None:
        """`__call__` with the store's work in a thread, so that the stage can go on with
        another partition's unit meanwhile (SQLite and Redis wait without the GIL)."""
        todo, claims = self._claims(items)
        if claims:
            self._settle(todo, await asyncio.to_thread(self.store.claim, claims, self.clock_ms()))

    @staticmethod
    def _claims(items: list[Item]) -> tuple[list[Item], list[tuple[str, str]]]:
        todo: list[Item] = []
        claims: list[tuple[str, str]] = []
        decode = _id.decode
        for item in items:
            if item.outcome:
                continue
            try:
                mid = decode(item.message).messageId
            except msgspec.DecodeError:
                continue  # not readable: the steps after this one give it its outcome
            if mid is None or mid == "":
                continue  # the gateway gives every message an id; nothing to match on
            todo.append(item)
            claims.append((str(mid), item.position))
        return todo, claims

    @staticmethod
    def _settle(todo: list[Item], duplicates: list[bool]) -> None:
        for item, duplicate in zip(todo, duplicates, strict=True):
            if duplicate:
                item.stop(DUPLICATE, REASON)
