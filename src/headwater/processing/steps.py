"""Small steps of the processor. Each is a pure function over a unit's items."""

from __future__ import annotations

from typing import Any

import msgspec

from headwater.processing.runtime import FAILED, Item


class Routing(msgspec.Struct, gc=False):
    """What several steps read of a message: its ids (dedupe, the profile key), its type and
    event (which tracking-plan rule applies)."""

    messageId: str | int | None = None
    userId: str | int | None = None
    anonymousId: str | int | None = None
    type: Any = None
    event: Any = None


_routing = msgspec.json.Decoder(Routing)


def routing(item: Item) -> Routing | None:
    """The item's ids, decoded once per message (again if a step changed the message); None
    if the message is not an object with usable ids."""
    head = item.head
    if head is None or item.original is not None:
        try:
            head = item.head = _routing.decode(item.message)
        except msgspec.DecodeError:
            return None
    return head  # type: ignore[no-any-return]


class ProfileKey:
    """Key each item by its profile: `userId`, else `anonymousId`, else `messageId` (the
    identity step will replace this with the canonical profile id). Items the reader already
    keyed (stamped messages) are left as they are. A message that is not a readable JSON object
    ends with outcome `failed`, reason `invalid_message`."""

    name = "profile_key"

    def __call__(self, items: list[Item]) -> None:
        for item in items:
            if item.outcome or item.key:
                continue
            r = item.head if item.original is None else None  # `routing`, inlined when known
            if r is None:
                r = routing(item)
            if r is None:
                item.stop(FAILED, "invalid_message")
                continue
            key = r.userId if r.userId not in (None, "") else r.anonymousId
            if key in (None, ""):
                key = r.messageId
            if key in (None, ""):
                item.stop(FAILED, "no_identifier")
                continue
            item.key = str(key)
