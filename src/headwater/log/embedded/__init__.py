"""The embedded log: shared segment files for data, an SQLite index, group commit.

Layout under `<data>/log/<name>/`:

- `segments/<n>.seg`: append-only data files. Every partition's record batches are interleaved
  in the current segment, so one group commit is one `write` and one `fdatasync`, however many
  partitions it touches.
- `index.db`: SQLite (WAL) mapping (partition, offsets) to (segment, position, length), plus the
  next offset of every partition and consumer-group offsets. A batch becomes visible only when its
  index row commits, which happens after its bytes are durable: bytes written by a writer that died
  before committing are never referenced and cost nothing but space.
- `write.lock`: an `flock` taken around every commit, so any number of writer processes share one
  log without SQLite's sleep-and-retry busy handler.
"""

from headwater.log.embedded.reader import EmbeddedLogReader
from headwater.log.embedded.retention import RetentionResult, enforce_retention
from headwater.log.embedded.writer import EmbeddedLogWriter, FsyncPolicy

__all__ = [
    "EmbeddedLogReader",
    "EmbeddedLogWriter",
    "FsyncPolicy",
    "RetentionResult",
    "enforce_retention",
]
