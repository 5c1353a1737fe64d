"""Experiments integration: definitions, decisions, exposures, targeting, the holdout,
bandits, erasure, results from the log, the API and the CLI (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from sartor.clock import now_ms
from sartor.config import Settings
from sartor.engine import CreatedWorkspace, Engine
from sartor.experiments.assignment import assign
from sartor.experiments.bandits import BanditPolicy
from sartor.experiments.definitions import growthbook
from sartor.experiments.service import HOLDOUT_KEY, VIEWED, Experiments, in_holdout
from sartor.storage.tables import exposures, sticky_assignments
from sartor.workspace import Workspace

HOUR = 3_600_000


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def home_test(key: str = "home-hero", **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "name": "Home hero",
        "slot": "home",
        "variations": [
            {"key": "A", "payload": {"hero": "classic"}},
            {"key": "B", "payload": {"hero": "personal"}},
        ],
        "goal": {"type": "conversion", "event": "Order Completed"},
        "guardrails": [{"type": "revenue"}],
        **extra,
    }


def no_holdout(engine: Engine, workspace: CreatedWorkspace) -> Workspace:
    """The workspace without a holdout (its updated settings: use the returned object)."""
    return engine.update_workspace_settings(workspace.workspace, {"holdout_share": 0})


def exposure_rows(engine: Engine, ws: str, key: str | None = None) -> list[Any]:
    query = select(exposures).where(exposures.c.workspace_id == ws)
    if key is not None:
        query = query.where(exposures.c.experiment_key == key)
    with engine.db.connect() as conn:
        return list(conn.execute(query))


def viewed(engine: Engine, ws: CreatedWorkspace, key: str) -> list[dict[str, Any]]:
    return [
        e
        for e in engine.events(ws.workspace, limit=1000)
        if e.get("event") == VIEWED and e["properties"]["experiment_id"] == key
    ]


# -- definitions ---------------------------------------------------------------------------


def test_crud_over_the_api_with_field_paths_in_errors(client, workspace) -> None:  # type: ignore[no-untyped-def]
    admin, read = bearer(workspace.keys["admin"]), bearer(workspace.keys["read"])
    r = client.post("/v1/experiments", json=home_test(), headers=admin)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["status"] == "draft" and doc["seed"] == "home-hero" and doc["hashVersion"] == 2
    assert [v["weight"] for v in doc["variations"]] == [0.5, 0.5]
    assert doc["goal"]["windowDays"] == 7 and doc["guardrails"][0]["event"] == "Order Completed"
    assert client.post("/v1/experiments", json=home_test(), headers=admin).status_code == 409
    assert client.post("/v1/experiments", json=home_test("x"), headers=read).status_code == 403

    bad_cases = [
        ({"variations": [{"key": "A"}]}, "variations"),
        (
            {"variations": [{"key": "A", "weight": 1}, {"key": "B", "weight": -1}]},
            "variations[1].weight",
        ),
        ({"variations": [{"key": "A"}, {"key": "A"}]}, "variations[1].key"),
        ({"coverage": 1.5}, "coverage"),
        ({"hashAttribute": "email"}, "hashAttribute"),
        ({"namespace": ["ns", 0.6, 0.2]}, "namespace[2]"),
        (
            {"targeting": {"rule": {"property": "traits.plan", "op": "nope", "value": 1}}},
            "targeting.rule.op",
        ),
        ({"targeting": {"segments": ["no-such-segment"]}}, "targeting.segments[0]"),
        (
            {"goal": {"type": "ratio", "numerator": {"event": "Order Completed"}}},
            "goal.denominator",
        ),
        ({"guardrails": [{"type": "mean", "event": "Order Completed"}]}, "guardrails[0].property"),
        ({"kind": "bandit", "goal": None}, "goal"),
        ({"fallbackAttribute": "anonymousId", "sticky": False}, "sticky"),
        ({"colour": "blue"}, "colour"),
        ({"key": "Bad Key"}, "key"),
    ]
    for change, field in bad_cases:
        r = client.post("/v1/experiments", json={**home_test("other"), **change}, headers=admin)
        assert r.status_code == 400, (change, r.text)
        assert r.json()["errors"][0]["field"] == field, (change, r.json())

    listed = client.get("/v1/experiments", headers=read).json()["experiments"]
    assert [e["key"] for e in listed] == ["home-hero"]
    r = client.put("/v1/experiments/home-hero", json={**home_test(), "name": "Hero"}, headers=admin)
    assert r.status_code == 200 and r.json()["name"] == "Hero"
    r = client.post("/v1/experiments/home-hero/start", headers=admin)
    assert r.json()["status"] == "running" and r.json()["startedAt"].endswith("Z")
    running = client.get("/v1/experiments?status=running", headers=read).json()["experiments"]
    assert [e["key"] for e in running] == ["home-hero"]
    r = client.put("/v1/experiments/home-hero", json={**home_test(), "seed": "s2"}, headers=admin)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "seed"
    r = client.put(
        "/v1/experiments/home-hero", json={**home_test(), "status": "draft"}, headers=admin
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "status"
    assert client.delete("/v1/experiments/home-hero", headers=admin).status_code == 409
    assert client.post("/v1/experiments/home-hero/stop", headers=admin).json()["status"] == (
        "stopped"
    )
    assert client.delete("/v1/experiments/home-hero", headers=admin).status_code == 200
    assert client.get("/v1/experiments/home-hero", headers=read).status_code == 404
    assert client.post("/v1/experiments/nope/start", headers=admin).status_code == 404


def test_decide_body_is_validated_and_any_key_decides(client, workspace) -> None:  # type: ignore[no-untyped-def]
    admin = bearer(workspace.keys["admin"])
    client.post("/v1/experiments", json=home_test(status="running"), headers=admin)
    for kind in ("write", "read", "admin"):
        r = client.post(
            "/v1/decide", json={"user": "u1", "slots": ["home"]}, auth=(workspace.keys[kind], "")
        )
        assert r.status_code == 200, r.text
    body = {"user": "u1", "slots": ["home"], "writeKey": workspace.keys["write"]}
    assert client.post("/v1/decide", json=body).status_code == 200
    assert client.post("/v1/decide", json={"user": "u1"}).status_code == 401
    write = (workspace.keys["write"], "")
    for bad, field in [
        ({}, "user"),
        ({"user": ""}, "user"),
        ({"user": "u1", "slots": "home"}, "slots"),
        ({"user": "u1", "slots": ["home", 3]}, "slots[1]"),
        ({"user": "u1", "attributes": []}, "attributes"),
        ({"user": "u1", "userId": "u2"}, "user"),
        ({"user": "u1", "color": 1}, "color"),
    ]:
        r = client.post("/v1/decide", json=bad, auth=write)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["errors"][0]["field"] == field, (bad, r.json())


# -- decisions -----------------------------------------------------------------------------


def test_decide_is_deterministic_and_matches_assign(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = no_holdout(engine, workspace)
    doc = engine.experiments.create(
        ws,
        {
            **home_test(status="running"),
            "variations": [
                {"key": "A", "weight": 0.5, "payload": 1},
                {"key": "B", "weight": 0.3, "payload": 2},
                {"key": "C", "weight": 0.2, "payload": 3},
            ],
            "coverage": 0.8,
            "hashVersion": 1,
        },
    )
    definition = growthbook(doc)
    seen = set()
    for i in range(100):
        user = f"user-{i}"
        decided = engine.experiments.decide(ws, user, slots=["home"])
        direct = assign(definition, {"id": user})
        exp = decided["experiments"]["home-hero"]
        assert exp["inExperiment"] == direct.in_experiment
        if direct.in_experiment:
            assert decided["slots"]["home"]["variation"] == exp["variation"] == direct.key
            assert decided["slots"]["home"]["payload"] == direct.value
            seen.add(direct.key)
        else:
            assert exp["reason"] == "not_in_coverage"
            assert decided["slots"]["home"]["variation"] is None
        if i % 5 == 0:
            assert engine.experiments.decide(ws, user, slots=["home"]) == decided
    assert seen == {"A", "B", "C"}


def test_namespaces_keep_experiments_on_a_slot_apart(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = no_holdout(engine, workspace)
    engine.experiments.create(ws, home_test("left", status="running", namespace=["home", 0, 0.5]))
    engine.experiments.create(ws, home_test("right", status="running", namespace=["home", 0.5, 1]))
    owners = []
    for i in range(30):
        decided = engine.experiments.decide(ws, f"n{i}", slots=["home"])
        inside = [k for k, e in decided["experiments"].items() if e["inExperiment"]]
        assert len(inside) == 1 and decided["slots"]["home"]["experiment"] == inside[0]
        owners.append(inside[0])
    assert set(owners) == {"left", "right"}


def test_one_exposure_per_person_and_experiment(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = engine.update_workspace_settings(
        workspace.workspace, {"holdout_share": 0.05, "holdout_seed": "fixed"}
    )
    user = next(f"u{i}" for i in range(100) if not in_holdout(0.05, "fixed", f"u{i}"))
    engine.experiments.create(ws, home_test(status="running"))
    answers = [engine.experiments.decide(ws, user, slots=["home"]) for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]
    rows = exposure_rows(engine, ws.id, "home-hero")
    assert len(rows) == 1 and rows[0].variation_key == answers[0]["slots"]["home"]["variation"]
    events = viewed(engine, workspace, "home-hero")
    assert len(events) == 1
    assert events[0]["userId"] == user
    assert events[0]["properties"]["variation_id"] == rows[0].variation_key
    # the holdout decision is an exposure of its own, also once
    assert [r.variation_key for r in exposure_rows(engine, ws.id, HOLDOUT_KEY)] == ["personalized"]
    assert len(viewed(engine, workspace, HOLDOUT_KEY)) == 1


def test_targeting_by_segment_and_rule(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = no_holdout(engine, workspace)
    engine.identify(ws, user_id="pro-1", traits={"plan": "pro"})
    engine.identify(ws, user_id="free-1", traits={"plan": "free"})
    engine.profile(ws, "pro-1")
    engine.profile(ws, "free-1")
    engine.segments.save(
        ws.id, "pro", "Pro", {"property": "traits.plan", "op": "equals", "value": "pro"}
    )
    engine.experiments.create(
        ws, home_test("pro-only", status="running", targeting={"segments": ["pro"]})
    )
    engine.experiments.create(
        ws,
        home_test(
            "free-only",
            slot="banner",
            status="running",
            targeting={"rule": {"property": "traits.plan", "op": "equals", "value": "free"}},
        ),
    )
    pro = engine.experiments.decide(ws, "pro-1")
    free = engine.experiments.decide(ws, "free-1")
    stranger = engine.experiments.decide(ws, "stranger")
    assert pro["experiments"]["pro-only"]["inExperiment"]
    assert pro["experiments"]["free-only"]["reason"] == "not_targeted"
    assert free["experiments"]["pro-only"]["reason"] == "not_targeted"
    assert free["experiments"]["free-only"]["inExperiment"]
    assert free["slots"]["home"]["variation"] is None and free["slots"]["banner"]["variation"]
    assert not any(e["inExperiment"] for e in stranger["experiments"].values())
    # GrowthBook conditions on attributes (traits at the top level, or sent by the caller)
    engine.experiments.create(
        ws,
        home_test(
            "mobile",
            slot="footer",
            status="running",
            targeting={"condition": {"device": "mobile", "plan": "pro"}},
        ),
    )
    on_mobile = engine.experiments.decide(
        ws, "pro-1", experiments=["mobile"], attributes={"device": "mobile"}
    )
    assert on_mobile["experiments"]["mobile"]["inExperiment"]
    desktop = engine.experiments.decide(
        ws, "pro-1", experiments=["mobile"], attributes={"device": "desktop"}
    )
    assert desktop["experiments"]["mobile"]["reason"] == "condition_failed"


def test_the_holdout(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    assert ws.settings.holdout_share == 0.05
    seed = ws.settings.holdout_seed
    share = sum(in_holdout(0.05, seed, f"visitor-{i}") for i in range(20_000)) / 20_000
    assert 0.045 < share < 0.055
    engine.experiments.create(ws, home_test(status="running"))
    engine.experiments.create(ws, home_test("cart-upsell", slot="cart", status="running"))
    ids = [f"visitor-{i}" for i in range(400)]
    inside = [u for u in ids if in_holdout(0.05, seed, u)][:6]
    outside = [u for u in ids if not in_holdout(0.05, seed, u)][:24]
    held = []
    for user in inside + outside:
        decided = engine.experiments.decide(ws, user, slots=["home", "cart", "search"])
        assert decided["holdout"] == (user in inside)
        if decided["holdout"]:
            held.append(user)
            assert set(decided["slots"]) == {"home", "cart", "search"}
            for slot in decided["slots"].values():
                assert slot == {
                    "holdout": True,
                    "experiment": None,
                    "variation": None,
                    "payload": None,
                }
            assert all(e["reason"] == "holdout" for e in decided["experiments"].values())
        else:
            assert decided["slots"]["home"]["variation"] in ("A", "B")
            assert decided["slots"]["cart"]["variation"] in ("A", "B")
            assert decided["slots"]["search"]["experiment"] is None
    assert len(held) == 6
    assert not {r.profile_id for r in exposure_rows(engine, ws.id, "home-hero")} & {
        r.profile_id
        for r in exposure_rows(engine, ws.id, HOLDOUT_KEY)
        if r.variation_key == "holdout"
    }
    # A person's first holdout decision is kept when the holdout is redrawn.
    ws = engine.update_workspace_settings(ws, {"holdout_seed": "another-draw"})
    assert engine.experiments.decide(ws, held[0], slots=["home"])["holdout"] is True
    report = engine.experiments.holdout_report(ws)
    assert report["users"] == {"holdout": 6, "personalized": 24}
    # 6 of 30 is far from 5%: picked on purpose, and the report says so
    assert report["srm"]["flagged"] is True
    assert report["verdict"] == "sample ratio mismatch: results untrustworthy"


def test_bandit_decisions_are_stable_within_a_period(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = no_holdout(engine, workspace)
    engine.experiments.create(
        ws,
        {
            **home_test("bandit", status="running", kind="bandit"),
            "guardrails": [],
            "bandit": {"periodHours": 1, "minSamples": 20},
        },
    )
    t0 = (now_ms() // HOUR - 3) * HOUR + 60_000
    first = {f"b{i}": engine.experiments.decide(ws, f"b{i}", now=t0) for i in range(60)}
    arms = {u: d["experiments"]["bandit"]["variation"] for u, d in first.items()}
    burn_in = BanditPolicy(["A", "B"], min_samples=20, salt="bandit")
    assert all(burn_in.arm_names[burn_in.choose(u, t0 // HOUR)] == a for u, a in arms.items())
    assert set(arms.values()) == {"A", "B"}
    # B converts, A does not: the next period moves the traffic to B.
    orders = [
        {"type": "track", "event": "Order Completed", "userId": u, "timestamp": t0 + 1000}
        for u, a in arms.items()
        if a == "B"
    ]
    engine.ingest(ws, orders)
    t1 = (t0 // HOUR + 1) * HOUR + 5_000
    early = {f"n{i}": engine.experiments.decide(ws, f"n{i}", now=t1) for i in range(20)}
    early_arms = [d["experiments"]["bandit"]["variation"] for d in early.values()]
    assert early_arms.count("B") >= 18
    # Rewards recorded during the period do not move it: weights are fixed per period,
    # the same in a fresh process.
    engine.ingest(
        ws,
        [
            {"type": "track", "event": "Order Completed", "userId": u, "timestamp": t1 + 1000}
            for u, a in arms.items()
            if a == "A"
        ],
    )
    late = {
        f"n{i}": engine.experiments.decide(ws, f"n{i}", now=t1 + HOUR // 2) for i in range(20, 40)
    }
    late_arms = [d["experiments"]["bandit"]["variation"] for d in late.values()]
    assert late_arms.count("B") >= 18
    period = t1 // HOUR
    fresh = Experiments(engine)
    live = next(x for x in fresh._live(ws.id) if x.key == "bandit")
    policy = fresh._policy(ws, live, period, HOUR)
    assert list(policy.weights(period)) == list(
        engine.experiments._policy(ws, live, period, HOUR).weights(period)
    )
    for user, d in {**early, **late}.items():
        assert ["A", "B"][policy.choose(user, period)] == d["experiments"]["bandit"]["variation"]
    # people keep their first arm
    for u, a in list(arms.items())[:10]:
        assert engine.experiments.decide(ws, u, now=t1)["experiments"]["bandit"]["variation"] == a
    results = engine.experiments.results(ws, "bandit")
    assert results["srm"] is None and results["users"] == 100


# -- erasure and identity ------------------------------------------------------------------


def test_erasure_removes_exposures_and_sticky_assignments(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = no_holdout(engine, workspace)
    engine.experiments.create(
        ws,
        home_test(status="running", hashAttribute="userId", fallbackAttribute="anonymousId"),
    )
    assert engine.experiments.get(ws, "home-hero")["sticky"] is True
    anonymous = engine.experiments.decide(ws, "anon-1", kind="anonymousId", slots=["home"])
    variation = anonymous["slots"]["home"]["variation"]
    assert variation in ("A", "B")
    # logging in keeps the variation the visitor saw (sticky bucketing on the fallback)
    engine.identify(ws, user_id="alice", anonymous_id="anon-1")
    logged_in = engine.experiments.decide(
        ws, "alice", kind="userId", anonymous_id="anon-1", slots=["home"]
    )
    assert logged_in["slots"]["home"]["variation"] == variation
    assert logged_in["experiments"]["home-hero"]["reason"] == "sticky_bucket"
    assert len(viewed(engine, workspace, "home-hero")) == 1  # the same person, seen once
    engine.experiments.decide(ws, "zed", kind="userId", slots=["home"])
    with engine.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sticky_assignments)).scalar() == 3
    assert len(exposure_rows(engine, ws.id)) == 2  # alice (merged with anon-1), zed
    counts = engine.erase_user(ws, "alice")
    assert counts["exposures"] == 1 and counts["sticky_assignments"] == 2
    assert [r.profile_id for r in exposure_rows(engine, ws.id)] == engine._profile_ids(ws, "zed")
    with engine.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sticky_assignments)).scalar() == 1


def test_results_with_cuped_a_ratio_and_a_lower_is_better_guardrail(
    engine: Engine, workspace
) -> None:  # type: ignore[no-untyped-def]
    ws = no_holdout(engine, workspace)
    day = 24 * HOUR
    engine.experiments.create(
        ws,
        {
            **home_test(status="running"),
            "goal": {"type": "revenue", "cuped": True, "cupedDays": 7, "name": "revenue"},
            "guardrails": [
                {
                    "type": "ratio",
                    "name": "order value",
                    "numerator": {"event": "Order Completed", "property": "revenue"},
                    "denominator": {"event": "Order Completed"},
                },
                {
                    "type": "conversion",
                    "event": "Order Refunded",
                    "name": "refunds",
                    "higherIsBetter": False,
                },
            ],
            "analysis": {"minUnits": 10},
        },
    )
    t = now_ms() - 5 * day
    rng = random.Random(7)
    items: list[dict[str, Any]] = []
    for i in range(80):
        user = f"c{i}"
        arm = engine.experiments.decide(ws, user, slots=["home"], now=t)["slots"]["home"]
        base = rng.uniform(20, 200)  # what this person spends anyway
        lift = 8.0 if arm["variation"] == "B" else 0.0
        for when, amount in ((t - 2 * day, base), (t + day, base + lift + rng.gauss(0, 2))):
            items.append(
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": user,
                    "timestamp": when,
                    "properties": {"revenue": round(amount, 2)},
                }
            )
        refunded = i % 4 != 0 if arm["variation"] == "B" else i % 4 == 0  # 75% vs 25%
        if refunded:
            items.append(
                {
                    "type": "track",
                    "event": "Order Refunded",
                    "userId": user,
                    "timestamp": t + 2 * day,
                }
            )
        # outside the 7-day window: not counted
        items.append(
            {
                "type": "track",
                "event": "Order Completed",
                "userId": user,
                "timestamp": t + 9 * day,
                "properties": {"revenue": 5000},
            }
        )
    assert engine.ingest(ws, items).stored == len(items)
    results = engine.experiments.results(ws, "home-hero")
    goal = results["goal"]
    assert goal["cuped"]["theta"] == pytest.approx(1.0, abs=0.1)
    assert min(goal["cuped"]["varianceReduction"]) > 0.9
    assert goal["comparisons"][0]["verdict"].startswith("B beats A on revenue: +")
    order_value, refunds = results["guardrails"]
    assert max(v["value"] for v in order_value["variations"]) < 300  # the 5000s are out
    assert order_value["variations"][0]["denominator"] == order_value["variations"][0]["users"]
    assert refunds["comparisons"][0]["direction"] == "worse"
    assert refunds["comparisons"][0]["verdict"].startswith("B loses to A on refunds: +")


def test_results_follow_a_visitor_who_logs_in(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = no_holdout(engine, workspace)
    engine.experiments.create(ws, home_test(status="running"))
    engine.experiments.decide(ws, "anon-9", kind="anonymousId", slots=["home"])
    # an existing customer logs in on that device: the visitor's profile merges into theirs
    engine.identify(ws, user_id="cust-9", traits={"plan": "pro"})
    engine.track(ws, "Product Viewed", user_id="cust-9", anonymous_id="anon-9")
    engine.track(ws, "Order Completed", user_id="cust-9", properties={"revenue": 42})
    results = engine.experiments.results(ws, "home-hero")
    assert results["users"] == 1
    totals = {v["key"]: v["total"] for v in results["guardrails"][0]["variations"]}
    assert sorted(totals.values()) == [0.0, 42.0]


# -- the end-to-end acceptance -------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_ab_test_over_http(client, workspace) -> None:  # type: ignore[no-untyped-def]
    admin, read = bearer(workspace.keys["admin"]), bearer(workspace.keys["read"])
    write = (workspace.keys["write"], "")
    r = client.post("/v1/experiments", json=home_test(status="running"), headers=admin)
    assert r.status_code == 201, r.text
    users = [f"shopper-{i:04d}" for i in range(2000)]

    def decide(user: str) -> tuple[str, dict[str, Any]]:
        resp = client.post("/v1/decide", json={"user": user, "slots": ["home"]}, auth=write)
        assert resp.status_code == 200, resp.text
        return user, resp.json()

    with ThreadPoolExecutor(16) as pool:
        decided = dict(pool.map(decide, users))
    rng = random.Random(20261201)
    rate = {"A": 0.10, "B": 0.15, None: 0.10}  # None: the holdout's default experience
    orders = []
    for user in users:
        home = decided[user]["slots"]["home"]
        assert home["holdout"] == (home["variation"] is None)
        if rng.random() < rate[home["variation"]]:
            orders.append(
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": user,
                    "properties": {"revenue": round(rng.uniform(20, 80), 2)},
                }
            )
    for start in range(0, len(orders), 500):
        r = client.post("/v1/batch", json={"batch": orders[start : start + 500]}, auth=write)
        assert r.status_code == 200 and r.json()["stored"] == len(orders[start : start + 500])

    results = client.get("/v1/experiments/home-hero/results", headers=read).json()
    held = sum(1 for d in decided.values() if d["holdout"])
    assert results["users"] == 2000 - held
    assert results["srm"]["flagged"] is False, results["srm"]
    goal = results["goal"]
    comparison = goal["comparisons"][0]
    assert comparison["variation"] == "B" and comparison["significant"], comparison
    assert comparison["verdict"].startswith("B beats A on conversion (Order Completed): +")
    assert results["verdicts"] == [comparison["verdict"]]
    rates = {v["key"]: v["value"] for v in goal["variations"]}
    assert 0.07 < rates["A"] < 0.13 and 0.12 < rates["B"] < 0.18
    report = client.get("/v1/holdout/report", headers=read).json()
    assert report["users"]["holdout"] == held and report["lift"]["relative"]["estimate"] > 0


# -- the command line ----------------------------------------------------------------------


def test_cli_create_start_results_stop(tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    home = ["--home", str(tmp_path)]
    with Engine.open(settings=Settings(home=tmp_path)) as engine:
        ws = engine.create_workspace("shop").workspace
    spec = tmp_path / "hero.json"
    spec.write_bytes(orjson.dumps(home_test()))
    r = runner.invoke(app_(), [*home, "experiment", "create", "shop", str(spec)])
    assert r.exit_code == 0 and "home-hero created" in r.output, r.output
    again = runner.invoke(app_(), [*home, "experiment", "create", "shop", str(spec)])
    assert again.exit_code == 1 and "exists" in again.output
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps({**home_test("b"), "coverage": 3}))
    r = runner.invoke(app_(), [*home, "experiment", "create", "shop", str(bad)])
    assert r.exit_code == 2 and "coverage" in r.output
    assert runner.invoke(app_(), [*home, "experiment", "start", "shop", "home-hero"]).exit_code == 0
    with Engine.open(settings=Settings(home=tmp_path)) as engine:
        for i in range(30):
            engine.experiments.decide(ws, f"c{i}", slots=["home"])
    listed = runner.invoke(app_(), [*home, "experiment", "list", "shop"])
    assert "home-hero" in listed.output and "running" in listed.output
    r = runner.invoke(app_(), [*home, "experiment", "results", "shop", "home-hero"])
    assert r.exit_code == 0, r.output
    assert "not enough data yet" in r.output and "sample ratio check" in r.output
    r = runner.invoke(app_(), [*home, "experiment", "results", "shop", "home-hero", "--json"])
    assert orjson.loads(r.output)["users"] > 0
    assert runner.invoke(app_(), [*home, "experiment", "stop", "shop", "home-hero"]).exit_code == 0
    missing = runner.invoke(app_(), [*home, "experiment", "stop", "shop", "nope"])
    assert missing.exit_code == 1


def app_():  # type: ignore[no-untyped-def]
    from sartor.cli import app

    return app
