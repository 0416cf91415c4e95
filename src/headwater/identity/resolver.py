"""Resolving units of messages against a stored identity graph, and rebuilding a graph from
the journal of another."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from headwater.identity.graph import Message, Resolution, resolve
from headwater.identity.identifiers import Ident
from headwater.identity.profiles import ProfileChange
from headwater.identity.settings import IdentitySettings, identity_settings
from headwater.identity.sqlite_store import JournalEntry, SqliteIdentityStore


class IdentityResolver:
    """Resolves the messages of a unit, per workspace, in one transaction each."""

    def __init__(
        self,
        store: SqliteIdentityStore,
        settings: Callable[[str], IdentitySettings] | None = None,
    ) -> None:
        self.store = store
        self._settings = settings or (lambda _ws: identity_settings())

    def resolve_unit(
        self,
        workspace: str,
        messages: list[Message],
        profile_changes: Callable[[list[Resolution]], list[ProfileChange]] | None = None,
    ) -> list[Resolution]:
        """Resolve `messages` in order; what changed the graph is journaled with it, and what
        `profile_changes` makes of the results is written with it."""
        wanted: list[Ident] = []
        for m in messages:
            wanted += m.identifiers
            if m.previous_id is not None:
                wanted.append(Ident("user_id", m.previous_id))
                wanted.append(Ident("anonymous_id", m.previous_id))
        graph = self.store.graph(workspace, wanted)
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
        if journal or changes:
            self.store.save(workspace, graph, journal, changes)
        return results


def rebuild(
    source: SqliteIdentityStore,
    target: SqliteIdentityStore,
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
