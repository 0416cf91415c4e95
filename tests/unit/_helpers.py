"""Shared helpers for the unit tests: the gateway's verdict on a message and what readers see."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from headwater.events.schema import decode_for_check
from headwater.events.stamp import Stamp, encode_stamp
from headwater.events.validate import Dropped, check, coerce
from headwater.log.records import decode_batch, encode_run, join_runs

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
RECEIVED_JSON = "2024-05-01T12:00:00Z"


def as_bytes(message: Any) -> bytes:
    return message if isinstance(message, bytes) else json.dumps(message).encode()


def verdict(message: Any, path_type: str | None = None, write_key: str | None = None) -> str:
    """What the gateway decides for one message: "ok" or the reason code it is dropped with.

    Mirrors the gateway: decode for checking, coerce when it is not well-typed, then check.
    """
    msg, lenient = decode_for_check(as_bytes(message))
    if msg is None:
        return "bad_request"
    try:
        if lenient:
            coerce(msg, path_type)
        check(msg, path_type, write_key)
    except Dropped as exc:
        return exc.code
    return "ok"


def stored_bytes(messages: list[Any], **stamp: Any) -> list[bytes]:
    """The stored JSON of `messages` as a reader of the log sees it, given a request's stamp."""
    stamp.setdefault("received_at", RECEIVED)
    run = encode_run("src_test", encode_stamp(Stamp(**stamp)), [as_bytes(m) for m in messages])
    return [record.message for record in decode_batch(join_runs([run]))]


def stored(messages: list[Any], **stamp: Any) -> list[dict[str, Any]]:
    return [json.loads(m) for m in stored_bytes(messages, **stamp)]


def stored_one(message: Any, **stamp: Any) -> dict[str, Any]:
    return stored([message], **stamp)[0]
