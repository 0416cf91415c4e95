"""The processor role: `ingest` -> steps -> `events`, embedded or on JetStream.

Embedded (`headwater up`, or `headwater processor` on an embedded config): one processor owns
every partition (a lock file under the data directory makes a second one wait), appends to the
`events` log directly and runs its retention. On JetStream: any number of processors share the
partitions through leases (`LeaseManager`); each works only on the partitions it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headwater.accounting import AccountingStore, open_accounting
from headwater.config import Config, parse_duration, parse_size
from headwater.control.identity import IdentityCatalog
from headwater.control.plans import PlanCatalog
from headwater.control.store import ControlStore
from headwater.identity.resolver import IdentityResolver
from headwater.identity.settings import IdentitySettings, identity_settings
from headwater.identity.step import IdentityStep
from headwater.identity.stores import open_store
from headwater.log.base import Log
from headwater.log.embedded.log import EmbeddedLog
from headwater.log.embedded.retention import enforce_retention
from headwater.log.factory import append_settings
from headwater.paths import DataPaths
from headwater.processing.dedupe import Dedupe, DedupeStore, open_dedupe_store
from headwater.processing.dedupe.step import now_ms
from headwater.processing.plans import TrackingPlans, plans_from_catalog
from headwater.processing.runtime import (
    StageMetrics,
    StageRunner,
    StageSpec,
    Step,
    flush_metrics_forever,
)
from headwater.processing.steps import ProfileKey

log = logging.getLogger(__name__)

STAGE = "processor"
# The processor's steps so far only route on ids: they read messages as stored and leave each
# run's stamp for the readers of `events` to apply (decode only what you route on).
PASS_THROUGH_STAMPED = False
RETENTION_EVERY_S = 30.0
EXPIRE_EVERY_S = 60.0
PLANS_EVERY_S = 2.0


def processor_steps(
    dedupe: DedupeStore | None, plans: TrackingPlans, identity: Step | None = None
) -> list[Step]:
    """The processor's steps, in order."""
    steps: list[Step] = [] if dedupe is None else [Dedupe(dedupe)]
    return [*steps, plans, *([identity] if identity is not None else []), ProfileKey()]


def open_identity(config: Config, paths: DataPaths, control: ControlStore) -> IdentityStep:
    """The identity step: it resolves the workspaces whose settings (in the control plane, from
    headwater.yaml or the admin API) turn identity resolution on, and follows changes. Its
    store is opened when a workspace first turns it on (`close_identity` closes it)."""
    catalog = IdentityCatalog(control)
    settings: dict[str, IdentitySettings] = {}
    workspace_of: dict[str, str] = {}
    step = IdentityStep(None, workspace_of.get)

    def follow() -> None:  # settings changed, sources made later: resolved from now on
        enabled = {n: c for n, c in catalog.all().items() if c.enabled}
        if enabled and step.resolver is None:
            step.resolver = IdentityResolver(open_store(config, paths), settings.__getitem__)
        settings.clear()
        settings.update({name: identity_settings(c) for name, c in enabled.items()})
        found = {s.id: s.workspace for s in control.list_sources() if s.workspace in settings}
        workspace_of.clear()
        workspace_of.update(found)
        step.retention_ms = {
            name: int(parse_duration(c.recent_events) * 1000) for name, c in enabled.items()
        }
        if step.resolver is not None and hasattr(step.resolver.store, "retention_ms"):
            step.resolver.store.retention_ms = dict(step.retention_ms)  # Redis: the keys' TTL
        step.active = bool(enabled)

    follow()
    step.follow_sources = follow
    return step


def close_identity(step: IdentityStep) -> None:
    if step.resolver is not None:
        step.resolver.store.close()


@dataclass
class Parts:
    """What the processor's stage is made of besides its logs."""

    steps: list[Step]
    accounting: AccountingStore


async def _follow_plans(
    catalog: PlanCatalog, step: TrackingPlans, also: Callable[[], None] | None = None
) -> None:
    """Apply tracking plans changed in the control plane (admin API) within seconds (and call
    `also`, for what else follows the control plane)."""
    seen = catalog.store.version()
    while True:
        await asyncio.sleep(PLANS_EVERY_S)
        try:
            version = catalog.store.version()
            if version != seen:
                step.reload(plans_from_catalog(catalog))
                if also is not None:
                    also()
                seen = version
                log.info("tracking plans reloaded (control plane version %d)", version)
        except Exception:
            log.exception("reloading tracking plans failed")


