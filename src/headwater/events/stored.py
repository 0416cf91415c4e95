"""Building stamped messages from a run of the ingest log.

The gateway stores each message exactly as the client sent it (after validating it), next to
the request's `Stamp`. Every reader goes through `records_of_run`, which decodes each message,
applies the same coercion and validation the gateway applied, stamps it and encodes it, so what
a reader sees is the same as if the gateway had stored the stamped message itself.
"""

from __future__ import annotations

import logging

from headwater.events.schema import (
    Message,
    decode_message,
    decode_messages,
    encode_message,
    split_array,
)
from headwater.events.stamp import Stamper, decode_stamp
from headwater.events.validate import Dropped, check, coerce
from headwater.log.records import Record

log = logging.getLogger(__name__)


def records_of_run(source_id: str, stamp: bytes | None, messages: bytes) -> list[Record]:
    """The records of one run, stamped (runs without a stamp hold final messages).

    A stamped record also carries its profile key (`userId`, else `anonymousId`, else
    `messageId`), read while the message is decoded anyway, so that stages need not decode it
    again to partition by profile.
    """
    if stamp is None:
        return [Record(source_id, bytes(raw)) for raw in split_array(messages)]
    stamper = Stamper(decode_stamp(stamp))
    strict = decode_messages(messages)
    if strict is not None:  # the common case: one decode for the whole run
        return _stamped(source_id, stamper, strict, messages)
    raws = split_array(messages)
    records: list[Record] = []
    append = records.append
    for raw in raws:
        key = None
        try:
            item = decode_message(raw)
            msg = item.message
            if msg is None:
                raise Dropped("bad_request", item.problem or "not a message")
            if item.lenient:
                coerce(msg, stamper.path_type)
            check(msg, stamper.path_type, None)
            stamper.apply(msg)
            data = encode_message(msg, item.extras)
            key = msg.userId or msg.anonymousId or msg.messageId or None
        except Dropped as exc:  # the gateway validated it: this means the rules changed
            log.error("a stored message no longer validates (%s); passing it through", exc.code)
            data = bytes(raw)
        except Exception:  # never let one message make the log unreadable
            log.exception("stamping a stored message failed; passing it through as sent")
            data = bytes(raw)
        append(Record(source_id, data, key if type(key) is str else None))
    return records


def _stamped(
    source_id: str, stamper: Stamper, msgs: list[Message], messages: bytes
) -> list[Record]:
    """`records_of_run` for messages that all decoded strictly."""
    path_type = stamper.path_type
    apply = stamper.apply
    records: list[Record] = []
    append = records.append
    for i, msg in enumerate(msgs):
        try:
            check(msg, path_type, None)
            apply(msg)
            data = encode_message(msg, None)
        except Dropped as exc:  # the gateway validated it: this means the rules changed
            log.error("a stored message no longer validates (%s); passing it through", exc.code)
            data = bytes(split_array(messages)[i])
        except Exception:  # never let one message make the log unreadable
            log.exception("stamping a stored message failed; passing it through as sent")
            data = bytes(split_array(messages)[i])
        key = msg.userId or msg.anonymousId or msg.messageId or None
        append(Record(source_id, data, key if type(key) is str else None))
    return records
