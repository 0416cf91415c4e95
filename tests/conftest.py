"""Shared fixtures: a running Headwater for HTTP tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import HeadwaterServer


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadwaterServer]:
    """One `headwater up` shared by the HTTP tests (tests use their own messageIds)."""
    srv = HeadwaterServer(tmp_path_factory.mktemp("hw"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[HeadwaterServer]:
    """A server of its own, for tests that kill, restart or fill it."""
    srv = HeadwaterServer(tmp_path)
    yield srv
    srv.kill()


FIXTURES = Path(__file__).parent / "fixtures"
