"""Runs of (profile key, event number): every profile's events come back, newest first, from
however many runs they were written in and merged into; expired events go from the runs as
they merge and are never read again."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.identity import event_runs
from headwater.identity.event_batches import (
    BATCHES_SCHEMA,
    BatchBuilder,
    keep_event_numbers,
    next_event_seq,
    write_batch,
)
from headwater.identity.event_runs import (
    RUNS_SCHEMA,
    add_run,
    drop_runs_below,
    event_seqs,
    profile_key,
)
from headwater.identity.profiles import ProfileReader, expire_events
from headwater.identity.sqlite_store import SCHEMA, SqliteIdentityStore

WS = "acme"
SMALL_WINDOW = 3
EVENT_ROWS = """
CREATE TABLE profile_events(
    seq INTEGER PRIMARY KEY, workspace TEXT NOT NULL, profile TEXT NOT NULL,
    at_ms INTEGER NOT NULL, message_id TEXT NOT NULL, source_id TEXT NOT NULL,
    message BLOB NOT NULL, stamp BLOB);
"""  # the earlier layouts' events: a row each


def connect() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(
        RUNS_SCHEMA + BATCHES_SCHEMA + "CREATE TABLE profiles(workspace, id, merged_into);"
    )
    return conn


def message(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def write_unit(
    conn: sqlite3.Connection, workspace: str, profiles: list[str], at_ms: int = 0
) -> list[int]:
    """One transaction's events (one per entry of `profiles`, in order): a batch and a run."""
    first = next_event_seq(conn)
    seqs = list(range(first, first + len(profiles)))
    batch = BatchBuilder()
    for pid, seq in zip(profiles, seqs, strict=True):
        batch.add(pid, at_ms, f"m{seq}", "src", message(seq), None)
    keep_event_numbers(conn, write_batch(conn, workspace, first, [batch]))
    add_run(conn, workspace, [profile_key(workspace, p) for p in profiles], seqs)
    return seqs


