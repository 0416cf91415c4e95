"""The identity step: messages keyed and stamped with their canonical profile."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from headwater.events.stamp import Stamp, encode_stamp
from headwater.identity.identifiers import Ident
from headwater.identity.resolver import IdentityResolver
from headwater.identity.sqlite_store import SqliteIdentityStore
from headwater.identity.step import IdentityStep, with_profile_id
from headwater.processing.runtime import FAILED, Item

WEB, APP, OTHER = "src_web", "src_app", "src_other"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteIdentityStore]:
    s = SqliteIdentityStore(tmp_path / "identity.db")
    yield s
    s.close()


def step_for(store: SqliteIdentityStore) -> IdentityStep:
    workspaces = {WEB: "acme", APP: "acme"}
    return IdentityStep(IdentityResolver(store), workspaces.get)


def item(source: str, n: int, **fields: object) -> Item:
    message = {"type": "track", "event": "Viewed", "messageId": f"m{n}", **fields}
    return Item(source, json.dumps(message).encode(), position=f"0:1:{n}")


def profile_of(it: Item) -> str:
    return str(msgspec.json.decode(it.message)["profileId"])


def test_two_devices_and_one_sign_up_end_in_one_profile(store: SqliteIdentityStore) -> None:
    step = step_for(store)
    monday = [item(WEB, 1, anonymousId="laptop"), item(APP, 2, anonymousId="phone")]
    step(monday)
    assert profile_of(monday[0]) != profile_of(monday[1])  # two visitors, as far as we know
    tuesday = [
        item(WEB, 3, type="identify", userId="ada", anonymousId="laptop"),
        item(APP, 4, type="identify", userId="ada", anonymousId="phone"),
    ]
    step(tuesday)
    assert profile_of(tuesday[0]) == profile_of(tuesday[1]) == profile_of(monday[0])
    assert tuesday[0].key == profile_of(tuesday[0])
    assert store.partition("acme") == {
        frozenset({Ident("anonymous_id", "laptop"), Ident("anonymous_id", "phone"),
                   Ident("user_id", "ada")})
    }  # fmt: skip
    [merge] = store.updates("acme")
    assert merge.canonical_id == profile_of(monday[0]) and merge.message_id == "m4"


def test_the_message_keeps_its_fields_and_gains_profile_id_first(
    store: SqliteIdentityStore,
) -> None:
    it = item(WEB, 1, userId="ada", properties={"a": [1, 2]})
    original = msgspec.json.decode(it.message)
    step_for(store)([it])
    assert it.message.startswith(b'{"profileId":"use_')
    decoded = msgspec.json.decode(it.message)
    assert decoded.pop("profileId") == it.key
    assert decoded == original


def test_messages_without_identifiers_or_workspace_or_object_are_left_alone(
    store: SqliteIdentityStore,
) -> None:
    blocked = item(WEB, 1, anonymousId="undefined")
    foreign = item(OTHER, 2, userId="ada")
    broken = Item(WEB, b"[1,2]", position="0:1:3")
    stopped = item(WEB, 4, userId="bob")
    stopped.stop(FAILED, "invalid_message")
    made = item(WEB, 5, userId="carol")
    made.via = "violation_generated"
    items = [blocked, foreign, broken, stopped, made]
    before = [(i.key, i.message) for i in items]
    step_for(store)(items)
    assert [(i.key, i.message) for i in items] == before
    assert store.partition("acme") == set()


def test_alias_joins_the_anonymous_history_to_the_user(store: SqliteIdentityStore) -> None:
    step = step_for(store)
    browse = [item(WEB, 1, anonymousId="a1")]
    sign_up = [item(WEB, 2, userId="ada")]
    step(browse)
    step(sign_up)
    alias = [item(WEB, 3, type="alias", userId="ada", previousId="a1")]
    step(alias)
    assert profile_of(alias[0]) in (profile_of(browse[0]), profile_of(sign_up[0]))
    assert len(store.partition("acme")) == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{}", {"profileId": "use_x"}),
        (b'  { "a" : 1 }', {"profileId": "use_x", "a": 1}),
        (b'{"profileId":"mine","a":1}', {"profileId": "use_x", "a": 1}),
    ],
)
def test_with_profile_id(raw: bytes, expected: dict[str, object]) -> None:
    out = with_profile_id(raw, "use_x")
    assert msgspec.json.decode(out) == expected
    assert out.count(b'"profileId"') == 1


def test_a_message_whose_path_says_its_type_sets_traits_and_reads_back_stamped(
    store: SqliteIdentityStore,
) -> None:
    """`POST /v1/identify` stores the body without `type`: the stamp's path type is the call."""
    at = dt.datetime(2026, 1, 15, 10, 0, tzinfo=dt.UTC)
    stamp = encode_stamp(Stamp(at, None, "10.0.0.1", path_type="identify"))
    body = {"userId": "ada", "traits": {"plan": "pro"}, "messageId": "m1"}
    it = Item(WEB, json.dumps(body).encode(), stamp=stamp, position="0:1:0")
    step_for(store)([it])
    reader = store.reader("acme")
    assert reader.traits(it.key) == {"plan": "pro"}
    [(_seq, event)] = reader.events(it.key, 10)
    stored = msgspec.json.decode(event)
    assert stored["type"] == "identify" and stored["context"]["ip"] == "10.0.0.1"
    assert stored["profileId"] == it.key
