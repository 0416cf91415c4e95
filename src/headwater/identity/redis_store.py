"""The identity graph in Redis, shared by every processor of a fleet.

Keys: per workspace as `redis_profiles` lists them; besides, `<prefix>workspaces` (the
workspaces with journaled messages) and `<prefix>journal-seq` (the journal's global counter,
so that `journal()` gives every workspace's entries in one commit order, as SQLite does).

A unit is resolved on a `Graph` that reads the owners of its identifiers and the next profile
number at once (one round trip) and loads the profiles it touches on demand, remembering what
it read: each owner (missing ones too), each profile's version and the next profile number.
`save` runs one script that checks what the unit's graph changes rest on is unchanged and only
then writes what the unit changed (owners, profiles with their version + 1, the merges, the
journal entries, traits, events and links); otherwise nothing is written and `save` raises
`GraphConflict`, so the unit is resolved again on a fresh read.

What is checked: every profile version read, the next profile number (if the unit made
profiles), and the owners read for identifiers of the journaled messages (those that changed
the graph; an alias's previousId is read as a user id and as an anonymous id). Not the owners
that only other messages read: a message that changed nothing writes nothing to the graph or
the journal, so no journaled message depends on it, and its outcome only stamps it and files
its event, traits and links under the profile it read as holding its identifiers. Identifiers
only move by merges, and reads gather every profile merged into the canonical one, so that
data is found under whichever profile holds those identifiers now, however other processors'
commits merged it since. Commits of the graph are thus serializable: the journal, appended in
the script, holds the messages that changed the graph in the order their units took effect,
and replaying it gives the same graph, profile ids included. The common message, an event of
a known person that changes nothing, costs the script no owner check.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import redis

from headwater.identity.graph import Graph, GraphConflict, GraphUpdate, Held, Profile
from headwater.identity.identifiers import Ident
from headwater.identity.profiles import ProfileChange
from headwater.identity.redis_profiles import (
    RECENT_EVENTS_MS,
    Keys,
    RedisProfileReader,
    StoredEvent,
    StoredProfile,
    decode_profile,
    encode,
    pair,
    raw,
    text,
    unpair,
)
from headwater.identity.sqlite_store import JournalEntry

EVENTS_PER_PROFILE = 3000  # the newest events a profile keeps (each member of a merged one)
LEGACY_BATCH = 100  # profiles whose sorted sets of an earlier version `expire` drops at once

# KEYS: owners, seq, event-seq, updates, journal, workspaces, journal-seq, retention.
# ARGV: workspace, key base, event cap, retention (ms), expected next profile number ('': not
# checked), new one ('': unchanged), then one argument holding every item of the counted
# sections, each as a 4-byte big-endian length and its bytes (redis-py packs each argument in
# Python, and a unit has thousands of items); the sections: owners read (field, profile or
# ''), profiles read (id, version), owners written (field, profile), profiles written (id,
# merged into, blob), merges (profile, canonical, message, time), journal entries (blob),
# profile changes (profile, time, "<time> <event blob>", group or '', trait count, (name,
# JSON) pairs). An event is pushed as two items, its number and itself, as concatenating them
# would make another Lua string, which Redis hashes whole (about 1 µs for 500 bytes). Checks
# first, then writes (a script is not rolled back): 0 on a conflict, else 1.
SAVE = """
local owners, base, items, at = KEYS[1], ARGV[2], ARGV[7], 1
local unpack = struct.unpack
local function take()
  local item
  item, at = unpack('>I4c0', items, at)
  return item
end
if ARGV[5] ~= '' and (redis.call('GET', KEYS[2]) or '1') ~= ARGV[5] then return 0 end
for _ = 1, tonumber(take()) do
  local field, expected = take(), take()
  if (redis.call('HGET', owners, field) or '') ~= expected then return 0 end
end
for _ = 1, tonumber(take()) do
  local pid, expected = take(), take()
  if (redis.call('HGET', base .. 'p/' .. pid, 'v') or '0') ~= expected then return 0 end
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[2], ARGV[6]) end
for _ = 1, tonumber(take()) do
  local field, pid = take(), take()
  redis.call('HSET', owners, field, pid)
end
for _ = 1, tonumber(take()) do
  local key, merged, blob = base .. 'p/' .. take(), take(), take()
  redis.call('HINCRBY', key, 'v', 1)
  redis.call('HSET', key, 'm', merged, 'd', blob)
end
for _ = 1, tonumber(take()) do
  local pid, canonical, message, ms = take(), take(), take(), take()
  redis.call('XADD', KEYS[4], '*', 'profile', pid, 'canonical', canonical,
             'message_id', message, 'at_ms', ms)
  local into = base .. 'members/' .. canonical
  redis.call('RPUSH', into, pid)
  for _, m in ipairs(redis.call('LRANGE', base .. 'members/' .. pid, 0, -1)) do
    redis.call('RPUSH', into, m)
  end
