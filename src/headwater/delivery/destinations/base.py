"""The plug-in interface of destinations, and the registry of their types.

A destination type is one module that defines a class with the `Destination` shape and
registers it: `@destination_type("webhook")`. The router makes one instance per configured
destination (`make_destination`), hands it lists of events (at most `max_batch`, at most
`max_in_flight` lists at once) and gets one `Result` per event back. `check_settings` is
called when the configuration loads, so a bad setting is an error at start, not at delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from headwater.delivery.model import Event, Result


@dataclass(frozen=True)
class DestinationSpec:
    """A configured destination, as its type sees it."""

    id: str  # stable: "dst_" + a hash of (workspace, name)
    name: str  # what `integrations` objects name it by (case-sensitive)
    type: str
    workspace: str
    settings: dict[str, Any] = field(default_factory=dict)


class Destination(Protocol):
    """One configured destination."""

    max_batch: int  # events per `deliver` call at most
    max_in_flight: int  # `deliver` calls at once at most
    ordered: bool  # events of one profile must arrive in order (one at a time per profile)

    async def deliver(self, events: list[Event]) -> list[Result]:
        """Try to deliver `events`; one result per event, in the same order. Never raises for
        a failed delivery: that is a result (a bug may raise; the router counts it as a
        retryable `destination_error`)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class DestinationType(Protocol):
    """What a registered type offers: a check of its settings, and instances."""

    type_name: ClassVar[str]

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        """Raise `ValueError` saying what is wrong with `settings`."""
        ...

    def __call__(self, spec: DestinationSpec) -> Destination: ...


_TYPES: dict[str, Any] = {}


def destination_type(name: str) -> Callable[[type[Any]], type[Any]]:
    """Register a destination class under type `name`."""

    def register(cls: type[Any]) -> type[Any]:
        cls.type_name = name
        _TYPES[name] = cls
        return cls

    return register


def _load_builtin() -> None:
    # the built-in types register themselves when imported
    from headwater.delivery.destinations import segment, webhook  # noqa: F401


def destination_types() -> list[str]:
    _load_builtin()
    return sorted(_TYPES)


def check_destination(type_name: str, settings: dict[str, Any]) -> None:
    """Raise `ValueError` if `type_name` is unknown or `settings` do not suit it."""
    _load_builtin()
    cls = _TYPES.get(type_name)
    if cls is None:
        raise ValueError(
            f"unknown destination type {type_name!r} (known: {', '.join(sorted(_TYPES))})"
        )
    cls.check_settings(settings)


def make_destination(spec: DestinationSpec) -> Destination:
    """An instance of `spec`'s type."""
    check_destination(spec.type, spec.settings)
    instance: Destination = _TYPES[spec.type](spec)
    return instance
