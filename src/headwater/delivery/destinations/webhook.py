"""The `webhook` destination: each message, or a batch of them, POSTed (or PUT) as JSON to a URL.

With `batch_size` 1 a request's body is one message (a JSON object); above 1 it is a JSON array
of up to `batch_size` messages, and the request's result applies to each of them. Every request
carries `Idempotency-Key` (the messageId, or `batch-` + a hash of the batch's messageIds) and,
with a `secret`, an HMAC-SHA256 of its body: `X-Signature: sha256=<hex>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headwater.delivery.destinations import http
from headwater.delivery.destinations.base import DestinationSpec, destination_type
from headwater.delivery.model import Event, Result

MAX_BATCH_SIZE = 1000
SETTINGS = (
    "url",
    "method",
    "headers",
    "batch_size",
    "timeout",
    "secret",
    "signature_header",
    "max_in_flight",
    "ordered",
)


@dataclass(frozen=True)
class WebhookSettings:
    """The settings of a webhook, checked, with their defaults."""

    url: str
    method: str = "POST"
    headers: dict[str, str] | None = None
    batch_size: int = 1
    timeout: float = http.DEFAULT_TIMEOUT_S
    secret: str | None = None
    signature_header: str = "X-Signature"
    max_in_flight: int = 8
    ordered: bool = False

    @classmethod
    def parse(cls, settings: dict[str, Any]) -> WebhookSettings:
        """The settings from a destination's configuration; `ValueError` says what is wrong."""
        http.check_keys("webhook", settings, SETTINGS)
        if "url" not in settings:
            raise ValueError("webhook: url is required")
        method = settings.get("method", "POST")
        if not isinstance(method, str) or method.upper() not in ("POST", "PUT"):
            raise ValueError(f"method must be POST or PUT, got {method!r}")
        return cls(
            url=http.check_url(settings["url"]),
            method=method.upper(),
            headers=http.check_headers(settings.get("headers")),
            batch_size=http.check_int(settings, "batch_size", 1, 1, MAX_BATCH_SIZE),
            timeout=http.check_timeout(settings.get("timeout", http.DEFAULT_TIMEOUT_S)),
            secret=http.check_str(settings, "secret"),
            signature_header=http.check_header_name(
                settings.get("signature_header", "X-Signature"), "signature_header"
            ),
            max_in_flight=http.check_int(settings, "max_in_flight", 8, 1, http.MAX_IN_FLIGHT),
            ordered=http.check_bool(settings, "ordered", False),
        )


@destination_type("webhook")
class Webhook:
    """Messages sent as JSON to one URL."""

    type_name = "webhook"

    def __init__(self, spec: DestinationSpec) -> None:
        self.spec = spec
        self.settings = WebhookSettings.parse(spec.settings)
        self.max_batch = self.settings.batch_size
        self.max_in_flight = self.settings.max_in_flight
        self.ordered = self.settings.ordered
        self._headers = http.base_headers(self.settings.headers)
        self._sender = http.HttpSender(self.settings.timeout, self.max_in_flight)

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        """Raise `ValueError` saying what is wrong with `settings`."""
        WebhookSettings.parse(settings)

    async def deliver(self, events: list[Event]) -> list[Result]:
        """One request per `batch_size` events, one after the other; one result per event."""
        results: list[Result] = []
        size = self.settings.batch_size
        for start in range(0, len(events), size):
            chunk = events[start : start + size]
            result = await self._send(chunk)
            results.extend([result] * len(chunk))
        return results

    async def _send(self, events: list[Event]) -> Result:
        if self.settings.batch_size == 1:
            body = events[0].message
        else:
            body = http.json_array(e.message for e in events)
        headers = self._headers.copy()
        headers["Idempotency-Key"] = http.idempotency_key(events)
        if self.settings.secret is not None:
            headers[self.settings.signature_header] = http.signature(self.settings.secret, body)
        return await self._sender.send(self.settings.method, self.settings.url, body, headers)

    async def close(self) -> None:
        """Close the connections."""
        await self._sender.close()
