"""The `segment` destination: messages forwarded to a Segment-compatible Tracking API (Segment
itself, or another Headwater) as `POST <host>/v1/batch` with the write key as Basic auth.

Messages go as they are, less the Headwater-only `profileId`. Segment's limits are kept: a
message over 32 KB is discarded (`message_too_large`), and a request stays under 500 KB (a
batch is split into several requests; each event gets the result of its own request).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from headwater.delivery.destinations import http
from headwater.delivery.destinations.base import DestinationSpec, destination_type
from headwater.delivery.model import DISCARDED, SAMPLE_BYTES, Event, Result

DEFAULT_HOST = "https://api.segment.io"
MAX_BATCH_SIZE = 500
MAX_MESSAGE_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 500 * 1024
SETTINGS = ("write_key", "host", "batch_size", "timeout", "max_in_flight")

_PROFILE_ID = b'"profileId"'
_HEAD = b'{"batch":['
_TAIL = b'],"sentAt":"2000-01-01T00:00:00.000Z"}'  # the size of the end of a body


@dataclass(frozen=True)
class SegmentSettings:
    """The settings of a Segment destination, checked, with their defaults."""

    write_key: str
    host: str = DEFAULT_HOST
    batch_size: int = 100
    timeout: float = http.DEFAULT_TIMEOUT_S
    max_in_flight: int = 4

    @classmethod
    def parse(cls, settings: dict[str, Any]) -> SegmentSettings:
        """The settings from a destination's configuration; `ValueError` says what is wrong."""
        http.check_keys("segment", settings, SETTINGS)
        write_key = http.check_str(settings, "write_key", required=True)
        assert write_key is not None
        return cls(
            write_key=write_key,
            host=http.check_url(settings.get("host", DEFAULT_HOST), "host"),
            batch_size=http.check_int(settings, "batch_size", 100, 1, MAX_BATCH_SIZE),
            timeout=http.check_timeout(settings.get("timeout", http.DEFAULT_TIMEOUT_S)),
            max_in_flight=http.check_int(settings, "max_in_flight", 4, 1, http.MAX_IN_FLIGHT),
        )


def without_profile_id(message: bytes) -> bytes:
    """`message` less its top-level `profileId` (decoded and re-encoded only if it has one)."""
    if _PROFILE_ID not in message:
        return message
    try:
        data = msgspec.json.decode(message)
    except msgspec.DecodeError:
        return message
    if not isinstance(data, dict) or "profileId" not in data:
        return message
    del data["profileId"]
    return msgspec.json.encode(data)


def sent_at() -> bytes:
    """Now, as ISO-8601 UTC with milliseconds and `Z`."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.").encode() + b"%03dZ" % (now.microsecond // 1000)


def pack(messages: list[bytes], limit: int = MAX_REQUEST_BYTES) -> list[list[int]]:
    """The indexes of `messages`, in order, in groups whose request body stays under `limit`."""
    groups: list[list[int]] = []
    group: list[int] = []
    size = len(_HEAD) + len(_TAIL)
    for i, message in enumerate(messages):
        extra = len(message) + (1 if group else 0)
        if group and size + extra >= limit:
            groups.append(group)
            group, size = [], len(_HEAD) + len(_TAIL)
            extra = len(message)
        group.append(i)
        size += extra
    if group:
        groups.append(group)
    return groups


@destination_type("segment")
class Segment:
    """Messages forwarded to a Segment-compatible Tracking API."""

    type_name = "segment"
    ordered = False

    def __init__(self, spec: DestinationSpec) -> None:
        self.spec = spec
        self.settings = SegmentSettings.parse(spec.settings)
        self.max_batch = self.settings.batch_size
        self.max_in_flight = self.settings.max_in_flight
        self.url = self.settings.host.rstrip("/") + "/v1/batch"
        self._headers = http.base_headers()
        self._sender = http.HttpSender(
            self.settings.timeout, self.max_in_flight, auth=(self.settings.write_key, "")
        )

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        """Raise `ValueError` saying what is wrong with `settings`."""
        SegmentSettings.parse(settings)

    async def deliver(self, events: list[Event]) -> list[Result]:
        """Send `events` in as few requests as the limits allow, one after the other."""
        results: list[Result | None] = [None] * len(events)
        sendable: list[int] = []  # indexes into events
        messages: list[bytes] = []
        for i, event in enumerate(events):
            message = without_profile_id(event.message)
            if len(message) > MAX_MESSAGE_BYTES:
                results[i] = Result(DISCARDED, "message_too_large", request=message[:SAMPLE_BYTES])
            else:
                sendable.append(i)
                messages.append(message)
        for start in range(0, len(sendable), self.settings.batch_size):
            chunk = messages[start : start + self.settings.batch_size]
            for group in pack(chunk):
                indexes = [sendable[start + j] for j in group]
                result = await self._send([events[i] for i in indexes], [chunk[j] for j in group])
                for i in indexes:
                    results[i] = result
        return [r for r in results if r is not None]

    async def _send(self, events: list[Event], messages: list[bytes]) -> Result:
        body = _HEAD + b",".join(messages) + b'],"sentAt":"' + sent_at() + b'"}'
        headers = self._headers.copy()
        headers["Idempotency-Key"] = http.idempotency_key(events)
        return await self._sender.send("POST", self.url, body, headers)

    async def close(self) -> None:
        """Close the connections."""
        await self._sender.close()
