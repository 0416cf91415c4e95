"""One contract for the dedupe stores: segment files (embedded) and the real Redis server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headwater.processing.dedupe import DedupeStore, FileDedupeStore
from headwater.processing.dedupe.redis_store import RedisDedupeStore
from tests.support.redis import redis_prefix

WINDOW_MS = 10_000
T0 = 1_700_000_000_000


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DedupeStore]:
    if request.param == "embedded":
        s: DedupeStore = FileDedupeStore(tmp_path / "dedupe", WINDOW_MS)
        yield s
        s.close()
        return
    with redis_prefix() as (client, prefix):
        yield RedisDedupeStore(client, prefix, WINDOW_MS)


def test_first_claim_is_not_a_duplicate_and_another_position_is(store: DedupeStore) -> None:
    assert store.claim([("m1", "0:10:0"), ("m2", "0:10:1")], T0) == [False, False]
    assert store.claim([("m1", "0:20:0"), ("m3", "0:20:1")], T0 + 1) == [True, False]


def test_the_same_position_again_is_not_a_duplicate_of_itself(store: DedupeStore) -> None:
    """A replay after a crash reads a message at the position that claimed it."""
    assert store.claim([("m1", "3:7:2")], T0) == [False]
    assert store.claim([("m1", "3:7:2")], T0 + 5) == [False]
    assert store.claim([("m1", "3:8:0")], T0 + 6) == [True]


def test_an_id_twice_in_one_call_is_a_duplicate_the_second_time(store: DedupeStore) -> None:
    assert store.claim([("m1", "0:5:0"), ("m1", "0:5:1"), ("m1", "0:5:0")], T0) == [
        False,
        True,
        False,
    ]


def test_the_first_of_two_copies_in_one_call_keeps_the_claim(store: DedupeStore) -> None:
    # the later copy is the duplicate, whichever store answers, and the claim stays the first's
    assert store.claim([("m1", "0:5:0"), ("m1", "0:5:1")], T0) == [False, True]
    assert store.claim([("m1", "0:5:0")], T0 + 1) == [False]
    assert store.claim([("m1", "0:5:1")], T0 + 1) == [True]


def test_ids_are_exact_not_similar(store: DedupeStore) -> None:
    ids = [f"m-{i}" for i in range(2000)]
    assert store.claim([(m, f"0:1:{i}") for i, m in enumerate(ids)], T0) == [False] * 2000
    similar = [m + "x" for m in ids] + [m.upper() for m in ids]
    assert store.claim([(m, "1:1:0") for m in similar], T0) == [False] * 4000
    assert store.claim([(m, "1:2:0") for m in ids], T0) == [True] * 2000


def test_many_ids_in_one_call_cross_chunks(store: DedupeStore) -> None:
    claims = [(f"id-{i}", f"0:9:{i}") for i in range(1234)]
    assert store.claim(claims, T0) == [False] * 1234
    again = [(f"id-{i}", "1:9:0") for i in range(0, 1234, 3)]
    assert store.claim(again, T0) == [True] * len(again)
