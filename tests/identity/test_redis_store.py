"""The identity store contract, on the embedded store (SQLite) and on Redis alike: units give
the graph one in-memory pass (and the reference model) gives, profile ids included; a replayed
unit changes nothing; the journal rebuilds the same graph into either store; profiles read
back the same, through the readers and the Profile API. Then what only a shared store does:
a unit whose reads another processor changed is turned down and leaves no trace."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from typing import Any

import msgspec
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.events.stamp import Stamp, encode_stamp
from headwater.identity.graph import GraphConflict, Message, Resolution, resolve
from headwater.identity.identifiers import Ident
from headwater.identity.profiles import ProfileChange
from headwater.identity.redis_store import RedisIdentityStore
from headwater.identity.resolver import IdentityResolver, rebuild
from headwater.identity.settings import identity_settings
from headwater.identity.sqlite_store import JournalEntry
from headwater.identity.step import IdentityStep
from headwater.processing.runtime import Item
from tests.identity.model import run_model
from tests.identity.stores import (
    KINDS,
    Store,
    Stores,
    api_answers,
    everything,
    feed,
    owners,
    profiles,
    stories,
)
from tests.identity.streams import configs, messages_of, replay, streams, to_event
from tests.identity.test_profile_api import (
    ADA_TRAITS,
    CHAIN,
    STORY,
    Story,
    run,
)
from tests.identity.test_sqlite_store import in_memory, partition, resolved_in_units, stream
from tests.support.redis import REDIS_URL

WS = "acme"
T0 = 1_700_000_000_000
MIN = 60_000
DAY = 1440 * MIN


def unit(store: Store, messages: list[Message], workspace: str = WS) -> list[Resolution]:
    return IdentityResolver(store).resolve_unit(workspace, messages)


def msg(mid: str, ms: int, *idents: tuple[str, str]) -> Message:
    return Message(mid, "src", ms, [Ident(k, v) for k, v in idents])


# -- the graph --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_units_make_the_graph_of_one_in_memory_pass(stores: Stores, seed: int) -> None:
    messages = stream(seed, 600)
    graph, expected = in_memory(messages)
    store = stores.new()
    assert resolved_in_units(store, messages, seed) == expected
    assert store.partition(WS) == partition(graph)
    assert store.updates(WS) == graph.updates
    # every identifier leads to the profile the in-memory pass made: the same id
    assert owners(store, WS) == {i: graph.canonical(p) for i, p in graph.owners.items()}


def test_random_streams_in_random_units_match_the_reference_model(stores: Stores) -> None:
    @settings(max_examples=40, deadline=None)
    @given(streams(), configs(), st.randoms(use_true_random=False))
    def check(stream: Any, config: Any, rnd: random.Random) -> None:
        rules = identity_settings(config)
        messages = messages_of(stream)
        model = run_model(rules, [to_event(m) for m in messages])
        reference = replay(rules, messages)
        with stores.fresh() as store:
            resolver = IdentityResolver(store, lambda _ws: rules)
            got: list[Resolution] = []
            while len(got) < len(messages):
                got += resolver.resolve_unit(WS, messages[len(got) : len(got) + rnd.randint(1, 6)])
            assert store.partition(WS) == model.partition()
            assert [r.profile_id for r in got] == [r.profile_id for r in reference.results]
            assert store.updates(WS) == reference.updates
            held = owners(store, WS)
            now = [r.profile_id and store.current_profile(WS, r.profile_id) for r in got]
            landed = [  # where each message went, as that profile is now
                None if p is None else frozenset(i for i, q in held.items() if q == p) for p in now
            ]
            assert landed == model.landed_groups()

    check()


def test_a_replayed_unit_changes_nothing_and_is_not_journaled_again(stores: Stores) -> None:
    messages = stream(3, 100)
    store = stores.new()
    first = [r.profile_id for r in unit(store, messages)]
    journaled, before = store.journal_size(), store.partition(WS)
    again = unit(store, messages)  # a crash after the commit: read again
    now = [p if p is None else store.current_profile(WS, p) for p in first]
    assert [r.profile_id for r in again] == now
    assert not any(r.changed for r in again)
    assert store.journal_size() == journaled
    assert store.partition(WS) == before


def test_workspaces_keep_their_own_graphs_and_journals(stores: Stores) -> None:
    store = stores.new()
    [a] = unit(store, [msg("m1", T0, ("user_id", "u1"))], "one")
    [b] = unit(store, [msg("m2", T0, ("user_id", "u1"))], "two")
    assert a.created and b.created and a.profile_id != b.profile_id
    assert store.owner_of("one", Ident("user_id", "u1")) == a.profile_id
    assert store.owner_of("two", Ident("user_id", "u1")) == b.profile_id
    assert store.owner_of("three", Ident("user_id", "u1")) is None
    assert store.journal_workspaces() == ["one", "two"]
    assert [(ws, e.message_id) for ws, e in store.journal()] == [("one", "m1"), ("two", "m2")]
    assert [e.message_id for _ws, e in store.journal("two")] == ["m2"]


@pytest.mark.parametrize("target_kind", KINDS)
def test_rebuild_from_the_journal_makes_the_same_graph(stores: Stores, target_kind: str) -> None:
    """Into an empty store of either kind: the same profiles, ids, merges and journal, for
    two workspaces whose units came interleaved."""
    store = stores.new()
    for seed, ws in enumerate(["acme", "beta"]):
        for n, m in enumerate(stream(seed, 400)):
            unit(store, [m], ws if n % 7 else WS)  # now and then a message for acme
    target = stores.new(target_kind)
    seen: list[int] = []
    replayed = rebuild(store, target, unit=37, progress=seen.append)
    assert replayed == store.journal_size() == target.journal_size() == sum(seen)
    assert replayed < 800  # messages that changed nothing are not journaled
    assert list(target.journal()) == list(store.journal())
    for ws in ("acme", "beta"):
        assert owners(target, ws) == owners(store, ws) and owners(store, ws)
        assert target.updates(ws) == store.updates(ws) and store.updates(ws)


# -- profiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("story", [STORY, CHAIN], ids=["devices", "chain"])
def test_profiles_read_back_as_the_embedded_store_reads_them(mixed: Stores, story: Story) -> None:
    """Traits (last set wins, null removes, across merged profiles), events newest first in
    pages, links, identifiers, metadata: the same answers from Redis as from SQLite."""
    embedded, other = mixed.new("sqlite"), mixed.new("redis")
    ids, again = run(embedded, story), run(other, story)
    assert again == ids
    for ws in ("acme", "beta"):
        profile_ids = {p for m, p in ids.items() if (m[0] == "b") == (ws == "beta")}
        assert everything(other, ws, profile_ids) == everything(embedded, ws, profile_ids)
    refs = ["user_id:ada", "anonymous_id:phone", "anonymous_id:c", "user_id:grace",
            "anonymous_id:someone-else", "user_id:nobody"]  # fmt: skip
    refs += [f"segment_id:{p}" for p in ids.values()]
    assert api_answers(other, refs) == api_answers(embedded, refs)
    if story is STORY:
        assert other.reader("acme").traits(ids["m1"]) == ADA_TRAITS


def test_random_stories_read_back_as_the_embedded_store_reads_them(mixed: Stores) -> None:
    @settings(max_examples=30, deadline=None)
    @given(stories())
    def check(story: Story) -> None:
        with mixed.fresh("sqlite") as embedded, mixed.fresh("redis") as other:
            ids = feed(embedded, story)
            assert feed(other, story) == ids
            profile_ids = {p for p in ids.values() if p is not None}
            assert everything(other, "acme", profile_ids) == everything(
                embedded, "acme", profile_ids
            )

    check()


def changes_of(
    messages: list[Message], traits: list[dict[str, Any]]
) -> Any:  # the profile changes of a unit: each message's traits
    def make(results: list[Resolution]) -> list[ProfileChange]:
        return [
            ProfileChange(r.profile_id, m.message_id, m.source_id, m.at_ms,
                          msgspec.json.encode({"messageId": m.message_id}), t)
            for m, r, t in zip(messages, results, traits, strict=True) if r.profile_id
        ]  # fmt: skip

    return make


def test_traits_last_set_wins_by_receipt_time_then_order_and_null_removes(
    stores: Stores,
) -> None:
    store = stores.new()
    resolver = IdentityResolver(store)
    ada = ("user_id", "ada")
    steps = [  # (received, traits): one unit each
        (T0 + 2 * MIN, {"plan": "pro", "color": "red"}),
        (T0 + 1 * MIN, {"plan": "trial", "lang": "en"}),  # late: plan stays "pro"
        (T0 + 2 * MIN, {"color": "blue"}),  # the same time: processed later wins
        (T0 + 3 * MIN, {"lang": None}),  # null removes
    ]
    for n, (received, traits) in enumerate(steps):
        m = [msg(f"m{n}", received, ada)]
        resolver.resolve_unit(WS, m, changes_of(m, [traits]))
    pid = store.owner_of(WS, Ident(*ada))
    assert pid is not None
    assert store.reader(WS).traits(pid) == {"color": "blue", "plan": "pro"}


def test_expire_forgets_the_events_received_before_the_cut(mixed: Stores) -> None:
    """The embedded store forgets events when the processor expires them (Redis: below)."""
    store = mixed.new("sqlite")
    resolver = IdentityResolver(store)
    for n in range(6):  # one message a day, alternating between two people
        m = [msg(f"m{n}", T0 + n * 1440 * MIN, ("user_id", f"u{n % 2}"))]
        resolver.resolve_unit(WS, m, changes_of(m, [{"n": n}]))
    u0, u1 = (store.owner_of(WS, Ident("user_id", u)) for u in ("u0", "u1"))
    assert u0 is not None and u1 is not None
    reader = store.reader(WS)

    def events(pid: str) -> list[str]:
        return [json.loads(e)["messageId"] for _s, e in reader.events(pid, 100)]

    assert store.expire(WS, T0 + 3 * 1440 * MIN) == 3  # m0, m1, m2
    assert store.expire(WS, T0 + 3 * 1440 * MIN) == 0
    assert (events(u0), events(u1)) == (["m4"], ["m5", "m3"])
    assert reader.traits(u0) == {"n": 4}  # traits are kept
    assert store.expire(WS, T0 + 100 * 1440 * MIN) == 3
    meta = reader.metadata(u1)
    assert meta is not None and meta["last_message"] is None
    assert meta["updated_ms"] == meta["created_ms"] == T0 + 1440 * MIN


def test_redis_reads_events_within_the_retention_and_expires_them_by_key(mixed: Stores) -> None:
    """Redis keeps a profile's events a retention period after its last one (the key's TTL);
    the list of an active profile still holds older ones, which reads leave out."""
    store = mixed.new("redis")
    assert isinstance(store, RedisIdentityStore)
    store.retention_ms = {WS: 3 * DAY}
    now = int(time.time() * 1000)
    resolver = IdentityResolver(store)
    for mid, days, who in [("m1", 5, "ada"), ("g1", 5, "grace"), ("m2", 2, "ada"),
                           ("m0", 9, "ada"), ("m3", 0, "ada")]:  # fmt: skip
        m = [msg(mid, now - days * DAY, ("user_id", who))]  # received `days` ago: m0 late
        resolver.resolve_unit(WS, m, changes_of(m, [{mid: days}]))
    ada, grace = (store.owner_of(WS, Ident("user_id", u)) for u in ("ada", "grace"))
    assert ada is not None and grace is not None
    reader = store.reader(WS)

    def events(pid: str, limit: int = 10, before: int | None = None) -> list[tuple[int, str]]:
        return [(s, json.loads(e)["messageId"]) for s, e in reader.events(pid, limit, before)]

    assert [m for _s, m in events(ada)] == ["m3", "m2"] and events(grace) == []
    [(s3, m3)] = events(ada, 1)
    assert m3 == "m3" and [m for _s, m in events(ada, 1, s3)] == ["m2"]  # m0 passed over
    assert reader.traits(ada) == {"m0": 9, "m1": 5, "m2": 2, "m3": 0}  # traits are kept
    meta = reader.metadata(ada)
    assert meta is not None and meta["last_message"] == {"id": "m3", "at_ms": now}
    meta = reader.metadata(grace)
    assert meta is not None and meta["last_message"] is None
    assert meta["updated_ms"] == meta["created_ms"] == now - 5 * DAY
    keys = store.keys(WS)
    for pid in (ada, grace):
        assert 3 * DAY - 60_000 < store.client.pttl(keys.recent(pid)) <= 3 * DAY
    # nothing for `expire` to do but drop the sorted sets of an earlier version
    old = [f"{keys.base}events/p1", f"{keys.base}evtime/p1", keys.with_events]
    for key in old:
        store.client.zadd(key, {"p1": 1})
    assert store.expire(WS, now) == 0
    assert store.client.exists(*old) == 0
    assert [m for _s, m in events(ada)] == ["m3", "m2"]


def test_events_read_back_stamped(stores: Stores) -> None:
    """`POST /v1/identify` stores the body without `type`: the stamp's path type is the call,
    and the stored event reads back as the `events` log shows it."""
    store = stores.new()
    received = dt.datetime(2026, 1, 15, 10, 0, tzinfo=dt.UTC)
    stamp = encode_stamp(Stamp(received, None, "10.0.0.1", path_type="identify"))
    body = {"userId": "ada", "traits": {"plan": "pro"}, "messageId": "m1"}
    it = Item("src_web", json.dumps(body).encode(), stamp=stamp, position="0:1:0")
    IdentityStep(IdentityResolver(store), {"src_web": "acme"}.get)([it])
    reader = store.reader("acme")
    assert reader.traits(it.key) == {"plan": "pro"}
    [(_seq, event)] = reader.events(it.key, 10)
    stored = msgspec.json.decode(event)
    assert stored["type"] == "identify" and stored["context"]["ip"] == "10.0.0.1"
    assert stored["profileId"] == it.key and stored["receivedAt"].startswith("2026-01-15T10:00")


# -- what only a shared store does ------------------------------------------------------------


@pytest.fixture
def shared(mixed: Stores) -> tuple[Store, Store]:
    prefix = mixed.prefix()
    return mixed.new("redis", prefix), mixed.new("redis", prefix)  # two processors' clients


def test_a_unit_whose_profile_changed_meanwhile_is_turned_down_without_a_trace(
    shared: tuple[RedisIdentityStore, RedisIdentityStore],
) -> None:
    one, two = shared
    unit(one, [msg("m0", T0, ("user_id", "u1"), ("anonymous_id", "a1"))])
    late = msg("m1", T0 + 1, ("user_id", "u1"), ("email", "e1"))
    graph = one.graph(WS, late.identifiers)
    assert resolve(graph, identity_settings(), late).changed  # e1 joins u1's profile...
    unit(two, [msg("m2", T0 + 2, ("user_id", "u1"), ("anonymous_id", "a2"))])  # ...meanwhile
    before = (owners(one, WS), profiles(one, WS), one.journal_size())
    pid = str(graph.owner(Ident("user_id", "u1")))
    change = ProfileChange(pid, "m1", "src", T0 + 1, b"{}", {"plan": "pro"})
    entry = JournalEntry("m1", "src", T0 + 1, [("user_id", "u1"), ("email", "e1")])
    with pytest.raises(GraphConflict):
        one.save(WS, graph, [entry], [change])
    assert (owners(one, WS), profiles(one, WS), one.journal_size()) == before
    assert one.reader(WS).traits(pid) == {}
    assert one.reader(WS).events(change.profile_id, 10) == []
    IdentityResolver(one).resolve_unit(WS, [late])  # resolved again: nothing lost
    assert one.partition(WS) == {
        frozenset({Ident("user_id", "u1"), Ident("anonymous_id", "a1"),
                   Ident("anonymous_id", "a2"), Ident("email", "e1")})
    }  # fmt: skip
    assert [e.message_id for _w, e in one.journal()] == ["m0", "m2", "m1"]


def test_an_identifier_another_unit_took_meanwhile_is_a_conflict(
    shared: tuple[RedisIdentityStore, RedisIdentityStore],
) -> None:
    """The unit read `x` as nobody's; another gave it to a new profile: not stolen."""
    one, two = shared
    unit(one, [msg("m0", T0, ("user_id", "u1"))])
    mine = msg("m1", T0 + 1, ("user_id", "u1"), ("anonymous_id", "x"))
    graph = one.graph(WS, mine.identifiers)
    resolve(graph, identity_settings(), mine)
    [theirs] = unit(two, [msg("m2", T0 + 2, ("user_id", "u2"), ("anonymous_id", "x"))])
    entry = JournalEntry("m1", "src", T0 + 1, [("user_id", "u1"), ("anonymous_id", "x")])
    with pytest.raises(GraphConflict):  # the entry lists what the unit read: checked
        one.save(WS, graph, [entry])
    assert one.owner_of(WS, Ident("anonymous_id", "x")) == theirs.profile_id


