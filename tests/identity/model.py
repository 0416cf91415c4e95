"""A deliberately naive reference model of identity resolution's merge rules.

Written from the rules alone (not from `headwater.identity.graph`): profiles are plain objects
in a list, found by linear scans, so that it is easy to check by reading. For each message, in
order:

1. Drop blocked identifiers (`settings.rules(kind).blocks(value)`), dedupe, and order them by
   priority (lower number first; ties keep message order). An alias's `previous_id` comes last
   in message order: a `user_id` if some profile holds that user id, else an `anonymous_id`.
2. Loop: the profiles holding any remaining identifier are matched. The merge breaks a rule if
   (a) for some type of the merged set (not only the message's: a message without a user id
   must not join two users), the merged set holds more values first seen after
   `at_ms - period` (period None: ever) than the type's limit, and more than any single
   matched profile holds; (b) more than one profile is matched and their merges (sum of
   their merge counts + matched - 1) exceed `max_merges`; (c) the merged set holds more than
   `max_identifiers` identifiers and more than the largest matched profile. Then the
   lowest-priority identifier (the last one on a tie) is dropped and the loop starts again.
3. Otherwise: nothing matched -> a new profile; else every matched profile merges into the
   oldest one, which also takes the message's identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from headwater.identity.identifiers import Ident
from headwater.identity.settings import IdentitySettings


@dataclass
class ModelProfile:
    """One profile: identifier -> when first seen; `into` is set once it merged away."""

    number: int  # 0 for the first profile made, 1 for the next, ...
    held: dict[Ident, int] = field(default_factory=dict)
    merges: int = 0
    into: ModelProfile | None = None

    def final(self) -> ModelProfile:
        p = self
        while p.into is not None:
            p = p.into
        return p


@dataclass(frozen=True)
class Event:
    """What the model needs of a message."""

    at_ms: int
    identifiers: tuple[Ident, ...]
    previous_id: str | None = None


class Model:
    """The reference: feed it events with `apply`, read `partition()` and `landed_groups()`."""

    def __init__(self, settings: IdentitySettings) -> None:
        self.settings = settings
        self.profiles: list[ModelProfile] = []  # every profile ever made, oldest first
        self.landed: list[ModelProfile | None] = []  # per event: where it went
        self.dropped: list[list[Ident]] = []  # per event: what a rule left out, in turn

    def alive(self) -> list[ModelProfile]:
        return [p for p in self.profiles if p.into is None]

    def holder(self, ident: Ident) -> ModelProfile | None:
        for p in self.alive():
            if ident in p.held:
                return p
        return None

    def priority(self, ident: Ident) -> int:
        return self.settings.rules(ident.kind).priority

    def apply(self, event: Event) -> ModelProfile | None:
        wanted = list(event.identifiers)
        if event.previous_id is not None:
            known = self.holder(Ident("user_id", event.previous_id)) is not None
            wanted.append(Ident("user_id" if known else "anonymous_id", event.previous_id))
        kept: list[Ident] = []
        for ident in wanted:
            if not self.settings.rules(ident.kind).blocks(ident.value) and ident not in kept:
                kept.append(ident)
        # a naive stable sort: for each priority level in turn, in message order
        levels = sorted({self.priority(i) for i in kept})
        ordered = [i for level in levels for i in kept if self.priority(i) == level]
        landed: ModelProfile | None = None
        dropped: list[Ident] = []
        self.dropped.append(dropped)
        while ordered:
            matched = [p for p in self.alive() if any(i in p.held for i in ordered)]
            if self.breaks(matched, ordered, event.at_ms):
                worst = max(self.priority(i) for i in ordered)
                last = [n for n, i in enumerate(ordered) if self.priority(i) == worst][-1]
                dropped.append(ordered.pop(last))
                continue
            if not matched:
                landed = ModelProfile(len(self.profiles))
                self.profiles.append(landed)
            else:
                landed = matched[0]
                for other in matched[1:]:
                    for ident, first in other.held.items():
                        landed.held[ident] = min(first, landed.held.get(ident, first))
                    landed.merges += other.merges + 1
                    other.held = {}
                    other.into = landed
            for ident in ordered:
                landed.held.setdefault(ident, event.at_ms)
            break
        self.landed.append(landed)
        return landed

    def breaks(self, matched: list[ModelProfile], ordered: list[Ident], at_ms: int) -> bool:
        merged: dict[Ident, int] = {}
        for p in matched:
            for ident, first in p.held.items():
                merged[ident] = min(first, merged.get(ident, first))
        for ident in ordered:
            merged.setdefault(ident, at_ms)

        for kind in {i.kind for i in merged}:
            rules = self.settings.rules(kind)

            def recent(held: dict[Ident, int], kind: str = kind) -> int:
                period = self.settings.rules(kind).period_ms
                return len(
                    [
                        i
                        for i, first in held.items()
                        if i.kind == kind and (period is None or first > at_ms - period)
                    ]
                )

            total = recent(merged)
            if total > rules.limit and all(total > recent(p.held) for p in matched):
                return True

        merges = sum(p.merges for p in matched) + len(matched) - 1
        if len(matched) > 1 and merges > self.settings.max_merges:
            return True
        return len(merged) > self.settings.max_identifiers and all(
            len(merged) > len(p.held) for p in matched
        )

    def partition(self) -> set[frozenset[Ident]]:
        return {frozenset(p.held) for p in self.alive()}

    def profiles_by_number(self) -> dict[int, tuple[dict[Ident, int], int]]:
        """Each live profile by its number: identifier -> first seen, and its merge count."""
        return {p.number: (dict(p.held), p.merges) for p in self.alive()}

    def landed_numbers(self) -> list[int | None]:
        """Per event, the number of the live profile it went to."""
        return [None if p is None else p.final().number for p in self.landed]

    def landed_groups(self) -> list[frozenset[Ident] | None]:
        """Per event, the identifiers of the profile it went to, as that profile is now."""
        return [None if p is None else frozenset(p.final().held) for p in self.landed]


def run_model(
    settings: IdentitySettings,
    events: list[Event],
    later: IdentitySettings | None = None,
    switch: int | None = None,
) -> Model:
    """The model fed `events`; from event `switch` on, with the `later` settings."""
    model = Model(settings)
    for n, event in enumerate(events):
        if later is not None and n == switch:
            model.settings = later
        model.apply(event)
    return model
