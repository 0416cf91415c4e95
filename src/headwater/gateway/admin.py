"""The admin REST API under `/admin/v1/`, protected by the admin token (Bearer)."""

from __future__ import annotations

import sqlite3
from typing import Any
from urllib.parse import parse_qs

import msgspec
from redis import RedisError

from headwater.accounting import AccountingStore, views
from headwater.accounting.views import ViewError
from headwater.config import Enforcement, IdentityConfig
from headwater.control.destinations import (
    DestinationCatalog,
    destination_json,
    parse_destination,
)
from headwater.control.identity import IdentityCatalog
from headwater.control.plans import PlanCatalog, connection_json, plan_json
from headwater.control.store import ControlError, ControlStore, Source, Workspace
from headwater.gateway.http import HttpError

_encoder = msgspec.json.Encoder()


class NewWorkspace(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class NewSource(msgspec.Struct, forbid_unknown_fields=True):
    workspace: str
    name: str
    write_keys: list[str] | None = None


class Rotation(msgspec.Struct, forbid_unknown_fields=True):
    grace_seconds: float = 86400.0


class NewPlan(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    rules: dict[str, Any] = {}


class PlanBody(msgspec.Struct, forbid_unknown_fields=True):
    rules: dict[str, Any] = {}


class PlanConnection(msgspec.Struct, forbid_unknown_fields=True):
    tracking_plan: str
    enforcement: Enforcement = Enforcement()


def workspace_json(ws: Workspace) -> dict[str, Any]:
    return {"id": ws.id, "name": ws.name, "created_ms": ws.created_ms}


def source_json(src: Source) -> dict[str, Any]:
    return {
        "id": src.id,
        "workspace": src.workspace,
        "workspace_id": src.workspace_id,
        "name": src.name,
        "enabled": src.enabled,
        "created_ms": src.created_ms,
        "write_keys": [
            {
                "key": k.key,
                "created_ms": k.created_ms,
                "expires_ms": k.expires_ms,
                "disabled": k.disabled,
            }
            for k in src.write_keys
        ],
    }


class AdminApi:
    """Routes admin requests to the control store (small, rare requests: run inline)."""

    def __init__(self, store: ControlStore, accounting: AccountingStore | None = None) -> None:
        self.store = store
        self.plans = PlanCatalog(store)
        self.identity = IdentityCatalog(store)
        self.destinations = DestinationCatalog(store)
        self.accounting = accounting

    def authorize(self, header: str | None) -> None:
        if not self.store.has_admin_token():
            raise HttpError(403, "admin_disabled", "no admin token is configured")
        if not header or header[:7].lower() != "bearer ":
            raise HttpError(401, "unauthorized", "send Authorization: Bearer <admin token>")
        if not self.store.check_admin_token(header[7:].strip()):
            raise HttpError(401, "unauthorized", "wrong admin token")

    def handle(self, method: str, path: str, query: str, body: bytes) -> tuple[int, bytes]:
        """Answer one admin request: (status, JSON body); raises `HttpError`."""
        parts = path.removeprefix("/admin/v1/").strip("/").split("/")
        if len(parts) >= 4 and parts[0] == "workspaces" and parts[2] == "sources":
            # /workspaces/<ws>/sources/<name>/...: the same as /sources/<ws/name>/...
            parts = ["sources", f"{parts[1]}/{parts[3]}", *parts[4:]]
        elif len(parts) >= 3 and parts[0] == "sources" and not parts[1].startswith("src_"):
            # /sources/<ws>%2F<name>/... arrives decoded as /sources/<ws>/<name>/...
            parts = ["sources", f"{parts[1]}/{parts[2]}", *parts[3:]]
        elif len(parts) >= 3 and parts[0] == "destinations" and not parts[1].startswith("dst_"):
            # /destinations/<ws>%2F<name> arrives decoded as /destinations/<ws>/<name>
            parts = ["destinations", f"{parts[1]}/{parts[2]}", *parts[3:]]
        try:
            status, result = self._route(
                method, parts, parse_qs(query, keep_blank_values=True), body
            )
        except ControlError as exc:
            raise HttpError(exc.status, exc.code, str(exc)) from None
        except ViewError as exc:
            raise HttpError(400, "validation_error", str(exc)) from None
        except (RedisError, sqlite3.OperationalError) as exc:  # the accounting store
            raise HttpError(
                503, "unavailable", f"the accounting store does not answer: {exc}"
            ) from None
        except msgspec.ValidationError as exc:
            raise HttpError(400, "bad_request", f"invalid request body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise HttpError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        return status, _encoder.encode(result)

    def _route(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes
    ) -> tuple[int, Any]:
        store = self.store
        match (method, parts):
            case ("GET", ["workspaces"]):
                return 200, {"workspaces": [workspace_json(w) for w in store.list_workspaces()]}
            case ("POST", ["workspaces"]):
                req = msgspec.json.decode(body or b"{}", type=NewWorkspace)
                return 201, workspace_json(store.create_workspace(req.name))
            case ("GET", ["sources"]):
                ws = query.get("workspace", [None])[0]
                return 200, {"sources": [source_json(s) for s in store.list_sources(ws)]}
            case ("POST", ["sources"]):
                new = msgspec.json.decode(body or b"{}", type=NewSource)
                src = store.create_source(
                    new.workspace, new.name, write_keys=new.write_keys or None
                )
                return 201, source_json(src)
            case ("GET", ["sources", ref]):
                return 200, source_json(store.source(ref))
            case ("POST", ["sources", ref, "rotate"]):
                rot = msgspec.json.decode(body or b"{}", type=Rotation)
                src, key = store.rotate_write_key(ref, grace_seconds=rot.grace_seconds)
                return 200, {"write_key": key, "source": source_json(src)}
            case ("POST", ["sources", ref, "disable"]):
                return 200, source_json(store.set_source_enabled(ref, False))
            case ("POST", ["sources", ref, "enable"]):
                return 200, source_json(store.set_source_enabled(ref, True))
            case ("GET", ["sources", ref, "tracking-plan"]):
                return 200, connection_json(self.plans.connection(ref))
            case ("PUT", ["sources", ref, "tracking-plan"]):
                c = msgspec.json.decode(body or b"{}", type=PlanConnection)
                return 200, connection_json(self.plans.connect(ref, c.tracking_plan, c.enforcement))
            case ("DELETE", ["sources", ref, "tracking-plan"]):
                self.plans.disconnect(ref)
                return 200, connection_json(None)
            case ("GET", ["sources", ref, "violations"]):
                window = query.get("window", ["24h"])[0]
                return 200, views.violations(self._accounting(), self._source(ref), window=window)
            case ("GET", ["sources", ref, "overview"]):
                return 200, views.overview(
                    self._accounting(),
                    self._source(ref),
                    start=query.get("from", [None])[0],
                    end=query.get("to", [None])[0],
                    granularity=query.get("granularity", ["minute"])[0],
                )
            case ("GET", ["workspaces", ws, "identity"]):
                return 200, identity_json(ws, self.identity.get(ws))
            case ("PUT", ["workspaces", ws, "identity"]):
                settings = msgspec.json.decode(body or b"{}")
                return 200, identity_json(ws, self.identity.put(ws, settings))
            case ("GET", ["workspaces", ws, "tracking-plans"]):
                return 200, {"tracking_plans": [plan_json(p) for p in self.plans.plans(ws)]}
            case ("POST", ["workspaces", ws, "tracking-plans"]):
                made = msgspec.json.decode(body or b"{}", type=NewPlan)
                if any(p.name == made.name for p in self.plans.plans(ws)):
                    raise ControlError(
                        f"tracking plan {made.name!r} already exists", status=409, code="conflict"
                    )
                return 201, plan_json(self.plans.put(ws, made.name, made.rules))
            case ("GET", ["workspaces", ws, "tracking-plans", name]):
                return 200, plan_json(self.plans.get(ws, name))
            case ("PUT", ["workspaces", ws, "tracking-plans", name]):
                put = msgspec.json.decode(body or b"{}", type=PlanBody)
                return 200, plan_json(self.plans.put(ws, name, put.rules))
            case ("DELETE", ["workspaces", ws, "tracking-plans", name]):
                self.plans.delete(ws, name)
                return 200, {"deleted": name}
            case ("GET", ["destinations"]):
                ws = query.get("workspace", [None])[0]
                found = self.destinations.all(ws)
                return 200, {"destinations": [destination_json(d) for d in found]}
            case ("POST", ["workspaces", ws, "destinations"]):
                new_dest = parse_destination(msgspec.json.decode(body or b"{}"))
                return 201, destination_json(self.destinations.create(ws, new_dest))
            case ("GET", ["destinations", ref]):
                return 200, destination_json(self.destinations.get(ref))
            case ("PATCH", ["destinations", ref]):
                changes = msgspec.json.decode(body or b"{}")
                return 200, destination_json(self.destinations.update(ref, changes))
            case ("DELETE", ["destinations", ref]):
                return 200, {"deleted": self.destinations.delete(ref).id}
            case ("DELETE", ["sources", ref, "write-keys", key]):
                src = store.source(ref)
                if key not in {k.key for k in src.write_keys}:
                    raise ControlError(
                        "no such write key on this source", status=404, code="not_found"
                    )
                store.disable_write_key(key)
                return 200, source_json(store.source(ref))
        raise HttpError(404, "not_found", "no such admin endpoint")

    def _accounting(self) -> AccountingStore:
        if self.accounting is None:
            raise HttpError(503, "unavailable", "this gateway has no accounting store")
        return self.accounting

    def _source(self, ref: str) -> dict[str, Any]:
        return source_ref_json(self.store.source(ref))


def identity_json(workspace: str, settings: IdentityConfig) -> dict[str, Any]:
    return {"workspace": workspace, "identity": msgspec.to_builtins(settings)}


def source_ref_json(src: Source) -> dict[str, Any]:
    """How the accounting views name a source."""
    return {"id": src.id, "workspace": src.workspace, "name": src.name}