end
local entries = tonumber(take())
if entries > 0 then
  local n = redis.call('INCRBY', KEYS[7], entries) - entries
  for _ = 1, entries do
    n = n + 1
    redis.call('XADD', KEYS[5], string.format('0-%d', n), 'entry', take())
  end
  redis.call('SADD', KEYS[6], ARGV[1])
end
local changes = tonumber(take())
if changes == 0 then return 1 end
local seq = redis.call('INCRBY', KEYS[3], changes) - changes
local cap, keep = 2 * tonumber(ARGV[3]), ARGV[4]
redis.call('SET', KEYS[8], keep)
for _ = 1, changes do
  seq = seq + 1
  local pid, ms, event, group, traits
  pid, ms, event, group, traits, at = unpack('>I4c0I4c0I4c0I4c0I4c0', items, at)
  local number = string.format('%d', seq)  -- exact where a concatenation gives 1e+14
  for _ = 1, tonumber(traits) do
    local key, name, value = base .. 'traits/' .. pid, take(), take()
    local current = redis.call('HGET', key, name)
    if not current or tonumber(string.match(current, '^(%-?%d+)')) <= tonumber(ms) then
      redis.call('HSET', key, name, ms .. ' ' .. number .. ' ' .. value)
    end
  end
  local key = base .. 'recent/' .. pid
  if redis.call('RPUSH', key, number, event) > cap then
    redis.call('LTRIM', key, -cap, -1)
  end
  redis.call('PEXPIRE', key, keep)
  if group ~= '' then redis.call('HSETNX', base .. 'links/' .. pid, group, ms) end
end
return 1
"""

_encode_entry = msgspec.msgpack.Encoder().encode


def _encode_sections(items: list[bytes]) -> bytes:
    """`SAVE`'s items as one argument: each a 4-byte big-endian length and its bytes."""
    return b"".join([part for item in items for part in (len(item).to_bytes(4, "big"), item)])


_decode_entry = msgspec.msgpack.Decoder(JournalEntry).decode


class _ReadGraph(Graph):
    """A unit's graph, remembering what it read from the store (what `save` checks)."""

    def __init__(self, store: RedisIdentityStore, keys: Keys, next_seq: int) -> None:
        super().__init__(next_seq, self._read_owner, self._read_profile)
        self.store, self.keys, self.read_seq = store, keys, next_seq
        self.read_owners: dict[Ident, str | None] = {}
        self.read_profiles: dict[str, int] = {}  # profile -> its version when read
        self.load_profiles = self._read_profiles

    def _read_owner(self, ident: Ident) -> str | None:
        found = self.store.client.hget(self.keys.owners, pair(*ident))
        pid = self.read_owners[ident] = None if found is None else text(found)
        return pid

    def _read_profiles(self, pids: list[str]) -> dict[str, Profile]:
        pipe = self.store.client.pipeline(transaction=False)
        for pid in pids:
            pipe.hmget(self.keys.profile(pid), ["v", "d"])
        found = {}
        for pid, (version, blob) in zip(pids, pipe.execute(), strict=True):
            profile = self._decoded(pid, version, blob)
            if profile is not None:
                found[pid] = profile
        return found

    def _read_profile(self, pid: str) -> Profile | None:
        version, blob = self.store.client.hmget(self.keys.profile(pid), ["v", "d"])
        return self._decoded(pid, version, blob)

    def _decoded(self, pid: str, version: Any, blob: Any) -> Profile | None:
        if blob is None:
            return None
        self.read_profiles[pid] = int(version or 0)
        stored = decode_profile(raw(blob))
        profile = Profile(pid, stored.seq, stored.created_ms, stored.merged_into, stored.merges)
        for kind, value, first_ms, message_id, source_id in stored.identifiers:
            profile.identifiers[Ident(kind, value)] = Held(first_ms, message_id, source_id)
        return profile


def _checked_owners(graph: _ReadGraph, journal: list[JournalEntry]) -> dict[Ident, str | None]:
    """The owners read for identifiers of the journaled messages (see the module's
    docstring): an alias's previousId was read both as a user id and as an anonymous id."""
    read, out = graph.read_owners, {}
    for entry in journal:
        idents = [Ident(kind, value) for kind, value in entry.identifiers]
        if entry.previous_id is not None:
            idents += [Ident(k, entry.previous_id) for k in ("user_id", "anonymous_id")]
        for ident in idents:
            if ident in read:
                out[ident] = read[ident]
    return out


