"""The Tracking API handlers: batch and single-message paths.

A request is validated message by message (a bad message is dropped and counted with its reason
code; the others are stored), then every accepted message is stored exactly as the client sent
it, in the partition of its `messageId`, next to the request's `Stamp`. The request is
acknowledged once the log has made it durable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import UNSET, Raw
from xxhash import xxh3_64_intdigest

from headwater.control.store import KeyGrant
from headwater.events import reasons
from headwater.events.schema import (
    BodyError,
    decode_checks,
    decode_envelope,
    decode_for_check,
    decode_object,
    decode_single,
)
from headwater.events.stamp import Stamp, encode_stamp
from headwater.events.validate import Dropped, check, coerce
from headwater.gateway.http import (
    SUCCESS_BODY,
    ClientAddress,
    HttpError,
    basic_auth_key,
    request_body,
)
from headwater.gateway.keys import KeyCache
from headwater.gateway.server import Request
from headwater.log.base import LogAppender, LogError
from headwater.log.records import Run, encode_run
from headwater.observability.metrics import GatewayMetrics

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500

SINGLE_PATHS = {
    "/v1/identify": "identify",
    "/v1/track": "track",
    "/v1/page": "page",
    "/v1/screen": "screen",
    "/v1/group": "group",
    "/v1/alias": "alias",
    "/v1/i": "identify",
    "/v1/t": "track",
    "/v1/p": "page",
    "/v1/s": "screen",
    "/v1/g": "group",
    "/v1/a": "alias",
}
BATCH_PATHS = frozenset({"/v1/batch", "/v1/b", "/v1/import"})

_encoder = msgspec.json.Encoder()

Done = Callable[[bytes | HttpError], None]
"""Called once with the response body, or with the error to answer instead."""


class Outcome(msgspec.Struct):
    """The response body when messages were dropped: still a success for the client (the
    rest are stored), with what was dropped and why."""

    success: bool
    dropped: list[dict[str, Any]]


class Tracking:
    """Accepts Tracking API requests and acknowledges them once the log has them."""

    def __init__(
        self,
        writer: LogAppender,
        partitions: int,
        keys: KeyCache,
        metrics: GatewayMetrics,
        clients: ClientAddress,
    ) -> None:
        self.writer = writer
        self.partitions = partitions
        self.keys = keys
        self.metrics = metrics
        self.clients = clients
        self._auth_cache: dict[str, str] = {}

    def batch(self, request: Request, done: Done) -> None:
        """`/v1/batch`, `/v1/b`, `/v1/import`: raises `HttpError` for a request it refuses
        outright, else calls `done` with the response body, or the error, once the log has
        answered."""
        started = time.perf_counter()
        header_key, header_grant = self._header_grant(request)
        body = request_body(request, MAX_BATCH_BYTES)
        try:
            envelope, body = decode_envelope(body)
        except BodyError as exc:
            if exc.code == reasons.EMPTY_BATCH:
                self.metrics.drop(
                    header_grant.source_id if header_grant else "", reasons.EMPTY_BATCH
                )
            raise HttpError(400, exc.code, str(exc)) from None
        raws: list[Raw] = envelope.batch  # type: ignore[assignment]
        if len(raws) > MAX_BATCH_MESSAGES:
            raise HttpError(
                400, "too_many_messages", f"a batch holds at most {MAX_BATCH_MESSAGES} messages"
            )
        checks = decode_checks(body)
        if checks is None:  # some message is not well-typed: look at each on its own
            decoded = [decode_for_check(raw) for raw in raws]
            messages = [m for m, _lenient in decoded]
            lenient: list[bool] | None = [flag for _m, flag in decoded]
        else:
            messages, lenient = checks, None
        if header_grant is None:
            key = envelope.writeKey if type(envelope.writeKey) is str else _first_key(messages)
            grant = self._body_grant(key)
        else:
            grant, key = header_grant, header_key
        if not messages:
            self.metrics.drop(grant.source_id, reasons.EMPTY_BATCH)
            raise HttpError(400, reasons.EMPTY_BATCH, "the batch holds no messages")
        stamp = Stamp(
            datetime.now(UTC),
            envelope.sentAt if type(envelope.sentAt) is str else None,
            self.clients.of(request),
            None if envelope.context is UNSET else bytes(envelope.context),
            None if envelope.integrations is UNSET else bytes(envelope.integrations),
        )
        self._store(raws, messages, lenient, stamp, grant, key, started, done)

    def single(self, request: Request, message_type: str, done: Done) -> None:
        """`/v1/track`, `/v1/t` and the other single-message paths (as `batch`)."""
        started = time.perf_counter()
        header_key, header_grant = self._header_grant(request)
        body = request_body(request, MAX_MESSAGE_BYTES)
        try:
            message, lenient, body = decode_single(body)
        except msgspec.DecodeError as exc:
            raise HttpError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if message is None:
            raise HttpError(400, reasons.BAD_REQUEST, "the body must be a JSON object")
        if header_grant is None:
            key = message.writeKey if type(message.writeKey) is str else None
            grant = self._body_grant(key)
        else:
            grant, key = header_grant, header_key
        stamp = Stamp(datetime.now(UTC), None, self.clients.of(request), path_type=message_type)
        self._store([Raw(body)], [message], [lenient], stamp, grant, key, started, done)

    def _store(
        self,
        raws: list[Raw],
        messages: list[Any],
        lenient: list[bool] | None,
        stamp: Stamp,
        grant: KeyGrant,
        key: str | None,
        started: float,
        done: Done,
    ) -> None:
        """Check every message; store the valid ones (`lenient[i]`: message i needs `coerce`,
        None: none does) and call `done` with the response body once they are durable."""
        partitions = self.partitions
        buckets: dict[int, list[Any]] = {}
        path_type = stamp.path_type
        source_id = grant.source_id
        dropped: list[dict[str, Any]] | None = None
        for index, msg in enumerate(messages):
            raw: Any = raws[index]
            try:
                if msg is None:
                    raise Dropped(reasons.BAD_REQUEST, "a message must be a JSON object")
                if len(raw) > MAX_MESSAGE_BYTES:
                    raise Dropped(
                        reasons.MESSAGE_TOO_LARGE, f"a message is at most {MAX_MESSAGE_BYTES} bytes"
                    )
                if lenient is not None and lenient[index]:
                    coerce(msg, path_type)
                message_id = check(msg, path_type, key)
            except Dropped as exc:
                self.metrics.drop(source_id, exc.code)
                if dropped is None:
                    dropped = []
                dropped.append({"index": index, "code": exc.code, "message": exc.detail})
                continue
            if not message_id:
                message_id, raw = _with_message_id(raw, msg)
            # partition_for(), inlined: this runs for every event
            p = xxh3_64_intdigest(message_id.encode()) % partitions
            bucket = buckets.get(p)
            if bucket is None:
                buckets[p] = [raw]
            else:
                bucket.append(raw)
        accepted = len(messages) - (0 if dropped is None else len(dropped))
        body = SUCCESS_BODY if dropped is None else _encoder.encode(Outcome(True, dropped))
        if not accepted:
            done(body)
            return
        stamp_bytes = encode_stamp(stamp)
        runs = [
            Run(p, encode_run(source_id, stamp_bytes, msgs), len(msgs))
            for p, msgs in buckets.items()
        ]
        metrics = self.metrics

        def durable(error: LogError | None) -> None:
            if error is None:
                metrics.accept(source_id, accepted)
                metrics.observe_ack(time.perf_counter() - started)
                done(body)
            else:
                metrics.reject(error.code, accepted)
                done(HttpError(error.status, error.code, str(error), retry_after=error.retry_after))

        self.writer.submit(runs, sum(len(r.payload) for r in runs), durable)

    def _header_grant(self, request: Request) -> tuple[str | None, KeyGrant | None]:
        """The write key of the Authorization header and its grant; (None, None) if the
        header carries no write key (then the body must)."""
        header = request.headers.get("authorization")
        if header is None:
            return None, None
        key = self._auth_cache.get(header)
        if key is None:
            key = basic_auth_key(header)
            if key is None:
                return None, None
            if len(self._auth_cache) >= 4096:
                self._auth_cache.clear()
            self._auth_cache[header] = key
        grant = self.keys.lookup(key)
        if grant is None:
            self.metrics.drop("", reasons.UNKNOWN_SOURCE)
            raise HttpError(401, reasons.UNKNOWN_SOURCE, "unknown or disabled write key")
        return key, grant

    def _body_grant(self, key: str | None) -> KeyGrant:
        grant = self.keys.lookup(key)
        if grant is None:
            self.metrics.drop("", reasons.UNKNOWN_SOURCE)  # counted per request, as for headers
            if key is None:
                raise HttpError(
                    401,
                    reasons.UNKNOWN_SOURCE,
                    "no write key: send Authorization: Basic base64(writeKey:) or "
                    "writeKey in the body",
                )
            raise HttpError(401, reasons.UNKNOWN_SOURCE, "unknown or disabled write key")
        return grant


def _first_key(messages: list[Any]) -> str | None:
    for msg in messages:
        if msg is not None and type(msg.writeKey) is str:
            return msg.writeKey
    return None


def _with_message_id(raw: Any, msg: Any) -> tuple[str, bytes]:
    """Give a message without a messageId one (a UUID), in its stored bytes."""
    message_id = f"hw-{uuid.uuid4()}"
    encoded_id = _encoder.encode(message_id)
    if msg.messageId is UNSET:  # no such key: splice it in
        data = bytes(raw)
        return message_id, b'{"messageId":' + encoded_id + b"," + data[data.index(b"{") + 1 :]
    fields = decode_object(raw) or {}
    fields["messageId"] = Raw(encoded_id)
    return message_id, _encoder.encode(fields)
