"""The merge engine (`headwater.identity.graph`): worked examples, then properties checked
against the naive reference model of `tests.identity.model`."""

from __future__ import annotations

import copy

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from headwater.config import IdentityConfig, IdentityTypeConfig
from headwater.identity.graph import GraphUpdate, profile_id
from headwater.identity.identifiers import Ident
from headwater.identity.settings import identity_settings
from tests.identity.model import run_model
from tests.identity.streams import (
    DAY,
    T0,
    ZEROS,
    Run,
    Stream,
    configs,
    engine_partition,
    messages_of,
    replay,
    streams,
    to_event,
)

U = "user_id"
A = "anonymous_id"
E = "email"

# -- worked examples ----------------------------------------------------------------------------


def test_anonymous_browsing_then_sign_up_stays_on_one_profile() -> None:
    """A visitor browses anonymously (a1), then signs up: the identify carries userId and
    anonymousId, so the user id and email join the profile the browsing made."""
    run = Run()
    first = run.send({"type": "page", "anonymousId": "a1"})
    again = run.send({"type": "page", "anonymousId": "a1"}, T0 + 60_000)
    signup = run.send(
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"email": "x@y.io"}},
        T0 + 120_000,
    )
    assert first.created and not again.created and not signup.created
    assert first.profile_id == again.profile_id == signup.profile_id
    assert run.held(signup.profile_id) == {Ident(A, "a1"), Ident(U, "u1"), Ident(E, "x@y.io")}
    assert run.graph.updates == []


def test_two_devices_then_the_same_user_merge_into_the_older_profile() -> None:
    """Someone browses on a phone (a1), then on a laptop (a2): two profiles. Logging in as u1
    on both merges them into the older one, and the merge is recorded once."""
    run = Run()
    phone = run.send({"type": "page", "anonymousId": "a1"}, T0)
    laptop = run.send({"type": "page", "anonymousId": "a2"}, T0 + 1)
    assert phone.profile_id != laptop.profile_id
    run.send({"type": "identify", "userId": "u1", "anonymousId": "a1"}, T0 + 2)
    login = run.send({"type": "identify", "userId": "u1", "anonymousId": "a2"}, T0 + 3, "login")
    assert login.profile_id == phone.profile_id
    assert login.merged == [laptop.profile_id]
    assert run.graph.updates == [
        GraphUpdate(str(laptop.profile_id), str(phone.profile_id), "login", T0 + 3)
    ]
    assert run.canonical() == [phone.profile_id]
    assert run.graph.canonical(str(laptop.profile_id)) == phone.profile_id
    assert run.held(phone.profile_id) == {Ident(A, "a1"), Ident(A, "a2"), Ident(U, "u1")}


def test_shared_device_second_user_gets_a_profile_of_their_own() -> None:
    """A family tablet (a1) is used by u1, then by u2. One profile may hold one user id ever,
    so u2's message drops a1 (the lower priority) and u2 gets a new profile."""
    run = Run()
    first = run.send({"type": "identify", "userId": "u1", "anonymousId": "a1"})
    second = run.send({"type": "identify", "userId": "u2", "anonymousId": "a1"}, T0 + DAY)
    assert second.created and second.profile_id != first.profile_id
    assert second.dropped == [Ident(A, "a1")]
    assert run.held(second.profile_id) == {Ident(U, "u2")}
    assert run.held(first.profile_id) == {Ident(U, "u1"), Ident(A, "a1")}
    assert run.holder(A, "a1") == first.profile_id


@pytest.mark.parametrize("value", ["null", "NULL", "anonymous", "Anonymous", ZEROS, "0", "-1"])
def test_blocked_values_never_match(value: str) -> None:
    """Placeholders sent by broken clients must not glue strangers together."""
    run = Run()
    alone = run.send({"type": "page", "anonymousId": value})
    assert alone.profile_id is None and alone.blocked == [Ident(A, value)]
    one = run.send({"type": "identify", "userId": "u1", "anonymousId": value})
    two = run.send({"type": "identify", "userId": "u2", "anonymousId": value})
    assert one.profile_id != two.profile_id
    assert run.holder(A, value) is None
    assert len(run.canonical()) == 2


