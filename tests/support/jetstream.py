"""A unique JetStream namespace per test, on the real NATS server, removed afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import nats
import pytest

from headwater.log.jetstream import JetStreamSettings

NATS_URL = "nats://127.0.0.1:4222"
TEST_MAX_BYTES = 64 * 1024 * 1024  # per log: JetStream reserves it, and tests run side by side


def unique_prefix() -> str:
    return f"hwtest-{uuid.uuid4().hex[:10]}"


async def purge_prefix(prefix: str, url: str = NATS_URL) -> None:
    """Delete every stream (logs and KV buckets) created under `prefix`."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith((f"{prefix}-", f"KV_{prefix}-")):
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture
def js_prefix() -> Iterator[str]:
    """A stream/bucket prefix of this test's own; everything under it is deleted after."""
    prefix = unique_prefix()
    yield prefix
    asyncio.run(purge_prefix(prefix))


@pytest.fixture
def js_settings(js_prefix: str) -> JetStreamSettings:
    return namespace_settings(js_prefix, partitions=4, lease_ttl_s=3.0)


def namespace_settings(prefix: str, partitions: int = 4, **kw: float) -> JetStreamSettings:
    """Settings for a test's own namespace, reserving little storage."""
    return JetStreamSettings(
        url=NATS_URL, prefix=prefix, partitions=partitions, max_bytes=TEST_MAX_BYTES, **kw
    )


def jetstream_config(prefix: str, partitions: int = 4, lease_ttl: str = "3s") -> str:
    """The `log:` section of a headwater.yaml on this test's JetStream namespace."""
    return (
        f"log: {{backend: jetstream, url: '{NATS_URL}', partitions: {partitions}, "
        f"replicas: 1, prefix: {prefix}, lease_ttl: {lease_ttl}, "
        f"retention: {{max_bytes: {TEST_MAX_BYTES}}}}}\n"
    )
