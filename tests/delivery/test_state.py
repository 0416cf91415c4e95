"""The delivery state contract on both backends: SQLite in the test's directory, PostgreSQL on
the real server (each test in a schema of its own, dropped after); and what only PostgreSQL
does: report an unreachable server, and reconnect after losing its connection."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from headwater.delivery.postgres_state import (
    DeliveryStateUnavailable,
    PostgresDeliveryState,
    redact,
)
from headwater.delivery.states import open_delivery_state
from tests.delivery.state_contract import NOW, Opener, StateContract, job

URLS = ("postgresql://root@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def postgres_url() -> str:
    """The first of `URLS` that connects (the test server trusts local users)."""
    for url in URLS:
        try:
            psycopg.connect(url, connect_timeout=3).close()
        except psycopg.OperationalError:
            continue
        return url
    return URLS[0]  # the tests will say why it cannot be reached


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema of this test's own, dropped after."""
    schema = f"hwtest_{uuid.uuid4().hex[:12]}"
    yield schema
    with psycopg.connect(postgres_url(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["embedded", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "embedded":
        path = tmp_path / "state" / "delivery.db"
        return lambda: open_delivery_state("embedded", path=path)
    schema = request.getfixturevalue("pg_schema")
    return lambda: open_delivery_state("postgres", url=postgres_url(), schema=schema)


class TestDeliveryState(StateContract):
    pass


def test_unreachable_postgres_is_reported_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryStateUnavailable) as info:
        open_delivery_state("postgres", url="postgresql://root:s3cret@127.0.0.1:1/test")
    assert time.monotonic() - started < 6
    assert "postgresql://root:***@127.0.0.1:1/test" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_redact() -> None:
    assert redact("postgresql://u:pw@h:5432/db?sslmode=require") == (
        "postgresql://u:***@h:5432/db?sslmode=require"
    )
    assert redact("postgresql://u@h/db?password=pw&x=1") == "postgresql://u@h/db?password=***&x=1"
    assert redact("host=h user=u password='p w' dbname=d") == (
        "host=h user=u password=*** dbname=d"
    )
    assert redact("postgresql://h/db") == "postgresql://h/db"


def test_postgres_reconnects_after_losing_its_connection(pg_schema: str) -> None:
    state = PostgresDeliveryState(postgres_url(), pg_schema)
    try:
        (added,) = state.add([job(0)])
        assert state._conn is not None
        pid = state._conn.info.backend_pid
        with psycopg.connect(postgres_url(), autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchall()
        assert killed == [(True,)]
        assert state.due("dest_a", NOW, 10) == [added]
        assert state.pending() == {"dest_a": 1}
        assert state._conn.info.backend_pid != pid
    finally:
        state.close()


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown delivery state backend"):
        open_delivery_state("redis")
    with pytest.raises(ValueError, match="needs a path"):
        open_delivery_state("embedded")