def test_custom_blocked_patterns_and_values_never_match() -> None:
    """A workspace blocks test emails by pattern and a shared inbox by value (any case)."""
    types = {E: IdentityTypeConfig(blocked=["Team@Shop.io"], blocked_patterns=[r"@example\.com$"])}
    run = Run(IdentityConfig(types=types))
    for n, email in enumerate(["qa@example.com", "team@shop.io", "TEAM@SHOP.IO"]):
        one = run.send({"type": "identify", "userId": f"u{n}a", "traits": {"email": email}})
        two = run.send({"type": "identify", "userId": f"u{n}b", "traits": {"email": email}})
        assert one.profile_id != two.profile_id
        assert one.blocked == [Ident(E, email)]
        assert run.holder(E, email) is None


def test_sixth_email_in_a_week_is_dropped_but_accepted_after_the_week() -> None:
    """email: 5 values per week. A sixth one the same week is left out; a week later, the
    five old ones no longer count, so it is taken."""
    run = Run()
    for n in range(5):
        run.send({"type": "identify", "userId": "u1", "traits": {"email": f"e{n}@x.io"}}, T0 + n)
    sixth = run.send({"type": "identify", "userId": "u1", "traits": {"email": "e5@x.io"}}, T0 + DAY)
    assert sixth.dropped == [Ident(E, "e5@x.io")]
    assert run.holder(E, "e5@x.io") is None
    later = run.send(
        {"type": "identify", "userId": "u1", "traits": {"email": "e5@x.io"}}, T0 + 8 * DAY
    )
    assert later.dropped == [] and later.profile_id == sixth.profile_id
    assert run.holder(E, "e5@x.io") == later.profile_id
    assert len([i for i in run.held(later.profile_id) if i.kind == E]) == 6


def test_period_ever_for_a_custom_type() -> None:
    """crm_id (from context.externalIds): one value ever, so a second one is refused even a
    year later, while a type with a one-day period takes a new value after a day (values
    first seen exactly one period ago no longer count)."""
    types = {
        "crm_id": IdentityTypeConfig(limit=1, period="ever"),
        "shop_id": IdentityTypeConfig(limit=1, period="1d"),
    }
    run = Run(IdentityConfig(types=types))

    def ext(kind: str, value: str) -> dict[str, object]:
        return {"externalIds": [{"type": kind, "id": value, "collection": "users"}]}

    run.send({"type": "identify", "userId": "u1", "context": ext("crm_id", "c1")}, T0)
    run.send({"type": "identify", "userId": "u1", "context": ext("shop_id", "s1")}, T0)
    late = run.send(
        {"type": "identify", "userId": "u1", "context": ext("crm_id", "c2")}, T0 + 365 * DAY
    )
    assert late.dropped == [Ident("crm_id", "c2")]
    edge = run.send({"type": "identify", "userId": "u9", "context": ext("shop_id", "s9")}, T0)
    run.send({"type": "identify", "userId": "u9", "context": ext("shop_id", "s8")}, T0 + DAY)
    assert edge.profile_id is not None and Ident("shop_id", "s8") in run.held(edge.profile_id)
    soon = run.send({"type": "identify", "userId": "u1", "context": ext("shop_id", "s2")}, T0 + 1)
    assert soon.dropped == [Ident("shop_id", "s2")]
    later = run.send(
        {"type": "identify", "userId": "u1", "context": ext("shop_id", "s2")}, T0 + 2 * DAY
    )
    assert later.dropped == []
    assert {Ident("shop_id", "s1"), Ident("shop_id", "s2")} <= run.held(later.profile_id)


def test_alias_merges_the_anonymous_previous_id_into_the_users_profile() -> None:
    """u1 is known; later someone browses anonymously (a9) and the app aliases a9 to u1."""
    run = Run()
    user = run.send({"type": "identify", "userId": "u1"}, T0)
    visitor = run.send({"type": "page", "anonymousId": "a9"}, T0 + 1)
    alias = run.send({"type": "alias", "userId": "u1", "previousId": "a9"}, T0 + 2, "alias-1")
    assert alias.profile_id == user.profile_id and alias.merged == [visitor.profile_id]
    assert run.held(user.profile_id) == {Ident(U, "u1"), Ident(A, "a9")}
    assert run.graph.updates == [
        GraphUpdate(str(visitor.profile_id), str(user.profile_id), "alias-1", T0 + 2)
    ]


def test_alias_to_another_profiles_user_id_is_not_merged() -> None:
    """previousId u1 is a known user id; u2 has a profile of its own. Merging would give a
    profile two user ids, so u1 is dropped and nothing merges."""
    run = Run()
    one = run.send({"type": "identify", "userId": "u1"})
    two = run.send({"type": "identify", "userId": "u2"})
    alias = run.send({"type": "alias", "userId": "u2", "previousId": "u1"})
    assert alias.profile_id == two.profile_id and alias.merged == []
    assert alias.dropped == [Ident(U, "u1")]
    assert run.holder(U, "u1") == one.profile_id and run.graph.updates == []


