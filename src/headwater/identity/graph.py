"""Identity resolution: Segment's flat matching, with limits, priorities and caps.

For each message, in order (`resolve`):

1. Its identifiers, without blocked values, highest priority first.
2. The profiles holding any of them. None: a new profile holds them all. One: the new ones are
   added to it. Several: they merge into the oldest (the survivor keeps its id; the others point
   to it, and each merge is recorded as a `GraphUpdate`).
3. Unless that breaks a rule: a type holding more values than its limit within its period (a
   second `user_id` ever, a sixth `email` this week, ...), or a profile past 100 merges or 1,000
   identifiers. Then the lowest-priority identifier of the message (the last of them on a tie)
   is dropped and matching starts again with the rest. A rule an existing profile already
   breaks (the settings changed) only stops what would make it worse.

The result depends only on the graph and the message, so replaying the same messages in the
same order makes the same graph, profile ids included (`use_` + a hash of the creating
message's id and the profile's sequence number).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec
from xxhash import xxh3_128_digest

from headwater.identity.identifiers import Ident
from headwater.identity.settings import IdentitySettings


class GraphConflict(Exception):
    """Raised by a shared store's `save` when another processor changed what the unit read
    (an owner or a profile): the unit is resolved again on a fresh read."""


@dataclass
class Held:
    """An identifier on a profile: when and by which message it was first seen."""

    first_ms: int
    message_id: str
    source_id: str


@dataclass
class Profile:
    """One profile: canonical while `merged_into` is None."""

    id: str
    seq: int
    created_ms: int
    merged_into: str | None = None
    merges: int = 0
    identifiers: dict[Ident, Held] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphUpdate:
    """A merge, as recorded in `id_graph_updates`: `profile_id` now is `canonical_id`."""

    profile_id: str
    canonical_id: str
    message_id: str
    at_ms: int


class Message(msgspec.Struct, frozen=True):
    """What resolution needs of a message."""

    message_id: str
    source_id: str
    at_ms: int  # when it was received: periods count back from here
    identifiers: list[Ident]
    previous_id: str | None = None  # an `alias` call's previousId


class Resolution(msgspec.Struct):
    """Where a message went: its canonical profile (None: it had no usable identifier)."""

    profile_id: str | None
    created: bool = False
    merged: list[str] = msgspec.field(default_factory=list)  # profiles merged into it
    dropped: list[Ident] = msgspec.field(default_factory=list)  # identifiers a rule left out
    blocked: list[Ident] = msgspec.field(default_factory=list)
    changed: bool = False  # whether the graph changed (a replay of a message changes nothing)


class Graph:
    """An identity graph in memory: the whole of it (tests, the reference for a store), or the
    part a unit of messages touches, loaded on demand through `load_owner`/`load_profile`."""

    def __init__(
        self,
        next_seq: int = 1,
        load_owner: Callable[[Ident], str | None] | None = None,
        load_profile: Callable[[str], Profile | None] | None = None,
    ) -> None:
        self.owners: dict[Ident, str] = {}  # identifier -> the profile that holds it
        self.profiles: dict[str, Profile] = {}
        self.next_seq = next_seq
        self.updates: list[GraphUpdate] = []
        self.changed_owners: set[Ident] = set()
        self.changed_profiles: set[str] = set()
        self._load_owner = load_owner
        self._load_profile = load_profile
        self.load_profiles: Callable[[list[str]], dict[str, Profile]] | None = None
        self._missing: set[Ident] = set()

    def owner(self, ident: Ident) -> str | None:
        """The canonical profile holding `ident`."""
        pid = self.owners.get(ident)
        if pid is None and self._load_owner is not None and ident not in self._missing:
            pid = self._load_owner(ident)
            if pid is None:
                self._missing.add(ident)
            else:
                self.owners[ident] = pid
        return None if pid is None else self.canonical(pid)

    def known_missing(self, idents: Iterable[Ident]) -> None:
        """No profile holds `idents` (read at once by the store): not looked up one by one."""
        self._missing.update(idents)

    def preload(self, pids: Iterable[str]) -> None:
        """Load these profiles at once (what resolution is about to read), where the store
        can read several in one go (`load_profiles`)."""
        wanted = [p for p in pids if p not in self.profiles]
        if wanted and self.load_profiles is not None:
            self.profiles.update(self.load_profiles(wanted))

    def profile(self, pid: str) -> Profile | None:
        found = self.profiles.get(pid)
        if found is None and self._load_profile is not None:
            found = self._load_profile(pid)
            if found is not None:
                self.profiles[pid] = found
        return found

    def canonical(self, pid: str) -> str:
        """The profile `pid` was merged into, through every merge since. A store keeps every
        identifier on its canonical profile, so only merges made here are followed (a profile
        not loaded is canonical as far as the identifiers read from the store go)."""
        seen = 0
        while (p := self.profiles.get(pid)) is not None and p.merged_into is not None:
            pid = p.merged_into
            seen += 1
            if seen > 10_000:
                raise RuntimeError(f"identity graph: a cycle of merges through {pid}")
        return pid

    def set_owner(self, ident: Ident, pid: str) -> None:
        self.owners[ident] = pid
        self._missing.discard(ident)
        self.changed_owners.add(ident)

    def touch(self, profile: Profile) -> None:
        self.profiles[profile.id] = profile
        self.changed_profiles.add(profile.id)


def profile_id(message_id: str, seq: int) -> str:
    """A profile's id, made from the message that created it and its sequence number."""
    digest = xxh3_128_digest(f"{message_id}\x1f{seq}".encode())
    return "use_" + base64.b32encode(digest).decode().rstrip("=").lower()


