"""The gateway's RSGI application: routing, responses, and the worker's lifecycle.

Granian runs one instance per worker process (`create_app` is the factory). Each worker has
its own connection to the log server, write-key cache and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from pathlib import Path
from typing import Any

import msgspec

from headwater.config import Config, load_config, parse_size
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
    read_body,
)
from headwater.gateway.keys import KeyCache
from headwater.gateway.tracking import BATCH_PATHS, SINGLE_PATHS, Tracking
from headwater.log.embedded import EmbeddedLogReader, LogClient
from headwater.log.embedded.protocol import socket_path
from headwater.observability.metrics import (
    GatewayMetrics,
    LogGauges,
    merge,
    read_snapshots,
    render,
)
from headwater.paths import DataPaths

log = logging.getLogger(__name__)

ADMIN_BODY_LIMIT = 64 * 1024
_encoder = msgspec.json.Encoder()
_OK_HEADERS = [("content-type", JSON), ("access-control-allow-origin", "*")]


class GatewayApp:
    """One gateway worker."""

    def __init__(self, config: Config, paths: DataPaths) -> None:
        self.config = config
        self.paths = paths
        self.metrics = GatewayMetrics()
        self.store = ControlStore(paths.control_db)
        self.keys = KeyCache(self.store)
        self.admin = AdminApi(self.store)
        self.writer = LogClient(
            socket_path(paths.log_dir("ingest")), parse_size(config.log.max_pending_bytes)
        )
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

    # -- RSGI lifecycle ------------------------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        tune_gc()
        self._parent = os.getppid()
        self.writer.start(loop)
        self._tasks.append(loop.create_task(self._housekeeping()))

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        for task in self._tasks:
            task.cancel()
        self.writer.close()
        self.metrics.flush(self.paths.metrics_dir)
        if self.reader is not None:
            self.reader.close()
        self.store.close()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != self._parent:  # `headwater up` is gone (killed): so are we
                log.error("the supervising process is gone; stopping this worker")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            try:
                self.keys.refresh()
                self.metrics.flush(self.paths.metrics_dir)
            except Exception:
                log.exception("gateway housekeeping failed")

    # -- routing -------------------------------------------------------------------------------

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        path: str = scope.path
        method: str = scope.method
        route = path if path in SINGLE_PATHS or path in BATCH_PATHS else _route_label(path)
        origin = scope.headers.get("origin")
        try:
            if method == "POST" and path in BATCH_PATHS:
                body = await self.tracking.batch(scope, proto)
            elif method == "POST" and path in SINGLE_PATHS:
                body = await self.tracking.single(scope, proto, SINGLE_PATHS[path])
            elif method == "OPTIONS":
                self.metrics.request(route, 204)
                proto.response_empty(
                    204,
                    preflight_headers(origin, scope.headers.get("access-control-request-headers")),
                )
                return
            else:
                await self._other(scope, proto, method, path, route, origin)
                return
        except HttpError as exc:
            self._error(proto, route, origin, exc)
            return
        except Exception:
            log.exception("unexpected error on %s", path)
            self._error(
                proto,
                route,
                origin,
                HttpError(500, "internal_error", "internal error; nothing was stored"),
            )
            return
        self.metrics.request(route, 200)
        headers = _OK_HEADERS if origin is None else [("content-type", JSON), *cors_headers(origin)]
        proto.response_bytes(200, headers, body)

    async def _other(
        self, scope: Any, proto: Any, method: str, path: str, route: str, origin: str | None
    ) -> None:
        if path == "/v1/m":
            if method != "POST":
                raise HttpError(405, "method_not_allowed", "use POST")
            await read_body(scope, proto, 512 * 1024)
            self.metrics.client_metrics += 1
            self._json(proto, route, 200, SUCCESS_BODY, origin)
        elif path.startswith("/v1/projects/") and path.endswith("/settings"):
            if method != "GET":
                raise HttpError(405, "method_not_allowed", "use GET")
            key = path[len("/v1/projects/") : -len("/settings")]
            self._json(proto, route, 200, self._settings(scope, key), origin)
        elif path == "/healthz":
            self._json(proto, route, 200, b'{"status":"ok"}', origin)
        elif path == "/readyz":
            ready = self.writer.healthy
            status = 200 if ready else 503
            body = b'{"status":"ready"}' if ready else b'{"status":"log unavailable"}'
            self._json(proto, route, status, body, origin)
        elif path == "/metrics":
            self.metrics.request(route, 200)
            proto.response_bytes(
                200, [("content-type", "text/plain; version=0.0.4")], self._metrics_text()
            )
        elif path.startswith("/admin/v1/"):
            self.admin.authorize(scope.headers.get("authorization"))
            body = await read_body(scope, proto, ADMIN_BODY_LIMIT)
            status, out = self.admin.handle(method, path, scope.query_string, body)
            self.keys.refresh()
            self._json(proto, route, status, out, origin)
        elif path in SINGLE_PATHS or path in BATCH_PATHS:
            raise HttpError(405, "method_not_allowed", "use POST")
        else:
            raise HttpError(404, "not_found", f"no such path: {path}")

    # -- responses -----------------------------------------------------------------------------

    def _json(self, proto: Any, route: str, status: int, body: bytes, origin: str | None) -> None:
        self.metrics.request(route, status)
        proto.response_bytes(status, [("content-type", JSON), *cors_headers(origin)], body)

    def _error(self, proto: Any, route: str, origin: str | None, exc: HttpError) -> None:
        self.metrics.request(route, exc.status)
        headers = [("content-type", JSON), *cors_headers(origin)]
        if exc.retry_after is not None:
            headers.append(("retry-after", str(exc.retry_after)))
        with contextlib.suppress(Exception):  # the client may be gone
            proto.response_bytes(exc.status, headers, exc.body())

    def _settings(self, scope: Any, key: str) -> bytes:
        if self.keys.lookup(key) is None:
            raise HttpError(404, reasons.UNKNOWN_SOURCE, "unknown write key")
        public = self.config.gateway.public_url
        if public:
            scheme, _, host = public.rstrip("/").partition("://")
        else:
            scheme, host = scope.scheme, scope.headers.get("host") or scope.authority or ""
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


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a request loop.

    Nearly everything a request allocates is freed by reference counting; the collector only
    has cycles to find (exception tracebacks). Freezing what start-up allocated keeps full
    collections from walking it, and a high first threshold makes young collections rare.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _route_label(path: str) -> str:
    if path.startswith("/v1/projects/"):
        return "/v1/projects/{writeKey}/settings"
    if path.startswith("/admin/v1/"):
        return "/admin/v1"
    if path in ("/v1/m", "/healthz", "/readyz", "/metrics"):
        return path
    return "other"


def create_app() -> GatewayApp:
    """Granian's factory: builds a worker from `HEADWATER_CONFIG` and `HEADWATER_DATA`."""
    config = load_config(os.environ.get("HEADWATER_CONFIG") or None)
    data = os.environ.get("HEADWATER_DATA") or config.data or ".headwater"
    return GatewayApp(config, DataPaths(Path(data)))
