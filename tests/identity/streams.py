"""Helpers for the identity tests: Segment messages into `Message`s, a small driver, and
hypothesis strategies for event streams (small pools of values, so that they collide)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from headwater.config import IdentityConfig, IdentityTypeConfig
from headwater.identity.graph import Graph, GraphUpdate, Message, Resolution, resolve
from headwater.identity.identifiers import Ident, decode_identity, identifiers, text
from headwater.identity.settings import IdentitySettings, identity_settings
from tests.identity.model import Event

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z
ZEROS = "00000000-0000-0000-0000-000000000000"

Payload = dict[str, Any]


def to_message(payload: Payload, at_ms: int, message_id: str, source_id: str = "src") -> Message:
    """A Segment message as resolution sees it (previousId only for `alias`)."""
    fields = decode_identity(json.dumps(payload).encode())
    assert fields is not None, payload
    previous = text(fields.previousId) if fields.type == "alias" else None
    return Message(message_id, source_id, at_ms, identifiers(fields), previous)


def to_event(message: Message) -> Event:
    return Event(message.at_ms, tuple(message.identifiers), message.previous_id)


class Run:
    """One graph and its settings, fed Segment messages."""

    def __init__(self, config: IdentityConfig | None = None) -> None:
        self.graph = Graph()
        self.settings: IdentitySettings = identity_settings(config)
        self.sent = 0

    def send(self, payload: Payload, at_ms: int = T0, message_id: str | None = None) -> Resolution:
        self.sent += 1
        mid = message_id or f"m{self.sent}"
        return resolve(self.graph, self.settings, to_message(payload, at_ms, mid))

    def holder(self, kind: str, value: str) -> str | None:
        return self.graph.owner(Ident(kind, value))

    def held(self, pid: str | None) -> set[Ident]:
        assert pid is not None
        return set(self.graph.profiles[self.graph.canonical(pid)].identifiers)

    def canonical(self) -> list[str]:
        return [pid for pid, p in self.graph.profiles.items() if p.merged_into is None]


def engine_partition(graph: Graph) -> set[frozenset[Ident]]:
    return {frozenset(p.identifiers) for p in graph.profiles.values() if p.merged_into is None}


# -- streams ------------------------------------------------------------------------------------

ANON = [f"a{i}" for i in range(4)]
USERS = [f"u{i}" for i in range(4)]
EMAILS = [f"e{i}@x.io" for i in range(5)]
DEVICES = ["d0", "d1", "d2"]
CRM = ["c0", "c1", "c2"]
BLOCKED = ["null", "Anonymous", ZEROS, "test-1"]  # test-1: blocked by a pattern of `crm_id`


def ids(pool: list[str]) -> st.SearchStrategy[str]:
    """A value of the pool, now and then a blocked one."""
    return st.sampled_from(pool * 3 + BLOCKED)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _clean(payload: Payload) -> Payload:
    out: Payload = {}
    for key, value in payload.items():
        if isinstance(value, dict):
            value = _clean(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


@st.composite
def payloads(draw: st.DrawFn) -> Payload:
    kinds = ["page", "identify", "track", "device", "crm", "alias", "mail", "replay"]
    kind = draw(st.sampled_from(kinds))
    if kind == "replay":  # one of the messages sent before, again
        return {"replay": draw(st.integers(0, 39))}
    if kind == "page":  # anonymous browsing
        p: Payload = {"type": "page", "anonymousId": draw(ids(ANON))}
    elif kind == "identify":  # sign-up / log-in
        p = {
            "type": "identify",
            "userId": draw(ids(USERS)),
            "anonymousId": draw(maybe(ids(ANON))),
            "traits": {"email": draw(maybe(ids(EMAILS)))},
        }
    elif kind == "track":
        p = {
            "type": "track",
            "userId": draw(ids(USERS)),
            "context": {"traits": {"email": draw(maybe(ids(EMAILS)))}},
        }
    elif kind == "device":  # an app on a device, maybe shared
        device = {"id": draw(ids(DEVICES)), "type": draw(st.sampled_from(["ios", "android", "tv"]))}
        p = {"type": "track", "anonymousId": draw(ids(ANON)), "context": {"device": device}}
    elif kind == "crm":
        ext = [{"type": "crm_id", "id": draw(ids(CRM)), "collection": "users"}]
        p = {"type": "identify", "userId": draw(maybe(ids(USERS))), "context": {"externalIds": ext}}
    elif kind == "alias":
        previous = draw(st.sampled_from(ANON + USERS + BLOCKED))
        p = {"type": "alias", "userId": draw(ids(USERS)), "previousId": previous}
    else:  # an email from an anonymous visitor (a newsletter form)
        p = {
            "type": "identify",
            "anonymousId": draw(ids(ANON)),
            "traits": {"email": draw(ids(EMAILS))},
        }
    return _clean(p)


@st.composite
def configs(draw: st.DrawFn) -> IdentityConfig:
    """Small limits and periods, so that rules bite; `user_id` keeps its limit of 1, ever."""
    periods = st.sampled_from([None, "1h", "1d", "7d", "ever"])
    types: dict[str, IdentityTypeConfig] = {}
    for name in ("email", "anonymous_id", "ios.id", "crm_id"):
        if draw(st.booleans()):
            types[name] = IdentityTypeConfig(
                limit=draw(st.integers(1, 3)),
                period=draw(periods),
                priority=draw(maybe(st.integers(2, 6))),
                blocked_patterns=[r"^test-", r"^[0-]*$"] if name == "crm_id" else None,
            )
    return IdentityConfig(
        types=types,
        max_merges=draw(st.sampled_from([1, 2, 3, 100])),
        max_identifiers=draw(st.sampled_from([2, 3, 5, 8, 1000])),
    )


Stream = list[tuple[Payload, int]]  # a message and the time since the one before


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    steps = st.sampled_from([0, 1, MINUTE, HOUR, DAY, 3 * DAY, 7 * DAY, 8 * DAY])
    size = draw(st.integers(0, 40))  # plain st.lists would mostly make short streams
    return draw(st.lists(st.tuples(payloads(), steps), min_size=size, max_size=size))


@dataclass
class Replayed:
    """A stream resolved into a fresh graph."""

    graph: Graph
    messages: list[Message]
    results: list[Resolution]

    @property
    def updates(self) -> list[GraphUpdate]:
        return self.graph.updates


def messages_of(stream: Stream) -> list[Message]:
    out: list[Message] = []
    at = T0
    for n, (payload, step) in enumerate(stream):
        at += step
        if "replay" in payload:  # redelivered: the same message, received when it first was
            if out:
                out.append(out[payload["replay"] % len(out)])
            continue
        out.append(to_message(payload, at, f"msg-{n}"))
    return out


def replay(
    settings: IdentitySettings,
    messages: list[Message],
    later: IdentitySettings | None = None,
    switch: int | None = None,
) -> Replayed:
    """`messages` resolved into a fresh graph; from message `switch` on, with `later`."""
    graph = Graph()
    results: list[Resolution] = []
    for n, m in enumerate(messages):
        if later is not None and n == switch:
            settings = later
        results.append(resolve(graph, settings, m))
    return Replayed(graph, messages, results)
