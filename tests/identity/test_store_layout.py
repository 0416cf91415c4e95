"""The embedded store's layout and writer: a store of the earlier layout opens and answers as
before; a read-only store sees what the writer committed; a failed write takes the units
staged on top of it with it; the identity step returns only once its unit is committed."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from headwater.events.stamp import Stamp, encode_stamp
from headwater.identity import sqlite_writer
from headwater.identity.graph import Graph, Message, Resolution, resolve
from headwater.identity.identifiers import Ident
from headwater.identity.profiles import ProfileChange
from headwater.identity.resolver import IdentityResolver
from headwater.identity.settings import identity_settings
from headwater.identity.sqlite_store import SCHEMA, SqliteIdentityStore
from headwater.identity.step import IdentityStep
from headwater.processing.runtime import Item

WS = "acme"
T0 = 1_700_000_000_000
P1, P2, P3 = "use_p1", "use_p2", "use_p3"  # P2 was merged into P1

EVENT_ROWS = """
CREATE TABLE profile_events(
    seq INTEGER PRIMARY KEY, workspace TEXT NOT NULL, profile TEXT NOT NULL,
    at_ms INTEGER NOT NULL, message_id TEXT NOT NULL, source_id TEXT NOT NULL,
    message BLOB NOT NULL, stamp BLOB);
"""
EARLIER_LAYOUT = """
CREATE TABLE identifiers(
    workspace TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, profile TEXT NOT NULL,
    first_ms INTEGER NOT NULL, message_id TEXT NOT NULL, source_id TEXT NOT NULL,
    PRIMARY KEY(workspace, kind, value)) WITHOUT ROWID;
CREATE INDEX identifiers_by_profile ON identifiers(workspace, profile);
CREATE TABLE profiles(
    workspace TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, merged_into TEXT, merges INTEGER NOT NULL,
    PRIMARY KEY(workspace, id)) WITHOUT ROWID;
CREATE INDEX profiles_by_merge ON profiles(workspace, merged_into);
CREATE INDEX profile_events_by_profile ON profile_events(workspace, profile, seq);
"""


def body(mid: str) -> bytes:
    return json.dumps({"type": "track", "messageId": mid}, separators=(",", ":")).encode()


EARLIER_ROWS = f"""
INSERT INTO profiles VALUES('acme', 'use_p1', 1, {T0}, NULL, 1),
    ('acme', 'use_p2', 2, {T0 + 10}, 'use_p1', 1), ('acme', 'use_p3', 3, {T0 + 30}, NULL, 0),
    ('other', 'use_p1', 1, {T0 + 5}, NULL, 0);
INSERT INTO identifiers VALUES('acme', 'user_id', 'ada', 'use_p1', {T0}, 'm1', 'web'),
    ('acme', 'anonymous_id', 'laptop', 'use_p1', {T0 + 10}, 'm2', 'app'),
    ('acme', 'email', 'bob@x.io', 'use_p3', {T0 + 30}, 'm4', 'web'),
    ('other', 'user_id', 'ada', 'use_p1', {T0 + 5}, 'o1', 'web');
INSERT INTO profile_events SELECT column1, column2, column3, column4, column5, column6,
    CAST(json_object('type', 'track', 'messageId', column5) AS BLOB), NULL
    FROM (VALUES(1, 'acme', 'use_p1', {T0}, 'm1', 'web'), (2, 'other', 'use_p1', {T0 + 5}, 'o1',
    'web'), (3, 'acme', 'use_p2', {T0 + 10}, 'm2', 'app'), (4, 'acme', 'use_p1', {T0 + 20}, 'm3',
    'web'), (5, 'acme', 'use_p3', {T0 + 30}, 'm4', 'web'));
