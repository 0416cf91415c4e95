"""The identifiers of a message, as identity resolution matches on them.

| type | from |
|---|---|
| `user_id` | `userId`; for `alias`, also `previousId` when it is a known user id |
| `anonymous_id` | `anonymousId`; for `alias`, `previousId` otherwise |
| `email` | `traits.email`, `context.traits.email` |
| `ios.id`, `android.id` (else `device_id`) | `context.device.id`, by `context.device.type` |
| `ios.idfa`, `android.idfa` (else `advertising_id`) | `context.device.advertisingId` |
| `ios.push_token`, `android.push_token` (else `push_token`) | `context.device.token` |
| any `type` | `context.externalIds: [{id, type, collection: "users"}]` |

`groupId` is not an identifier of a person (two colleagues share it): it becomes a link of the
profile (`links`), never a reason to merge. Values are strings (numbers are written as JSON
writes them); empty values are ignored.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec


class Ident(NamedTuple):
    """One identifier: its type and value."""

    kind: str
    value: str


class _Device(msgspec.Struct):
    id: Any = None
    advertisingId: Any = None
    token: Any = None
    type: Any = None


class _ExternalId(msgspec.Struct):
    id: Any = None
    type: Any = None
    collection: Any = "users"


class _Context(msgspec.Struct):
    traits: Any = None
    device: _Device | None = None
    externalIds: list[_ExternalId] | None = None


class IdentityFields(msgspec.Struct):
    """What identity resolution reads of a message."""

    type: Any = None
    messageId: Any = None
    userId: Any = None
    anonymousId: Any = None
    previousId: Any = None
    groupId: Any = None
    event: Any = None
    timestamp: Any = None
    traits: Any = None
    context: _Context | None = None


_decoder = msgspec.json.Decoder(IdentityFields)


def decode_identity(message: bytes) -> IdentityFields | None:
    """The identity fields of a message (None: not a JSON object of the expected shape)."""
    try:
        return _decoder.decode(message)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def text(value: Any) -> str | None:
    """An identifier value as text (None: not usable)."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return msgspec.json.encode(value).decode()
    return None


def _platform(device: _Device) -> str:
    kind = device.type.lower() if isinstance(device.type, str) else ""
    return kind if kind in ("ios", "android") else ""


def identifiers(fields: IdentityFields) -> list[Ident]:
    """The message's identifiers, each once, in the order of the table above (`alias`'s
    `previousId` is left to the caller, which knows whether it is a known user id)."""
    found: list[Ident] = []
    # the usual message: string ids, nothing else to look at (checked without a call each)
    user, anon = fields.userId, fields.anonymousId
    if type(user) is str and user.strip():
        found.append(Ident("user_id", user))
    elif user is not None:
        _add(found, "user_id", user)
    if type(anon) is str and anon.strip():
        found.append(Ident("anonymous_id", anon))
    elif anon is not None:
        _add(found, "anonymous_id", anon)
    ctx = fields.context
    if fields.traits is None and (
        ctx is None or (ctx.traits is None and ctx.device is None and not ctx.externalIds)
    ):
        return found
    if isinstance(fields.traits, dict):
        _add(found, "email", fields.traits.get("email"))
    if ctx is not None:
        if isinstance(ctx.traits, dict):
            _add(found, "email", ctx.traits.get("email"))
        if ctx.device is not None:
            d = ctx.device
            platform = _platform(d)
            _add(found, f"{platform}.id" if platform else "device_id", d.id)
            _add(found, f"{platform}.idfa" if platform else "advertising_id", d.advertisingId)
            _add(found, f"{platform}.push_token" if platform else "push_token", d.token)
        for ext in ctx.externalIds or ():
            kind = text(ext.type)
            if kind is not None and ext.collection in (None, "users"):
                _add(found, kind.strip().lower(), ext.id)
    return found


def _add(found: list[Ident], kind: str, raw: Any) -> None:
    value = text(raw)
    if value is not None:
        ident = Ident(kind, value)
        if ident not in found:
            found.append(ident)


def group_of(fields: IdentityFields, kind: Any = None) -> str | None:
    """The group a `group` call links the profile to (`kind` as for `traits_of`)."""
    return text(fields.groupId) if (fields.type or kind) == "group" else None


def traits_of(fields: IdentityFields, kind: Any = None) -> dict[str, Any]:
    """The traits a message sets on its profile: `context.traits`, then an `identify` call's
    own `traits` over them (a `group` call's traits describe the group, not the person).
    `kind`: the call type when the message has none (its path says it)."""
    out: dict[str, Any] = {}
    if fields.context is not None and isinstance(fields.context.traits, dict):
        out.update(fields.context.traits)
    if (fields.type or kind) == "identify" and isinstance(fields.traits, dict):
        out.update(fields.traits)
    return out
