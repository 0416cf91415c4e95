"""Tracking plans in the control plane: declared in `headwater.yaml` or made through the admin
API, and which plan each source enforces, how.

The processor reads `PlanCatalog.enforced()` and reads it again whenever the control plane's
version changes, so a plan edited through the API applies without a restart.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import msgspec

from headwater.config import (
    Config,
    Enforcement,
    PlanRules,
    TrackingPlanConfig,
    check_plan,
)
from headwater.control.store import (
    MANAGED_BY_API,
    MANAGED_BY_CONFIG,
    ControlError,
    ControlStore,
    Source,
    now_ms,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tracking_plans(
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    rules TEXT NOT NULL,
    managed_by TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY(workspace_id, name)
);
CREATE TABLE IF NOT EXISTS source_plans(
    source_id TEXT PRIMARY KEY REFERENCES sources(id),
    plan TEXT NOT NULL,
    enforcement TEXT NOT NULL,
    managed_by TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class TrackingPlan:
    workspace: str
    name: str
    rules: PlanRules
    managed_by: str
    updated_ms: int


@dataclass(frozen=True, slots=True)
class Connection:
    """The plan a source enforces, and how."""

    source: Source
    plan: str
    enforcement: Enforcement
    managed_by: str


class PlanCatalog:
    """Tracking plans and their connections to sources, in the control store's database."""

    def __init__(self, store: ControlStore) -> None:
        self.store = store
        store.conn.executescript(SCHEMA)

    # -- plans --------------------------------------------------------------------------------

    def put(
        self, workspace: str, name: str, rules: Any, *, managed_by: str = MANAGED_BY_API
    ) -> TrackingPlan:
        """Create or replace the plan `name` (rules as `PlanRules` or their JSON shape)."""
        ws = self.store.workspace(workspace)
        if not name or len(name) > 100 or "/" in name:
            raise ControlError(f"invalid tracking plan name {name!r}: 1-100 characters, no '/'")
        try:
            plan_rules = msgspec.convert(rules, PlanRules)
            check_plan(ws.name, TrackingPlanConfig(name, plan_rules))
        except (msgspec.ValidationError, ValueError) as exc:
            raise ControlError(f"invalid rules: {exc}", code="validation_error") from None
        text = msgspec.json.encode(plan_rules).decode()
        same = self.store.conn.execute(
            "SELECT 1 FROM tracking_plans WHERE workspace_id=? AND name=? AND rules=? "
            "AND managed_by=?",
            (ws.id, name, text, managed_by),
        ).fetchone()
        if not same:  # an unchanged plan keeps its version (no reload in the processor)
            with self.store.transaction():
                self.store.conn.execute(
                    "INSERT OR REPLACE INTO tracking_plans VALUES(?,?,?,?,?)",
                    (ws.id, name, text, managed_by, now_ms()),
                )
        return self.get(ws.name, name)

    def get(self, workspace: str, name: str) -> TrackingPlan:
        ws = self.store.workspace(workspace)
        row = self.store.conn.execute(
            "SELECT rules, managed_by, updated_ms FROM tracking_plans "
            "WHERE workspace_id=? AND name=?",
            (ws.id, name),
        ).fetchone()
        if row is None:
            raise ControlError(
                f"no tracking plan {name!r} in workspace {ws.name!r}", status=404, code="not_found"
            )
        return TrackingPlan(ws.name, name, _rules(row[0]), row[1], row[2])

    def plans(self, workspace: str) -> list[TrackingPlan]:
        ws = self.store.workspace(workspace)
        rows = self.store.conn.execute(
            "SELECT name, rules, managed_by, updated_ms FROM tracking_plans "
            "WHERE workspace_id=? ORDER BY name",
            (ws.id,),
        ).fetchall()
        return [TrackingPlan(ws.name, n, _rules(r), m, u) for n, r, m, u in rows]

    def delete(self, workspace: str, name: str) -> None:
        """Delete a plan no source is connected to (409 otherwise)."""
        plan = self.get(workspace, name)
        ws = self.store.workspace(plan.workspace)
        users = [
            c.source.name
            for c in self.connections()
            if c.source.workspace_id == ws.id and c.plan == name
        ]
        if users:
            raise ControlError(
                f"tracking plan {name!r} is connected to {', '.join(sorted(users))}; "
                "disconnect it first",
                status=409,
                code="conflict",
            )
        with self.store.transaction():
            self.store.conn.execute(
                "DELETE FROM tracking_plans WHERE workspace_id=? AND name=?", (ws.id, name)
            )

    # -- connections --------------------------------------------------------------------------

    def connect(
        self,
        source_ref: str,
        plan: str,
        enforcement: Enforcement,
        *,
        managed_by: str = MANAGED_BY_API,
    ) -> Connection:
        """Make `source_ref` enforce `plan` of its workspace as `enforcement` says."""
        src = self.store.source(source_ref)
        self.get(src.workspace, plan)  # it must exist
        names = {s.name for s in self.store.list_sources(src.workspace)}
        for target in (enforcement.forward_blocked_to, enforcement.forward_violations_to):
            if target is not None and target not in names:
                raise ControlError(
                    f"cannot forward to {target!r}: workspace {src.workspace!r} has no such source",
                    code="validation_error",
                )
        row = (src.id, plan, msgspec.json.encode(enforcement).decode(), managed_by)
        same = self.store.conn.execute(
            "SELECT 1 FROM source_plans WHERE source_id=? AND plan=? AND enforcement=? "
            "AND managed_by=?",
            row,
        ).fetchone()
        if not same:
            with self.store.transaction():
                self.store.conn.execute("INSERT OR REPLACE INTO source_plans VALUES(?,?,?,?)", row)
        found = self.connection(src.id)
        assert found is not None
        return found

    def disconnect(self, source_ref: str) -> None:
        src = self.store.source(source_ref)
        with self.store.transaction():
            self.store.conn.execute("DELETE FROM source_plans WHERE source_id=?", (src.id,))

    def connection(self, source_ref: str) -> Connection | None:
        src = self.store.source(source_ref)
        row = self.store.conn.execute(
            "SELECT plan, enforcement, managed_by FROM source_plans WHERE source_id=?", (src.id,)
        ).fetchone()
        if row is None:
            return None
        return Connection(src, row[0], msgspec.json.decode(row[1], type=Enforcement), row[2])

    def connections(self) -> list[Connection]:
        rows = self.store.conn.execute(
            "SELECT source_id FROM source_plans ORDER BY source_id"
        ).fetchall()
        found = [self.connection(r[0]) for r in rows]
        return [c for c in found if c is not None]

    # -- headwater.yaml -----------------------------------------------------------------------

    def apply_config(self, config: Config) -> None:
        """Make the plans and connections the file declares exist as declared; drop the ones
        an earlier file declared and this one does not (API-made ones are left alone)."""
        declared_plans: set[tuple[str, str]] = set()
        declared_sources: set[str] = set()
        for ws in config.workspaces:
            for plan in ws.tracking_plans:
                self.put(ws.name, plan.name, plan.rules, managed_by=MANAGED_BY_CONFIG)
                declared_plans.add((ws.name, plan.name))
            for src in ws.sources:
                ref = f"{ws.name}/{src.name}"
                current = self.connection(ref)
                if src.tracking_plan is not None:
                    declared_sources.add(self.store.source(ref).id)
                    self.connect(
                        ref, src.tracking_plan, src.enforcement, managed_by=MANAGED_BY_CONFIG
                    )
                elif current is not None and current.managed_by == MANAGED_BY_CONFIG:
                    self.disconnect(ref)
        for conn in self.connections():
            if conn.managed_by == MANAGED_BY_CONFIG and conn.source.id not in declared_sources:
                self.disconnect(conn.source.id)
        for ws_obj in self.store.list_workspaces():
            for plan_obj in self.plans(ws_obj.name):
                key = (ws_obj.name, plan_obj.name)
                if plan_obj.managed_by == MANAGED_BY_CONFIG and key not in declared_plans:
                    with contextlib.suppress(ControlError):  # API-connected: kept
                        self.delete(ws_obj.name, plan_obj.name)


def _rules(text: str) -> PlanRules:
    return msgspec.json.decode(text, type=PlanRules)


def plan_json(plan: TrackingPlan) -> dict[str, Any]:
    return {
        "workspace": plan.workspace,
        "name": plan.name,
        "rules": msgspec.to_builtins(plan.rules),
        "managed_by": plan.managed_by,
        "updated_ms": plan.updated_ms,
    }


def connection_json(conn: Connection | None) -> dict[str, Any]:
    if conn is None:
        return {"tracking_plan": None, "enforcement": None}
    return {
        "source": conn.source.id,
        "tracking_plan": conn.plan,
        "enforcement": msgspec.to_builtins(conn.enforcement),
        "managed_by": conn.managed_by,
    }
