"""A zero-filled segment file made ready, so that the next segment starts preallocated.

`fdatasync` of a write that grows a file also commits the file system's metadata (the new size,
the new extents); on a file whose blocks are already written it only flushes the data. On the
reference machine that halves the cost of each group commit's fsync, which is what bounds a
stream of small requests. A background thread prepares a spare segment
(`segments/spare.next`, `segment_bytes` of zeros, fsynced) when asked (by the appender, half
way through a segment that fills slowly); the appender renames it into place when it rolls to
a new segment (and fsyncs the directory, so that the new name is as durable as the data
written into it).

A zero-filled tail is harmless: readers go by the index, and recovery stops at the first bytes
that are not a frame.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class SpareSegments:
    """Keeps one preallocated segment file ready in `directory`."""

    def __init__(self, directory: Path, size: int) -> None:
        self.directory = directory
        self.size = size
        self.path = directory / "spare.next"
        for stale in directory.glob("spare.*.tmp"):  # left by a process killed while preparing
            if not _alive(stale.name.split(".")[1]):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="spare-segment", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Prepare a spare in the background unless one is ready."""
        self._wanted.set()

    def take(self, target: Path) -> bool:
        """Move the spare to `target` (durably); False if none was ready."""
        try:
            os.rename(self.path, target)
        except FileNotFoundError:
            return False
        _fsync_directory(self.directory)
        return True

    def close(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stopping:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping or self.path.exists():
                continue
            try:
                self._prepare()
            except OSError as exc:  # no room for a spare: segments start empty instead
                log.warning("could not preallocate a log segment: %s", exc.strerror)

    def _prepare(self) -> None:
        tmp = self.directory / f"spare.{os.getpid()}.{threading.get_ident()}.tmp"
        zeros = bytes(min(_CHUNK, self.size))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        done = False
        try:
            written = 0
            while written < self.size:
                if self._stopping:
                    return
                written += os.pwrite(fd, zeros[: self.size - written], written)
            os.fsync(fd)
            done = True
        finally:
            os.close(fd)
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        os.rename(tmp, self.path)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
