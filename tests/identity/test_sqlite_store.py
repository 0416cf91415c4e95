"""The embedded identity graph: units resolved against SQLite give the graph an in-memory
resolution of the same stream gives; the graph survives a reopen; a failed unit leaves
nothing behind; the journal rebuilds the same graph, profile ids included."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from headwater.identity import sqlite_writer
from headwater.identity.graph import Graph, Message, resolve
from headwater.identity.identifiers import Ident
from headwater.identity.resolver import IdentityResolver, rebuild
from headwater.identity.settings import identity_settings
from headwater.identity.sqlite_store import SqliteIdentityStore

WS = "acme"
T0 = 1_700_000_000_000


def stream(seed: int, n: int) -> list[Message]:
    """Anonymous visits, sign-ups, shared devices, emails and aliases over small pools."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = [Ident("anonymous_id", f"a{rng.randrange(60)}")]
        roll = rng.random()
        if roll < 0.35:
            ids.append(Ident("user_id", f"u{rng.randrange(25)}"))
        if roll < 0.15:
            ids.append(Ident("email", f"e{rng.randrange(30)}@x.io"))
        if rng.random() < 0.05:
            ids.append(Ident("anonymous_id", "null"))  # blocked
        previous = f"a{rng.randrange(60)}" if rng.random() < 0.05 else None
        out.append(Message(f"m{i}", "src", T0 + i * 60_000, ids, previous))
    return out


def in_memory(messages: list[Message]) -> tuple[Graph, list[str | None]]:
    graph = Graph()
    settings = identity_settings()
    return graph, [resolve(graph, settings, m).profile_id for m in messages]


def resolved_in_units(
    store: SqliteIdentityStore, messages: list[Message], seed: int
) -> list[str | None]:
    rng = random.Random(seed)
    resolver = IdentityResolver(store)
    out: list[str | None] = []
    at = 0
    while at < len(messages):
        size = rng.randrange(1, 40)
        out += [r.profile_id for r in resolver.resolve_unit(WS, messages[at : at + size])]
        at += size
    return out


def partition(graph: Graph) -> set[frozenset[Ident]]:
    return {
        frozenset(p.identifiers)
        for p in graph.profiles.values()
        if p.merged_into is None and p.identifiers
    }


@pytest.mark.parametrize("seed", range(5))
def test_units_on_sqlite_make_the_graph_of_one_in_memory_pass(tmp_path: Path, seed: int) -> None:
    messages = stream(seed, 600)
    graph, expected = in_memory(messages)
    store = SqliteIdentityStore(tmp_path / "identity.db")
    got = resolved_in_units(store, messages, seed)
    assert got == expected
    assert store.partition(WS) == partition(graph)
    assert store.updates(WS) == graph.updates
    store.close()


def test_the_graph_survives_a_reopen_and_resolution_goes_on(tmp_path: Path) -> None:
    messages = stream(7, 400)
    _graph, expected = in_memory(messages)
    store = SqliteIdentityStore(tmp_path / "identity.db")
    first = resolved_in_units(store, messages[:200], 1)
    store.close()
    store = SqliteIdentityStore(tmp_path / "identity.db")
    rest = resolved_in_units(store, messages[200:], 2)
    assert first + rest == expected
    store.close()


def test_a_replayed_unit_changes_nothing_and_is_not_journaled_again(tmp_path: Path) -> None:
    messages = stream(3, 100)
    store = SqliteIdentityStore(tmp_path / "identity.db")
    resolver = IdentityResolver(store)
    first = [r.profile_id for r in resolver.resolve_unit(WS, messages)]
    journaled = store.journal_size()
    before = store.partition(WS)
    again = resolver.resolve_unit(WS, messages)  # a crash after the commit: read again
    # each message lands on the profile it landed on then, as merged since
    now = [p if p is None else store.current_profile(WS, p) for p in first]
    assert [r.profile_id for r in again] == now
    assert not any(r.changed for r in again)
    assert store.journal_size() == journaled
    assert store.partition(WS) == before
    store.close()


def test_a_unit_that_fails_to_commit_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteIdentityStore(tmp_path / "identity.db")
    resolver = IdentityResolver(store)
    resolver.resolve_unit(WS, [Message("m0", "s", T0, [Ident("user_id", "u1")])])
    before = (store.partition(WS), store.journal_size())

    def broken(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(sqlite_writer, "write_group", broken)
    with pytest.raises(OSError):
        resolver.resolve_unit(
            WS, [Message("m1", "s", T0 + 1, [Ident("user_id", "u2"), Ident("email", "e")])]
        )
    monkeypatch.undo()
    assert (store.partition(WS), store.journal_size()) == before
    # resolved again (the stage retries the unit): the same profile as one pass would make
    [r] = resolver.resolve_unit(
        WS, [Message("m1", "s", T0 + 1, [Ident("user_id", "u2"), Ident("email", "e")])]
    )
    assert r.created
    # memory was reloaded from the file: the failed unit's identifiers are not known there
    assert store.owner_of(WS, Ident("email", "e")) == r.profile_id
    store.close()


def test_workspaces_do_not_share_identifiers(tmp_path: Path) -> None:
    store = SqliteIdentityStore(tmp_path / "identity.db")
    resolver = IdentityResolver(store)
    [a] = resolver.resolve_unit("one", [Message("m1", "s", T0, [Ident("user_id", "u1")])])
    [b] = resolver.resolve_unit("two", [Message("m2", "s", T0, [Ident("user_id", "u1")])])
    assert a.created and b.created and a.profile_id != b.profile_id
    store.close()


@pytest.mark.parametrize("seed", range(3))
def test_rebuild_from_the_journal_makes_the_same_graph(tmp_path: Path, seed: int) -> None:
    messages = stream(seed, 800)
    store = SqliteIdentityStore(tmp_path / "identity.db")
    resolved_in_units(store, messages, seed)
    target = SqliteIdentityStore(tmp_path / "rebuilt.db")
    seen: list[int] = []
    replayed = rebuild(store, target, unit=37, progress=seen.append)
    assert replayed == store.journal_size() == sum(seen)
    assert replayed < len(messages)  # messages that changed nothing are not journaled
    assert target.partition(WS) == store.partition(WS)
    assert target.updates(WS) == store.updates(WS)
    for m in messages[::25]:  # every identifier leads to the same profile id
        for ident in m.identifiers:
            assert target.owner_of(WS, ident) == store.owner_of(WS, ident)
    store.close()
    target.close()
