"""Apply the workspaces and sources declared in `headwater.yaml` to the control store.

The file is the source of truth for what it declares: declared sources exist, are enabled as
declared, and accept exactly the write keys listed (a source declared without keys gets one
generated key, kept across restarts). Sources that an earlier version of the file declared and
this one does not are disabled, never deleted. Things created through the admin API or the CLI
are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from headwater.config import Config
from headwater.control.destinations import DestinationCatalog
from headwater.control.identity import IdentityCatalog
from headwater.control.plans import PlanCatalog
from headwater.control.store import MANAGED_BY_CONFIG, ControlError, ControlStore, Source


@dataclass(frozen=True, slots=True)
class AppliedConfig:
    """The sources the file declares, as stored after applying it."""

    sources: list[Source]


def apply_config(store: ControlStore, config: Config) -> AppliedConfig:
    """Make the control plane match the file (see the module docstring)."""
    declared_ids: set[str] = set()
    applied: list[Source] = []
    for ws_conf in config.workspaces:
        ws = store.ensure_workspace(ws_conf.name, managed_by=MANAGED_BY_CONFIG)
        for src_conf in ws_conf.sources:
            ref = f"{ws.name}/{src_conf.name}"
            try:
                src = store.source(ref)
            except ControlError as exc:
                if exc.code != "not_found":
                    raise
                src = store.create_source(
                    ws.name,
                    src_conf.name,
                    write_keys=[] if src_conf.write_keys else None,
                    managed_by=MANAGED_BY_CONFIG,
                )
            if src_conf.write_keys:
                store.sync_write_keys(src.id, src_conf.write_keys)
            if src.enabled != src_conf.enabled:
                store.set_source_enabled(ref, src_conf.enabled)
            declared_ids.add(src.id)
            applied.append(store.source(src.id))
    for stale in store.config_sources_not_in(declared_ids):
        store.set_source_enabled(stale, False)
    PlanCatalog(store).apply_config(config)
    IdentityCatalog(store).apply_config(config)
    DestinationCatalog(store).apply_config(config)
    return AppliedConfig(applied)