INSERT INTO id_graph_updates VALUES(1, 'acme', 'use_p2', 'use_p1', 'm3', {T0 + 20});
INSERT INTO identity_sequences VALUES('acme', 4), ('other', 2);
"""


def earlier_store(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)  # the graph's other tables as they were
    conn.executescript(EVENT_ROWS + EARLIER_LAYOUT + SCHEMA + EARLIER_ROWS)
    assert conn.execute("SELECT typeof(message) FROM profile_events").fetchone() == ("blob",)
    conn.close()


def with_events(results: list[Resolution], messages: list[Message]) -> list[ProfileChange]:
    return [
        ProfileChange(r.profile_id, m.message_id, m.source_id, m.at_ms, body(m.message_id))
        for r, m in zip(results, messages, strict=True)
        if r.profile_id is not None
    ]


def resolve_with_events(resolver: IdentityResolver, messages: list[Message]) -> list[Resolution]:
    return resolver.resolve_unit(WS, messages, lambda rs: with_events(rs, messages))


def test_a_store_of_the_earlier_layout_opens_and_answers_as_before(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    earlier_store(path)
    store = SqliteIdentityStore(path)
    indexes = dict(store._conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index'"))
    assert "identifiers_by_profile" not in indexes
    assert "profile_events_by_profile" not in indexes
    assert "WHERE merged_into IS NOT NULL" in indexes["profiles_by_merge"]
    assert not store._conn.execute("SELECT 1 FROM profiles WHERE held IS NULL").fetchall()
    reader = store.reader(WS)
    assert reader.events(P1, 10) == [(4, body("m3")), (3, body("m2")), (1, body("m1"))]
    assert reader.events(P1, 1, before_seq=4) == [(3, body("m2"))]
    assert reader.events(P3, 10) == [(5, body("m4"))]
    assert store.reader("other").events(P1, 10) == [(2, body("o1"))]
    assert reader.external_ids(P1) == [
        ("user_id", "ada", T0, "m1", "web"),
        ("anonymous_id", "laptop", T0 + 10, "m2", "app"),
    ]
    assert reader.external_ids(P2) == []  # merged away: its identifiers are P1's
    assert store.reader("other").external_ids(P1) == [("user_id", "ada", T0 + 5, "o1", "web")]
    assert reader.metadata(P1) == {
        "created_ms": T0,
        "updated_ms": T0 + 20,
        "first_message": {"id": "m1", "at_ms": T0},
        "last_message": {"id": "m3", "at_ms": T0 + 20},
        "merged_profiles": [P2],
    }
    # the owners were loaded: known identifiers land on their profiles, nothing is created
    resolver = IdentityResolver(store)
    new = [
        Message("m5", "app", T0 + 40, [Ident("anonymous_id", "laptop"), Ident("email", "a@x.io")]),
        Message("m6", "web", T0 + 50, [Ident("email", "bob@x.io")]),
        Message("m7", "web", T0 + 60, [Ident("user_id", "cy")]),
    ]
    r5, r6, r7 = resolve_with_events(resolver, new)
    assert (r5.profile_id, r5.created, r6.profile_id, r6.created) == (P1, False, P3, False)
    assert r7.created and r7.profile_id not in (P1, P2, P3)
    assert [s for s, _m in reader.events(P1, 10)] == [6, 4, 3, 1]
    assert ("email", "a@x.io", T0 + 40, "m5", "app") in reader.external_ids(P1)
    store.close()
    store = SqliteIdentityStore(path)  # opened again: nothing left to migrate, same answers
    assert store.owner_of(WS, Ident("email", "a@x.io")) == P1
    assert [s for s, _m in store.reader(WS).events(P1, 10)] == [6, 4, 3, 1]
    store.close()


def test_a_read_only_store_sees_what_the_writer_committed(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    store = SqliteIdentityStore(path)
    ro = SqliteIdentityStore(path, readonly=True)
    resolver = IdentityResolver(store)
    [first] = resolve_with_events(resolver, [Message("m0", "web", T0, [Ident("user_id", "ada")])])
    assert ro.owner_of(WS, Ident("user_id", "ada")) == first.profile_id
    assert ro.reader(WS).events(first.profile_id, 10) == [(1, body("m0"))]
    with pytest.raises(RuntimeError):
        ro.save(WS, ro.graph(WS), [])
    mine: dict[str, list[str]] = {}
    written = []
    for unit in range(150):  # one transaction each, or several staged at once (grouped)
        users = ["ada", "bob", "cy"][: unit % 3 + 1]
        messages = [Message(f"m{unit}-{u}", "web", T0 + unit, [Ident("user_id", u)]) for u in users]
        results, done = resolver.stage_unit(WS, messages, lambda rs, m=messages: with_events(rs, m))
        for m, r in zip(messages, results, strict=True):
            mine.setdefault(str(r.profile_id), []).append(m.message_id)
        written.append(done)
        if unit % 4 == 0:
            done.result(5)  # and those before it
    for w in written:
        w.result(5)
    runs = ro._conn.execute("SELECT count(*) FROM profile_event_runs").fetchone()[0]
    assert 1 <= runs <= 8  # the runs of many transactions merged
    reader = ro.reader(WS)
    for pid, ids in mine.items():
        pages, cursor = [], None
        while page := reader.events(pid, 7, cursor):
            pages += page
            cursor = page[-1][0]
        expected = list(reversed(ids)) + (["m0"] if pid == first.profile_id else [])
        assert [json.loads(m)["messageId"] for _s, m in pages] == expected
        assert [s for s, _m in pages] == sorted((s for s, _m in pages), reverse=True)
    store.close()  # opened again (from the index it kept): every owner as the file has it
    store = SqliteIdentityStore(path)
    for user in ("ada", "bob", "cy", "dan"):
        assert store.owner_of(WS, Ident("user_id", user)) == ro.owner_of(WS, Ident("user_id", user))
    ro.close()
    store.close()


def test_a_failed_write_fails_the_units_staged_on_top_and_memory_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteIdentityStore(tmp_path / "identity.db")
    resolver = IdentityResolver(store)
    m0 = Message("m0", "s", T0, [Ident("user_id", "u1")])
    [r0] = resolve_with_events(resolver, [m0])
    before = (store.partition(WS), store.journal_size(), store.updates(WS))
    entered, release = threading.Event(), threading.Event()

    def broken(*_a: object) -> None:
        entered.set()
        release.wait(5)
        raise OSError("disk full")

    monkeypatch.setattr(sqlite_writer, "write_group", broken)
    [ra], a = resolver.stage_unit(WS, [Message("m1", "s", T0 + 1, [Ident("user_id", "u2")])])
    assert entered.wait(5)  # the writer is inside the unit's transaction
    m2 = Message("m2", "s", T0 + 2, [Ident("user_id", "u2"), Ident("email", "e2")])
    [rb], b = resolver.stage_unit(WS, [m2])
    assert rb.profile_id == ra.profile_id and not rb.created  # resolved on top of the first
    release.set()
    assert a is not None and b is not None
    with pytest.raises(OSError):
        a.result(5)
    with pytest.raises(RuntimeError):
        b.result(5)
    monkeypatch.undo()
    assert (store.partition(WS), store.journal_size(), store.updates(WS)) == before
    m3 = Message("m3", "s", T0 + 3, [Ident("user_id", "u2")])
    [r3] = resolve_with_events(resolver, [m3])
    graph = Graph()  # what one pass over the committed messages makes
    resolve(graph, identity_settings(), m0)
    assert r3.created and r3.profile_id == resolve(graph, identity_settings(), m3).profile_id
    assert store.owner_of(WS, Ident("email", "e2")) is None
    assert store.owner_of(WS, Ident("user_id", "u1")) == r0.profile_id
    assert [s for s, _m in store.reader(WS).events(str(r3.profile_id), 10)] == [2]
    store.close()


def test_the_identity_step_returns_once_its_unit_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "identity.db"
    store = SqliteIdentityStore(path)
    ro = SqliteIdentityStore(path, readonly=True)
    write_group = sqlite_writer.write_group

    def slow(*args: object) -> int:  # a commit that takes a while
        time.sleep(0.2)
        return write_group(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_writer, "write_group", slow)
    step = IdentityStep(IdentityResolver(store), {"src_web": WS}.get)
    sent = [
        {"type": "identify", "messageId": "m1", "userId": "ada", "traits": {"plan": "pro"}},
        {"type": "track", "messageId": "m2", "anonymousId": "a1", "userId": "ada"},
    ]
    items = [
        Item("src_web", json.dumps(m).encode(), position=f"0:1:{n}") for n, m in enumerate(sent)
    ]
    asyncio.run(step.run(items))
    pid = items[0].key
    assert pid is not None and items[1].key == pid
    assert ro.owner_of(WS, Ident("anonymous_id", "a1")) == pid
    assert [json.loads(m)["messageId"] for _s, m in ro.reader(WS).events(pid, 10)] == ["m2", "m1"]
    assert ro.reader(WS).traits(pid) == {"plan": "pro"}
    ro.close()
    store.close()


def stamp_of(n: int) -> bytes:
    received = datetime.fromtimestamp((T0 + 1) / 1000, UTC)
    return encode_stamp(Stamp(received, received.isoformat(), f"10.0.0.{n}"))


def test_units_written_in_one_transaction_keep_their_events_and_traits_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Units staged while the writer is busy are written together: one batch per workspace
    with a segment per unit. Each profile still lists its own events, in order, and a later
    unit's trait wins a tie of time over an earlier one's."""
    store = SqliteIdentityStore(tmp_path / "identity.db")
    resolver = IdentityResolver(store)
    entered, release = threading.Event(), threading.Event()
    write_group = sqlite_writer.write_group
    groups: list[int] = []

    def held(conn: sqlite3.Connection, group: list[object], first: int) -> int:
        entered.set()
        release.wait(5)
        groups.append(len(group))
        return write_group(conn, group, first)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_writer, "write_group", held)
    first = Message("m0", "s", T0, [Ident("user_id", "first")])
    _r, busy = resolver.stage_unit(WS, [first], lambda rs: with_events(rs, [first]))
    assert entered.wait(5)  # the writer holds the first unit: the next ones queue up
    futures = []
    sent: dict[str, list[str]] = {}
    for n in range(6):
        workspace = WS if n % 2 else "other"
        user = f"u{n % 3}"
        m = Message(f"m{n + 1}", "s", T0 + 1, [Ident("user_id", user)])

        def changes(
            rs: list[Resolution], m: Message = m, n: int = n, user: str = user
        ) -> list[ProfileChange]:
            return [
                ProfileChange(
                    r.profile_id,
                    m.message_id,
                    "s",
                    T0 + 1,
                    json.dumps(
                        {"type": "track", "event": "E", "messageId": m.message_id, "userId": user}
                    ).encode(),
                    {"unit": n},
                    stamp=stamp_of(n),
                )
                for r in rs
                if r.profile_id is not None
            ]

        [r], written = resolver.stage_unit(workspace, [m], changes)
        assert written is not None
        futures.append(written)
        sent.setdefault(f"{workspace}/{r.profile_id}", []).append(m.message_id)
    release.set()
    assert busy is not None
    busy.result(5)
    for f in futures:
        f.result(5)
    assert groups == [1, 6]  # the six queued units went in one transaction
    for key, mids in sent.items():
        workspace, pid = key.split("/")
        events = store.reader(workspace).events(pid, 10)
        assert [json.loads(m)["messageId"] for _s, m in events] == mids[::-1]
        ips = [json.loads(m)["context"]["ip"] for _s, m in events]  # each its unit's stamp
        assert ips == [f"10.0.0.{int(mid[1:]) - 1}" for mid in mids[::-1]]
        assert [s for s, _m in events] == sorted((s for s, _m in events), reverse=True)
        last = int(mids[-1][1:]) - 1  # the unit that wrote it last
        assert store.reader(workspace).traits(pid) == {"unit": last}
    store.close()
