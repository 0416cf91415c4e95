"""One contract for `DeliveryState` (`headwater.delivery.state`), run on every backend.

`StateContract` holds the tests; a backend's test module subclasses it and provides the
`opener` fixture: a function that opens the store on this test's own storage, each call a new
view of it (a new connection, as a restarted router would make).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import msgspec
import pytest

from headwater.delivery.model import Event
from headwater.delivery.state import DeadLetter, DeliveryState, RetryJob

Opener = Callable[[], DeliveryState]

A = "dest_a"
B = "dest_b"
NOW = 1_700_000_000_000


def event(i: int, key: str | None = None, message: bytes | None = None) -> Event:
    body = message if message is not None else b'{"type":"track","messageId":"m%d"}' % i
    return Event(f"m{i}", "src_1", NOW - 1000 + i, key or f"user{i}", body)


def job(
    i: int,
    dest: str = A,
    due_ms: int = NOW,
    *,
    key: str | None = None,
    message: bytes | None = None,
    id: int = 0,
    response: bytes | None = None,
) -> RetryJob:
    """A job after one failed attempt."""
    return RetryJob(
        dest, event(i, key, message), 1, NOW - 500, due_ms, "http_500", id, 500, b"POST /", response
    )


def ids(items: list[RetryJob] | list[DeadLetter]) -> list[int]:
    return [x.id for x in items]


def replaced(item: RetryJob, **changes: object) -> RetryJob:
    return msgspec.structs.replace(item, **changes)


class StateContract:
    """The behaviour every `DeliveryState` shares."""

    @pytest.fixture
    def opened(self, opener: Opener) -> Iterator[Opener]:
        """Opens stores on the test's storage, closing them all at the end."""
        stores: list[DeliveryState] = []

        def open_() -> DeliveryState:
            stores.append(opener())
            return stores[-1]

        yield open_
        for s in stores:
            s.close()

    @pytest.fixture
    def state(self, opened: Opener) -> DeliveryState:
        return opened()

    # -- jobs -------------------------------------------------------------------------------

    def test_add_returns_the_jobs_with_increasing_ids(self, state: DeliveryState) -> None:
        jobs = [job(i, id=99) for i in range(5)]
        added = state.add(jobs)
        assert [replaced(a, id=99) for a in added] == jobs
        assert ids(added) == sorted(set(ids(added)))
        more = state.add([job(5), job(6, B)])
        assert min(ids(more)) > max(ids(added)) and ids(more) == sorted(ids(more))
        assert state.add([]) == []
        assert state.due(A, NOW, 100) == [*added, more[0]]

    def test_add_many_in_one_call(self, state: DeliveryState) -> None:
        added = state.add([job(i, due_ms=NOW + i % 7) for i in range(12_000)])
        assert [a.event.message_id for a in added] == [f"m{i}" for i in range(12_000)]
        assert all(a < b for a, b in zip(ids(added), ids(added)[1:], strict=False))
        assert state.pending() == {A: 12_000}
        first = state.due(A, NOW, 3)
        assert first == [a for a in added if a.due_ms == NOW][:3]

    def test_due_earliest_first_within_limit(self, state: DeliveryState) -> None:
        added = state.add(
            [
                *(job(0, due_ms=NOW + 5), job(1, due_ms=NOW - 10), job(2, due_ms=NOW), job(3)),
                *(job(4, due_ms=NOW + 1), job(5, B, due_ms=NOW - 20)),
            ]
        )
        assert ids(state.due(A, NOW, 10)) == ids([added[1], added[2], added[3]])
        assert ids(state.due(A, NOW, 2)) == ids([added[1], added[2]])
        assert ids(state.due(A, NOW + 5, 10)) == ids([added[i] for i in (1, 2, 3, 4, 0)])
        assert state.due(A, NOW - 11, 10) == []
        assert state.due(B, NOW + 100, 10) == [added[5]]
        assert state.due("dest_none", NOW, 10) == []

    def test_next_due_ms(self, state: DeliveryState) -> None:
        assert state.next_due_ms(A) is None
        added = state.add([job(0, due_ms=NOW + 50), job(1, due_ms=NOW + 20), job(2, B, NOW)])
        assert state.next_due_ms(A) == NOW + 20
        assert state.next_due_ms(B) == NOW
        state.finish([added[1].id])
        assert state.next_due_ms(A) == NOW + 50

    def test_waiting_keys(self, state: DeliveryState) -> None:
        assert state.waiting_keys(A) == {}
        added = state.add(
            [job(0, key="u1"), job(1, key="u2"), job(2, key="u1"), job(3, B, key="u9")]
        )
        # each profile's first job: a later one of the same profile waits behind it
        assert state.waiting_keys(A) == {"u1": added[0].id, "u2": added[1].id}
        assert state.waiting_keys(B) == {"u9": added[3].id}
        state.finish([added[0].id])
        assert state.waiting_keys(A) == {"u1": added[2].id, "u2": added[1].id}

    def test_a_message_already_kept_is_not_kept_twice(self, state: DeliveryState) -> None:
        """A replayed unit adds its failed events again: each keeps its one job."""
        first = state.add([job(0), job(1)])
        again = state.add([job(1, due_ms=NOW + 99), job(2), job(0, B)])
        assert again[0].id == first[1].id  # the job it already had
        assert again[1].id not in {first[0].id, first[1].id}
        assert state.pending() == {A: 3, B: 1}
        assert state.due(A, NOW, 10)[1].due_ms == NOW  # the first job is left as it was
        twice = state.add([job(5), job(5)])  # the same message twice in one call
        assert twice[0].id == twice[1].id and state.pending()[A] == 4

    def test_keep_adds_as_add_does(self, state: DeliveryState) -> None:
        """`keep` is `add` without the ids: one job per destination and messageId too."""
        state.keep([job(0), job(1, due_ms=NOW + 5), job(2, B)])
        state.keep([job(1, due_ms=NOW + 99), job(3), job(3)])  # replayed, and twice in one call
        state.keep([])
        assert state.pending() == {A: 3, B: 1}
        due = state.due(A, NOW + 5, 10)
        assert [(j.event.message_id, j.due_ms) for j in due] == [
            ("m0", NOW), ("m3", NOW), ("m1", NOW + 5)
        ]  # fmt: skip
        assert [j.event for j in due] == [job(0).event, job(3).event, job(1).event]

    def test_due_first_of_key_leaves_later_jobs_of_a_profile_waiting(
        self, state: DeliveryState
    ) -> None:
        added = state.add(
            [
                job(0, key="u1", due_ms=NOW + 30),  # u1's first, not due yet
                job(1, key="u1"),  # due, but behind it
                job(2, key="u2"),
                job(3, key="u2"),
                job(4, B, key="u1"),  # another destination: its own line
            ]
        )
        assert ids(state.due(A, NOW, 10, first_of_key=True)) == [added[2].id]
        assert ids(state.due(A, NOW + 30, 10, first_of_key=True)) == [added[2].id, added[0].id]
        assert ids(state.due(B, NOW, 10, first_of_key=True)) == [added[4].id]
        state.finish([added[0].id, added[2].id])
        assert ids(state.due(A, NOW, 10, first_of_key=True)) == [added[1].id, added[3].id]
        assert ids(state.due(A, NOW, 1, first_of_key=True)) == [added[1].id]

    def test_finish_forgets_jobs(self, state: DeliveryState) -> None:
        added = state.add([job(i) for i in range(4)])
        state.finish([added[0].id, added[2].id, 10**12])
        state.finish([])
        assert state.due(A, NOW, 10) == [added[1], added[3]]
        assert state.pending() == {A: 2}

    def test_reschedule_keeps_the_event(self, state: DeliveryState) -> None:
        added = state.add([job(0, key="u1"), job(1)])
        later = replaced(
            added[0],
            attempts=2,
            due_ms=NOW + 900,
            reason="timeout",
            status=None,
            request=b"again",
            response=b"\x00\xff",
        )
        state.reschedule([later])
        state.reschedule([])
        assert state.due(A, NOW + 899, 10) == [added[1]]
        assert state.due(A, NOW + 900, 10) == [added[1], later]
        assert state.next_due_ms(A) == NOW
        assert set(state.waiting_keys(A)) == {"u1", "user1"}

    # -- dead letters -----------------------------------------------------------------------

    def test_expire_makes_dead_letters(self, state: DeliveryState) -> None:
        added = state.add([job(0), job(1, key="u1"), job(2, B)])
        last = replaced(added[1], attempts=7, reason="http_503", status=503, response=b"busy")
        state.expire([last, replaced(added[2], id=10**12)], NOW + 60_000)
        state.expire([], NOW)
        assert state.due(A, NOW, 10) == [added[0]]
        assert set(state.waiting_keys(A)) == {"user0"}
        assert state.pending() == {A: 1, B: 1}
        (dead,) = state.dead_letters()
        failed = NOW + 60_000
        assert dead == DeadLetter(
            dead.id, A, last.event, 7, last.first_ms, failed, "http_503", 503, b"POST /", b"busy"
        )
        assert state.dead_count() == {A: 1}

    def test_pending_and_dead_count_per_destination(self, state: DeliveryState) -> None:
        assert state.pending() == {} and state.dead_count() == {}
        added = state.add([job(0), job(1), job(2), job(3, B), job(4, B)])
        state.expire([added[0], added[3]], NOW)
        assert state.pending() == {A: 2, B: 1}
        assert state.pending(A) == {A: 2}
        assert state.pending("dest_none") == {}
        assert state.dead_count() == {A: 1, B: 1}
        assert state.dead_count(B) == {B: 1}
        assert state.dead_count("dest_none") == {}

    def _dead(self, state: DeliveryState, dests: str) -> list[DeadLetter]:
        """One dead letter per letter of `dests` ("a": of A, "b": of B), in that order."""
        added = state.add([job(i, A if d == "a" else B) for i, d in enumerate(dests)])
        state.expire(added, NOW)
        dead = state.dead_letters(limit=1000)
        assert [d.event for d in dead] == [a.event for a in added]
        return dead

    def test_dead_letters_pages_oldest_first(self, state: DeliveryState) -> None:
        dead = self._dead(state, "aababaa")
        assert ids(dead) == sorted(ids(dead))
        assert state.dead_letters(limit=3) == dead[:3]
        assert state.dead_letters(limit=3, after_id=dead[2].id) == dead[3:6]
        assert state.dead_letters(limit=3, after_id=dead[5].id) == dead[6:]
        assert state.dead_letters(after_id=dead[6].id) == []
        of_a = [d for d in dead if d.destination_id == A]
        assert state.dead_letters(A, limit=2) == of_a[:2]
        assert state.dead_letters(A, limit=2, after_id=of_a[1].id) == of_a[2:4]
        assert state.dead_letters(B) == [d for d in dead if d.destination_id == B]

    def test_redrive_some(self, state: DeliveryState) -> None:
        dead = self._dead(state, "aaab")
        assert state.redrive(A, [dead[2].id, dead[0].id, dead[3].id, 10**12], NOW + 5) == 2
        jobs = state.due(A, NOW + 5, 10)
        assert [j.event for j in jobs] == [dead[0].event, dead[2].event]
        assert all(
            (j.attempts, j.first_ms, j.due_ms, j.reason) == (0, NOW + 5, NOW + 5, "http_500")
            for j in jobs
        )
        assert state.dead_letters() == [dead[1], dead[3]]
        assert state.pending() == {A: 2}

    def test_redrive_all(self, state: DeliveryState) -> None:
        dead = self._dead(state, "abaa")
        assert state.redrive(A, None, NOW + 7) == 3
        assert [j.event for j in state.due(A, NOW + 7, 10)] == [dead[i].event for i in (0, 2, 3)]
        assert state.next_due_ms(A) == NOW + 7
        assert state.dead_count() == {B: 1}
        assert state.redrive(A, None, NOW + 8) == 0
        assert state.redrive(A, [], NOW + 8) == 0

    def test_delete_dead(self, state: DeliveryState) -> None:
        dead = self._dead(state, "aabaa")
        assert state.delete_dead(A, [dead[1].id, dead[2].id, 10**12]) == 1
        assert state.dead_letters() == [dead[0], dead[2], dead[3], dead[4]]
        assert state.delete_dead(A, None) == 3
        assert state.dead_letters() == [dead[2]]
        assert state.delete_dead(A, None) == 0
        assert state.pending() == {}

    # -- durability and bytes ---------------------------------------------------------------

    def test_reopened_store_keeps_everything(self, opened: Opener) -> None:
        first = opened()
        added = first.add([job(i, A if i % 2 else B, NOW + i) for i in range(6)])
        first.expire([added[1], added[2]], NOW)
        first.reschedule([replaced(added[3], attempts=3, due_ms=NOW + 99)])
        jobs = {d: first.due(d, NOW + 100, 100) for d in (A, B)}
        dead = first.dead_letters()
        first.finish([added[5].id])  # the newest: its id is not given again
        first.close()
        second = opened()
        assert second.due(A, NOW + 100, 100) == [j for j in jobs[A] if j.id != added[5].id]
        assert second.due(B, NOW + 100, 100) == jobs[B]
        assert second.dead_letters() == dead
        assert second.pending() == {A: 1, B: 2}
        (new,) = second.add([job(9)])
        assert new.id > added[5].id

    @pytest.mark.parametrize(
        "message",
        [
            '{"event":"Café ☕","name":"Zoë 日本語 🚀"}'.encode(),
            b'{"pad":"' + "é".encode() * 15_000 + b'"}',  # 30 KB
            bytes(range(256)) * 4,  # not even JSON: the store keeps bytes, whatever they are
        ],
        ids=["non-ascii", "30kb", "binary"],
    )
    def test_events_round_trip_byte_exactly(self, opened: Opener, message: bytes) -> None:
        state = opened()
        sample = message[:2048]
        (added,) = state.add([job(0, key="ключ", message=message, response=sample)])
        assert state.due(A, NOW, 1)[0].event.message == message
        state.expire([added], NOW)
        (dead,) = state.dead_letters()
        assert dead.event == added.event and dead.response == sample
        state.close()
        again = opened()
        assert again.dead_letters()[0].event.message == message
        assert again.redrive(A, None, NOW) == 1
        (back,) = again.due(A, NOW, 1)
        assert back.event == added.event and back.response == sample
        assert again.waiting_keys(A) == {"ключ": back.id}

    def test_threads_share_one_store(self, state: DeliveryState) -> None:
        added: list[list[RetryJob]] = []

        def work(t: int) -> None:
            for r in range(5):
                added.append(state.add([job(t * 1000 + r * 100 + i) for i in range(40)]))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        every = [i for batch in added for i in ids(batch)]
        assert len(set(every)) == 800
        assert state.pending() == {A: 800}
