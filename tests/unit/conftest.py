"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headwater.control.store import ControlStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ControlStore]:
    """An empty control plane in the test's directory."""
    s = ControlStore(tmp_path / "control.db")
    yield s
    s.close()
