"""Profiles in Redis: the keys of a workspace's identity graph and profile data, and the reads
the Profile API and the CLI make of them (the same answers as `profiles.ProfileReader`).

Every key of workspace `ws` starts with `<prefix><ws>/` (a workspace name has no `/`):

| key | type | holds |
|---|---|---|
| `owners` | hash | identifier (JSON `[type, value]`) -> the canonical profile holding it |
| `p/<profile>` | hash | `v` version, `m` merged into (`""`: canonical), `d` the profile (msgpack) |
| `members/<profile>` | list | every profile merged into it, through every merge |
| `seq`, `event-seq` | string | the next profile sequence number; the last event number |
| `updates`, `journal` | stream | `id_graph_updates`; the identity journal (ids `0-<n>`) |
| `traits/<profile>` | hash | trait -> `<at_ms> <event number> <JSON value>` |
| `recent/<profile>` | list | per event, oldest first (capped): its number, `<at_ms> <msgpack>` |
| `links/<profile>` | hash | JSON `[collection, id]` -> first seen (ms) |
| `retention` | string | how long a profile keeps its events (ms), as the last commit set it |

Like the SQLite tables, a profile's data stays under the profile a message resolved to at the
time; reads gather every member merged into the canonical profile.

Recent events expire by key: each commit that adds events to a profile sets its list's TTL to
the workspace's retention, so a profile's events vanish a retention period after its last
one. The list of an active profile keeps older events too (up to the cap): reads leave out
those received before now minus the retention (`retention`; 14 days if none is stored).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis

from headwater.identity.profiles import LAST_MESSAGE_AMONG, _stamped

NO_CURSOR = 1 << 62
RECENT_EVENTS_MS = 14 * 86_400_000  # `recent_events` when a workspace has stored none


class StoredProfile(msgspec.Struct, array_like=True):
    """A profile as `p/<profile>`'s `d` keeps it; identifiers as (type, value, first seen,
    first message, source)."""

    seq: int
    created_ms: int
    merged_into: str | None
    merges: int
    identifiers: list[tuple[str, str, int, str, str]]


class StoredEvent(msgspec.Struct, array_like=True):
    """A recent event, as `recent/<profile>` keeps it (after its time)."""

    message_id: str
    source_id: str
    at_ms: int
    message: bytes
    stamp: bytes | None


encode = msgspec.msgpack.Encoder().encode
decode_profile = msgspec.msgpack.Decoder(StoredProfile).decode
decode_event = msgspec.msgpack.Decoder(StoredEvent).decode
_decode_pair = msgspec.json.Decoder(tuple[str, str]).decode

# ARGV: key base, now (ms), the retention if the workspace has none stored (ms), before (event
# number), limit, heads ('1': each event's time, not its "<time> <msgpack event>"), a profile,
# members ('1': and every profile merged into it). Returns {profiles, their pages}: of each
# profile, its newest `limit` events numbered below `before` and received within the
# retention, newest first, as (number, event) pairs in one flat list. A list holds each event
# as two items, its number and "<time> <msgpack>", in number order (commits number events from
# one counter as they push them), so `before` is found by bisection.
RECENT = """
local base, before, limit = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local oldest = tonumber(ARGV[2]) - tonumber(redis.call('GET', base .. 'retention') or ARGV[3])
local profiles = {ARGV[7]}
if ARGV[8] == '1' then
  for _, m in ipairs(redis.call('LRANGE', base .. 'members/' .. ARGV[7], 0, -1)) do
    profiles[#profiles + 1] = m
  end
end
local pages = {}
for k, pid in ipairs(profiles) do
  local key, found, got = base .. 'recent/' .. pid, {}, 0
  local lo, hi = 0, math.floor(redis.call('LLEN', key) / 2)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if tonumber(redis.call('LINDEX', key, 2 * mid)) < before then lo = mid + 1 else hi = mid end
  end
  while got < limit and lo > 0 do
    local from = math.max(0, lo - limit)
    local chunk = redis.call('LRANGE', key, 2 * from, 2 * lo - 1)
    for i = #chunk - 1, 1, -2 do
      local ms = string.match(chunk[i + 1], '^%-?%d+')
      if tonumber(ms) >= oldest then
        found[#found + 1] = chunk[i]
        found[#found + 1] = ARGV[6] == '1' and ms or chunk[i + 1]
        got = got + 1
        if got == limit then break end
      end
    end
    lo = from
  end
  pages[k] = found
end
return {profiles, pages}
"""


def raw(value: Any) -> bytes:
    """A reply of a client that answers bytes (`decode_responses` off), typed as such."""
    if not isinstance(value, bytes):
        raise TypeError(f"a Redis reply of type {type(value).__name__}: use decode_responses off")
    return value


def text(value: Any) -> str:
    return raw(value).decode()


def pair(first: str, second: str) -> bytes:
    """A hash field made of two strings (an identifier, a link), unambiguous: JSON."""
    return msgspec.json.encode((first, second))


def unpair(field: bytes) -> tuple[str, str]:
    return _decode_pair(field)


class Keys:
    """The keys of one workspace (see the module's docstring)."""

    def __init__(self, prefix: str, workspace: str) -> None:
        if "/" in workspace:
            raise ValueError(f"invalid workspace name {workspace!r}: no '/'")
        self.base = f"{prefix}{workspace}/"
        self.owners = self.base + "owners"
        self.seq = self.base + "seq"
        self.event_seq = self.base + "event-seq"
        self.updates = self.base + "updates"
        self.journal = self.base + "journal"
        self.retention = self.base + "retention"
        self.with_events = self.base + "with-events"  # of an earlier version: see `expire`

    def profile(self, pid: str) -> str:
        return f"{self.base}p/{pid}"

    def members(self, pid: str) -> str:
        return f"{self.base}members/{pid}"

    def traits(self, pid: str) -> str:
        return f"{self.base}traits/{pid}"

    def recent(self, pid: str) -> str:
        return f"{self.base}recent/{pid}"

    def links(self, pid: str) -> str:
        return f"{self.base}links/{pid}"


def pairs(page: list[bytes]) -> list[tuple[int, bytes]]:
    """(number, what follows it) of each event of a page of `RECENT`."""
    return [(int(n), x) for n, x in zip(page[::2], page[1::2], strict=True)]


def event_of(stored: bytes) -> StoredEvent:
    """The event of an item `<at_ms> <msgpack>` of `recent/<profile>`."""
    return decode_event(stored[stored.index(b" ") + 1 :])


class RedisProfileReader:
    """Reads of one workspace's profiles, as `ProfileReader` answers them."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._recent = client.register_script(RECENT)

    def members(self, canonical: str) -> list[str]:
        """`canonical` and every profile merged into it, through every merge."""
        merged = self.client.lrange(self.keys.members(canonical), 0, -1)
        return [canonical, *(text(m) for m in merged)]

    def _each(self, canonical: str, read: Any) -> tuple[list[str], list[Any]]:
        """The members, and `read(pipeline, member)` of each: one round trip for a profile
        nothing merged into, two otherwise."""
        pipe = self.client.pipeline(transaction=False)
        pipe.lrange(self.keys.members(canonical), 0, -1)
        read(pipe, canonical)
        merged, found = pipe.execute()
        members = [canonical, *(text(m) for m in merged)]
        if merged:
            for m in members[1:]:
                read(pipe, m)
            return members, [found, *pipe.execute()]
        return members, [found]

    def _newest(
        self, pid: str, limit: int, before: int, heads: bool, members: bool = True
    ) -> tuple[list[str], list[list[bytes]]]:
        """`RECENT` of `pid` (and its members): the profiles read, and each one's page."""
        args: list[str | int] = [self.keys.base, int(time.time() * 1000), RECENT_EVENTS_MS]
        args += [before, limit, "1" if heads else "", pid, "1" if members else ""]
        profiles, pages = self._recent(args=args)
        return [text(p) for p in profiles], pages

    def traits(self, canonical: str) -> dict[str, Any]:
        best: dict[str, tuple[int, int, bytes]] = {}
        _members, each = self._each(canonical, lambda p, m: p.hgetall(self.keys.traits(m)))
        for found in each:
            for name, stored in found.items():
                at_ms, seq, value = stored.split(b" ", 2)
                key = name.decode()
                order = (int(at_ms), int(seq))
                if key not in best or order >= best[key][:2]:
                    best[key] = (*order, value)
        out = {n: msgspec.json.decode(v) for n, (_u, _s, v) in sorted(best.items())}
        return {n: v for n, v in out.items() if v is not None}  # null removes a trait

    def events(
        self, canonical: str, limit: int, before_seq: int | None = None
    ) -> list[tuple[int, bytes]]:
        """(number, message as stored readers see it: stamped) of recent events, newest
        first, older than `before_seq`."""
        before = NO_CURSOR if before_seq is None else before_seq
        _members, pages = self._newest(canonical, limit, before, heads=False)
        entries = sorted((x for page in pages for x in pairs(page)), reverse=True)[:limit]
        out = []
        for number, stored in entries:
            e = event_of(stored)
            out.append((number, _stamped(e.source_id, e.message, e.stamp)))
        return out

    def links(self, canonical: str) -> list[tuple[str, str, int]]:
        """(collection, id, first seen) of the profile's links, oldest first."""
        first: dict[tuple[str, str], int] = {}
        _members, each = self._each(canonical, lambda p, m: p.hgetall(self.keys.links(m)))
        for found in each:
            for field, ms in found.items():
                link = unpair(field)
                first[link] = min(int(ms), first.get(link, int(ms)))
        rows = sorted(first.items(), key=lambda x: (x[1], x[0][1]))
        return [(c, i, ms) for (c, i), ms in rows]

    def _profile(self, pid: str) -> StoredProfile | None:
        blob = self.client.hget(self.keys.profile(pid), "d")
        return None if blob is None else decode_profile(raw(blob))

    def external_ids(self, canonical: str) -> list[tuple[str, str, int, str, str]]:
        """(type, value, first seen, first message, source) of every identifier, oldest
        first."""
        profile = self._profile(canonical)
        if profile is None:
            return []
        return sorted(profile.identifiers, key=lambda i: (i[2], i[0], i[1]))

    def metadata(self, canonical: str) -> dict[str, Any] | None:
        """Created and updated times, first and last messages (None: no such profile)."""
        profile = self._profile(canonical)
        if profile is None:
            return None
        first = min(profile.identifiers, key=lambda i: (i[2], i[3]), default=None)
        members, pages = self._newest(canonical, LAST_MESSAGE_AMONG, NO_CURSOR, heads=True)
        recent = [(n, int(ms), m) for m, page in zip(members, pages, strict=True)
                  for n, ms in pairs(page)]  # fmt: skip
        recent.sort(reverse=True)  # (number, time, profile) of the newest, as SQLite reads them
        last = max(((at, n, m) for n, at, m in recent[:LAST_MESSAGE_AMONG]), default=None)
        last_id = None
        if last is not None:  # received last: its message id
            _at, number, member = last
            _m, [found] = self._newest(member, 1, number + 1, heads=False, members=False)
            if found and int(found[0]) == number:
                last_id = event_of(found[1]).message_id
        return {
            "created_ms": profile.created_ms,
            "updated_ms": last[0] if last else profile.created_ms,
            "first_message": {"id": first[3], "at_ms": first[2]} if first else None,
            "last_message": {"id": last_id, "at_ms": last[0]} if last else None,
            "merged_profiles": [m for m in members if m != canonical],
        }
