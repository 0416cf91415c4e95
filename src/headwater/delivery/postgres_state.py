"""The delivery state in PostgreSQL, shared by a fleet of routers (psycopg 3, synchronous).

One connection, behind a lock; every call is one transaction. Batches travel as arrays
(`unnest`), so adding, rescheduling or expiring thousands of jobs is one statement per few
thousand rows. A connection lost (a server restart, a failover) is made again once and the call
retried (a write whose commit was lost with it may be made twice: at least once, like delivery
itself); a server that cannot be reached raises `DeliveryStateUnavailable`. Table layout: see
`headwater.delivery.states` (here with BIGSERIAL ids and BYTEA blobs, in `schema`).
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from headwater.delivery.state import DeadLetter, RetryJob
from headwater.delivery.states import (
    COLUMNS,
    counts,
    dead_letter_of,
    job_of,
    job_row,
    with_ids,
)

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]
Cur = psycopg.Cursor[tuple[Any, ...]]

# unless the url says otherwise: give up on an unreachable server within seconds
CONNECT_DEFAULTS: dict[str, str | int] = {
    "connect_timeout": 5,
    "application_name": "headwater-delivery",
}
ADD_CHUNK = 5_000  # rows per INSERT: keeps each statement's arrays a few MB
SCHEMA_LOCK = 0x68776476  # advisory lock: routers starting together create tables in turn

DDL = """
CREATE TABLE IF NOT EXISTS {s}.delivery_jobs(
    id BIGSERIAL PRIMARY KEY, destination TEXT NOT NULL, due_ms BIGINT NOT NULL,
    attempts INTEGER NOT NULL, first_ms BIGINT NOT NULL, reason TEXT NOT NULL, status INTEGER,
    order_key TEXT NOT NULL, message_id TEXT NOT NULL, event BYTEA NOT NULL, request BYTEA,
    response BYTEA);
CREATE INDEX IF NOT EXISTS delivery_jobs_due ON {s}.delivery_jobs(destination, due_ms, id);
CREATE INDEX IF NOT EXISTS delivery_jobs_key ON {s}.delivery_jobs(destination, order_key);
CREATE UNIQUE INDEX IF NOT EXISTS delivery_jobs_message
    ON {s}.delivery_jobs(destination, message_id);
CREATE TABLE IF NOT EXISTS {s}.delivery_dead_letters(
    id BIGSERIAL PRIMARY KEY, destination TEXT NOT NULL, attempts INTEGER NOT NULL,
    first_ms BIGINT NOT NULL, failed_ms BIGINT NOT NULL, reason TEXT NOT NULL, status INTEGER,
    order_key TEXT NOT NULL, message_id TEXT NOT NULL, event BYTEA NOT NULL, request BYTEA,
    response BYTEA);
CREATE INDEX IF NOT EXISTS delivery_dead_letters_dest
    ON {s}.delivery_dead_letters(destination, id);
