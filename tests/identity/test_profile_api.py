"""The Profile API (Segment's contract) on the embedded identity store, fed through the identity
step with realistic messages: one person's two devices that merge once she signs in, a group
call, a late message, another visitor, and a second workspace."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from headwater.config import load_config
from headwater.events.stamp import Stamp, encode_stamp
from headwater.identity.api import ProfileApi, access_tokens, store_lookup
from headwater.identity.resolver import IdentityResolver
from headwater.identity.sqlite_store import SqliteIdentityStore
from headwater.identity.step import IdentityStep
from headwater.processing.runtime import Item

WEB, APP, BETA = "src_web", "src_app", "src_beta"
SOURCES = {WEB: "acme", APP: "acme", BETA: "beta"}
TOKENS = {"pat_acme_1": "acme", "pat_beta_1": "beta", "pat_ghost_1": "ghost"}
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
BASE = "/v1/spaces/acme/collections/users/profiles"
ADA = "ada+news@example.com"
OAUTH = "google-oauth2:1234"
Story = list[tuple[str, float, dict[str, Any]]]

# (source, minutes after T0 its request was received, message): one unit each, in this order
STORY: Story = [
    (WEB, 0, {"type": "page", "anonymousId": "laptop", "messageId": "m1", "name": "Home"}),
    (APP, 1, {"type": "identify", "anonymousId": "phone", "messageId": "m2",
              "traits": {"plan": "pro", "color": "blue", "lang": "en"},
              "context": {"device": {"type": "ios", "id": "idfv-1"}}}),
    (WEB, 2, {"type": "identify", "anonymousId": "laptop", "messageId": "m3",
              "traits": {"plan": "free", "color": None, "email": ADA, "name": "Ada Lovelace",
                         "city": "London", "company": "Analytical Engines", "age": 36}}),
    (APP, 3, {"type": "identify", "anonymousId": "phone", "userId": "ada", "messageId": "m4",
              "traits": {"lang": "fr"},
              "context": {"externalIds": [{"id": OAUTH, "type": "auth0_id",
                                           "collection": "users", "encoding": "none"}]}}),
    (WEB, 4, {"type": "track", "userId": "ada", "anonymousId": "laptop", "messageId": "m5",
              "event": "Order Completed", "properties": {"revenue": 42}}),  # the merge
    (WEB, 5, {"type": "group", "userId": "ada", "groupId": "acct_42", "messageId": "m6",
              "traits": {"name": "Acme Inc", "plan": "enterprise"}}),  # the group's traits
    (APP, 0.5, {"type": "identify", "anonymousId": "phone", "messageId": "m7",
                "traits": {"plan": "trial", "lang": "de"}}),  # late: older than what it meets
    (WEB, 6, {"type": "track", "anonymousId": "someone-else", "messageId": "m8",
              "event": "Viewed"}),
    (BETA, 6, {"type": "identify", "userId": "ada", "messageId": "b1",
               "traits": {"plan": "beta-plan"}}),
]  # fmt: skip
# plan: the phone's "pro" (10:01) < the laptop's "free" (10:02) > the late "trial" (10:00:30);
# lang: "fr" (10:03) on the profile merged away beats the survivor's late "de"; color: null
ADA_TRAITS = {"age": 36, "city": "London", "company": "Analytical Engines", "email": ADA,
              "lang": "fr", "name": "Ada Lovelace", "plan": "free"}  # fmt: skip
ADA_EVENTS = ["m7", "m6", "m5", "m4", "m3", "m2", "m1"]  # newest first: as processed


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(minutes: float) -> str:
    return at(minutes).isoformat(timespec="milliseconds")


def run(store: SqliteIdentityStore, story: Story) -> dict[str, str]:
    """Run `story` through the identity step into `store`; messageId -> profileId."""
    step = IdentityStep(IdentityResolver(store), SOURCES.get)
    stamped: dict[str, str] = {}
    for n, (source, minutes, message) in enumerate(story):
        stamp = encode_stamp(Stamp(at(minutes), ip="10.0.0.1"))
        item = Item(source, json.dumps(message).encode(), stamp=stamp, position=f"0:{n + 1}:0")
        step([item])
        stamped[message["messageId"]] = json.loads(item.message)["profileId"]
    return stamped


def feed(db: Path, story: Story) -> dict[str, str]:
    store = SqliteIdentityStore(db)
    try:
        return run(store, story)
    finally:
        store.close()


@dataclass
class World:
    api: ProfileApi
    ada: str  # the survivor: made by the laptop's first page view
    phone: str  # the phone's profile, merged into `ada`
    other: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    db = tmp_path_factory.mktemp("profiles") / "data" / "state" / "identity.db"
    ids = feed(db, STORY)
    return World(ProfileApi(store_lookup(db), TOKENS), ids["m1"], ids["m2"], ids["m8"])


def basic(token: str) -> str:  # the token as the user name, no password
    return "Basic " + base64.b64encode(f"{token}:".encode()).decode()


ACME = basic("pat_acme_1")


def call(
    api: ProfileApi, path: str, query: str = "", auth: str | None = ACME, method: str = "GET"
) -> tuple[int, Any]:
    status, body = api.handle(method, path, query, auth)
    return status, json.loads(body)


def last(meta: dict[str, Any]) -> tuple[str, str, str]:
    return meta["last_message_id"], meta["last_message_at"], meta["updated_at"]


def ok(api: ProfileApi, path: str, query: str = "") -> Any:
    status, body = call(api, path, query)
    assert status == 200, body
    return body


@pytest.mark.parametrize("what", ["traits", "events", "external_ids", "links"])
def test_each_listing_answers_its_documented_shape(world: World, what: str) -> None:
    path = f"{BASE}/user_id:ada/{what}"
    body = ok(world.api, path)
    key = "traits" if what == "traits" else "data"
    assert set(body) == {key, "cursor"}
    assert isinstance(body[key], dict if what == "traits" else list) and body[key]
    default = {"traits": 10, "events": 10, "external_ids": 25, "links": 25}[what]
    assert body["cursor"] == {"url": path, "has_more": False, "next": "", "limit": default}


def test_metadata_shows_creation_first_message_and_merged_profiles(world: World) -> None:
    body = ok(world.api, f"{BASE}/user_id:ada/metadata")
    meta = body["metadata"]
    assert set(body) == {"metadata"}
    assert set(meta) == {"profile_id", "created_at", "updated_at", "expires_at",
                         "first_message_id", "first_message_at", "last_message_id",
                         "last_message_at", "merged_profiles"}  # fmt: skip
    assert (meta["profile_id"], meta["created_at"], meta["expires_at"]) == (world.ada, iso(0), None)
    assert (meta["first_message_id"], meta["first_message_at"]) == ("m1", iso(0))
    assert meta["merged_profiles"] == [world.phone]
    other = ok(world.api, f"{BASE}/anonymous_id:someone-else/metadata")["metadata"]
    assert other["profile_id"] == world.other and other["merged_profiles"] == []
    assert other["first_message_id"] == other["last_message_id"] == "m8"
    assert other["created_at"] == other["updated_at"] == other["last_message_at"] == iso(6)


def test_metadata_last_message_is_the_latest_received(world: World) -> None:
    meta = ok(world.api, f"{BASE}/user_id:ada/metadata")["metadata"]
    links = ok(world.api, f"{BASE}/user_id:ada/links")["data"][0]["external_ids"]
    assert meta["updated_at"] >= max(x["created_at"] for x in links)
    assert last(meta) == ("m6", iso(5), iso(5))


CHAIN: Story = [
    (WEB, 0, {"type": "track", "anonymousId": "a", "messageId": "c1", "event": "Viewed"}),
    (WEB, 1, {"type": "identify", "anonymousId": "b", "messageId": "c2",
              "traits": {"email": "b@x.io"}}),
    (APP, 2, {"type": "identify", "anonymousId": "c", "messageId": "c3",
              "traits": {"color": "red"}}),
    (APP, 3, {"type": "identify", "anonymousId": "c", "messageId": "c4",
              "traits": {"email": "b@x.io", "color": None}}),  # c's profile merges into b's
    (WEB, 4, {"type": "identify", "userId": "grace", "anonymousId": "a", "messageId": "c5",
              "traits": {"email": "g@x.io"}}),
    (WEB, 5, {"type": "identify", "userId": "grace", "anonymousId": "b", "messageId": "c6",
              "traits": {"color": "green"}}),  # b's profile (with c's) merges into a's
]  # fmt: skip


def test_a_chain_of_merges_answers_as_one_profile(tmp_path: Path) -> None:
    ids = feed(tmp_path / "identity.db", CHAIN)
    first, second, third = ids["c1"], ids["c2"], ids["c3"]
    api = ProfileApi(store_lookup(tmp_path / "identity.db"), TOKENS)
    for ref in ("user_id:grace", "anonymous_id:c", "email:b@x.io", f"segment_id:{third}"):
        meta = ok(api, f"{BASE}/{ref}/metadata")["metadata"]
        assert meta["profile_id"] == first, ref
    assert sorted(meta["merged_profiles"]) == sorted([second, third])
    assert (meta["first_message_id"], meta["created_at"]) == ("c1", iso(0))
    assert last(meta) == ("c6", iso(5), iso(5))
    # color: set, removed by null, set again; email: the one set last
    traits = ok(api, f"{BASE}/segment_id:{second}/traits")["traits"]
    assert traits == {"color": "green", "email": "g@x.io"}
    events = ok(api, f"{BASE}/anonymous_id:a/events")["data"]
    assert [e["messageId"] for e in events] == ["c6", "c5", "c4", "c3", "c2", "c1"]
    assert len(ok(api, f"{BASE}/anonymous_id:c/external_ids")["data"]) == 6


def test_external_ids_list_every_identifier_with_where_it_was_first_seen(world: World) -> None:
    data = ok(world.api, f"{BASE}/user_id:ada/external_ids")["data"]
    seen = {(x["type"], x["id"]): x for x in data}
    assert set(seen) == {("anonymous_id", "laptop"), ("anonymous_id", "phone"),
                         ("ios.id", "idfv-1"), ("email", ADA), ("user_id", "ada"),
                         ("auth0_id", OAUTH)}  # fmt: skip
    assert seen[("anonymous_id", "phone")] == {
        "id": "phone", "type": "anonymous_id", "source_id": APP, "collection": "users",
        "created_at": iso(1), "encoding": "none", "first_message_id": "m2"}  # fmt: skip
    assert seen[("email", ADA)]["first_message_id"] == "m3"
    assert [x["created_at"] for x in data] == sorted(x["created_at"] for x in data)
    # each of them finds the profile, and so do its id and the id of the profile merged in
    refs = [f"{x['type']}:{x['id']}" for x in data]
    for ref in [*refs, f"segment_id:{world.ada}", f"segment_id:{world.phone}"]:
        meta = ok(world.api, f"{BASE}/{quote(ref, safe='')}/metadata")["metadata"]
        assert meta["profile_id"] == world.ada, ref
        assert ok(world.api, f"{BASE}/{quote(ref, safe='')}/traits")["traits"] == ADA_TRAITS


@pytest.mark.parametrize(
    "ref",
    [
        "email:ada%2Bnews%40example.com",  # `+` and `@` encoded
        "email:ada+news@example.com",  # as typed: `+` is not a space in a path
        "email%3Aada%2Bnews%40example.com",  # even the separator encoded
        f"auth0_id:{OAUTH}",  # a value with `:` in it
        "auth0_id:google-oauth2%3A1234",
    ],
)
def test_url_encoded_identifiers_resolve(world: World, ref: str) -> None:
    assert ok(world.api, f"{BASE}/{ref}/metadata")["metadata"]["profile_id"] == world.ada


@pytest.mark.parametrize(
    ("query", "traits"),
    [
        ("", ADA_TRAITS),  # last set wins across the merged devices, null removes
        ("limit=200", ADA_TRAITS),
        ("include=plan,lang,nope", {"lang": "fr", "plan": "free"}),
        ("verbose=true&include=plan,age", {"age": {"value": 36}, "plan": {"value": "free"}}),
        ("class=audience", {}),
        ("class=computed_trait", {}),
    ],
)
def test_traits_and_their_parameters(world: World, query: str, traits: dict[str, Any]) -> None:
    assert ok(world.api, f"{BASE}/user_id:ada/traits", query)["traits"] == traits


def pages(api: ProfileApi, path: str, limit: int) -> list[Any]:
    """Every page of `path`, following `next`."""
    out, query = [], f"limit={limit}"
    while True:
        body = ok(api, path, query)
        out.append(body)
        assert body["cursor"]["limit"] == limit
        if not body["cursor"]["has_more"]:
            assert body["cursor"]["next"] == ""
            return out
        query = f"limit={limit}&next={quote(body['cursor']['next'])}"


@pytest.mark.parametrize("limit", [1, 2, 3, 6, 7])
def test_pages_visit_every_trait_event_and_identifier_once(world: World, limit: int) -> None:
    traits = pages(world.api, f"{BASE}/user_id:ada/traits", limit)
    names = [n for page in traits for n in page["traits"]]
    assert names == sorted(ADA_TRAITS) and len(traits) == -(-len(ADA_TRAITS) // limit)
    events = pages(world.api, f"{BASE}/anonymous_id:phone/events", limit)
    assert all(0 < len(p["data"]) <= limit for p in events)
    assert [e["messageId"] for p in events for e in p["data"]] == ADA_EVENTS
    ids = pages(world.api, f"{BASE}/anonymous_id:laptop/external_ids", limit)
    everything = ok(world.api, f"{BASE}/anonymous_id:laptop/external_ids")["data"]
    assert [x for p in ids for x in p["data"]] == everything and len(everything) == 6


def test_events_are_newest_first_with_both_devices_histories(world: World) -> None:
    body = ok(world.api, f"{BASE}/email:{quote(ADA)}/events", "limit=100")
    data = body["data"]
    assert [e["messageId"] for e in data] == ADA_EVENTS and body["cursor"]["limit"] == 100
    order = next(e for e in data if e["messageId"] == "m5")
    assert order["event"] == "Order Completed" and order["properties"] == {"revenue": 42}
    assert order["profileId"] == world.ada


def test_links_show_the_group_as_an_account(world: World) -> None:
    assert ok(world.api, f"{BASE}/anonymous_id:laptop/links")["data"] == [
        {
            "to_collection": "accounts",
            "external_ids": [{"id": "acct_42", "type": "group_id", "collection": "accounts",
                              "created_at": iso(5), "encoding": "none"}],
        }
    ]  # fmt: skip
    assert ok(world.api, f"{BASE}/anonymous_id:someone-else/links")["data"] == []


def test_another_space_keeps_its_own_profiles(world: World) -> None:
    path, auth = "/v1/spaces/beta/collections/users/profiles/user_id:ada", basic("pat_beta_1")
    status, body = call(world.api, f"{path}/traits", auth=auth)
    assert (status, body["traits"]) == (200, {"plan": "beta-plan"})
    meta = call(world.api, f"{path}/metadata", auth=auth)[1]["metadata"]
    assert meta["profile_id"] not in (world.ada, world.phone)


SPACES = "/v1/spaces"
AUTH, NOT_FOUND, INVALID = "authentication_error", "not_found", "validation_error"
ERRORS = [  # (status, code, path, query, Authorization, method)
    *[(401, AUTH, f"{BASE}/user_id:ada/traits", "", a, "GET") for a in (
        None, "", "Basic", basic("pat_nope"), basic("pat_beta_1"), basic(""),
        "Bearer pat_acme_1", "Basic not*base64")],
    (401, AUTH, f"{SPACES}/nope/collections/users/profiles/user_id:ada/traits", "", ACME, "GET"),
    (404, NOT_FOUND, f"{BASE}/user_id:nobody/traits", "", ACME, "GET"),
    (404, NOT_FOUND, f"{BASE}/segment_id:use_nothing/metadata", "", ACME, "GET"),
    (404, NOT_FOUND, f"{SPACES}/ghost/collections/users/profiles/user_id:ada/traits", "",
     basic("pat_ghost_1"), "GET"),  # a space with no profiles
    (404, NOT_FOUND, f"{BASE}/user_id:ada/audiences", "", ACME, "GET"),
    (404, NOT_FOUND, f"{BASE}/user_id:ada", "", ACME, "GET"),
    (404, NOT_FOUND, f"{BASE}/user_id:ada/traits/extra", "", ACME, "GET"),
    (404, NOT_FOUND, f"{SPACES}/acme/collections/accounts/profiles/group_id:acct_42/traits", "",
     ACME, "GET"),
    (404, NOT_FOUND, f"{SPACES}/acme", "", ACME, "GET"),
    *[(400, INVALID, f"{BASE}/{ref}/traits", "", ACME, "GET")
      for ref in ("user_id", "user_id:", ":ada", "ada")],
    *[(400, INVALID, f"{BASE}/user_id:ada/{what}", query, ACME, "GET") for what, query in (
        ("events", "limit=0"), ("events", "limit=101"), ("events", "limit=abc"),
        ("events", "limit=-1"), ("events", "limit="), ("events", "next=abc"),
        ("traits", "limit=0"), ("traits", "limit=201"), ("external_ids", "limit=101"),
        ("links", "limit=abc"), ("traits", "class=nope"))],
    *[(405, "method_not_allowed", f"{BASE}/user_id:ada/traits", "", ACME, m)
      for m in ("POST", "PUT", "DELETE")],
]  # fmt: skip


@pytest.mark.parametrize(("status", "code", "path", "query", "auth", "method"), ERRORS)
def test_errors_answer_their_status_and_code(
    world: World, status: int, code: str, path: str, query: str, auth: str | None, method: str
) -> None:
    got, body = call(world.api, path, query, auth, method)
    assert got == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code and body["error"]["message"]


def test_a_store_not_made_yet_answers_not_found_then_answers_once_made(tmp_path: Path) -> None:
    db = tmp_path / "data" / "state" / "identity.db"
    api = ProfileApi(store_lookup(db), TOKENS)
    for what in ("traits", "events", "metadata", "links", "external_ids"):
        status, body = call(api, f"{BASE}/user_id:ada/{what}")
        assert status == 404 and body["error"]["code"] == "not_found"
    assert not db.exists()  # asking does not make it
    feed(db, STORY[:4])
    assert ok(api, f"{BASE}/user_id:ada/traits")["traits"]["lang"] == "fr"


def test_answers_follow_the_processor_while_it_writes(tmp_path: Path) -> None:
    store = SqliteIdentityStore(tmp_path / "identity.db")
    try:
        api = ProfileApi(store_lookup(store.path), TOKENS)
        run(store, STORY[:3])
        assert ok(api, f"{BASE}/anonymous_id:phone/traits")["traits"]["lang"] == "en"
        assert call(api, f"{BASE}/user_id:ada/traits")[0] == 404
        run(store, STORY[3:5])  # ada signs in on the phone, then on the laptop: one profile
        assert ok(api, f"{BASE}/user_id:ada/traits")["traits"] == ADA_TRAITS
    finally:
        store.close()


def test_access_tokens_come_from_headwater_yaml(world: World, tmp_path: Path) -> None:
    config = tmp_path / "headwater.yaml"
    config.write_text(
        "workspaces:\n- {name: acme, access_tokens: [pat_acme_1, pat_acme_2],\n"
        "   identity: {enabled: true}, sources: [{name: web, write_keys: [wk_web]}]}\n"
        "- {name: beta, access_tokens: [pat_beta_1]}\n- {name: quiet}\n"
    )
    tokens = access_tokens(load_config(config).workspaces)
    assert tokens == {"pat_acme_1": "acme", "pat_acme_2": "acme", "pat_beta_1": "beta"}
    api = ProfileApi(world.api.lookup, tokens)
    assert call(api, f"{BASE}/user_id:ada/traits", auth=basic("pat_acme_2"))[0] == 200
    assert call(api, f"{BASE}/user_id:ada/traits", auth=basic("pat_beta_1"))[0] == 401
    assert call(api, f"{BASE}/user_id:ada/traits", auth=basic("pat_ghost_1"))[0] == 401


@pytest.mark.parametrize("name", ["data#1", "data?1", "data%41"])
def test_a_data_directory_with_uri_characters_in_its_path(tmp_path: Path, name: str) -> None:
    db = tmp_path / name / "state" / "identity.db"
    feed(db, STORY[:4])
    api = ProfileApi(store_lookup(db), TOKENS)
    assert ok(api, f"{BASE}/user_id:ada/traits")["traits"]["lang"] == "fr"


def test_a_store_file_without_its_schema_yet_answers_not_found(tmp_path: Path) -> None:
    db = tmp_path / "identity.db"
    db.touch()
    status, body = call(ProfileApi(store_lookup(db), TOKENS), f"{BASE}/user_id:ada/traits")
    assert status == 404 and body["error"]["code"] == "not_found"
