"""Tracking plans in the control plane (`headwater.control.plans.PlanCatalog`): plans made and
replaced, their rules checked, connected to sources, declared in `headwater.yaml` next to ones
made through the admin API, and compiled for the processor (`plans_from_catalog`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from headwater.config import Config, ConfigError, Enforcement, PlanRules, load_config
from headwater.control.declarative import apply_config
from headwater.control.plans import PlanCatalog, connection_json, plan_json
from headwater.control.store import (
    MANAGED_BY_API,
    MANAGED_BY_CONFIG,
    ControlError,
    ControlStore,
    stable_id,
)
from headwater.processing.plans import plans_from_catalog

SHOP: dict[str, Any] = {
    "track": {
        "Order Completed": {
            "properties": {
                "properties": {
                    "type": "object",
                    "properties": {"revenue": {"type": "number"}},
                    "required": ["revenue"],
                }
            }
        },
        "Product Viewed": {},
    }
}
BLOCK = Enforcement(unplanned_events="block")


@pytest.fixture
def catalog(store: ControlStore) -> PlanCatalog:
    """A catalog over workspace `acme` with sources web, app and quarantine."""
    store.create_workspace("acme")
    for name in ("web", "app", "quarantine"):
        store.create_source("acme", name)
    return PlanCatalog(store)


def config(*workspaces: dict[str, Any]) -> Config:
    """A Config of the YAML shape `workspaces: [{name, sources, tracking_plans}]`."""
    return msgspec.convert({"workspaces": list(workspaces)}, Config)


@contextlib.contextmanager
def expect_error(status: int, code: str) -> Iterator[None]:
    """The block raises a `ControlError` of `status` and `code`, with a message."""
    with pytest.raises(ControlError) as info:
        yield
    err = info.value
    assert (err.status, err.code) == (status, code), f"{err.status} {err.code}: {err}"
    assert str(err)


# -- plans ---------------------------------------------------------------------------------------


def test_put_creates_a_plan_and_reads_it_back(catalog: PlanCatalog) -> None:
    made = catalog.put("acme", "shop", SHOP)
    assert (made.workspace, made.name, made.managed_by) == ("acme", "shop", MANAGED_BY_API)
    assert made.rules == msgspec.convert(SHOP, PlanRules)
    assert made.updated_ms > 0
    assert catalog.get("acme", "shop") == made
    assert catalog.plans("acme") == [made]
    as_json = plan_json(made)
    assert as_json["rules"]["track"] == SHOP["track"]
    assert (as_json["workspace"], as_json["name"], as_json["managed_by"]) == ("acme", "shop", "api")


def test_put_accepts_rules_as_plan_rules(catalog: PlanCatalog) -> None:
    rules = PlanRules(identify={"required": ["userId"]})
    assert catalog.put("acme", "ids", rules).rules == rules


def test_put_replaces_a_plan(catalog: PlanCatalog) -> None:
    first = catalog.put("acme", "shop", SHOP)
    replaced = catalog.put("acme", "shop", {"track": {"Signed Up": {}}, "page": {}})
    assert list(replaced.rules.track) == ["Signed Up"]
    assert replaced.rules.page == {}
    assert replaced.updated_ms >= first.updated_ms
    assert catalog.get("acme", "shop").rules == replaced.rules
    assert [p.name for p in catalog.plans("acme")] == ["shop"]


def test_plans_are_listed_by_name_per_workspace(catalog: PlanCatalog, store: ControlStore) -> None:
    store.create_workspace("beta")
    catalog.put("acme", "zeta", {})
    catalog.put("acme", "alpha", {})
    catalog.put("beta", "other", {})
    assert [p.name for p in catalog.plans("acme")] == ["alpha", "zeta"]
    assert [p.name for p in catalog.plans("beta")] == ["other"]
    assert catalog.plans(store.workspace("beta").id)[0].workspace == "beta"  # by id as well
    with expect_error(404, "not_found"):
        catalog.get("beta", "zeta")  # plans belong to their workspace


@pytest.mark.parametrize(
    "rules",
    [
        {"track": {"Order Completed": {"type": 5}}},
        {"common": {"type": "strin"}},
        {"identify": {"required": "userId"}},
        {"page": {"$ref": "#/definitions/nowhere"}},
        {"screen": {"minimum": "zero"}},
        {"tracks": {}},  # an unknown top-level key
        {"track": {"Order Completed": 5}},  # a rule that is not an object
        {"common": []},
    ],
)
def test_invalid_rules_are_a_validation_error(catalog: PlanCatalog, rules: Any) -> None:
    version = catalog.store.version()
    with expect_error(400, "validation_error"):
        catalog.put("acme", "bad", rules)
    assert catalog.plans("acme") == []
    assert catalog.store.version() == version


def test_invalid_rules_leave_the_plan_they_would_replace_alone(catalog: PlanCatalog) -> None:
    good = catalog.put("acme", "shop", SHOP)
    with expect_error(400, "validation_error"):
        catalog.put("acme", "shop", {"track": {"Order Completed": {"type": 5}}})
    assert catalog.get("acme", "shop") == good


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": 5},
        {"items": 5},
        {"pattern": "("},
        {"properties": {"sku": {"pattern": "[a-"}}},
    ],
    ids=["properties-not-object", "items-not-schema", "bad-regex", "nested-bad-regex"],
)
def test_schemas_that_do_not_compile_are_a_validation_error(
    catalog: PlanCatalog, schema: dict[str, Any]
) -> None:
    with expect_error(400, "validation_error"):
        catalog.put("acme", "bad", {"track": {"Order Completed": schema}})


def test_a_remote_ref_is_not_fetched_but_refused(catalog: PlanCatalog) -> None:
    with expect_error(400, "validation_error"):
        catalog.put("acme", "remote", {"common": {"$ref": "http://127.0.0.1:9/schema.json"}})


def test_a_plan_with_a_bad_regex_in_the_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        "workspaces:\n"
        "  - name: acme\n"
        "    tracking_plans:\n"
        "      - name: shop\n"
        "        rules: {common: {pattern: '('}}\n"
    )
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.parametrize("name", ["", "a/b", "x" * 101])
def test_invalid_plan_names_are_refused(catalog: PlanCatalog, name: str) -> None:
    with expect_error(400, "bad_request"):
        catalog.put("acme", name, {})
    assert catalog.plans("acme") == []


def test_unknown_workspace_and_plan_are_404(catalog: PlanCatalog) -> None:
    for call in (
        lambda: catalog.put("nope", "shop", SHOP),
        lambda: catalog.get("nope", "shop"),
        lambda: catalog.plans("nope"),
        lambda: catalog.delete("nope", "shop"),
        lambda: catalog.get("acme", "missing"),
        lambda: catalog.delete("acme", "missing"),
    ):
        with expect_error(404, "not_found"):
            call()


# -- connections ---------------------------------------------------------------------------------


def test_connect_and_read_the_connection_back(catalog: PlanCatalog, store: ControlStore) -> None:
    catalog.put("acme", "shop", SHOP)
    assert catalog.connection("acme/web") is None
    assert connection_json(None) == {"tracking_plan": None, "enforcement": None}
    enforcement = Enforcement(
        unplanned_events="block", violations="omit", forward_blocked_to="quarantine"
    )
    conn = catalog.connect("acme/web", "shop", enforcement)
    web = store.source("acme/web")
    assert conn.source == web
    assert (conn.plan, conn.enforcement, conn.managed_by) == ("shop", enforcement, "api")
    assert catalog.connection("acme/web") == conn
    assert catalog.connection(web.id) == conn  # by id as well
    as_json = connection_json(conn)
    assert as_json["source"] == web.id
    assert as_json["tracking_plan"] == "shop"
    assert as_json["enforcement"]["unplanned_events"] == "block"
    assert as_json["enforcement"]["forward_blocked_to"] == "quarantine"


def test_connect_again_replaces_the_connection(catalog: PlanCatalog) -> None:
    catalog.put("acme", "shop", SHOP)
    catalog.put("acme", "other", {})
    catalog.connect("acme/web", "shop", BLOCK)
    again = catalog.connect("acme/web", "other", Enforcement())
    assert (again.plan, again.enforcement) == ("other", Enforcement())
    assert [c.plan for c in catalog.connections()] == ["other"]


def test_connect_to_a_missing_plan_or_source_is_404(
    catalog: PlanCatalog, store: ControlStore
) -> None:
    with expect_error(404, "not_found"):
        catalog.connect("acme/web", "missing", BLOCK)
    store.create_workspace("beta")
    catalog.put("beta", "theirs", {})
    with expect_error(404, "not_found"):  # a plan of another workspace
        catalog.connect("acme/web", "theirs", BLOCK)
    catalog.put("acme", "shop", SHOP)
    for ref in ("acme/nope", "nope/web", "src_nope"):
        with expect_error(404, "not_found"):
            catalog.connect(ref, "shop", BLOCK)
    assert catalog.connections() == []


@pytest.mark.parametrize("field", ["forward_blocked_to", "forward_violations_to"])
def test_forwarding_to_a_source_outside_the_workspace_is_refused(
    catalog: PlanCatalog, store: ControlStore, field: str
) -> None:
    store.create_workspace("beta")
    store.create_source("beta", "elsewhere")
    catalog.put("acme", "shop", SHOP)
    for target in ("nowhere", "elsewhere"):
        with expect_error(400, "validation_error"):
            catalog.connect("acme/web", "shop", msgspec.convert({field: target}, Enforcement))
    assert catalog.connection("acme/web") is None
    conn = catalog.connect("acme/web", "shop", msgspec.convert({field: "quarantine"}, Enforcement))
    assert getattr(conn.enforcement, field) == "quarantine"


def test_a_connected_plan_cannot_be_deleted_until_disconnected(catalog: PlanCatalog) -> None:
    catalog.put("acme", "shop", SHOP)
    catalog.connect("acme/web", "shop", BLOCK)
    catalog.connect("acme/app", "shop", Enforcement())
    with expect_error(409, "conflict"):
        catalog.delete("acme", "shop")
    catalog.disconnect("acme/web")
    with expect_error(409, "conflict"):
        catalog.delete("acme", "shop")
    catalog.disconnect("acme/app")
    catalog.delete("acme", "shop")
    assert catalog.plans("acme") == []
    with expect_error(404, "not_found"):
        catalog.get("acme", "shop")


def test_the_conflict_names_the_connected_sources(catalog: PlanCatalog) -> None:
    catalog.put("acme", "shop", SHOP)
    catalog.connect("acme/web", "shop", BLOCK)
    with pytest.raises(ControlError, match="web"):
        catalog.delete("acme", "shop")


def test_a_plan_of_the_same_name_elsewhere_does_not_block_delete(
    catalog: PlanCatalog, store: ControlStore
) -> None:
    store.create_workspace("beta")
    store.create_source("beta", "web")
    catalog.put("acme", "shop", SHOP)
    catalog.put("beta", "shop", SHOP)
    catalog.connect("beta/web", "shop", BLOCK)
    catalog.delete("acme", "shop")
    assert [p.name for p in catalog.plans("beta")] == ["shop"]


def test_disconnect(catalog: PlanCatalog) -> None:
    catalog.put("acme", "shop", SHOP)
    catalog.connect("acme/web", "shop", BLOCK)
    catalog.disconnect("acme/web")
    assert catalog.connection("acme/web") is None
    catalog.disconnect("acme/web")  # not connected: nothing to do
    with expect_error(404, "not_found"):
        catalog.disconnect("acme/nope")


def test_connections_lists_every_connected_source(
    catalog: PlanCatalog, store: ControlStore
) -> None:
    store.create_workspace("beta")
    store.create_source("beta", "ios")
    catalog.put("acme", "shop", SHOP)
    catalog.put("beta", "mobile", {})
    assert catalog.connections() == []
    catalog.connect("acme/web", "shop", BLOCK)
    catalog.connect("acme/app", "shop", Enforcement(violations="block"))
    catalog.connect("beta/ios", "mobile", Enforcement())
    found = {c.source.ref: (c.plan, c.enforcement) for c in catalog.connections()}
    assert found == {
        "acme/web": ("shop", BLOCK),
        "acme/app": ("shop", Enforcement(violations="block")),
        "beta/ios": ("mobile", Enforcement()),
    }
    assert all(c.managed_by == MANAGED_BY_API for c in catalog.connections())


def test_plans_and_connections_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    store = ControlStore(path)
    store.create_workspace("acme")
    store.create_source("acme", "web")
    PlanCatalog(store).put("acme", "shop", SHOP)
    PlanCatalog(store).connect("acme/web", "shop", BLOCK)
    store.close()
    store = ControlStore(path)
    try:
        catalog = PlanCatalog(store)
        assert catalog.get("acme", "shop").rules == msgspec.convert(SHOP, PlanRules)
        conn = catalog.connection("acme/web")
        assert conn is not None
        assert (conn.plan, conn.enforcement) == ("shop", BLOCK)
    finally:
        store.close()


def test_the_version_changes_whenever_plans_or_connections_change(catalog: PlanCatalog) -> None:
    store = catalog.store
    seen = [store.version()]

    def changed() -> None:
        now = store.version()
        assert now != seen[-1]
        seen.append(now)

    catalog.put("acme", "shop", SHOP)
    changed()
    catalog.put("acme", "shop", {"track": {"Other": {}}})
    changed()
    catalog.connect("acme/web", "shop", BLOCK)
    changed()
    catalog.connect("acme/web", "shop", Enforcement())
    changed()
    catalog.disconnect("acme/web")
    changed()
    catalog.delete("acme", "shop")
    changed()
    # reads and refused changes leave it alone
    catalog.plans("acme")
    catalog.connections()
    with pytest.raises(ControlError):
        catalog.get("acme", "shop")
    with pytest.raises(ControlError):
        catalog.connect("acme/web", "shop", BLOCK)
    assert store.version() == seen[-1]


# -- headwater.yaml ------------------------------------------------------------------------------


def declared(*, plan: bool = True, connected: bool = True) -> Config:
    """Workspace acme with sources web and quarantine; with `plan`, plan shop; with
    `connected` (needs `plan`), web enforces shop and forwards what it blocks to quarantine."""
    web: dict[str, Any] = {"name": "web"}
    if connected:
        web |= {
            "tracking_plan": "shop",
            "enforcement": {"unplanned_events": "block", "forward_blocked_to": "quarantine"},
        }
    ws: dict[str, Any] = {"name": "acme", "sources": [web, {"name": "quarantine"}]}
    if plan:
        ws["tracking_plans"] = [{"name": "shop", "rules": SHOP}]
    return config(ws)


def test_apply_config_makes_the_declared_plans_and_connections(store: ControlStore) -> None:
    apply_config(store, declared())
    catalog = PlanCatalog(store)
    (plan,) = catalog.plans("acme")
    assert (plan.name, plan.managed_by) == ("shop", MANAGED_BY_CONFIG)
    assert plan.rules == msgspec.convert(SHOP, PlanRules)
    conn = catalog.connection("acme/web")
    assert conn is not None
    assert (conn.plan, conn.managed_by) == ("shop", MANAGED_BY_CONFIG)
    assert conn.enforcement == Enforcement(
        unplanned_events="block", forward_blocked_to="quarantine"
    )
    assert catalog.connection("acme/quarantine") is None


def test_apply_config_twice_keeps_the_same_plans(store: ControlStore) -> None:
    apply_config(store, declared())
    catalog = PlanCatalog(store)
    first = (catalog.plans("acme"), catalog.connections())
    apply_config(store, declared())
    again = (catalog.plans("acme"), catalog.connections())
    assert [(p.name, p.rules, p.managed_by) for p in again[0]] == [
        (p.name, p.rules, p.managed_by) for p in first[0]
    ]
    assert again[1] == first[1]


def test_apply_config_replaces_declared_rules(store: ControlStore) -> None:
    apply_config(store, declared())
    changed = config(
        {
            "name": "acme",
            "tracking_plans": [{"name": "shop", "rules": {"track": {"Signed Up": {}}}}],
            "sources": [{"name": "web", "tracking_plan": "shop"}, {"name": "quarantine"}],
        }
    )
    apply_config(store, changed)
    catalog = PlanCatalog(store)
    assert list(catalog.get("acme", "shop").rules.track) == ["Signed Up"]
    conn = catalog.connection("acme/web")
    assert conn is not None
    assert conn.enforcement == Enforcement()


def test_a_plan_and_connection_no_longer_declared_are_removed(store: ControlStore) -> None:
    apply_config(store, declared())
    apply_config(store, declared(plan=False, connected=False))
    catalog = PlanCatalog(store)
    assert catalog.connections() == []
    assert catalog.plans("acme") == []


def test_a_connection_no_longer_declared_is_removed_and_the_plan_kept(
    store: ControlStore,
) -> None:
    apply_config(store, declared())
    apply_config(store, declared(connected=False))
    catalog = PlanCatalog(store)
    assert catalog.connection("acme/web") is None
    assert [p.name for p in catalog.plans("acme")] == ["shop"]


def test_plans_of_a_workspace_no_longer_declared_are_removed(store: ControlStore) -> None:
    apply_config(store, declared())
    apply_config(store, Config())
    catalog = PlanCatalog(store)
    assert catalog.connections() == []
    assert catalog.plans("acme") == []


def test_plans_and_connections_made_through_the_api_survive_the_file(
    store: ControlStore,
) -> None:
    apply_config(store, declared())
    catalog = PlanCatalog(store)
    store.create_source("acme", "manual")
    catalog.put("acme", "api-plan", {"track": {"Clicked": {}}})
    catalog.connect("acme/manual", "api-plan", BLOCK)
    catalog.connect("acme/quarantine", "api-plan", Enforcement())  # a declared source
    for again in (declared(), declared(plan=False, connected=False), Config()):
        apply_config(store, again)
        api_plan = catalog.get("acme", "api-plan")
        assert api_plan.managed_by == MANAGED_BY_API
        assert list(api_plan.rules.track) == ["Clicked"]
        for ref in ("acme/manual", "acme/quarantine"):
            conn = catalog.connection(ref)
            assert conn is not None, ref
            assert (conn.plan, conn.managed_by) == ("api-plan", MANAGED_BY_API)
    assert [c.source.ref for c in catalog.connections()] == sorted(
        ["acme/manual", "acme/quarantine"], key=lambda r: store.source(r).id
    )


def test_a_declared_plan_still_connected_through_the_api_is_kept(store: ControlStore) -> None:
    apply_config(store, declared())
    catalog = PlanCatalog(store)
    store.create_source("acme", "manual")
    catalog.connect("acme/manual", "shop", Enforcement())
    apply_config(store, declared(plan=False, connected=False))
    assert [p.name for p in catalog.plans("acme")] == ["shop"]
    assert catalog.connection("acme/web") is None
    conn = catalog.connection("acme/manual")
    assert conn is not None and conn.plan == "shop"


def test_the_file_takes_over_a_connection_it_declares(store: ControlStore) -> None:
    apply_config(store, declared(connected=False))
    catalog = PlanCatalog(store)
    catalog.put("acme", "api-plan", {})
    catalog.connect("acme/web", "api-plan", Enforcement())
    apply_config(store, declared())
    conn = catalog.connection("acme/web")
    assert conn is not None
    assert (conn.plan, conn.managed_by) == ("shop", MANAGED_BY_CONFIG)


def test_the_plan_catalog_applies_a_config_on_its_own(catalog: PlanCatalog) -> None:
    """`PlanCatalog.apply_config` on sources that exist already (made through the API)."""
    catalog.apply_config(declared())
    conn = catalog.connection("acme/web")
    assert conn is not None and conn.managed_by == MANAGED_BY_CONFIG
    catalog.apply_config(declared(plan=False, connected=False))
    assert catalog.connections() == []
    assert catalog.plans("acme") == []


def test_the_version_changes_when_the_file_changes_plans(store: ControlStore) -> None:
    apply_config(store, declared(plan=False, connected=False))
    before = store.version()
    apply_config(store, declared())
    after = store.version()
    assert after != before
    apply_config(store, declared(plan=False, connected=False))
    assert store.version() != after


# -- plans_from_catalog --------------------------------------------------------------------------


def test_plans_from_catalog_compiles_connected_plans_by_source_id(
    catalog: PlanCatalog, store: ControlStore
) -> None:
    assert plans_from_catalog(catalog) == {}
    store.create_workspace("beta")
    store.create_source("beta", "ios")
    store.create_source("beta", "dead-letters")
    catalog.put("acme", "shop", SHOP)
    catalog.put("acme", "unused", {"track": {"Nothing": {}}})
    catalog.put("beta", "mobile", {"identify": {"required": ["userId"]}})
    web_rules = Enforcement(
        unplanned_events="block",
        forward_blocked_to="quarantine",
        forward_violations_to="app",
    )
    catalog.connect("acme/web", "shop", web_rules)
    catalog.connect("acme/app", "shop", Enforcement())
    catalog.connect("beta/ios", "mobile", Enforcement(forward_blocked_to="dead-letters"))

    compiled = plans_from_catalog(catalog)
    web, app, ios = (
        stable_id("src", *ref.split("/")) for ref in ("acme/web", "acme/app", "beta/ios")
    )
    assert {web, app, ios} == {s.id for s in store.list_sources()} - {
        store.source("acme/quarantine").id,
        store.source("beta/dead-letters").id,
    }
    assert set(compiled) == {web, app, ios}

    assert compiled[web].plan.name == "shop"
    assert set(compiled[web].plan.rules) == {"track:Order Completed", "track:Product Viewed"}
    assert compiled[web].plan.declared["track:Order Completed"] == {"revenue"}
    assert compiled[web].enforcement == web_rules
    assert compiled[web].forward_blocked == stable_id("src", "acme", "quarantine")
    assert compiled[web].forward_blocked == store.source("acme/quarantine").id
    assert compiled[web].forward_violations == store.source("acme/app").id

    assert compiled[app].plan.name == "shop"
    assert (compiled[app].forward_blocked, compiled[app].forward_violations) == (None, None)

    assert compiled[ios].plan.name == "mobile"
    assert set(compiled[ios].plan.rules) == {"identify"}
    assert compiled[ios].forward_blocked == store.source("beta/dead-letters").id


def test_plans_from_catalog_compiled_rules_check_messages(catalog: PlanCatalog) -> None:
    catalog.put("acme", "shop", SHOP)
    catalog.connect("acme/web", "shop", BLOCK)
    (planned,) = plans_from_catalog(catalog).values()
    check = planned.plan.rules["track:Order Completed"]
    good = {"type": "track", "event": "Order Completed", "properties": {"revenue": 3}}
    assert check(good) == good
    with pytest.raises(ValueError):
        check({"type": "track", "event": "Order Completed", "properties": {"revenue": "x"}})


def test_plans_from_catalog_follows_changes(catalog: PlanCatalog) -> None:
    catalog.put("acme", "shop", SHOP)
    catalog.connect("acme/web", "shop", BLOCK)
    web = catalog.store.source("acme/web").id
    assert set(plans_from_catalog(catalog)[web].plan.rules) == {
        "track:Order Completed",
        "track:Product Viewed",
    }
    catalog.put("acme", "shop", {"track": {"Signed Up": {}}})
    assert set(plans_from_catalog(catalog)[web].plan.rules) == {"track:Signed Up"}
    catalog.disconnect("acme/web")
    assert plans_from_catalog(catalog) == {}


def test_plans_from_a_declared_config_match_the_file(store: ControlStore) -> None:
    """What the processor compiles from the control plane names the same source ids and
    forwarding targets as what it would compile from the file itself."""
    from headwater.processing.plans import plans_by_source

    conf = declared()
    apply_config(store, conf)
    from_catalog = plans_from_catalog(PlanCatalog(store))
    from_file = plans_by_source(conf)
    assert set(from_catalog) == set(from_file) == {stable_id("src", "acme", "web")}
    for sid in from_file:
        a, b = from_catalog[sid], from_file[sid]
        assert (a.enforcement, a.forward_blocked, a.forward_violations) == (
            b.enforcement,
            b.forward_blocked,
            b.forward_violations,
        )
        assert set(a.plan.rules) == set(b.plan.rules)
