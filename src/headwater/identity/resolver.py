"""Resolving units of messages against a stored identity graph, and rebuilding a graph from
the journal of another."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from headwater.identity.graph import Graph, GraphConflict, Message, Resolution, resolve
from headwater.identity.identifiers import Ident
from headwater.identity.profiles import ProfileChange
from headwater.identity.settings import IdentitySettings, identity_settings
from headwater.identity.sqlite_store import JournalEntry
from headwater.identity.stores import IdentityStore

MAX_ATTEMPTS = 50  # a unit that keeps losing the race this often raises GraphConflict


class IdentityResolver:
    """Resolves the messages of a unit, per workspace, in one transaction each."""

    def __init__(
        self,
        store: IdentityStore,
        settings: Callable[[str], IdentitySettings] | None = None,
    ) -> None:
        self.store = store
        self.stages = hasattr(store, "stage")  # writes behind: `stage_unit`, else `resolve_unit`
        self._settings = settings or (lambda _ws: identity_settings())

    def resolve_unit(
        self,
        workspace: str,
        messages: list[Message],
        profile_changes: Callable[[list[Resolution]], list[ProfileChange]] | None = None,
    ) -> list[Resolution]:
        """Resolve `messages` in order; what changed the graph is journaled with it, and what
        `profile_changes` makes of the results is written with it. A store shared by several
        processors may find that another changed what the unit read: the unit is resolved
        again (`GraphConflict`), so the graph is always the result of some order of units."""
        for _attempt in range(MAX_ATTEMPTS - 1):
            try:
                return self._resolve_and_save(workspace, messages, profile_changes)
            except GraphConflict:
                continue
        return self._resolve_and_save(workspace, messages, profile_changes)

    def _resolve_and_save(
        self,
        workspace: str,
        messages: list[Message],
        profile_changes: Callable[[list[Resolution]], list[ProfileChange]] | None,
    ) -> list[Resolution]:
        graph, journal, changes, results = self._resolve(workspace, messages, profile_changes)
        if journal or changes:
            self.store.save(workspace, graph, journal, changes)
        return results

    def stage_unit(
        self,
        workspace: str,
        messages: list[Message],
        profile_changes: Callable[[list[Resolution]], list[ProfileChange]] | None = None,
    ) -> tuple[list[Resolution], Future[Any] | None]:
        """`resolve_unit` for a store that writes behind (`stages`): the results at once, and
        a future that completes when they are committed (None: nothing to write)."""
        graph, journal, changes, results = self._resolve(workspace, messages, profile_changes)
        if not journal and not changes:
            return results, None
        stage = self.store.stage  # type: ignore[attr-defined]  # `stages`: it has one
        return results, stage(workspace, graph, journal, changes)

    def _resolve(
        self,
        workspace: str,
        messages: list[Message],
        profile_changes: Callable[[list[Resolution]], list[ProfileChange]] | None,
    ) -> tuple[Graph, list[JournalEntry], list[ProfileChange], list[Resolution]]:
        """`messages` resolved on a graph read from the store: the graph with what they
        changed, the journal entries, what they bring to profiles, and each one's result."""
        wanted: list[Ident] = []
        for m in messages:
            wanted += m.identifiers
            if m.previous_id is not None:
                wanted.append(Ident("user_id", m.previous_id))
                wanted.append(Ident("anonymous_id", m.previous_id))
        graph = self.store.graph(workspace, wanted)
        graph.preload(_profiles_to_read(graph, messages))
        settings = self._settings(workspace)
        results: list[Resolution] = []
        journal: list[JournalEntry] = []
        for m in messages:
            r = resolve(graph, settings, m)
            if r.changed:
                journal.append(
                    JournalEntry(
                        m.message_id,
                        m.source_id,
                        m.at_ms,
                        [(i.kind, i.value) for i in m.identifiers],
                        m.previous_id,
                    )
                )
            results.append(r)
        changes = profile_changes(results) if profile_changes is not None else []
        return graph, journal, changes, results


def _profiles_to_read(graph: Graph, messages: list[Message]) -> set[str]:
    """The profiles that resolving `messages` will read: those holding identifiers of a
    message not wholly held by one profile (an alias, a new identifier, a merge)."""
    get = graph.owners.get
    wanted: set[str] = set()
    for m in messages:
        idents = m.identifiers
        first = get(idents[0]) if idents else None
        if first is not None and m.previous_id is None:
            for i in idents:
                if get(i) != first:
                    break
            else:
                continue  # one profile holds them all: nothing to read
        wanted.update(p for p in map(get, idents) if p is not None)
    return wanted


def rebuild(
    source: IdentityStore,
    target: IdentityStore,
    resolver_settings: Callable[[str], IdentitySettings] | None = None,
    unit: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Resolve every journaled message of `source`, in its order, into `target` (an empty
    store); returns how many messages were replayed."""
    resolver = IdentityResolver(target, resolver_settings)
    done = 0
    batch: list[Message] = []
    current: str | None = None

    def flush() -> None:
        nonlocal done
        if batch and current is not None:
            resolver.resolve_unit(current, batch)
            done += len(batch)
            if progress is not None:
                progress(len(batch))
        batch.clear()

    entries: Iterable[tuple[str, JournalEntry]] = source.journal()
    for workspace, entry in entries:
        if workspace != current or len(batch) >= unit:
            flush()
            current = workspace
        batch.append(entry.message())
    flush()
    return done
