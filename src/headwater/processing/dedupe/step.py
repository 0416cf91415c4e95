"""The dedupe step: a message whose `messageId` another position claimed ends `duplicate`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from headwater.processing.dedupe.store import DedupeStore
from headwater.processing.runtime import Item
from headwater.processing.steps import routing

DUPLICATE = "duplicate"
REASON = "message_id_seen"


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
        """`__call__`, with the work of a store that waits on the network (Redis) in a
        thread, so that the stage can go on with another partition's unit meanwhile. The
        embedded store is mostly Python work: a thread would only contend for the GIL."""
        todo, claims = self._claims(items)
        if not claims:
            return
        if self.store.waits:
            self._settle(todo, await asyncio.to_thread(self.store.claim, claims, self.clock_ms()))
        else:
            self._settle(todo, self.store.claim(claims, self.clock_ms()))

    @staticmethod
    def _claims(items: list[Item]) -> tuple[list[Item], list[tuple[str, str]]]:
        todo: list[Item] = []
        claims: list[tuple[str, str]] = []
        for item in items:
            if item.outcome:
                continue
            head = routing(item)
            if head is None:
                continue  # not readable: the steps after this one give it its outcome
            mid = head.messageId
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