def test_max_merges_caps_how_many_profiles_join() -> None:
    """max_merges 1: a profile made of one merge refuses a second one; the lowest-priority
    identifier (the anonymous id) is dropped and the rest lands on the merged profile."""
    run = Run(IdentityConfig(max_merges=1))
    p1 = run.send({"type": "page", "anonymousId": "a1"})
    p2 = run.send({"type": "identify", "anonymousId": "a2", "traits": {"email": "e@x.io"}})
    merged = run.send({"type": "identify", "anonymousId": "a1", "traits": {"email": "e@x.io"}})
    assert merged.merged == [p2.profile_id]
    p3 = run.send({"type": "page", "anonymousId": "a3"})
    refused = run.send({"type": "identify", "anonymousId": "a3", "traits": {"email": "e@x.io"}})
    assert refused.dropped == [Ident(A, "a3")] and refused.merged == []
    assert refused.profile_id == p1.profile_id
    assert run.canonical() == [p1.profile_id, p3.profile_id]


def test_max_identifiers_caps_a_profile_unless_nothing_grows() -> None:
    """max_identifiers 3: a fourth identifier is dropped. Lowering the cap under what a profile
    holds still lets it receive what it already has."""
    run = Run(IdentityConfig(max_identifiers=3))
    full = run.send(
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"email": "e1@x.io"}}
    )
    more = run.send({"type": "identify", "userId": "u1", "traits": {"email": "e2@x.io"}})
    assert more.dropped == [Ident(E, "e2@x.io")] and more.profile_id == full.profile_id
    assert len(run.held(full.profile_id)) == 3
    run.settings = identity_settings(IdentityConfig(max_identifiers=2))
    same = run.send({"type": "identify", "userId": "u1", "anonymousId": "a1"})
    assert same.dropped == [] and same.profile_id == full.profile_id


def test_replaying_a_message_changes_nothing() -> None:
    """A redelivered message goes to the same profile and leaves the graph as it was."""
    run = Run()
    run.send({"type": "page", "anonymousId": "a1"}, T0, "m-a")
    first = run.send({"type": "identify", "userId": "u1", "anonymousId": "a1"}, T0 + 1, "m-b")
    run.send({"type": "identify", "userId": "u2", "anonymousId": "a1"}, T0 + 2, "m-c")
    run.graph.changed_profiles.clear()
    run.graph.changed_owners.clear()
    before = copy.deepcopy((run.graph.profiles, run.graph.owners, run.graph.updates))
    again = run.send({"type": "identify", "userId": "u1", "anonymousId": "a1"}, T0 + 1, "m-b")
    assert again.profile_id == first.profile_id
    assert not again.created and not again.changed
    assert again.merged == [] and again.dropped == []
    assert (run.graph.profiles, run.graph.owners, run.graph.updates) == before
    assert run.graph.changed_profiles == set() and run.graph.changed_owners == set()


def test_profile_ids_are_deterministic() -> None:
    """Ids are `use_` + a hash of the creating message id and sequence number, so the same
    stream resolved into fresh graphs gives the same ids and the same updates."""
    stream: Stream = [
        ({"type": "page", "anonymousId": "a1"}, 0),
        ({"type": "page", "anonymousId": "a2"}, 1),
        ({"type": "identify", "userId": "u1", "anonymousId": "a1"}, 1),
        ({"type": "identify", "userId": "u1", "anonymousId": "a2"}, 1),
    ]
    s = identity_settings()
    one, two = replay(s, messages_of(stream)), replay(s, messages_of(stream))
    ids = [r.profile_id for r in one.results]
    assert ids == [r.profile_id for r in two.results]
    assert all(str(i).startswith("use_") for i in ids)
    assert ids[0] == profile_id("msg-0", 1) and ids[1] == profile_id("msg-1", 2)
    assert one.updates == two.updates and len(one.updates) == 1
    assert one.graph.profiles == two.graph.profiles
    assert profile_id("msg-0", 1) != profile_id("msg-0", 2) != profile_id("msg-1", 2)


def _ipad(anonymous_id: str) -> dict[str, object]:
    device = {"id": "ipad-1", "type": "ios"}
    return {"type": "screen", "anonymousId": anonymous_id, "context": {"device": device}}


