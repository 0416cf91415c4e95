"""The destinations of `headwater.yaml` as the router runs them: each with its sources, its
filter, its retry period and its own bound on requests in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from headwater.config import DestinationConfig, parse_duration
from headwater.control.store import stable_id
from headwater.delivery.destinations.base import Destination, DestinationSpec, make_destination
from headwater.delivery.filters import DestinationFilter, compile_filter

STAGE_PREFIX = "destination:"  # accounting stage of a destination: "destination:<name>"
GROUP_PREFIX = "router-"  # consumer group of a destination on `events`: "router-<id>"


def destination_id(workspace: str, name: str) -> str:
    """A destination's id: the same in every data directory (like source ids)."""
    return stable_id("dst", workspace, name)


@dataclass
class Route:
    """One destination and how its events are chosen, delivered and retried."""

    spec: DestinationSpec
    destination: Destination
    sources: frozenset[str]  # source ids it listens to
    filter: DestinationFilter
    retry_period_ms: int
    ordered: bool
    version: bytes = b""  # what it was made from: a route made again the same is the same
    in_flight: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.in_flight = asyncio.Semaphore(max(1, self.destination.max_in_flight))

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def stage(self) -> str:
        """The accounting stage its outcomes are counted under."""
        return STAGE_PREFIX + self.spec.name

    @property
    def group(self) -> str:
        """Its consumer group on the `events` log."""
        return GROUP_PREFIX + self.spec.id


def make_route(
    workspace: str,
    conf: DestinationConfig,
    sources_of: Callable[[str], list[str]],
    make: Callable[[DestinationSpec], Destination] = make_destination,
) -> Route:
    """The route of one configured destination; `sources_of(workspace)` names every source of
    the workspace (for a destination that lists none)."""
    spec = DestinationSpec(
        destination_id(workspace, conf.name), conf.name, conf.type, workspace, dict(conf.settings)
    )
    destination = make(spec)
    names = conf.sources or sources_of(workspace)
    return Route(
        spec,
        destination,
        frozenset(stable_id("src", workspace, name) for name in names),
        compile_filter(conf.name, conf.filters),
        int(parse_duration(conf.retry_period) * 1000),
        destination.ordered if conf.ordered is None else conf.ordered,
        msgspec.json.encode([workspace, conf, sorted(names)]),
    )