"""

QUERIES = {
    "add": "INSERT INTO {s}.delivery_jobs({insert})"
    " SELECT d, due, att, first, reason, status, okey, mid, ev, req, resp FROM unnest("
    "%b::text[], %b::bigint[], %b::int[], %b::bigint[], %b::text[], %b::int[], %b::text[],"
    " %b::text[], %b::bytea[], %b::bytea[], %b::bytea[]) WITH ORDINALITY"
    " AS u(d, due, att, first, reason, status, okey, mid, ev, req, resp, ord)"
    " ORDER BY ord ON CONFLICT (destination, message_id) DO NOTHING",  # one job per message
    "ids": "SELECT j.destination, j.message_id, j.id FROM unnest(%b::text[], %b::text[])"
    " AS w(d, m) JOIN {s}.delivery_jobs AS j ON j.destination = w.d AND j.message_id = w.m",
    "due": "SELECT {job} FROM {s}.delivery_jobs"
    " WHERE destination = %s AND due_ms <= %s ORDER BY due_ms, id LIMIT %s",
    "first_due": "SELECT {job} FROM {s}.delivery_jobs AS j WHERE destination = %s"
    " AND due_ms <= %s AND id = (SELECT min(id) FROM {s}.delivery_jobs"
    " WHERE destination = j.destination AND order_key = j.order_key)"
    " ORDER BY due_ms, id LIMIT %s",
    "next_due": "SELECT min(due_ms) FROM {s}.delivery_jobs WHERE destination = %s",
    "keys": "SELECT order_key, min(id) FROM {s}.delivery_jobs WHERE destination = %s"
    " GROUP BY order_key",
    "finish": "DELETE FROM {s}.delivery_jobs WHERE id = ANY(%b::bigint[])",
    "reschedule": "UPDATE {s}.delivery_jobs j SET attempts = u.att, due_ms = u.due,"
    " reason = u.reason, status = u.status, request = u.req, response = u.resp"
    " FROM unnest(%b::bigint[], %b::int[], %b::bigint[], %b::text[], %b::int[], %b::bytea[],"
    " %b::bytea[]) AS u(id, att, due, reason, status, req, resp) WHERE j.id = u.id",
    "expire": "WITH gone AS (DELETE FROM {s}.delivery_jobs j USING unnest(%(ids)b::bigint[],"
    " %(att)b::int[], %(reason)b::text[], %(status)b::int[], %(req)b::bytea[], %(resp)b::bytea[])"
    " WITH ORDINALITY AS u(id, att, reason, status, req, resp, ord) WHERE j.id = u.id"
    " RETURNING j.destination, u.att, j.first_ms, u.reason, u.status, j.order_key,"
    " j.message_id, j.event, u.req, u.resp, u.ord)"
    " INSERT INTO {s}.delivery_dead_letters(destination, attempts, first_ms, failed_ms, reason,"
    " status, order_key, message_id, event, request, response)"
    " SELECT destination, att, first_ms, %(now)s, reason, status, order_key, message_id, event,"
    " req, resp FROM gone ORDER BY ord",
    "dead": "SELECT {dead} FROM {s}.delivery_dead_letters WHERE id > %(after)s"
    " AND (%(dest)s::text IS NULL OR destination = %(dest)s) ORDER BY id LIMIT %(limit)s",
    "redrive": "WITH moved AS (DELETE FROM {s}.delivery_dead_letters WHERE destination = %(dest)s"
    " AND (%(ids)b::bigint[] IS NULL OR id = ANY(%(ids)b::bigint[])) RETURNING *)"
    " INSERT INTO {s}.delivery_jobs({insert})"
    " SELECT destination, %(now)s, 0, %(now)s, reason, status, order_key, message_id, event,"
    " request, response FROM moved ORDER BY id ON CONFLICT DO NOTHING",
    "delete_dead": "DELETE FROM {s}.delivery_dead_letters WHERE destination = %(dest)s"
    " AND (%(ids)b::bigint[] IS NULL OR id = ANY(%(ids)b::bigint[]))",
    "pending": "SELECT destination, count(*) FROM {s}.delivery_jobs"
    " WHERE %(dest)s::text IS NULL OR destination = %(dest)s GROUP BY destination",
    "dead_count": "SELECT destination, count(*) FROM {s}.delivery_dead_letters"
    " WHERE %(dest)s::text IS NULL OR destination = %(dest)s GROUP BY destination",
}


class DeliveryStateUnavailable(OSError):
    """The PostgreSQL server of the delivery state cannot be reached (an `OSError`: a role
    that cannot start on it says so in one line)."""


def redact(url: str) -> str:
    """`url` (or a `key=value` conninfo) without its password."""
    url = re.sub(r"password=('(?:[^'\\]|\\.)*'|[^&\s]*)", "password=***", url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme and parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        url = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    return url


class PostgresDeliveryState:
    """`DeliveryState` in `schema` (tables created if missing) of the server at `url`."""

    def __init__(self, url: str, schema: str = "headwater") -> None:
        self.url = url
        self.schema = schema
        self._lock = threading.Lock()
        self._closed = False
        names = {"s": sql.Identifier(schema), **{k: sql.SQL(v) for k, v in COLUMNS.items()}}
        self._q = {k: sql.SQL(v).format(**names) for k, v in QUERIES.items()}
        self._conn: Conn | None = None
        self._run(self._create_tables)

    def _create_tables(self, cur: Cur) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        name = sql.Identifier(self.schema)
        cur.execute("SELECT to_regnamespace(%s)", (name.as_string(cur),))
        if cur.fetchone() == (None,):  # (IF NOT EXISTS would need the right to create one)
            cur.execute(sql.SQL("CREATE SCHEMA {s}").format(s=name))
        cur.execute(sql.SQL(DDL).format(s=name))

    def _connect(self) -> Conn:
        given = conninfo_to_dict(self.url)
        defaults = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
        try:
            return psycopg.connect(make_conninfo(self.url, **defaults), autocommit=False)
        except psycopg.OperationalError as e:
            raise DeliveryStateUnavailable(
                f"the delivery state's PostgreSQL at {redact(self.url)} cannot be reached: {e}"
            ) from e

    def _run(self, work: Callable[[Cur], T]) -> T:
        """`work` in one transaction, on a new connection if the last one was lost."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the delivery state is closed")
            for retry in (False, True):
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                conn = self._conn
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        return work(cur)
                except psycopg.OperationalError as e:
                    if not (conn.broken or conn.closed):
                        raise  # the server answered (a cancelled statement, ...)
                    conn.close()
                    self._conn = None
                    if retry:
                        raise DeliveryStateUnavailable(
                            f"lost the delivery state's PostgreSQL at {redact(self.url)}: {e}"
                        ) from e
            raise AssertionError("unreachable")

    def add(self, jobs: list[RetryJob]) -> list[RetryJob]:
        """Keep `jobs` (their `id` is ignored; one job per destination and messageId: a job
        already kept is not added again); returns them with their jobs' ids."""

        def work(cur: Cur) -> dict[tuple[str, str], int]:
            found: dict[tuple[str, str], int] = {}
            for start in range(0, len(jobs), ADD_CHUNK):
                chunk = jobs[start : start + ADD_CHUNK]
                rows = [job_row(j) for j in chunk]
                cur.execute(self._q["add"], [list(c) for c in zip(*rows, strict=True)])
                keys = sorted({(j.destination_id, j.event.message_id) for j in chunk})
                cur.execute(self._q["ids"], [[d for d, _m in keys], [m for _d, m in keys]])
                found.update(((d, m), int(i)) for d, m, i in cur.fetchall())
            return found

        if not jobs:
            return []
        found = self._run(work)
        return with_ids(jobs, (found[(j.destination_id, j.event.message_id)] for j in jobs))

    def keep(self, jobs: list[RetryJob]) -> None:
        """`add` without finding the ids."""

        def work(cur: Cur) -> None:
            for start in range(0, len(jobs), ADD_CHUNK):
                rows = [job_row(j) for j in jobs[start : start + ADD_CHUNK]]
                cur.execute(self._q["add"], [list(c) for c in zip(*rows, strict=True)])

        if jobs:
            self._run(work)

    def due(
        self, destination_id: str, now_ms: int, limit: int, first_of_key: bool = False
    ) -> list[RetryJob]:
        """Up to `limit` jobs of the destination due at `now_ms`, the earliest first."""
        rows = self._fetch("first_due" if first_of_key else "due", (destination_id, now_ms, limit))
        return [job_of(r) for r in rows]

    def next_due_ms(self, destination_id: str) -> int | None:
        """When the destination's earliest job is due (None: no job)."""
        ((due,),) = self._fetch("next_due", (destination_id,))
        return int(due) if due is not None else None

    def waiting_keys(self, destination_id: str) -> dict[str, int]:
        """The order keys with a job of the destination waiting, and the first job of each."""
        return {r[0]: int(r[1]) for r in self._fetch("keys", (destination_id,))}

    def finish(self, ids: list[int]) -> None:
        """Forget these jobs."""
        if ids:
            self._execute("finish", (ids,))

    def reschedule(self, jobs: list[RetryJob]) -> None:
        """Store the new attempts, due time, reason and samples of these jobs (by id)."""
        if jobs:
            columns = zip(
                *(
                    (j.id, j.attempts, j.due_ms, j.reason, j.status, j.request, j.response)
                    for j in jobs
                ),
                strict=True,
            )
            self._execute("reschedule", [list(c) for c in columns])

    def expire(self, jobs: list[RetryJob], now_ms: int) -> None:
        """Turn these jobs (by id) into dead letters failed at `now_ms`."""
        if jobs:
            self._execute(
                "expire",
                {
                    "ids": [j.id for j in jobs],
                    "att": [j.attempts for j in jobs],
                    "reason": [j.reason for j in jobs],
                    "status": [j.status for j in jobs],
                    "req": [j.request for j in jobs],
                    "resp": [j.response for j in jobs],
                    "now": now_ms,
                },
            )

    def pending(self, destination_id: str | None = None) -> dict[str, int]:
        """Jobs per destination (those without any are left out)."""
        return counts(self._fetch("pending", {"dest": destination_id}))

    def dead_letters(
        self, destination_id: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[DeadLetter]:
        """Dead letters with `id > after_id`, oldest first (all destinations, or one)."""
        params = {"dest": destination_id, "limit": limit, "after": after_id}
        return [dead_letter_of(r) for r in self._fetch("dead", params)]

    def dead_count(self, destination_id: str | None = None) -> dict[str, int]:
        """Dead letters per destination (those without any are left out)."""
        return counts(self._fetch("dead_count", {"dest": destination_id}))

    def redrive(self, destination_id: str, ids: list[int] | None, now_ms: int) -> int:
        """Turn these dead letters (None: all of the destination's) back into jobs due now."""
        return self._execute("redrive", {"dest": destination_id, "ids": ids, "now": now_ms})

    def delete_dead(self, destination_id: str, ids: list[int] | None) -> int:
        """Delete these dead letters (None: all of the destination's); returns how many."""
        return self._execute("delete_dead", {"dest": destination_id, "ids": ids})

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _fetch(self, name: str, params: Any) -> list[tuple[Any, ...]]:
        def work(cur: Cur) -> list[tuple[Any, ...]]:
            cur.execute(self._q[name], params)
            return cur.fetchall()

        return self._run(work)

    def _execute(self, name: str, params: Any) -> int:
        """Runs a write; returns how many rows it touched."""

        def work(cur: Cur) -> int:
            cur.execute(self._q[name], params)
            return cur.rowcount

        return self._run(work)