def member_id() -> str:
    """A unique, readable id for this process among a stage's members."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:32]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def run_processor(
    config: Config,
    paths: DataPaths,
    stop: asyncio.Event,
    *,
    member: str | None = None,
    metrics: StageMetrics | None = None,
) -> None:
    """Run the processor until `stop` is set."""
    metrics = metrics or StageMetrics(STAGE)
    loop = asyncio.get_running_loop()
    control = ControlStore(paths.control_db)
    catalog = PlanCatalog(control)
    plans = TrackingPlans(plans_from_catalog(catalog))
    dedupe = open_dedupe_store(config, paths)
    accounting = open_accounting(config, paths)
    tasks = [
        loop.create_task(flush_metrics_forever(metrics, paths.metrics_dir)),
        loop.create_task(_expire_forever(accounting, dedupe)),
    ]
    step = open_identity(config, paths, control)
    tasks.append(loop.create_task(_follow_plans(catalog, plans, step.follow_sources)))
    tasks.append(loop.create_task(_expire_events_forever(step)))
    parts = Parts(processor_steps(dedupe, plans, step), accounting)
    try:
        if config.log.backend == "jetstream":
            await _run_jetstream(config, stop, member or member_id(), metrics, parts)
        else:
            await _run_embedded(config, paths, stop, metrics, parts)
    finally:
        for task in tasks:
            task.cancel()
        if dedupe is not None:
            dedupe.close()
        close_identity(step)
        accounting.close()
        control.close()
        with contextlib.suppress(OSError):
            metrics.flush(paths.metrics_dir)


async def _expire_forever(accounting: AccountingStore, dedupe: DedupeStore | None) -> None:
    while True:
        await asyncio.sleep(EXPIRE_EVERY_S)
        for store in (accounting, dedupe):
            try:
                if store is not None:
                    await asyncio.to_thread(store.expire, now_ms())
            except Exception:
                log.exception("expiring what is past retention failed")


async def _expire_events_forever(step: IdentityStep) -> None:
    """Forget what profiles keep of events past each workspace's `recent_events`."""
    while True:
        await asyncio.sleep(EXPIRE_EVERY_S)
        if step.resolver is None:
            continue
        store = step.resolver.store
        for workspace, keep_ms in step.retention_ms.items():
            try:
                await asyncio.to_thread(store.expire, workspace, now_ms() - keep_ms)
            except Exception:
                log.exception("expiring the recent events of profiles failed")


async def _run_embedded(
    config: Config,
    paths: DataPaths,
    stop: asyncio.Event,
    metrics: StageMetrics,
    parts: Parts,
) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(paths.root / "processor.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:  # one embedded processor per data directory; a second one waits its turn
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                log.info("another processor runs on %s; waiting", paths.root)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)
                if stop.is_set():
                    return
        settings = append_settings(config)
        ingest = EmbeddedLog("ingest", paths.log_dir("ingest"), settings)
        events = EmbeddedLog("events", paths.log_dir("events"), settings)
        runner = StageRunner(
            StageSpec(
                STAGE,
                parts.steps,
                ingest,
                events,
                merge_units=True,
                stamped=PASS_THROUGH_STAMPED,
                accounting=parts.accounting,
            ),
            metrics,
        )
        try:
            for p in range(ingest.partitions):
                runner.assign(p)
            retention = asyncio.get_running_loop().create_task(
                _retention_forever(config, paths.log_dir("events"))
            )
            await stop.wait()
            retention.cancel()
        finally:
            await runner.stop()
            await ingest.close()
            await events.close()
    finally:
        os.close(lock_fd)  # releases the lock


async def _retention_forever(config: Config, root: Path) -> None:
    max_age_ms = int(parse_duration(config.log.retention.max_age) * 1000)
    max_bytes = parse_size(config.log.retention.max_bytes)
    while True:
        await asyncio.sleep(RETENTION_EVERY_S)
        try:
            await asyncio.to_thread(
                enforce_retention, root, max_age_ms=max_age_ms, max_bytes=max_bytes
            )
        except Exception:
            log.exception("retention of the events log failed")


async def _run_jetstream(
    config: Config,
    stop: asyncio.Event,
    member: str,
    metrics: StageMetrics,
    parts: Parts,
) -> None:
    from headwater.log.jetstream import JetStreamLog, JetStreamSettings, Names, ensure_log
    from headwater.log.jetstream.leases import LeaseManager, lease_bucket
    from headwater.log.jetstream.streams import connect_until

    settings = JetStreamSettings.from_config(config)
    nc = await connect_until(settings.url, f"headwater-processor-{member}", stop)
    if nc is None:  # asked to stop while NATS was still out of reach
        return
    try:
        js = nc.jetstream(publish_async_max_pending=20_000)
        for name in ("ingest", "events"):
            await ensure_log(js, settings, name)
        ingest: Log = JetStreamLog("ingest", nc, settings, js)
        events: Log = JetStreamLog("events", nc, settings, js)
        bucket = Names(settings.prefix).leases_bucket
        kv = await lease_bucket(js, bucket, settings.lease_ttl_s, settings.replicas)
        spec = StageSpec(
            STAGE,
            parts.steps,
            ingest,
            events,
            merge_units=False,
            stamped=PASS_THROUGH_STAMPED,
            accounting=parts.accounting,
        )
        runner = StageRunner(spec, metrics)
        leases = LeaseManager(
            js,
            kv,
            bucket,
            STAGE,
            member,
            settings.partitions,
            settings.lease_ttl_s,
            on_acquired=runner.assign,
            on_lost=runner.revoke_now,
        )
        spec.holds = leases.holds
        log.info("processor %s joined (lease TTL %.1fs)", member, settings.lease_ttl_s)
        try:
            await leases.run(stop)
        finally:
            await runner.stop()
            await leases.release_all()
    finally:
        await nc.close()