def test_two_units_making_profiles_at_once_never_share_a_number(
    shared: tuple[RedisIdentityStore, RedisIdentityStore],
) -> None:
    one, two = shared
    first = one.graph(WS, [Ident("user_id", "u1")])
    made = resolve(first, identity_settings(), msg("m1", T0, ("user_id", "u1")))
    [other] = unit(two, [msg("m2", T0, ("user_id", "u2"))])  # profile number 1, committed
    assert made.created and other.created
    with pytest.raises(GraphConflict):
        one.save(WS, first, [JournalEntry("m1", "src", T0, [("user_id", "u1")])])
    [again] = unit(one, [msg("m1", T0, ("user_id", "u1"))])
    assert again.created and again.profile_id not in (made.profile_id, other.profile_id)
    seqs = sorted(p[0] for p in profiles(one, WS).values())
    assert seqs == [1, 2]


def test_units_of_other_people_commit_side_by_side(
    shared: tuple[RedisIdentityStore, RedisIdentityStore],
) -> None:
    """No needless retries: units touching different profiles both commit."""
    one, two = shared
    unit(one, [msg("m1", T0, ("user_id", "u1")), msg("m2", T0, ("user_id", "u2"))])
    left = one.graph(WS, [Ident("user_id", "u1"), Ident("email", "e1")])
    right = two.graph(WS, [Ident("user_id", "u2"), Ident("email", "e2")])
    rules = identity_settings()
    assert resolve(left, rules, msg("m3", T0, ("user_id", "u1"), ("email", "e1"))).changed
    assert resolve(right, rules, msg("m4", T0, ("user_id", "u2"), ("email", "e2"))).changed
    two.save(WS, right, [JournalEntry("m4", "src", T0, [])])
    one.save(WS, left, [JournalEntry("m3", "src", T0, [])])
    assert one.partition(WS) == {
        frozenset({Ident("user_id", "u1"), Ident("email", "e1")}),
        frozenset({Ident("user_id", "u2"), Ident("email", "e2")}),
    }


def test_a_profile_keeps_its_newest_events_only(mixed: Stores) -> None:
    store = mixed.new("redis")
    assert isinstance(store, RedisIdentityStore)
    store.events_per_profile = 3
    resolver = IdentityResolver(store)
    for n in range(5):
        m = [msg(f"m{n}", T0 + n, ("user_id", "ada"))]
        resolver.resolve_unit(WS, m, changes_of(m, [{}]))
    pid = store.owner_of(WS, Ident("user_id", "ada"))
    assert pid is not None
    reader = store.reader(WS)
    assert [json.loads(e)["messageId"] for _s, e in reader.events(pid, 10)] == ["m4", "m3", "m2"]
    meta = reader.metadata(pid)
    assert meta is not None and meta["last_message"] == {"id": "m4", "at_ms": T0 + 4}
    key = store.keys(WS).recent(pid)
    assert store.client.llen(key) == 2 * 3  # each event as its number, then itself
    assert 0 < store.client.pttl(key) <= store.default_retention_ms


def test_a_client_that_decodes_answers_is_refused() -> None:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisIdentityStore(client)
    client.close()
