"""The identity store contract runs on both stores: `stores` makes fresh ones of one kind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.identity.stores import KINDS, Stores


@pytest.fixture(params=KINDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    made = Stores(request.param, tmp_path)
    yield made
    made.close()


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[Stores]:
    """Stores of either kind (`new(kind)`), for tests that compare them or need Redis."""
    made = Stores("redis", tmp_path)
    yield made
    made.close()