def _sections(
    graph: _ReadGraph,
    owners: dict[Ident, str],
    journal: list[JournalEntry],
    changes: list[ProfileChange] | None,
) -> list[bytes]:
    """The counted sections of `SAVE`'s arguments."""
    checked = _checked_owners(graph, journal)
    out: list[bytes] = [b"%d" % len(checked)]
    for ident, pid in checked.items():
        out += [pair(*ident), (pid or "").encode()]
    out.append(b"%d" % len(graph.read_profiles))
    for pid, version in graph.read_profiles.items():
        out += [pid.encode(), b"%d" % version]
    out.append(b"%d" % len(owners))
    for ident, pid in owners.items():
        out += [pair(*ident), pid.encode()]
    out.append(b"%d" % len(graph.changed_profiles))
    for pid in graph.changed_profiles:
        p = graph.profiles[pid]
        held = [(i.kind, i.value, h.first_ms, h.message_id, h.source_id)
                for i, h in p.identifiers.items()]  # fmt: skip
        stored = StoredProfile(p.seq, p.created_ms, p.merged_into, p.merges, held)
        out += [pid.encode(), (p.merged_into or "").encode(), encode(stored)]
    out.append(b"%d" % len(graph.updates))
    for u in graph.updates:
        out += [u.profile_id.encode(), u.canonical_id.encode(), u.message_id.encode()]
        out.append(b"%d" % u.at_ms)
    out.append(b"%d" % len(journal))
    out += [_encode_entry(e) for e in journal]
    out.append(b"%d" % len(changes or ()))
    for c in changes or ():
        ms = b"%d" % c.at_ms
        event = encode(StoredEvent(c.message_id, c.source_id, c.at_ms, c.message, c.stamp))
        out += [c.profile_id.encode(), ms, ms + b" " + event]
        out += [pair("groups", c.group_id) if c.group_id else b"", b"%d" % len(c.traits)]
        for name, value in c.traits.items():
            out += [name.encode(), msgspec.json.encode(value)]
    return out


