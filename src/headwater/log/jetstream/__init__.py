"""The NATS JetStream backend of the log: a stream per partition, record batches as messages."""

from headwater.log.jetstream.appender import JetStreamAppender
from headwater.log.jetstream.leases import LeaseManager
from headwater.log.jetstream.log import JetStreamConsumer, JetStreamLog
from headwater.log.jetstream.streams import JetStreamSettings, Names, connect, ensure_log

__all__ = [
    "JetStreamAppender",
    "JetStreamConsumer",
    "JetStreamLog",
    "JetStreamSettings",
    "LeaseManager",
    "Names",
    "connect",
    "ensure_log",
]
