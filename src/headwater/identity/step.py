"""The identity step of the processor: each message resolved into a profile, keyed and
stamped with it.

Per unit, the messages of each workspace are resolved in order in one transaction
(`IdentityResolver`). A message that lands on a profile leaves with `profileId` (the canonical
profile id, `use_...`) as its first field and as its key, so the `events` log is partitioned
by profile. A message without a usable identifier is left to the steps after this one, and so
are the messages a step made (blocked ones forwarded to another source, `Violation Generated`
events): they tell nothing new about anyone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import msgspec

from headwater.accounting.tally import now_ms
from headwater.events.stamp import decode_stamp
from headwater.identity.graph import Message, Resolution
from headwater.identity.identifiers import (
    IdentityFields,
    decode_identity,
    group_of,
    identifiers,
    text,
    traits_of,
)
from headwater.identity.profiles import ProfileChange
from headwater.identity.resolver import IdentityResolver
from headwater.processing.runtime import Item

PROFILE_FIELD = b'"profileId"'
Found = tuple[Item, Message, IdentityFields, str | None]


class IdentityStep:
    """Resolves identities of the sources whose workspace has identity resolution on."""

    name = "identity"

    def __init__(
        self, resolver: IdentityResolver | None, workspace_of: Callable[[str], str | None]
    ) -> None:
        self.resolver = resolver  # None until a workspace turns identity resolution on
        self.workspace_of = workspace_of  # source id -> workspace name (None: not resolved)
        self.retention_ms: dict[str, int] = {}  # how long each workspace's profiles keep events
        self.follow_sources: Callable[[], None] | None = None  # refreshes `workspace_of`
        self.active = True  # False: no workspace resolves identities (nothing to look at)

    def __call__(self, items: list[Item]) -> None:
        for written in self._resolve(items):
            written.result()

    async def run(self, items: list[Item]) -> None:
        """`__call__`, letting the stage go on with another unit while this one's writes are
        committed (the embedded store writes in a thread), or resolving in a thread when the
        store waits on the network (Redis)."""
        resolver = self.resolver
        if not self.active or resolver is None:
            return
        if not resolver.stages:
            await asyncio.to_thread(self, items)
            return
        for written in self._resolve(items):
            await asyncio.wrap_future(written)

    def _resolve(self, items: list[Item]) -> list[Future[Any]]:
        """Resolve `items`, stamp them; the futures of their writes."""
        if not self.active or self.resolver is None:
            return []
        resolver = self.resolver
        by_workspace: dict[str, list[Found]] = {}
        pending: list[Future[Any]] = []
        requests: dict[bytes | None, tuple[int, str | None]] = {}  # stamp -> time, path type
        now = now_ms()
        for item in items:
            if item.outcome or item.via:  # made by a step (forwarded, `Violation Generated`)
                continue
            workspace = self.workspace_of(item.source_id)
            if workspace is None:
                continue
            fields = decode_identity(item.message)
            if fields is None:
                continue
            request = requests.get(item.stamp)
            if request is None:
                request = requests[item.stamp] = _request(item.stamp, now)
            at_ms, path_type = request
            kind = fields.type or path_type  # `/v1/identify` and the like imply the type
            message = Message(
                text(fields.messageId) or item.position,
                item.source_id,
                at_ms,
                identifiers(fields),
                text(fields.previousId) if kind == "alias" else None,
            )
            by_workspace.setdefault(workspace, []).append((item, message, fields, kind))
        for workspace, found in by_workspace.items():

            def changes(
                results: list[Resolution], found: list[Found] = found
            ) -> list[ProfileChange]:
                out = []
                for (item, message, fields, kind), result in zip(found, results, strict=True):
                    if result.profile_id is None:
                        continue
                    item.key = result.profile_id
                    item.message = with_profile_id(item.message, result.profile_id)
                    out.append(
                        ProfileChange(
                            result.profile_id,
                            message.message_id,
                            message.source_id,
                            message.at_ms,
                            item.message,
                            traits_of(fields, kind),
                            group_of(fields, kind),
                            item.stamp,
                        )
                    )
                return out

            messages = [m for _i, m, _f, _k in found]
            if resolver.stages:
                _results, written = resolver.stage_unit(workspace, messages, changes)
                if written is not None:
                    pending.append(written)
            else:
                resolver.resolve_unit(workspace, messages, changes)
        return pending


def _request(stamp: bytes | None, now: int) -> tuple[int, str | None]:
    """When a message's request arrived, and the call type its path implies."""
    if stamp is None:
        return now, None
    try:
        decoded = decode_stamp(stamp)
    except (msgspec.DecodeError, ValueError):
        return now, None
    return int(decoded.received_at.timestamp() * 1000), decoded.path_type


def with_profile_id(message: bytes, profile_id: str) -> bytes:
    """`message` (a JSON object) with `profileId` set to `profile_id`, as its first field."""
    field = b'{"profileId":' + msgspec.json.encode(profile_id)
    if PROFILE_FIELD not in message:
        rest = message.lstrip()[1:].lstrip()
        return field + (b"}" if rest.startswith(b"}") else b"," + rest)
    decoded = msgspec.json.decode(message)  # a client sent its own: ours replaces it
    decoded.pop("profileId", None)
    return with_profile_id(msgspec.json.encode(decoded), profile_id)
