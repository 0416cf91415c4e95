"""The embedded log: shared segment files for data, an SQLite index, group commit.

Layout under `<data>/log/<name>/`:

- `segments/<n>.seg`: append-only data files of framed record batches (`frames.py`). Every
  partition's batches are interleaved in the current segment, so one group commit is one write
  and one `fdatasync`, however many partitions it touches.
- `index.db`: SQLite (WAL) mapping (partition, offsets) to (segment, position, length), plus the
  next offset of every partition and consumer-group offsets. A batch becomes visible when its
  index row commits, which happens after its bytes are durable.
- `write.lock`: an `flock` taken around every index write, so tools and the log server can share
  the log safely; `server.lock` makes sure one log server at a time appends.

The log server (`server.py`) is the one process that appends; gateway workers reach it through
`LogClient` over a Unix socket. Readers (`EmbeddedLogReader`) read the files directly.
"""

from headwater.log.embedded.appender import AppendSettings, FsyncPolicy, SegmentAppender
from headwater.log.embedded.client import LogClient
from headwater.log.embedded.reader import EmbeddedLogReader
from headwater.log.embedded.retention import RetentionResult, enforce_retention
from headwater.log.embedded.server import LogServer, ServerSettings

__all__ = [
    "AppendSettings",
    "EmbeddedLogReader",
    "FsyncPolicy",
    "LogClient",
    "LogServer",
    "RetentionResult",
    "SegmentAppender",
    "ServerSettings",
    "enforce_retention",
]
