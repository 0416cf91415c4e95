"""Identity stores for the store contract: the embedded one (SQLite) and Redis, each test's own
(a Redis prefix `hwtest-<hex>:` whose keys are deleted at the end), plus what the contract
compares: a store's whole graph as the Profile API and a rebuild would see it."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from hypothesis import strategies as st

from headwater.events.stamp import Stamp, encode_stamp
from headwater.identity.api import WHAT, ProfileApi, ProfileLookup
from headwater.identity.graph import GraphConflict
from headwater.identity.identifiers import Ident
from headwater.identity.profiles import ProfileChange
from headwater.identity.redis_profiles import decode_profile, raw, text, unpair
from headwater.identity.redis_store import RedisIdentityStore
from headwater.identity.resolver import IdentityResolver
from headwater.identity.sqlite_store import JournalEntry, SqliteIdentityStore
from headwater.identity.step import IdentityStep
from headwater.processing.runtime import Item
from tests.identity.streams import MINUTE, streams
from tests.identity.test_profile_api import TOKENS, Story, at, basic
from tests.support.redis import REDIS_URL

Store = SqliteIdentityStore | RedisIdentityStore
KINDS = ["sqlite", "redis"]


class CountingStore(RedisIdentityStore):
    """A Redis store that counts the saves another processor's commit turned down; its
    profiles keep their events for years (the streams here have fixed, older dates)."""

    conflicts = 0
    default_retention_ms = 100 * 365 * 86_400_000

    def save(
        self,
        workspace: str,
        graph: Any,
        journal: list[JournalEntry],
        changes: list[ProfileChange] | None = None,
    ) -> None:
        try:
            super().save(workspace, graph, journal, changes)
        except GraphConflict:
            self.conflicts += 1
            raise


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """SCAN + DEL every key under `prefix`."""
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


class Stores:
    """Fresh stores of one kind; everything made is closed and deleted by `close`."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.root = f"hwtest-{uuid.uuid4().hex}:"  # this test's Redis keys
        self.made = 0
        self._open: list[Store] = []
        self._admin = redis.Redis.from_url(REDIS_URL)

    def new(self, kind: str | None = None, prefix: str | None = None) -> Store:
        """An empty store (of `kind`, this one's by default), or another view of the Redis
        store at `prefix` (on a connection of its own, as another processor's)."""
        kind = kind or self.kind
        self.made += 1
        store: Store
        if kind == "sqlite":
            store = SqliteIdentityStore(self.directory / f"identity-{self.made}.db")
        else:
            store = CountingStore(redis.Redis.from_url(REDIS_URL), prefix or self.prefix())
        self._open.append(store)
        return store

    def prefix(self) -> str:
        """A fresh prefix under this test's own."""
        return f"{self.root}s{uuid.uuid4().hex[:8]}:"

    @contextlib.contextmanager
    def fresh(self, kind: str | None = None) -> Iterator[Store]:
        """An empty store, gone afterwards (one per hypothesis example)."""
        store = self.new(kind)
        try:
            yield store
        finally:
            store.close()
            self._open.remove(store)
            if isinstance(store, RedisIdentityStore):
                delete_prefix(self._admin, store.prefix)
            else:
                for path in store.path.parent.glob(store.path.name + "*"):
                    path.unlink()

    def keys(self) -> int:
        """How many Redis keys this test holds."""
        return sum(1 for _k in self._admin.scan_iter(f"{self.root}*", count=1000))

    def reset(self) -> None:
        """Close every store made, delete every key."""
        for store in self._open:
            store.close()
        self._open.clear()
        delete_prefix(self._admin, self.root)

    def close(self) -> None:
        self.reset()
        self._admin.close()


def owners(store: Store, workspace: str) -> dict[Ident, str]:
    """Every identifier of `workspace` and the profile (id) holding it."""
    if isinstance(store, RedisIdentityStore):
        found = store.client.hgetall(store.keys(workspace).owners)
        return {Ident(*unpair(f)): text(p) for f, p in found.items()}
    held = {i: store.owner_of(workspace, i) for group in store.partition(workspace) for i in group}
    return {i: p for i, p in held.items() if p is not None}


ProfileRow = tuple[int, int, str | None, int, frozenset[tuple[str, str, int, str, str]]]


