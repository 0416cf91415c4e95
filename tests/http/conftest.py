"""Server variants for the HTTP contract tests (the default one is `server`, in tests/conftest)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import CONFIG, HeadwaterServer

EXAMPLE_KEY = "wk_example_1"  # the key the recorded client requests in tests/fixtures carry
PUBLIC_HOST = "events.example.com"

ALT_CONFIG = (
    CONFIG
    + f"""  - name: examples
    sources:
      - name: clients
        write_keys: [{EXAMPLE_KEY}]
gateway:
  trusted_proxies: ["127.0.0.1/32"]
  public_url: "https://{PUBLIC_HOST}"
"""
)


@pytest.fixture(scope="session")
def alt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadwaterServer]:
    """Two gateway workers behind a trusted proxy (127.0.0.1), with a public URL, and the
    write key of the recorded client requests."""
    srv = HeadwaterServer(tmp_path_factory.mktemp("hw-alt"), config=ALT_CONFIG, workers=2)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadwaterServer]:
    """A server of the fuzz tests' own, so that whatever they store stays out of the shared log."""
    srv = HeadwaterServer(tmp_path_factory.mktemp("hw-fuzz"))
    srv.start()
    yield srv
    srv.stop()