def resolve(graph: Graph, settings: IdentitySettings, message: Message) -> Resolution:
    """Attach `message`'s identifiers to the graph (see the module's docstring)."""
    if message.previous_id is None:  # the common case: every identifier known, one holder
        holder = _sole_holder(graph, settings, message.identifiers)
        if holder is not None:
            return Resolution(holder)
    result = Resolution(None)
    idents: list[Ident] = []
    candidates = list(message.identifiers)
    if message.previous_id is not None:  # a known user id, else the id before sign-up
        known = graph.owner(Ident("user_id", message.previous_id)) is not None
        candidates.append(Ident("user_id" if known else "anonymous_id", message.previous_id))
    for ident in candidates:
        if settings.rules(ident.kind).blocks(ident.value):
            result.blocked.append(ident)
        elif ident not in idents:
            idents.append(ident)
    idents.sort(key=lambda i: settings.rules(i.kind).priority)  # stable: message order on ties
    holders = {graph.owner(i) for i in idents}
    if len(holders) == 1 and None not in holders:  # the common case: nothing new or to join
        result.profile_id = holders.pop()
        return result
    while idents:
        owners = _owners(graph, idents)
        if _breaks_a_rule(settings, owners, idents, message.at_ms):
            dropped = max(reversed(idents), key=lambda i: settings.rules(i.kind).priority)
            idents.remove(dropped)
            result.dropped.append(dropped)
            continue
        survivor = owners[0] if owners else _new_profile(graph, message)
        result.created = not owners
        for other in owners[1:]:
            _merge(graph, other, survivor, message)
            result.merged.append(other.id)
        changed = result.created or bool(result.merged)
        for ident in idents:
            if ident not in survivor.identifiers:
                survivor.identifiers[ident] = Held(
                    message.at_ms, message.message_id, message.source_id
                )
                graph.set_owner(ident, survivor.id)
                changed = True
        if changed:
            graph.touch(survivor)
        result.profile_id = survivor.id
        result.changed = changed
        return result
    return result


def _sole_holder(graph: Graph, settings: IdentitySettings, idents: list[Ident]) -> str | None:
    """The profile holding every one of `idents` when one does and none is blocked (what the
    full resolution would find too, in fewer steps); else None."""
    owners = graph.owners
    holder = None
    for ident in idents:
        owner = owners.get(ident)
        if owner is None or (holder is not None and owner != holder):
            return None
        holder = owner
    if holder is None or settings.blocks_any(idents):
        return None
    return graph.canonical(holder)


def _owners(graph: Graph, idents: Iterable[Ident]) -> list[Profile]:
    """The canonical profiles holding any of `idents`, oldest first."""
    found: dict[str, Profile] = {}
    for ident in idents:
        pid = graph.owner(ident)
        if pid is not None and pid not in found:
            profile = graph.profile(pid)
            if profile is None:
                raise RuntimeError(f"identity graph: {ident} points to a missing profile {pid}")
            found[pid] = profile
    return sorted(found.values(), key=lambda p: p.seq)


def _breaks_a_rule(
    settings: IdentitySettings, owners: list[Profile], idents: list[Ident], at_ms: int
) -> bool:
    combined: dict[Ident, int] = {}  # identifier -> first seen
    for p in owners:
        for ident, held in p.identifiers.items():
            combined[ident] = min(held.first_ms, combined.get(ident, held.first_ms))
    for ident in idents:
        combined.setdefault(ident, at_ms)
    merges = sum(p.merges for p in owners) + max(0, len(owners) - 1)
    if merges > settings.max_merges and len(owners) > 1:
        return True
    biggest = max((len(p.identifiers) for p in owners), default=0)
    if len(combined) > settings.max_identifiers and len(combined) > biggest:
        return True
    for kind in {i.kind for i in combined}:  # every type: a merge can join two user ids
        rules = settings.rules(kind)
        since = None if rules.period_ms is None else at_ms - rules.period_ms
        total = _count(combined.items(), kind, since)
        if total > rules.limit:
            before = max(
                (
                    _count(((i, h.first_ms) for i, h in p.identifiers.items()), kind, since)
                    for p in owners
                ),
                default=0,
            )
            if total > before:
                return True
    return False


def _count(held: Iterable[tuple[Ident, int]], kind: str, since: int | None) -> int:
    """How many of `held` are of `kind` and first seen after `since` (None: ever)."""
    return sum(1 for i, ms in held if i.kind == kind and (since is None or ms > since))


def _new_profile(graph: Graph, message: Message) -> Profile:
    seq = graph.next_seq
    graph.next_seq += 1
    profile = Profile(profile_id(message.message_id, seq), seq, message.at_ms)
    graph.touch(profile)
    return profile


def _merge(graph: Graph, other: Profile, survivor: Profile, message: Message) -> None:
    """Merge `other` into `survivor`: its identifiers move, it points to the survivor."""
    for ident, held in other.identifiers.items():
        mine = survivor.identifiers.get(ident)
        if mine is None or held.first_ms < mine.first_ms:
            survivor.identifiers[ident] = held
        graph.set_owner(ident, survivor.id)
    survivor.merges += other.merges + 1
    other.identifiers = {}
    other.merged_into = survivor.id
    graph.touch(other)
    graph.updates.append(GraphUpdate(other.id, survivor.id, message.message_id, message.at_ms))
