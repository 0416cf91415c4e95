"""The router role (`headwater router`, and a child of `headwater up`): the destinations of
`headwater.yaml` fed from the `events` log, on the embedded log (every partition, one router
per data directory) or on JetStream (any number of routers sharing the partitions by lease).

Destinations come from the control plane (`headwater.yaml`, applied at start, and the admin
API); a change is applied within `FOLLOW_EVERY_S`: the routes are made again, and the lanes of
changed destinations start again from their committed offsets."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from headwater.accounting.store import AccountingStore, open_accounting
from headwater.config import Config, parse_duration
from headwater.control.destinations import DestinationCatalog
from headwater.control.store import ControlStore
from headwater.delivery.attempts import Backoff
from headwater.delivery.metrics import DeliveryMetrics
from headwater.delivery.router import Router
from headwater.delivery.routes import Route, make_route
from headwater.delivery.state import DeliveryState
from headwater.delivery.states import open_delivery_state
from headwater.log.base import Log
from headwater.log.embedded.log import EmbeddedLog
from headwater.log.embedded.reader import RECENT_BYTES
from headwater.log.factory import append_settings
from headwater.paths import DataPaths

log = logging.getLogger(__name__)

STAGE = "router"  # the lease stage of routers on JetStream
FOLLOW_EVERY_S = 2.0  # how often the control plane is read for changed destinations


def delivery_state(config: Config, paths: DataPaths) -> DeliveryState:
    """The delivery state `delivery.backend` names."""
    d = config.delivery
    if d.backend == "postgres":
        return open_delivery_state("postgres", url=d.url, schema=d.schema)
    return open_delivery_state("embedded", path=paths.root / "state" / "delivery.db")


def backoff_of(config: Config) -> Backoff:
    """The retry backoff `delivery.retry_base` and `delivery.retry_max` set."""
    d = config.delivery
    return Backoff(parse_duration(d.retry_base), parse_duration(d.retry_max))


def make_routes(paths: DataPaths) -> list[Route]:
    """The routes of the enabled destinations of the control plane (those of `headwater.yaml`
    and those made through the admin API). A destination that names no source takes every
    source of its workspace."""
    control = ControlStore(paths.control_db)
    try:
        names: dict[str, list[str]] = {}
        for source in control.list_sources():
            names.setdefault(source.workspace, []).append(source.name)
        stored = DestinationCatalog(control).all()
    finally:
        control.close()
    return [
        make_route(d.workspace, d.config, lambda ws: names.get(ws, []))
        for d in stored
        if d.config.enabled
    ]


Version = tuple[int, ...]


def control_version(paths: DataPaths) -> Version:
    """Changes when destinations or sources change (what `make_routes` reads)."""
    control = ControlStore(paths.control_db)
    try:
        return (control.version(), *DestinationCatalog(control).version())
    finally:
        control.close()


class RouteSet(NamedTuple):
    """Routes, and the control plane's version they were made from."""

    version: Version
    routes: list[Route]


def current_routes(paths: DataPaths) -> RouteSet:
    """The control plane's version, then the routes it holds: a change made in between is
    newer than the version, so `follow_destinations` applies it."""
    version = control_version(paths)
    return RouteSet(version, make_routes(paths))


async def follow_destinations(
    router: Router, paths: DataPaths, seen: Version, every: float = FOLLOW_EVERY_S
) -> None:
    """Apply destinations changed in the control plane (admin API) since `seen`, the version
    the router's routes were made from, within `every` seconds."""
    while True:
        await asyncio.sleep(every)
        try:
            if await asyncio.to_thread(control_version, paths) != seen:
                seen, routes = await asyncio.to_thread(current_routes, paths)
                await router.replace_routes(routes)
                log.info("router: destinations changed; delivering to %d", len(routes))
        except Exception:
            log.exception("router: reading the destinations failed; trying again")


def new_router(
    config: Config,
    paths: DataPaths,
    made: RouteSet,
    events: Log,
    state: DeliveryState,
    accounting: AccountingStore,
) -> tuple[Router, list[asyncio.Task[None]]]:
    """A router over `events`, and its background tasks (metrics snapshots, following the
    control plane's destinations): cancel them when the router stops."""
    metrics = DeliveryMetrics()
    router = Router(
        made.routes, events, state, accounting, backoff=backoff_of(config), metrics=metrics
    )
    loop = asyncio.get_running_loop()
    background = [
        loop.create_task(metrics.flush_forever(paths.metrics_dir)),
        loop.create_task(follow_destinations(router, paths, made.version)),
    ]
    return router, background


async def run_router(
    config: Config, paths: DataPaths, stop: asyncio.Event, *, member: str | None = None
) -> None:
    """Deliver until `stop` is set."""
    made = current_routes(paths)
    if not made.routes:
        log.info("router: no destination is configured yet; waiting for some")
    state = delivery_state(config, paths)
    accounting = open_accounting(config, paths)
    try:
        if config.log.backend == "jetstream":
            from headwater.delivery.fleet import run_on_jetstream

            await run_on_jetstream(config, made, state, accounting, stop, member, paths)
        else:
            await _run_embedded(paths, config, made, state, accounting, stop)
    finally:
        state.close()


async def _run_embedded(
    paths: DataPaths,
    config: Config,
    made: RouteSet,
    state: DeliveryState,
    accounting: AccountingStore,
    stop: asyncio.Event,
) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    with _one_router(paths.root / "router.lock") as got:
        while not got():
            log.info("another router runs on %s; waiting", paths.root)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
            if stop.is_set():
                return
        events = EmbeddedLog(  # every destination's lanes read each batch: decode it once
            "events", paths.log_dir("events"), append_settings(config), recent_bytes=RECENT_BYTES
        )
        router, background = new_router(config, paths, made, events, state, accounting)
        try:
            router.start()
            for p in range(events.partitions):
                router.assign(p)
            log.info("router delivering to %d destinations", len(made.routes))
            await stop.wait()
        finally:
            for task in background:
                task.cancel()
            await router.stop()
            await events.close()


@contextlib.contextmanager
def _one_router(lock: Path) -> Iterator[Callable[[], bool]]:
    """A non-blocking exclusive lock: one embedded router per data directory."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)

    def got() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    try:
        yield got
    finally:
        os.close(fd)