TWO_USERS_GLUED: dict[str, Stream] = {
    # u1 (with a1) and u2 (with e1); then a newsletter form sends a1 and e1, without user id
    "form": [
        ({"type": "identify", "userId": "u1", "anonymousId": "a1"}, 0),
        ({"type": "identify", "userId": "u2", "traits": {"email": "e1@x.io"}}, 1),
        ({"type": "identify", "anonymousId": "a1", "traits": {"email": "e1@x.io"}}, 1),
    ],
    # u1 and u2 each log in on their own phone, then each uses the family iPad
    "shared-ipad": [
        ({"type": "identify", "userId": "u1", "anonymousId": "a1"}, 0),
        ({"type": "identify", "userId": "u2", "anonymousId": "a2"}, 1),
        (_ipad("a1"), 1),
        (_ipad("a2"), 1),
    ],
}


@pytest.mark.parametrize("story", sorted(TWO_USERS_GLUED))
def test_a_message_without_user_id_cannot_merge_two_users(story: str) -> None:
    """A message with no user id links the profiles of u1 and u2 through other identifiers.
    The merged profile would hold two user ids: the rule of one user id ever must stop it."""
    engine = replay(identity_settings(), messages_of(TWO_USERS_GLUED[story]))
    assert engine.updates == []
    owner = engine.graph.owner
    assert owner(Ident(U, "u1")) != owner(Ident(U, "u2"))


# -- properties ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(config=configs(), later=configs(), switch=st.integers(0, 45), stream=streams())
def test_engine_agrees_with_the_reference_model(
    config: IdentityConfig, later: IdentityConfig, switch: int, stream: Stream
) -> None:
    """Same partition, same profile per message; from message `switch` on, the settings
    change (a rule an existing profile already breaks only stops what makes it worse)."""
    s, s2 = identity_settings(config), identity_settings(later)
    messages = messages_of(stream)
    engine = replay(s, messages, s2, switch)
    model = run_model(s, [to_event(m) for m in messages], s2, switch)
    graph = engine.graph
    assert engine_partition(graph) == model.partition()
    for result, group in zip(engine.results, model.landed_groups(), strict=True):
        if group is None:
            assert result.profile_id is None
        else:
            assert result.profile_id is not None
            pid = graph.canonical(result.profile_id)
            assert frozenset(graph.profiles[pid].identifiers) == group
    # the same profiles survive, with the same first-seen times and merge counts
    live = [p for p in graph.profiles.values() if p.merged_into is None]
    ours = {p.seq - 1: ({i: h.first_ms for i, h in p.identifiers.items()}, p.merges) for p in live}
    assert ours == model.profiles_by_number()
    seqs = [
        None if r.profile_id is None else graph.profiles[graph.canonical(r.profile_id)].seq - 1
        for r in engine.results
    ]
    assert seqs == model.landed_numbers()
    assert [r.dropped for r in engine.results] == model.dropped
    assert len(graph.updates) == len(model.profiles) - len(live)


@settings(max_examples=200, deadline=None)
@given(config=configs(), stream=streams())
def test_owners_point_to_profiles_that_hold_them(config: IdentityConfig, stream: Stream) -> None:
    graph = replay(identity_settings(config), messages_of(stream)).graph
    for ident, pid in graph.owners.items():
        holder = graph.profiles[graph.canonical(pid)]
        assert holder.merged_into is None and ident in holder.identifiers
    for pid, p in graph.profiles.items():
        if p.merged_into is None:
            assert all(graph.owner(i) == pid for i in p.identifiers)
        else:
            assert p.identifiers == {}


@settings(max_examples=200, deadline=None)
@given(config=configs(), stream=streams())
def test_rebuilding_gives_the_same_graph(config: IdentityConfig, stream: Stream) -> None:
    s = identity_settings(config)
    one, two = replay(s, messages_of(stream)), replay(s, messages_of(stream))
    assert one.graph.profiles == two.graph.profiles
    assert one.graph.owners == two.graph.owners
    assert one.updates == two.updates
    assert [r.profile_id for r in one.results] == [r.profile_id for r in two.results]


@settings(max_examples=200, deadline=None)
@example(config=IdentityConfig(), stream=TWO_USERS_GLUED["form"])
@example(config=IdentityConfig(), stream=TWO_USERS_GLUED["shared-ipad"])
@given(config=configs(), stream=streams())
def test_no_profile_holds_two_user_ids(config: IdentityConfig, stream: Stream) -> None:
    graph = replay(identity_settings(config), messages_of(stream)).graph
    for p in graph.profiles.values():
        if p.merged_into is None:
            assert len([i for i in p.identifiers if i.kind == U]) <= 1
