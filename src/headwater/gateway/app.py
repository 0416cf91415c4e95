"""The gateway application: routing, responses, and a worker's lifecycle.

`runtime/serve.py` runs one `GatewayApp` per worker process behind `gateway/server.py`'s
HTTP/1.1 connections. Each worker has its own connection to the log server, write-key cache
and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from headwater.accounting import open_accounting
from headwater.config import Config, parse_size
from headwater.control.store import ControlStore
from headwater.events import reasons
from headwater.gateway.admin import AdminApi
from headwater.gateway.http import (
    JSON,
    SUCCESS_BODY,
    ClientAddress,
    HttpError,
    cors_headers,
    preflight_headers,
    request_body,
    too_large,
)
from headwater.gateway.keys import KeyCache
from headwater.gateway.server import Request, Respond, Response, encode_head
from headwater.gateway.tracking import (
    BATCH_PATHS,
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    SINGLE_PATHS,
    Tracking,
)
from headwater.identity.api import PREFIX as PROFILE_PREFIX
from headwater.identity.api import ProfileApi, access_tokens, open_lookup
from headwater.log.embedded import EmbeddedLogReader, LogClient

if TYPE_CHECKING:
    from headwater.log.jetstream import JetStreamAppender
from headwater.log.embedded.protocol import socket_path
from headwater.observability.metrics import (
    GatewayMetrics,
    LogGauges,
    merge,
    read_snapshots,
    render,
)
from headwater.paths import DataPaths
from headwater.process import tune_gc

log = logging.getLogger(__name__)

ADMIN_BODY_LIMIT = 64 * 1024
CLIENT_METRICS_LIMIT = 512 * 1024
OTHER_BODY_LIMIT = 64 * 1024
_encoder = msgspec.json.Encoder()
_OK_HEADERS = [("content-type", JSON), ("access-control-allow-origin", "*")]
_OK_HEAD = encode_head(200, _OK_HEADERS)


class GatewayApp:
    """One gateway worker."""

    def __init__(self, config: Config, paths: DataPaths) -> None:
        self.config = config
        self.paths = paths
        self.metrics = GatewayMetrics()
        self.store = ControlStore(paths.control_db)
        self.keys = KeyCache(self.store)
        self.accounting = open_accounting(config, paths)
        self.admin = AdminApi(self.store, self.accounting)
        self.profiles = ProfileApi(open_lookup(config, paths), access_tokens(config.workspaces))
        self.writer = _writer(config, paths)
        self.reader: EmbeddedLogReader | None = None
        self.tracking = Tracking(
            self.writer,
            config.log.partitions,
            self.keys,
            self.metrics,
            ClientAddress(config.gateway.trusted_proxies),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._parent = os.getppid()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, on_orphaned: Callable[[], None]) -> None:
        """Connect to the log and start housekeeping; `on_orphaned` is called if the
        supervising process disappears (so the worker can stop)."""
        tune_gc()
        self._parent = os.getppid()
        self.writer.start(loop)
        self._tasks.append(loop.create_task(self._housekeeping(on_orphaned)))

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.writer.close()
        self.metrics.flush(self.paths.metrics_dir)
        tally = self.metrics.take_failed()
        try:
            if tally:
                self.accounting.record(tally)
        except Exception as exc:  # stopping anyway: say what the overview will miss
            log.warning("the delivery overview misses the last refusals on ingest: %s", exc)
        self.accounting.close()
        if self.reader is not None:
            self.reader.close()
        self.store.close()

    async def _housekeeping(self, on_orphaned: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != self._parent:  # `headwater up` is gone (killed): so are we
                log.error("the supervising process is gone; stopping this worker")
                on_orphaned()
                return
            try:
                self.keys.refresh()
                self.metrics.flush(self.paths.metrics_dir)
            except Exception:
                log.exception("gateway housekeeping failed")
            await self._flush_accounting()

    async def _flush_accounting(self) -> None:
        """Add the last second's failed-on-ingest counts to the delivery overview."""
        tally = self.metrics.take_failed()
        if not tally:
            return
        try:
            await asyncio.to_thread(self.accounting.record, tally)
        except Exception as exc:  # kept, and tried again next second
            log.warning("cannot write the delivery overview: %s", exc)
            self.metrics.failed.merge(tally)

    # -- what the HTTP server asks -------------------------------------------------------------

    def body_limit(self, method: str, path: str) -> int:
        """The largest body accepted on a path, as sent (compressed or not)."""
        if path in BATCH_PATHS:
            return MAX_BATCH_BYTES
        if path in SINGLE_PATHS:
            return MAX_MESSAGE_BYTES
        if path == "/v1/m":
            return CLIENT_METRICS_LIMIT
        if path.startswith("/admin/v1/"):
            return ADMIN_BODY_LIMIT
        return OTHER_BODY_LIMIT

    def too_large(self, request: Request, limit: int) -> Response:
        """The answer to a body over the limit (sent before reading it)."""
        return self._error(_route(request.path), request.headers.get("origin"), too_large(limit))

    def handle(self, request: Request, respond: Respond) -> None:
        """Answer one request: now, or for the Tracking API once the log has acknowledged."""
        path = request.path
        method = request.method
        route = _route(path)
        origin = request.headers.get("origin")

        def stored(result: bytes | HttpError) -> None:
            if isinstance(result, HttpError):
                respond(self._error(route, origin, result))
                return
            self.metrics.request(route, 200)
            if origin is None:
                respond(Response(200, _OK_HEADERS, result, _OK_HEAD))
            else:
                respond(Response(200, [("content-type", JSON), *cors_headers(origin)], result))

        try:
            if method == "POST" and path in BATCH_PATHS:
                self.tracking.batch(request, stored)
            elif method == "POST" and path in SINGLE_PATHS:
                self.tracking.single(request, SINGLE_PATHS[path], stored)
            elif method == "OPTIONS":
                self.metrics.request(route, 204)
                requested = request.headers.get("access-control-request-headers")
                respond(Response(204, preflight_headers(origin, requested)))
            else:
                respond(self._other(request, route, origin))
        except HttpError as exc:
            respond(self._error(route, origin, exc))
        except Exception:
            log.exception("unexpected error on %s", path)
            error = HttpError(500, "internal_error", "internal error; nothing was stored")
            respond(self._error(route, origin, error))

    def _other(self, request: Request, route: str, origin: str | None) -> Response:
        path = request.path
        method = request.method
        if path == "/v1/m":
            if method != "POST":
                raise HttpError(405, "method_not_allowed", "use POST")
            request_body(request, CLIENT_METRICS_LIMIT)
            self.metrics.client_metrics += 1
            return self._json(route, 200, SUCCESS_BODY, origin)
        if path.startswith("/v1/projects/") and path.endswith("/settings"):
            if method != "GET":
                raise HttpError(405, "method_not_allowed", "use GET")
            key = path[len("/v1/projects/") : -len("/settings")]
            return self._json(route, 200, self._settings(request, key), origin)
        if path == "/healthz":
            return self._json(route, 200, b'{"status":"ok"}', origin)
        if path == "/readyz":
            ready = self.writer.healthy
            status = 200 if ready else 503
            body = b'{"status":"ready"}' if ready else b'{"status":"log unavailable"}'
            return self._json(route, status, body, origin)
        if path == "/metrics":
            self.metrics.request(route, 200)
            return Response(
                200, [("content-type", "text/plain; version=0.0.4")], self._metrics_text()
            )
        if path.startswith(PROFILE_PREFIX):
            auth = request.headers.get("authorization")
            status, out = self.profiles.handle(method, path, request.query, auth)
            return self._json(route, status, out, origin)
        if path.startswith("/admin/v1/"):
            self.admin.authorize(request.headers.get("authorization"))
            body = request_body(request, ADMIN_BODY_LIMIT)
            status, out = self.admin.handle(method, path, request.query, body)
            self.keys.refresh()
            return self._json(route, status, out, origin)
        if path in SINGLE_PATHS or path in BATCH_PATHS:
            raise HttpError(405, "method_not_allowed", "use POST")
        raise HttpError(404, "not_found", f"no such path: {path}")

    # -- responses -----------------------------------------------------------------------------

    def _json(self, route: str, status: int, body: bytes, origin: str | None) -> Response:
        self.metrics.request(route, status)
        return Response(status, [("content-type", JSON), *cors_headers(origin)], body)

    def _error(self, route: str, origin: str | None, exc: HttpError) -> Response:
        self.metrics.request(route, exc.status)
        headers = [("content-type", JSON), *cors_headers(origin)]
        if exc.retry_after is not None:
            headers.append(("retry-after", str(exc.retry_after)))
        return Response(exc.status, headers, exc.body())

    def _settings(self, request: Request, key: str) -> bytes:
        if self.keys.lookup(key) is None:
            raise HttpError(404, reasons.UNKNOWN_SOURCE, "unknown write key")
        public = self.config.gateway.public_url
        if public:
            scheme, _, host = public.rstrip("/").partition("://")
        else:
            scheme, host = "http", request.headers.get("host", "")
        return _encoder.encode(
            {
                "integrations": {
                    "Segment.io": {
                        "apiKey": key,
                        "apiHost": f"{host}/v1",
                        "protocol": scheme,
                        "unbundledIntegrations": [],
                        "addBundledMetadata": True,
                        "maybeBundledConfigIds": {},
                    }
                },
                "plan": {
                    "track": {"__default": {"enabled": True, "integrations": {}}},
                    "identify": {"__default": {"enabled": True}},
                    "group": {"__default": {"enabled": True}},
                },
                "edgeFunction": {},
                "analyticsNextEnabled": True,
                "middlewareSettings": {},
                "enabledMiddleware": {},
                "metrics": {"sampleRate": 0},
                "legacyVideoPluginsEnabled": False,
                "remotePlugins": [],
            }
        )

    def _metrics_text(self) -> bytes:
        self.metrics.flush(self.paths.metrics_dir)
        snapshot = merge(read_snapshots(self.paths.metrics_dir))
        gauges: list[LogGauges] = []
        if self.config.log.backend != "embedded":  # JetStream reports its own stream figures
            return render(snapshot, gauges, self.writer.pending_bytes)
        try:
            if self.reader is None:
                self.reader = EmbeddedLogReader(self.paths.log_dir("ingest"))
            ends = self.reader.end_offsets()
            lag = {}
            for group in self.reader.groups():
                committed = self.reader.committed(group)
                lag[group] = sum(max(0, e - committed.get(p, 0)) for p, e in enumerate(ends))
            gauges.append(LogGauges("ingest", self.reader.size_bytes(), ends, lag))
        except Exception:
            log.exception("reading log gauges failed")
        return render(snapshot, gauges, self.writer.pending_bytes)


def _writer(config: Config, paths: DataPaths) -> LogClient | JetStreamAppender:
    """The gateway's writer for the configured backend."""
    if config.log.backend == "jetstream":
        from headwater.log.jetstream import JetStreamAppender, JetStreamSettings

        return JetStreamAppender(JetStreamSettings.from_config(config))
    return LogClient(socket_path(paths.log_dir("ingest")), parse_size(config.log.max_pending_bytes))


def _route(path: str) -> str:
    """The metrics label of a path (bounded: unknown paths are all "other")."""
    if path in SINGLE_PATHS or path in BATCH_PATHS:
        return path
    if path.startswith("/v1/projects/"):
        return "/v1/projects/{writeKey}/settings"
    if path.startswith("/admin/v1/"):
        return "/admin/v1"
    if path.startswith(PROFILE_PREFIX):
        return "/v1/spaces"
    if path in ("/v1/m", "/healthz", "/readyz", "/metrics"):
        return path
    return "other"
