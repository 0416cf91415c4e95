"""The admin API's accounting views when the accounting store does not answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from headwater.accounting.redis_store import RedisAccountingStore
from headwater.accounting.store import Retention
from headwater.control.store import ControlStore
from headwater.gateway.admin import AdminApi
from headwater.gateway.http import HttpError
from tests.support.server import free_port


def test_an_unreachable_accounting_store_is_a_503_not_a_crash(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control.db")
    store.create_workspace("ws")
    store.create_source("ws", "web")
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    api = AdminApi(store, RedisAccountingStore(down, "hwtest-down", Retention(60_000, 60_000)))
    for path in ("/admin/v1/sources/ws%2Fweb/overview", "/admin/v1/sources/ws/web/violations"):
        with pytest.raises(HttpError) as caught:
            api.handle("GET", path.replace("%2F", "/"), "", b"")
        assert (caught.value.status, caught.value.code) == (503, "unavailable")
        assert "accounting store" in str(caught.value)
    store.close()
