"""Small steps of the processor. Each is a pure function over a unit's items."""

from __future__ import annotations

import msgspec

from headwater.processing.runtime import FAILED, Item


class _Routing(msgspec.Struct):
    """The only fields of a stored message the profile key needs."""

    messageId: str | int | None = None
    userId: str | int | None = None
    anonymousId: str | int | None = None


_routing = msgspec.json.Decoder(_Routing)


class ProfileKey:
    """Key each item by its profile: `userId`, else `anonymousId`, else `messageId` (the
    identity step will replace this with the canonical profile id). Items the reader already
    keyed (stamped messages) are left as they are. A message that is not a readable JSON object
    ends with outcome `failed`, reason `invalid_message`."""

    name = "profile_key"

    def __call__(self, items: list[Item]) -> None:
        decode = _routing.decode
        for item in items:
            if item.outcome or item.key:
                continue
            try:
                r = decode(item.message)
            except msgspec.DecodeError:
                item.stop(FAILED, "invalid_message")
                continue
            key = r.userId if r.userId not in (None, "") else r.anonymousId
            if key in (None, ""):
                key = r.messageId
            if key in (None, ""):
                item.stop(FAILED, "no_identifier")
                continue
            item.key = str(key)
