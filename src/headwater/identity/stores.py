"""The identity store a configuration asks for: embedded (SQLite under `--data`) or shared by
every processor in Redis (`state.backend: redis`), and what every part that uses one relies
on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from headwater.config import Config
from headwater.paths import DataPaths

if TYPE_CHECKING:
    from headwater.identity.graph import Graph, GraphUpdate
    from headwater.identity.identifiers import Ident
    from headwater.identity.profiles import ProfileChange
    from headwater.identity.sqlite_store import JournalEntry


class ProfileReading(Protocol):
    """Reads of one workspace's profiles (`ProfileReader`, `RedisProfileReader`)."""

    def members(self, canonical: str) -> list[str]: ...
    def traits(self, canonical: str) -> dict[str, Any]: ...
    def events(
        self, canonical: str, limit: int, before_seq: int | None = None
    ) -> list[tuple[int, bytes]]: ...
    def links(self, canonical: str) -> list[tuple[str, str, int]]: ...
    def external_ids(self, canonical: str) -> list[tuple[str, str, int, str, str]]: ...
    def metadata(self, canonical: str) -> dict[str, Any] | None: ...


class IdentityStore(Protocol):
    """An identity graph with its journal and profiles (`SqliteIdentityStore`,
    `RedisIdentityStore`)."""

    def graph(self, workspace: str, idents: Iterable[Ident] = ()) -> Graph: ...
    def save(
        self,
        workspace: str,
        graph: Graph,
        journal: list[JournalEntry],
        changes: list[ProfileChange] | None = None,
    ) -> None: ...
    def owner_of(self, workspace: str, ident: Ident) -> str | None: ...
    def current_profile(self, workspace: str, pid: str) -> str | None: ...
    def updates(self, workspace: str) -> list[GraphUpdate]: ...
    def journal(self, workspace: str | None = None) -> Iterable[tuple[str, JournalEntry]]: ...
    def journal_workspaces(self) -> list[str]: ...
    def journal_size(self) -> int: ...
    def partition(self, workspace: str) -> set[frozenset[Ident]]: ...
    def reader(self, workspace: str) -> ProfileReading: ...
    def expire(self, workspace: str, before_ms: int) -> int: ...
    def close(self) -> None: ...


def redis_prefix(config: Config, name: str = "identity") -> str:
    return f"{config.state.prefix}:{name}:"


def embedded_path(paths: DataPaths) -> Any:
    return paths.root / "state" / "identity.db"


def open_store(
    config: Config, paths: DataPaths, *, readonly: bool = False, name: str = "identity"
) -> IdentityStore:
    """The store of `config.state.backend`; `readonly` for readers next to the processor
    that writes (the embedded file must exist then); `name` another graph of the same
    backend (a rebuild's)."""
    if config.state.backend == "redis":
        import redis

        from headwater.identity.redis_store import RedisIdentityStore

        client = redis.Redis.from_url(config.state.url, socket_timeout=10)
        return RedisIdentityStore(client, redis_prefix(config, name))
    from headwater.identity.sqlite_store import SqliteIdentityStore

    path = embedded_path(paths)
    if name != "identity":
        path = path.with_name(f"{name}.db")
    return SqliteIdentityStore(path, readonly=readonly)


def discard(config: Config, paths: DataPaths, name: str) -> None:
    """Delete the graph `name` (a rebuild's scratch graph), whatever it holds."""
    if config.state.backend == "redis":
        store = open_store(config, paths, name=name)
        store.destroy()  # type: ignore[attr-defined]  # a RedisIdentityStore
        store.close()
        return
    path = embedded_path(paths).with_name(f"{name}.db")
    for suffix in ("", "-wal", "-shm", ".index.npz"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def store_exists(config: Config, paths: DataPaths) -> bool:
    """Whether there is a graph to read (Redis: always; embedded: once a processor made it)."""
    return config.state.backend == "redis" or embedded_path(paths).exists()
