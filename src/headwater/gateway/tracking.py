"""The Tracking API handlers: batch and single-message paths, settings, client metrics."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from headwater.control.store import KeyGrant
from headwater.gateway import reasons
from headwater.gateway.http import ClientAddress, HttpError, basic_auth_key, read_body
from headwater.gateway.keys import KeyCache
from headwater.gateway.messages import (
    BodyError,
    Item,
    decode_batch,
    decode_single,
    encode_message,
)
from headwater.gateway.normalize import Dropped, RequestStamp, coerce, normalize
from headwater.log.base import LogAppender, LogError
from headwater.log.records import Run, encode_run, partition_for
from headwater.observability.metrics import GatewayMetrics

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
STAMP_ALLOWANCE = 1024  # what stamping may add to a message before the size check

SINGLE_PATHS = {
    "/v1/identify": "identify", "/v1/track": "track", "/v1/page": "page",
    "/v1/screen": "screen", "/v1/group": "group", "/v1/alias": "alias",
    "/v1/i": "identify", "/v1/t": "track", "/v1/p": "page",
    "/v1/s": "screen", "/v1/g": "group", "/v1/a": "alias",
}
BATCH_PATHS = frozenset({"/v1/batch", "/v1/b", "/v1/import"})

_encoder = msgspec.json.Encoder()


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

    async def batch(self, scope: Any, proto: Any) -> bytes:
        """`/v1/batch`, `/v1/b`, `/v1/import`."""
        started = time.perf_counter()
        header_key, header_grant = self._header_grant(scope)
        body = await read_body(scope, proto, MAX_BATCH_BYTES)
        try:
            items, sent_at, body_key, context, integrations = decode_batch(body)
        except BodyError as exc:
            if exc.code == reasons.EMPTY_BATCH:
                self.metrics.drop(header_grant.source_id if header_grant else "",
                                  reasons.EMPTY_BATCH)
            raise HttpError(400, exc.code, str(exc)) from None
        if header_grant is None:
            first_key = _first_item_key(items)
            grant = self._body_grant(body_key if body_key is not None else first_key, len(items))
            key = body_key if body_key is not None else first_key
        else:
            grant = header_grant
            key = header_key
        if not items:
            self.metrics.drop(grant.source_id, reasons.EMPTY_BATCH)
            raise HttpError(400, reasons.EMPTY_BATCH, "the batch holds no messages")
        if len(items) > MAX_BATCH_MESSAGES:
            raise HttpError(400, "too_many_messages",
                            f"a batch holds at most {MAX_BATCH_MESSAGES} messages")
        stamp = RequestStamp.build(
            datetime.now(UTC), sent_at=sent_at, ip=self.clients.of(scope), context=context,
            integrations=integrations, write_key=key,
        )
        return await self._store(items, stamp, grant, started, MAX_MESSAGE_BYTES + STAMP_ALLOWANCE)

    async def single(self, scope: Any, proto: Any, message_type: str) -> bytes:
        """`/v1/track`, `/v1/t` and the other single-message paths."""
        started = time.perf_counter()
        header_key, header_grant = self._header_grant(scope)
        body = await read_body(scope, proto, MAX_MESSAGE_BYTES)
        try:
            item = decode_single(body)
        except BodyError as exc:
            raise HttpError(400, exc.code, str(exc)) from None
        assert item.message is not None
        if header_grant is None:
            key = item.message.writeKey
            grant = self._body_grant(key, 1)
        else:
            grant = header_grant
            key = header_key
        stamp = RequestStamp.build(
            datetime.now(UTC), ip=self.clients.of(scope), path_type=message_type,
            write_key=key if type(key) is str else None,
        )
        return await self._store([item], stamp, grant, started, MAX_MESSAGE_BYTES + STAMP_ALLOWANCE)

    async def _store(
        self, items: list[Item], stamp: RequestStamp, grant: KeyGrant, started: float,
        max_bytes: int,
    ) -> bytes:
        partitions = self.partitions
        per_partition: list[list[bytes] | None] = [None] * partitions
        source_id = grant.source_id
        dropped: list[dict[str, Any]] | None = None
        accepted = 0
        for index, item in enumerate(items):
            msg = item.message
            try:
                if msg is None:
                    raise Dropped(reasons.BAD_REQUEST, item.problem or "not a message")
                if item.lenient:
                    coerce(msg, stamp.path_type)
                message_id = normalize(msg, stamp)
                data = encode_message(msg, item.extras)
                if len(data) > max_bytes:
                    raise Dropped(reasons.MESSAGE_TOO_LARGE,
                                  f"a message is at most {MAX_MESSAGE_BYTES} bytes")
            except Dropped as exc:
                self.metrics.drop(source_id, exc.code)
                if dropped is None:
                    dropped = []
                dropped.append({"index": index, "code": exc.code, "message": exc.detail})
                continue
            p = partition_for(message_id, partitions)
            bucket = per_partition[p]
            if bucket is None:
                per_partition[p] = [data]
            else:
                bucket.append(data)
            accepted += 1
        if accepted:
            runs = [Run(p, encode_run(source_id, msgs), len(msgs))
                    for p, msgs in enumerate(per_partition) if msgs is not None]
            try:
                await self.writer.append(runs, sum(len(r.payload) for r in runs))
            except LogError as exc:
                self.metrics.reject(exc.code, accepted)
                raise HttpError(exc.status, exc.code, str(exc),
                                retry_after=exc.retry_after) from None
            self.metrics.accept(source_id, accepted)
            self.metrics.observe_ack(time.perf_counter() - started)
        if dropped is None:
            return b'{"success":true}'
        return _encoder.encode(Outcome(True, dropped))

    def _header_grant(self, scope: Any) -> tuple[str | None, KeyGrant | None]:
        """The write key of the Authorization header and its grant; (None, None) if the
        header carries no write key (then the body must)."""
        header = scope.headers.get("authorization")
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

    def _body_grant(self, key: object, messages: int) -> KeyGrant:
        grant = self.keys.lookup(key)
        if grant is None:
            self.metrics.drop("", reasons.UNKNOWN_SOURCE, max(messages, 1))
            if key is None:
                raise HttpError(401, reasons.UNKNOWN_SOURCE,
                                "no write key: send Authorization: Basic base64(writeKey:) or "
                                "writeKey in the body")
            raise HttpError(401, reasons.UNKNOWN_SOURCE, "unknown or disabled write key")
        return grant


def _first_item_key(items: list[Item]) -> Any:
    for item in items:
        if item.message is not None and type(item.message.writeKey) is str:
            return item.message.writeKey
    return None
