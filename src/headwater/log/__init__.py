"""The log: partitioned durable storage of record batches, and the interface backends meet."""

from headwater.log.base import (
    LogBackpressure,
    LogError,
    LogUnavailable,
)
from headwater.log.records import Record, RecordBatch, Run, partition_for

__all__ = [
    "LogBackpressure",
    "LogError",
    "LogUnavailable",
    "Record",
    "RecordBatch",
    "Run",
    "partition_for",
]
