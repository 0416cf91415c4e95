"""The owner index: every identifier's profile number, in sorted runs and a fresh dict, gives
the answers a plain dict would, the newest entry winning across runs and after merges."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.identity import owner_index
from headwater.identity.graph import Message
from headwater.identity.identifiers import Ident
from headwater.identity.owner_index import NONE, OwnerIndex, ident_fingerprint
from headwater.identity.resolver import IdentityResolver
from headwater.identity.sqlite_store import SqliteIdentityStore

SMALL_RUN = 8


def fp(high: int, low: int) -> bytes:
    """A fingerprint of these halves (the first 8 bytes are what the runs sort on)."""
    return struct.pack("<qq", high, low)


# a few high halves (extremes included: they are signed) shared by several low halves, so
# that many fingerprints differ only in their low half
HIGHS = [-(2**63), -1, 0, 7, 2**63 - 1]
LOWS = [-(2**63), -5, 0, 1, 2**63 - 1]
POOL = [fp(h, lo) for h in HIGHS for lo in LOWS]
fingerprints = st.sampled_from(POOL) | st.binary(min_size=16, max_size=16)
batches = st.lists(st.tuples(fingerprints, st.integers(0, 10**6)), max_size=20)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), batches),
        st.tuples(st.just("get"), st.lists(fingerprints, max_size=20)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(loaded=st.dictionaries(fingerprints, st.integers(0, 10**6), max_size=30), steps=ops)
def test_the_index_answers_as_a_dict_would(loaded: dict[bytes, int], steps: list) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(owner_index, "MERGE_AT", SMALL_RUN)
        index = OwnerIndex()
        index.load(list(loaded), loaded.values())
        reference = dict(loaded)
        for kind, arg in steps:
            if kind == "set":
                index.set_many([f for f, _p in arg], [p for _f, p in arg])
                reference.update(arg)
            else:
                assert index.get_many(arg) == [reference.get(f, NONE) for f in arg]
        everything = POOL + list(reference)
        assert index.get_many(everything) == [reference.get(f, NONE) for f in everything]
        copy = OwnerIndex()  # what the store keeps at close and loads at the next open
        copy.load_arrays(*index.arrays())
        assert copy.get_many(everything) == [reference.get(f, NONE) for f in everything]
        assert len(copy) == len(reference) and copy.runs() <= 1


def test_a_newer_owner_wins_across_runs_and_after_they_merge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(owner_index, "MERGE_AT", SMALL_RUN)
    index = OwnerIndex()
    moved = [fp(3, n) for n in range(4)]  # pointed to another profile in every batch
    for batch in range(60):
        fresh = [fp(10_000 + batch, n) for n in range(SMALL_RUN)]
        index.set_many(moved + fresh, [batch] * (len(moved) + len(fresh)))
        assert index.get_many(moved) == [batch] * len(moved)
        assert index.get_many([fp(10_000, 0), fresh[-1]]) == [0, batch]
    assert 1 <= index.runs() < 10  # the runs merged: a lookup searches a handful
    # merging dropped the older entries of `moved`: each run keeps one per fingerprint
    assert len(index) == 60 * SMALL_RUN + len(moved) * index.runs()


def test_twins_in_the_high_half_resolve_to_their_own_profile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(owner_index, "MERGE_AT", SMALL_RUN)
    twins = [fp(42, low) for low in (9, -3, 0, 2**62, 5, 1, -(2**63), 77)]
    index = OwnerIndex()
    index.load(twins[:4], [100, 101, 102, 103])
    index.set_many(twins[4:], [104, 105, 106, 107])  # a run of its own (8 entries sealed)
    index.set_many([fp(41, 0), fp(43, 0)], [1, 2])  # neighbours, fresh
    assert index.get_many(twins) == list(range(100, 108))
    assert index.get_many(list(reversed(twins))) == list(range(107, 99, -1))
    assert index.get_many([fp(42, 8), fp(42, 2**63 - 1), fp(41, 0), fp(43, 0)]) == [
        NONE,
        NONE,
        1,
        2,
    ]
    index.set_many([twins[1], twins[6]], [7, 8])  # moved: the newer entry wins
    assert index.get_many([twins[0], twins[1], twins[6]]) == [100, 7, 8]


def test_a_loaded_index_answers_without_anything_fresh() -> None:
    idents = [("acme", "user_id", f"u{n}") for n in range(1000)]
    idents += [("other", "user_id", f"u{n}") for n in range(10)]  # another workspace
    fps = [ident_fingerprint(*i) for i in idents]
    assert len(set(fps)) == len(fps) and all(len(f) == 16 for f in fps)
    index = OwnerIndex()
    index.load(fps, range(len(fps)))
    assert len(index) == len(fps) and index.runs() == 1
    probe = [fps[999], fps[0], ident_fingerprint("acme", "email", "u1"), fps[1005], fps[500]]
    assert index.get_many(probe) == [999, 0, NONE, 1005, 500]
    assert index.get_many(fps) == list(range(len(fps)))
    index.load([], [])  # loading again starts over
    assert index.get_many(fps[:3]) == [NONE] * 3 and len(index) == 0


def test_an_empty_index_knows_no_one() -> None:
    index = OwnerIndex()
    assert index.get_many([fp(1, 2), ident_fingerprint("acme", "email", "a@b.c")]) == [NONE] * 2
    assert index.get_many([]) == []
    assert len(index) == 0 and index.runs() == 0


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"not a snapshot", id="garbage"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
    ],
)
def test_a_damaged_index_snapshot_is_read_from_the_tables_instead(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    path = tmp_path / "identity.db"
    store = SqliteIdentityStore(path)
    ada = Ident("user_id", "ada")
    [r] = IdentityResolver(store).resolve_unit("acme", [Message("m1", "web", 1, [ada])])
    store.close()  # keeps a snapshot of the owner index for the next open
    snapshot = store._snapshot
    snapshot.write_bytes(damage(snapshot.read_bytes()))  # e.g. a crash right after the close
    store = SqliteIdentityStore(path)
    assert store.owner_of("acme", ada) == r.profile_id
    [again] = IdentityResolver(store).resolve_unit("acme", [Message("m2", "web", 2, [ada])])
    assert again.profile_id == r.profile_id and not again.created
    store.close()