class RedisIdentityStore:
    """The identity graph and profiles of every workspace in one Redis (`client`, which must
    answer bytes: `decode_responses` off), under `prefix`. `retention_ms`: workspace -> how
    long its profiles keep their events (`recent_events`, ms; the processor sets it), else
    `default_retention_ms`."""

    default_retention_ms = RECENT_EVENTS_MS

    def __init__(self, client: redis.Redis, prefix: str = "hw:identity:") -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("the identity store needs a client with decode_responses off")
        self.client = client
        self.prefix = prefix
        self.workspaces_key = prefix + "workspaces"
        self.journal_seq_key = prefix + "journal-seq"
        self.events_per_profile = EVENTS_PER_PROFILE
        self.retention_ms: dict[str, int] = {}
        self._save = client.register_script(SAVE)

    def keys(self, workspace: str) -> Keys:
        return Keys(self.prefix, workspace)

    # -- a unit of work ------------------------------------------------------------------

    def graph(self, workspace: str, idents: Iterable[Ident] = ()) -> Graph:
        """A graph of `workspace` that loads from Redis what resolution touches; the owners
        of `idents` and the next profile number are read at once."""
        keys = self.keys(workspace)
        wanted = list(dict.fromkeys(idents))
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.seq)
        if wanted:
            pipe.hmget(keys.owners, [pair(*i) for i in wanted])
        seq, *found = pipe.execute()
        graph = _ReadGraph(self, keys, int(seq or 1))
        read, owners, missing = graph.read_owners, graph.owners, []
        for ident, pid in zip(wanted, found[0] if found else [], strict=True):
            if pid is None:
                read[ident] = None
                missing.append(ident)
            else:
                read[ident] = owners[ident] = raw(pid).decode()
        graph.known_missing(missing)
        return graph

    def save(
        self,
        workspace: str,
        graph: Graph,
        journal: list[JournalEntry],
        changes: list[ProfileChange] | None = None,
    ) -> None:
        """Write what `graph` changed, its updates, the journal entries and what the messages
        bring to their profiles, in one script, if nothing the journaled messages rest on has
        changed since (see the module's docstring); else write nothing and raise
        `GraphConflict`."""
        if not isinstance(graph, _ReadGraph) or graph.store is not self:
            raise TypeError("save a graph this store made (RedisIdentityStore.graph)")
        keys = graph.keys
        created = graph.next_seq != graph.read_seq
        owners = {i: graph.canonical(graph.owners[i]) for i in graph.changed_owners}
        keep = self.retention_ms.get(workspace, self.default_retention_ms)
        head: list[str | int] = [workspace, keys.base, self.events_per_profile, keep]
        head += [graph.read_seq, graph.next_seq] if created else ["", ""]
        fixed = [keys.owners, keys.seq, keys.event_seq, keys.updates, keys.journal]
        fixed += [self.workspaces_key, self.journal_seq_key, keys.retention]
        sections = _encode_sections(_sections(graph, owners, journal, changes))
        if not self._save(keys=fixed, args=[*head, sections]):
            raise GraphConflict(f"identity graph of {workspace!r}: changed since the unit read it")
        for pid in graph.changed_profiles:  # the graph now reads as the store holds it
            graph.read_profiles[pid] = graph.read_profiles.get(pid, 0) + 1
        graph.read_owners.update(owners)
        graph.read_seq = graph.next_seq
        graph.changed_owners.clear()
        graph.changed_profiles.clear()
        graph.updates.clear()

    # -- reads ----------------------------------------------------------------------------

    def owner_of(self, workspace: str, ident: Ident) -> str | None:
        """The canonical profile holding `ident` in `workspace` (None: none holds it)."""
        found = self.client.hget(self.keys(workspace).owners, pair(*ident))
        return None if found is None else text(found)

    def current_profile(self, workspace: str, pid: str) -> str | None:
        """The canonical profile that profile `pid` is now (None: no such profile)."""
        keys = self.keys(workspace)
        for _ in range(10_000):
            merged = self.client.hget(keys.profile(pid), "m")
            if merged is None:
                return None
            if not merged:
                return pid
            pid = text(merged)
        raise RuntimeError(f"identity graph: a cycle of merges through {pid}")

    def updates(self, workspace: str) -> list[GraphUpdate]:
        """Every merge of `workspace`, in order."""
        return [GraphUpdate(f[b"profile"].decode(), f[b"canonical"].decode(),
                            f[b"message_id"].decode(), int(f[b"at_ms"]))
                for _id, f in self._stream(self.keys(workspace).updates)]  # fmt: skip

    def _stream(self, key: str, chunk: int = 1000) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
        """Every entry of stream `key`, in order, `chunk` at a time."""
        start = "-"
        while True:
            found: list[Any] = self.client.xrange(key, start, "+", count=chunk) or []
            yield from found
            if len(found) < chunk:
                return
            start = "(" + text(found[-1][0])

    def journal(self, workspace: str | None = None) -> Iterable[tuple[str, JournalEntry]]:
        """(workspace, entry) of every resolved message, in the order it was resolved."""
        names = [workspace] if workspace is not None else self.journal_workspaces()

        def entries(ws: str) -> Iterator[tuple[int, str, bytes]]:
            for entry_id, fields in self._stream(self.keys(ws).journal):
                yield int(entry_id.partition(b"-")[2]), ws, fields[b"entry"]

        for _n, ws, blob in heapq.merge(*(entries(ws) for ws in names)):
            yield ws, _decode_entry(blob)

    def journal_workspaces(self) -> list[str]:
        """The workspaces with journaled messages."""
        return sorted(text(w) for w in self.client.smembers(self.workspaces_key))

    def journal_size(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for ws in self.journal_workspaces():
            pipe.xlen(self.keys(ws).journal)
        return sum(pipe.execute())

    def partition(self, workspace: str) -> set[frozenset[Ident]]:
        """The graph as a set of profiles, each the set of its identifiers (to compare
        graphs)."""
        groups: dict[bytes, set[Ident]] = {}
        for field, pid in self.client.hscan_iter(self.keys(workspace).owners, count=1000):
            groups.setdefault(pid, set()).add(Ident(*unpair(field)))
        return {frozenset(g) for g in groups.values()}

    def reader(self, workspace: str) -> RedisProfileReader:
        """Reads of `workspace`'s profiles."""
        return RedisProfileReader(self.client, self.keys(workspace))

    def expire(self, workspace: str, before_ms: int) -> int:
        """Nothing to forget: Redis expires a profile's recent events by key TTL, a retention
        period after its last one, and reads leave out those past the retention; returns 0.
        Drops what an earlier version kept instead (sorted sets listed by `with-events`)."""
        keys = self.keys(workspace)
        while True:
            found: list[Any] = self.client.zpopmin(keys.with_events, LEGACY_BATCH)
            if not found:
                return 0
            pids = [text(pid) for pid, _score in found]
            self.client.delete(*(f"{keys.base}{k}/{p}" for p in pids for k in ("events", "evtime")))

    def destroy(self) -> None:
        """Delete every key of this store (a rebuild's scratch graph)."""
        found = list(self.client.scan_iter(f"{self.prefix}*", count=1000))
        for start in range(0, len(found), 1000):
            self.client.delete(*found[start : start + 1000])

    def close(self) -> None:
        self.client.close()
