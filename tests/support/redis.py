"""A Redis key prefix of a test's own on the real server, its keys deleted afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import redis

REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def redis_prefix() -> Iterator[tuple[redis.Redis, str]]:
    """A client and a fresh prefix (`hwtest-...`); every `<prefix>:*` key goes at the end."""
    prefix = f"hwtest-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield client, prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