def run_rows(conn: sqlite3.Connection, workspace: str = WS) -> list[tuple[int, int, int, list]]:
    """(size, last seq, entries in the blobs, seqs) of each run, oldest first."""
    rows = conn.execute(
        "SELECT size, last_seq, keys, seqs FROM profile_event_runs WHERE workspace = ? ORDER BY id",
        (workspace,),
    ).fetchall()
    return [(n, last, len(k) // 8, np.frombuffer(s, np.int64).tolist()) for n, last, k, s in rows]


# one profile gets most events, so its entries span many windows of each run
units = st.lists(
    st.lists(st.sampled_from("aaaaaabbcdef"), min_size=1, max_size=40), min_size=1, max_size=40
)


@settings(max_examples=120, deadline=None)
@given(units=units)
def test_every_profile_reads_back_its_events_newest_first(units: list[list[str]]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(event_runs, "WINDOW", SMALL_WINDOW)
        conn = connect()
        reference: dict[str, list[int]] = {p: [] for p in "abcdefg"}
        for unit in units:
            for pid, seq in zip(unit, write_unit(conn, WS, unit), strict=True):
                reference[pid].append(seq)
            write_unit(conn, "other", unit[:3])  # another workspace's runs, interleaved
        for pid, seqs in reference.items():
            assert event_seqs(conn, WS, [profile_key(WS, pid)]) == sorted(seqs, reverse=True)
        got = ProfileReader(conn, WS).events("a", 10**6)
        assert got == [(s, message(s)) for s in sorted(reference["a"], reverse=True)]
        both = event_seqs(conn, WS, [profile_key(WS, "a"), profile_key(WS, "c")])
        assert both == sorted(reference["a"] + reference["c"], reverse=True)
        runs = run_rows(conn)
        assert [n for n, _l, _e, _s in runs] == [e for _n, _l, e, _s in runs]
        assert sum(n for n, *_r in runs) == sum(map(len, reference.values()))  # none lost
        sizes = [n for n, *_r in runs]
        assert all(older > 4 * newer for older, newer in itertools.pairwise(sizes))


def test_keys_at_the_ends_of_the_range_and_long_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_runs, "WINDOW", 2)
    conn = connect()
    lo, hi = -(2**63), 2**63 - 1
    rng = random.Random(5)
    reference: dict[int, list[int]] = {lo: [], -1: [], 0: [], hi: []}
    seq = 0
    for _unit in range(30):
        keys = [rng.choice([lo, lo, lo, -1, 0, hi, hi]) for _ in range(rng.randrange(1, 30))]
        seqs = list(range(seq + 1, seq + 1 + len(keys)))
        seq += len(keys)
        add_run(conn, WS, keys, seqs)
        for k, s in zip(keys, seqs, strict=True):
            reference[k].append(s)
    for key, seqs in reference.items():
        assert event_seqs(conn, WS, [key]) == sorted(seqs, reverse=True)
    assert event_seqs(conn, WS, [1, hi - 1, lo + 1]) == []
    assert event_seqs(conn, "other", [lo, hi]) == []


def test_expired_events_leave_the_runs_as_they_merge_and_are_never_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_runs, "WINDOW", SMALL_WINDOW)
    conn = connect()
    conn.execute("INSERT INTO profiles VALUES(?, 'b', 'a')", (WS,))  # b was merged into a
    rng = random.Random(11)
    reference: dict[str, list[int]] = {p: [] for p in "abcd"}
    firsts: list[int] = []  # the first event of each unit (its time: its index)

    def unit_of(pids: str) -> None:
        unit = [rng.choice(pids) for _ in range(rng.randrange(1, 25))]
        seqs = write_unit(conn, WS, unit, at_ms=len(firsts))
        firsts.append(seqs[0])
        for pid, seq in zip(unit, seqs, strict=True):
            reference[pid].append(seq)

    def inside_second_run() -> list[int]:  # units that begin amid the second run's events
        runs = run_rows(conn)
        if len(runs) < 3:
            return []
        return [u for u, f in enumerate(firsts) if min(runs[1][3]) < f <= runs[1][1]]

    while not inside_second_run():  # runs of three sizes, the second of several units
        unit_of("aaabcd")
    before = run_rows(conn)
    expired_units = inside_second_run()[0]
    cut = firsts[expired_units]  # events below it expire, by whole units
    assert expire_events(conn, WS, expired_units) == cut - 1
    after_expiry = run_rows(conn)
    assert len(after_expiry) < len(before)  # the run wholly expired went ...
    assert all(last >= cut for _n, last, _e, _s in after_expiry)
    assert any(s < cut for *_r, seqs in after_expiry for s in seqs)  # ... not the straddling

    def check_reads() -> None:
        reader = ProfileReader(conn, WS)
        for pid in "acd":
            live = [s for s in reference[pid] if s >= cut]
            if pid == "a":  # and b's, merged into it
                live += [s for s in reference["b"] if s >= cut]
            got = reader.events(pid, 10**6)
            assert got == [(s, message(s)) for s in sorted(live, reverse=True)]
            indexed = event_seqs(conn, WS, [profile_key(WS, pid)])
            assert set(indexed) >= {s for s in reference[pid] if s >= cut}

    check_reads()
    for _unit in range(40):  # enough new events that every run merges again
        unit_of("aacd")
    check_reads()
    runs = run_rows(conn)
    assert sum(s < cut for *_r, seqs in runs for s in seqs) == 0
    live = sum(s >= cut for seqs in reference.values() for s in seqs)
    assert sum(n for n, *_r in runs) == live  # sizes shrank by the expired entries
    assert [n for n, _l, _e, _s in runs] == [e for _n, _l, e, _s in runs]
    drop_runs_below(conn, WS, 10**9)  # every run older than that goes
    assert run_rows(conn) == [] and ProfileReader(conn, WS).events("a", 10) == []


def test_events_written_after_every_event_expired_are_listed_once() -> None:
    conn = connect()
    write_unit(conn, WS, ["a", "a", "b"], at_ms=0)
    assert expire_events(conn, WS, 10) == 3
    assert ProfileReader(conn, WS).events("a", 10) == []
    [seq] = write_unit(conn, WS, ["a"], at_ms=20)  # numbered as a writer (re)opened would
    assert ProfileReader(conn, WS).events("a", 10) == [(seq, message(seq))]


def test_a_store_whose_events_were_already_in_runs_lists_each_once(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"  # the layout just before batches: a row and a run entry each
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA + RUNS_SCHEMA + EVENT_ROWS)
    conn.execute("INSERT INTO profiles VALUES(?, 'p', 1, 0, NULL, 0, '[]')", (WS,))
    rows = [(n, WS, "p", n, f"m{n}", message(n)) for n in (1, 2, 3)]
    conn.executemany("INSERT INTO profile_events VALUES(?, ?, ?, ?, ?, 'web', ?, NULL)", rows)
    add_run(conn, WS, [profile_key(WS, "p")] * 3, [1, 2, 3])
    conn.close()
    store = SqliteIdentityStore(path)
    events = store.reader(WS).events("p", 10)
    store.close()
    assert events == [(3, message(3)), (2, message(2)), (1, message(1))]