def profiles(store: RedisIdentityStore, workspace: str) -> dict[str, ProfileRow]:
    """Every profile of `workspace` in Redis: seq, created, merged into, merges, identifiers."""
    found = list(store.client.scan_iter(store.keys(workspace).profile("*"), count=1000))
    pipe = store.client.pipeline(transaction=False)
    for key in found:
        pipe.hget(key, "d")
    out: dict[str, ProfileRow] = {}
    for key, blob in zip(found, pipe.execute(), strict=True):
        p = decode_profile(raw(blob))
        pid = text(key).rpartition("/")[2]
        out[pid] = (p.seq, p.created_ms, p.merged_into, p.merges, frozenset(p.identifiers))
    return out


# -- what the Profile API and the readers answer -------------------------------------------


def lookup(store: Store) -> ProfileLookup:
    return ProfileLookup(store.reader, store.owner_of, store.current_profile)


def everything(store: Store, workspace: str, profile_ids: set[str]) -> dict[str, Any]:
    """What the reader says of every profile, events paged two at a time."""
    reader = store.reader(workspace)
    out: dict[str, Any] = {}
    for pid in sorted(profile_ids):
        pages, cursor = [], None
        while True:
            page = reader.events(pid, 2, cursor)
            pages.append([json.loads(m) for _seq, m in page])
            if len(page) < 2:
                break
            cursor = page[-1][0]
        meta = reader.metadata(pid)
        if meta is not None:
            meta["merged_profiles"] = sorted(meta["merged_profiles"])
        out[pid] = {
            "members": sorted(reader.members(pid)),
            "traits": reader.traits(pid),
            "events": pages,
            "links": reader.links(pid),
            "external_ids": reader.external_ids(pid),
            "metadata": meta,
            "current": store.current_profile(workspace, pid),
        }
    return out


def api_answers(store: Store, refs: list[str]) -> list[tuple[int, Any]]:
    """The Profile API's answer to every request about `refs`."""
    api = ProfileApi(lookup(store), TOKENS)
    answers = []
    for ref in refs:
        for what in WHAT:
            for query in ("", "limit=1", "limit=2&next=2", "include=plan,lang&verbose=true"):
                path = f"/v1/spaces/acme/collections/users/profiles/{ref}/{what}"
                status, body = api.handle("GET", path, query, basic("pat_acme_1"))
                answers.append((status, json.loads(body)))
    return answers


def feed(store: Store, story: Story) -> dict[str, str | None]:
    """Run `story` through the identity step; messageId -> profileId (None: no profile)."""
    step = IdentityStep(IdentityResolver(store), {"src_web": "acme", "src_app": "acme"}.get)
    out: dict[str, str | None] = {}
    for n, (source, minutes, message) in enumerate(story):
        stamp = encode_stamp(Stamp(at(minutes), ip="10.0.0.1"))
        item = Item(source, json.dumps(message).encode(), stamp=stamp, position=f"0:{n + 1}:0")
        step([item])
        out[message["messageId"]] = json.loads(item.message).get("profileId")
    return out


@st.composite
def stories(draw: st.DrawFn) -> Story:
    """The stream generator's messages as requests to the step: with traits (some null),
    groups, now and then one received late, a replayed one sent again as it was."""
    story: Story = []
    minutes = 0.0
    for n, (payload, step) in enumerate(draw(streams())):
        minutes += step / MINUTE
        if "replay" in payload:
            if story:
                story.append(story[payload["replay"] % len(story)])
            continue
        message = {**payload, "messageId": f"r{n}"}
        if message["type"] == "track":
            message["event"] = "Viewed"
        if "userId" not in message and "anonymousId" not in message:  # else not accepted
            message["anonymousId"] = "a0"
        if draw(st.booleans()):
            message["context"] = {**message.get("context", {}),
                                  "traits": {draw(st.sampled_from("abc")): draw(
                                      st.none() | st.integers(0, 3))}}  # fmt: skip
        if draw(st.integers(0, 5)) == 0:
            message = {**message, "type": "group", "groupId": draw(st.sampled_from("GH"))}
        late = draw(st.sampled_from([0, 0, 0, 90]))
        story.append((draw(st.sampled_from(["src_web", "src_app"])), minutes - late, message))
    return story
