"""Routers on JetStream: any number of them share the `events` partitions by lease (the
processors' lease bucket, under the stage `router`); each delivers its partitions to every
destination, and retry jobs live in the shared delivery state (PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from headwater.accounting.store import AccountingStore
from headwater.config import Config
from headwater.delivery.state import DeliveryState
from headwater.paths import DataPaths

if TYPE_CHECKING:
    from headwater.delivery.role import RouteSet

log = logging.getLogger(__name__)

STAGE = "router"


async def run_on_jetstream(
    config: Config,
    made: RouteSet,
    state: DeliveryState,
    accounting: AccountingStore,
    stop: asyncio.Event,
    member: str | None,
    paths: DataPaths,
) -> None:
    """Deliver the partitions this router holds a lease on until `stop` is set, to the routes
    `made` from the control plane (`role.current_routes`)."""
    from headwater.delivery.role import new_router
    from headwater.log.jetstream import JetStreamLog, JetStreamSettings, Names, ensure_log
    from headwater.log.jetstream.leases import LeaseManager, lease_bucket
    from headwater.log.jetstream.streams import connect_until
    from headwater.processing.processor import member_id

    settings = JetStreamSettings.from_config(config)
    me = member or member_id()
    nc = await connect_until(settings.url, f"headwater-router-{me}", stop)
    if nc is None:  # asked to stop while NATS was still out of reach
        return
    try:
        js = nc.jetstream()
        await ensure_log(js, settings, "events")
        events = JetStreamLog("events", nc, settings, js)
        bucket = Names(settings.prefix).leases_bucket
        kv = await lease_bucket(js, bucket, settings.lease_ttl_s, settings.replicas)
        router, background = new_router(config, paths, made, events, state, accounting)
        leases = LeaseManager(
            js,
            kv,
            bucket,
            STAGE,
            me,
            settings.partitions,
            settings.lease_ttl_s,
            on_acquired=router.assign,
            on_lost=router.revoke_now,
        )
        router.holds = leases.holds
        router.start()
        log.info("router %s joined (lease TTL %.1fs)", me, settings.lease_ttl_s)
        try:
            await leases.run(stop)
        finally:
            for task in background:
                task.cancel()
            await router.stop()
            await leases.release_all()
    finally:
        await nc.close()
