"""The Profile API, in Segment's shapes:

    GET /v1/spaces/<space>/collections/users/profiles/<id_type>:<value>/<what>

`<space>` is the workspace's name; `<what>` is `traits`, `events`, `external_ids`, `metadata`
or `links`; `<id_type>:<value>` is any identifier of the profile (`user_id:ada`,
`email:ada@example.com`, `anonymous_id:...`) or its id (`segment_id:use_...`). Basic auth with
one of the workspace's access tokens as the user name. Answers `{"traits": {...}, "cursor":
{...}}` or `{"data": [...], "cursor": {...}}`; errors `{"error": {"code", "message"}}` with
`authentication_error` (401), `not_found` (404), `validation_error` (400).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import sqlite3
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec
from redis.exceptions import RedisError

from headwater.config import Config
from headwater.identity.identifiers import Ident
from headwater.identity.stores import ProfileReading, embedded_path, open_store
from headwater.paths import DataPaths

PREFIX = "/v1/spaces/"
WHAT = ("traits", "events", "external_ids", "metadata", "links")
LIMITS = {"traits": (10, 200), "events": (10, 100), "external_ids": (25, 100), "links": (25, 100)}

_encode = msgspec.json.encode


class ProfileError(Exception):
    """An answer other than 200: `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> bytes:
        return _encode({"error": {"code": self.code, "message": self.message}})


class ProfileLookup:
    """What the API reads: a workspace's profiles and who holds an identifier."""

    def __init__(
        self,
        reader: Callable[[str], ProfileReading | None],
        owner: Callable[[str, Ident], str | None],
        current: Callable[[str, str], str | None],
    ) -> None:
        self.reader = reader  # workspace -> its profiles (None: nothing resolved yet)
        self.owner = owner  # (workspace, identifier) -> canonical profile
        self.current = current  # (workspace, profile id) -> canonical profile


class ProfileApi:
    """Answers Profile API requests from `lookup`; `tokens` maps each access token to the
    space (workspace) it opens."""

    def __init__(self, lookup: ProfileLookup, tokens: dict[str, str]) -> None:
        self.lookup = lookup
        self.tokens = tokens

    def handle(
        self, method: str, path: str, query: str, authorization: str | None
    ) -> tuple[int, bytes]:
        """(status, JSON body) for one request."""
        try:
            return 200, self._answer(method, path, query, authorization)
        except ProfileError as exc:
            return exc.status, exc.body()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the processor is making the store right now
                error = ProfileError(404, "not_found", "no profiles yet")
            else:
                error = ProfileError(503, "unavailable", f"the profile store: {exc}")
            return error.status, error.body()
        except RedisError as exc:
            error = ProfileError(503, "unavailable", f"the profile store: {exc}")
            return error.status, error.body()

    def _answer(self, method: str, path: str, query: str, authorization: str | None) -> bytes:
        parts = path[len(PREFIX) :].split("/")
        if len(parts) != 6 or parts[1:3] != ["collections", "users"] or parts[3] != "profiles":
            raise ProfileError(404, "not_found", f"no such path: {path}")
        space, ref, what = parts[0], unquote(parts[4]), parts[5]
        self._authorize(space, authorization)
        if method != "GET":
            raise ProfileError(405, "method_not_allowed", "use GET")
        if what not in WHAT:
            raise ProfileError(404, "not_found", f"no such resource: {what!r}")
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        profile = self.find(space, ref)
        reader = self.lookup.reader(space)
        assert reader is not None  # `find` found a profile there
        return _encode(self.resource(reader, profile, what, params, path))

    def _authorize(self, space: str, authorization: str | None) -> None:
        token = _basic_user(authorization)
        if token is None:
            raise ProfileError(
                401, "authentication_error", "send an access token as the Basic auth user name"
            )
        opens = next((s for t, s in self.tokens.items() if hmac.compare_digest(t, token)), None)
        if opens != space:
            raise ProfileError(
                401, "authentication_error", f"this access token does not open space {space!r}"
            )

    def find(self, space: str, ref: str) -> str:
        """The canonical profile `ref` (`<id_type>:<value>`) names in `space`."""
        kind, sep, value = ref.partition(":")
        if not sep or not kind or not value:
            raise ProfileError(
                400, "validation_error", f"{ref!r}: name a profile as <id_type>:<value>"
            )
        if self.lookup.reader(space) is None:
            raise ProfileError(404, "not_found", f"no profile {ref!r} in space {space!r}")
        if kind == "segment_id":
            found = self.lookup.current(space, value)
        else:
            found = self.lookup.owner(space, Ident(kind, value))
        if found is None:
            raise ProfileError(404, "not_found", f"no profile {ref!r} in space {space!r}")
        return found

    def resource(
        self, reader: ProfileReading, profile: str, what: str, params: dict[str, str], path: str
    ) -> dict[str, Any]:
        """The body of `what` for `profile` (the same answer `headwater profile` prints)."""
        if what == "metadata":
            meta = reader.metadata(profile)
            if meta is None:
                raise ProfileError(404, "not_found", f"no profile {profile!r}")
            return {"metadata": _metadata(profile, meta)}
        limit = _limit(params, *LIMITS[what])
        after = params.get("next") or params.get("cursor") or ""
        if what == "traits":
            return _traits(reader, profile, params, limit, after, path)
        if what == "events":
            before = _int(after, "next") if after else None
            rows = reader.events(profile, limit + 1, before)
            data = [_event(m) for _seq, m in rows[:limit]]
            more = len(rows) > limit
            return {
                "data": data,
                "cursor": _cursor(path, limit, more, str(rows[limit - 1][0]) if more else ""),
            }
        items: list[dict[str, Any]]
        if what == "external_ids":
            items = [
                {
                    "id": v,
                    "type": k,
                    "source_id": s,
                    "collection": "users",
                    "created_at": _iso(ms),
                    "encoding": "none",
                    "first_message_id": m,
                }
                for k, v, ms, m, s in reader.external_ids(profile)
            ]
        else:
            groups = [
                {
                    "id": i,
                    "type": "group_id",
                    "collection": "accounts",
                    "created_at": _iso(ms),
                    "encoding": "none",
                }
                for _c, i, ms in reader.links(profile)
            ]
            items = [{"to_collection": "accounts", "external_ids": groups}] if groups else []
        start = _int(after, "next") if after else 0
        page = items[start : start + limit]
        more = start + limit < len(items)
        return {
            "data": page,
            "cursor": _cursor(path, limit, more, str(start + limit) if more else ""),
        }


def _traits(
    reader: ProfileReading,
    profile: str,
    params: dict[str, str],
    limit: int,
    after: str,
    path: str,
) -> dict[str, Any]:
    kind = params.get("class", "")
    if kind not in ("", "trait", "traits", "audience", "computed_trait"):
        raise ProfileError(400, "validation_error", f"class {kind!r}: audience or computed_trait")
    traits = {} if kind in ("audience", "computed_trait") else reader.traits(profile)
    include = {n for n in params.get("include", "").split(",") if n}
    names = [n for n in sorted(traits) if (not include or n in include) and n > after]
    page = names[:limit]
    more = len(names) > limit
    if params.get("verbose", "").lower() == "true":
        body: dict[str, Any] = {n: {"value": traits[n]} for n in page}
    else:
        body = {n: traits[n] for n in page}
    return {"traits": body, "cursor": _cursor(path, limit, more, page[-1] if more else "")}


def _metadata(profile: str, meta: dict[str, Any]) -> dict[str, Any]:
    first, last = meta["first_message"], meta["last_message"]
    return {
        "profile_id": profile,
        "created_at": _iso(meta["created_ms"]),
        "updated_at": _iso(meta["updated_ms"]),
        "expires_at": None,
        "first_message_id": first["id"] if first else None,
        "first_message_at": _iso(first["at_ms"]) if first else None,
        "last_message_id": last["id"] if last else None,
        "last_message_at": _iso(last["at_ms"]) if last else None,
        "merged_profiles": meta["merged_profiles"],
    }


def _event(message: bytes) -> Any:
    return msgspec.json.decode(message)


def _cursor(path: str, limit: int, more: bool, next_: str) -> dict[str, Any]:
    return {"url": path, "has_more": more, "next": next_, "limit": limit}


def _limit(params: dict[str, str], default: int, most: int) -> int:
    raw = params.get("limit")
    if raw is None:
        return default
    value = _int(raw, "limit")
    if not 1 <= value <= most:
        raise ProfileError(400, "validation_error", f"limit must be between 1 and {most}")
    return value


def _int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ProfileError(400, "validation_error", f"{name} {raw!r} is not a number") from None


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _basic_user(authorization: str | None) -> str | None:
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = decoded.partition(":")[0]
    return user or None


def open_lookup(config: Config, paths: DataPaths) -> ProfileLookup:
    """A lookup on the identity store `config` asks for (Redis: opened at once; embedded: see
    `store_lookup`)."""
    if config.state.backend != "redis":
        return store_lookup(embedded_path(paths))
    store = open_store(config, paths, readonly=True)
    return ProfileLookup(store.reader, store.owner_of, store.current_profile)


def store_lookup(path: Any) -> ProfileLookup:
    """A lookup on the embedded identity store at `path`, opened read-only on first use (a
    store the processor has not made yet answers nothing)."""
    from headwater.identity.sqlite_store import SqliteIdentityStore

    opened: list[SqliteIdentityStore] = []

    def store() -> SqliteIdentityStore | None:
        if not opened:
            if not path.exists():
                return None
            opened.append(SqliteIdentityStore(path, readonly=True))
        return opened[0]

    def reader(space: str) -> ProfileReading | None:
        s = store()
        return None if s is None else s.reader(space)

    def owner(space: str, ident: Ident) -> str | None:
        s = store()
        return None if s is None else s.owner_of(space, ident)

    def current(space: str, pid: str) -> str | None:
        s = store()
        return None if s is None else s.current_profile(space, pid)

    return ProfileLookup(reader, owner, current)


def access_tokens(workspaces: Any) -> dict[str, str]:
    """Access token -> the space it opens, from `workspaces[].access_tokens`."""
    return {token: ws.name for ws in workspaces for token in ws.access_tokens}
