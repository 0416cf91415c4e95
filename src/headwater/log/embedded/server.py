"""The log server: the one process that appends to an embedded log.

Gateway workers send it runs over a Unix socket; it reads whatever has arrived from every
connection, commits it all as one group (one write, one fsync), then acknowledges each request.
While a commit is on disk, new requests wait in the socket buffers and form the next group, so
the group grows with the load. Being a process of its own, it never competes with a gateway
worker's event loop for the GIL. It also runs retention, and the interval fsync when configured.

Run by `headwater up`; `python -m headwater.log.embedded --help` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import logging
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from headwater.log.base import LogError, LogUnavailable
from headwater.log.embedded.appender import AppendSettings, FsyncPolicy, SegmentAppender
from headwater.log.embedded.protocol import (
    FrameReader,
    decode_requests,
    encode_response,
    socket_path,
)
from headwater.log.embedded.retention import enforce_retention
from headwater.log.records import Run
from headwater.process import tune_gc

log = logging.getLogger(__name__)


class ServerSettings(msgspec.Struct, frozen=True):
    """Everything the log server needs, passed as JSON on its command line."""

    root: str
    partitions: int = 8
    fsync: str = "always"
    fsync_interval_ms: int = 50
    segment_bytes: int = 64 * 1024 * 1024
    max_group_bytes: int = 8 * 1024 * 1024
    min_free_disk_bytes: int = 64 * 1024 * 1024
    retention_max_age_ms: int = 7 * 86_400_000
    retention_max_bytes: int = 20 * 1024**3
    retention_every_s: float = 30.0

    def append_settings(self) -> AppendSettings:
        return AppendSettings(
            partitions=self.partitions,
            fsync=FsyncPolicy(self.fsync),
            fsync_interval_ms=self.fsync_interval_ms,
            segment_bytes=self.segment_bytes,
            max_group_bytes=self.max_group_bytes,
            min_free_disk_bytes=self.min_free_disk_bytes,
        )


class AlreadyRunning(Exception):
    """Another log server owns this log."""


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    reader: FrameReader = field(init=False)
    out: bytearray = field(default_factory=bytearray)
    closed: bool = False


@dataclass(slots=True)
class _Pending:
    conn: _Conn
    request_id: int
    runs: list[Run]
    nbytes: int


class LogServer:
    """Accepts appends on a Unix socket and group-commits them."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.root = Path(settings.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / "server.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise AlreadyRunning(
                f"another Headwater process is already writing the log at {self.root}"
            ) from None
        try:
            self.appender = SegmentAppender(self.root, settings.append_settings())
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.path = socket_path(self.root)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self._listener.listen(256)
        self._listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._pending: list[_Pending] = []
        self._stopping = False
        self._next_retention = time.monotonic() + 1.0

    def stop(self) -> None:
        """Ask `serve` to finish what it has received and return."""
        self._stopping = True

    def serve(self, parent_pid: int | None = None) -> None:
        """Run until `stop()` (or until the parent process is gone)."""
        try:
            while not self._stopping:
                self._poll(self._timeout())
                if self._pending:
                    self._commit()
                self._housekeeping(parent_pid)
            self._poll(0)
            while self._pending:
                self._commit()
        finally:
            self.close()

    def close(self) -> None:
        for key in list(self._sel.get_map().values()):
            if isinstance(key.data, _Conn):
                self._flush(key.data)
                key.data.sock.close()
        self._sel.close()
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.appender.close()
        os.close(self._lock_fd)

    # -- I/O ----------------------------------------------------------------------------------

    def _timeout(self) -> float:
        if self._pending:
            return 0.0
        timeout = max(0.0, self._next_retention - time.monotonic())
        due = self.appender.sync_due_in()
        return min(timeout, 1.0) if due is None else min(timeout, due, 1.0)

    def _poll(self, timeout: float) -> None:
        for key, mask in self._sel.select(timeout):
            if key.data is None:
                self._accept()
                continue
            conn: _Conn = key.data
            if mask & selectors.EVENT_READ:
                self._read(conn)
            if mask & selectors.EVENT_WRITE and not conn.closed:
                self._flush(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            conn = _Conn(sock)
            conn.reader = FrameReader(functools.partial(self._on_frame, conn))
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        for _ in range(64):  # bounded, so one busy client cannot starve commits
            try:
                data = conn.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._drop(conn)
                return
            try:
                conn.reader.feed(data)
            except ValueError as exc:
                log.error("bad frame from a client, closing it: %s", exc)
                self._drop(conn)
                return

    def _on_frame(self, conn: _Conn, frame: memoryview) -> None:
        partitions = self.settings.partitions
        for request_id, runs in decode_requests(bytes(frame)):
            if any(not 0 <= r.partition < partitions or r.count < 1 for r in runs):
                message = f"a run names a partition outside 0..{partitions - 1} or is empty"
                failure = (request_id, 503, "log_unavailable", message, 5)
                conn.out += encode_response([], [failure])
                self._flush(conn)
                continue
            self._pending.append(
                _Pending(conn, request_id, runs, sum(len(r.payload) for r in runs))
            )

    def _drop(self, conn: _Conn) -> None:
        if not conn.closed:
            conn.closed = True
            self._sel.unregister(conn.sock)
            conn.sock.close()

    def _flush(self, conn: _Conn) -> None:
        if conn.closed or not conn.out:
            return
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(conn)
            return
        del conn.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        self._sel.modify(conn.sock, events, conn)

    # -- commits ------------------------------------------------------------------------------

    def _commit(self) -> None:
        limit = self.settings.max_group_bytes
        size = 0
        take = 0
        for item in self._pending:
            if take and size + item.nbytes > limit:
                break
            size += item.nbytes
            take += 1
        group, self._pending = self._pending[:take], self._pending[take:]
        error: LogError | None = None
        try:
            self.appender.commit(item.runs for item in group)
        except LogError as exc:
            error = exc
        except Exception as exc:  # a bug must fail this group, never the server
            log.exception("commit failed")
            error = LogUnavailable(f"log commit failed: {exc}", retry_after=1)
        replies: dict[_Conn, tuple[list[int], list[tuple[int, int, str, str, int]]]] = {}
        for item in group:
            ok, failed = replies.setdefault(item.conn, ([], []))
            if error is None:
                ok.append(item.request_id)
            else:
                failed.append(
                    (item.request_id, error.status, error.code, str(error), error.retry_after)
                )
        for conn, (ok, failed) in replies.items():
            if not conn.closed:
                conn.out += encode_response(ok, failed)
                self._flush(conn)

    def _housekeeping(self, parent_pid: int | None) -> None:
        due = self.appender.sync_due_in()
        if due is not None and due <= 0:
            self.appender.sync()
        now = time.monotonic()
        if now >= self._next_retention:
            self._next_retention = now + self.settings.retention_every_s
            try:
                result = enforce_retention(
                    self.root,
                    max_age_ms=self.settings.retention_max_age_ms,
                    max_bytes=self.settings.retention_max_bytes,
                )
                if result.segments_removed:
                    log.info(
                        "retention removed %d segments (%d bytes, %d records)",
                        result.segments_removed,
                        result.bytes_removed,
                        result.records_removed,
                    )
            except Exception:
                log.exception("retention failed")
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("parent process is gone; stopping the log server")
            self._stopping = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Headwater's embedded log server")
    parser.add_argument("settings", help="ServerSettings as JSON")
    parser.add_argument(
        "--parent", type=int, default=None, help="exit when this process is no longer our parent"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s logd %(levelname)s %(message)s")
    settings = msgspec.json.decode(args.settings, type=ServerSettings)
    try:
        server = LogServer(settings)
    except AlreadyRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    tune_gc()
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    server.serve(args.parent)
    return 0
