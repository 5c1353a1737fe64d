"""Segments: rules, the API, real-time membership, lapsing on schedule, RFM, erasure."""

from __future__ import annotations

import csv
import gzip
import io
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from sartor.collect.errors import FieldError
from sartor.engine import CreatedWorkspace, Engine
from sartor.segments.rfm import group_of, quantile_scores
from sartor.segments.rules import Context, compile_rule

from .conftest import shared_data

DAY = 86_400_000
NOW = 1_780_000_000_000


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the rule language ---------------------------------------------------------------------

PROFILE = {
    "traits": {"plan": "pro", "country": "FR", "name": "Ann", "tags": ["vip", "beta"]},
    "computed": {
        "orders": 4,
        "revenue": 250.0,
        "last_seen": NOW - 2 * DAY,
        "last_order_at": NOW - 100 * DAY,
    },
}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"property": "traits.plan", "op": "equals", "value": "pro"}, True),
        ({"property": "traits.plan", "op": "not_equals", "value": "pro"}, False),
        ({"property": "computed.orders", "op": "gt", "value": 3}, True),
        ({"property": "computed.orders", "op": "gte", "value": 5}, False),
        ({"property": "computed.orders", "op": "lt", "value": 5}, True),
        ({"property": "computed.orders", "op": "lte", "value": 3}, False),
        ({"property": "computed.revenue", "op": "between", "value": [100, 300]}, True),
        ({"property": "traits.country", "op": "in", "value": ["FR", "DE"]}, True),
        ({"property": "traits.country", "op": "not_in", "value": ["FR"]}, False),
        ({"property": "traits.plan", "op": "exists"}, True),
        ({"property": "traits.email", "op": "missing"}, True),
        ({"property": "traits.tags", "op": "contains", "value": "vip"}, True),
        ({"property": "traits.name", "op": "contains", "value": "nn"}, True),
        ({"property": "traits.name", "op": "starts_with", "value": "A"}, True),
        (
            {
                "property": "traits.name",
                "op": "matches",
                "value": "^a",
            },
            False,
        ),
        ({"property": "computed.last_seen", "op": "within_days", "value": 30}, True),
        ({"property": "computed.last_order_at", "op": "older_than_days", "value": 90}, True),
        ({"property": "traits.nothing", "op": "gt", "value": 1}, False),
        ({"property": "traits.nothing", "op": "not_equals", "value": 1}, True),
        (
            {
                "and": [
                    {"property": "traits.plan", "op": "equals", "value": "pro"},
                    {"not": {"property": "computed.orders", "op": "lt", "value": 2}},
                ]
            },
            True,
        ),
        (
            {
                "or": [
                    {"property": "traits.plan", "op": "equals", "value": "free"},
                    {"segment": "vip"},
                ]
            },
            True,
        ),
        ({"rfm": "Champions"}, False),
        ({"cluster": "x"}, False),
    ],
)
def test_conditions(condition: dict[str, Any], expected: bool) -> None:
    rule = compile_rule(condition)
    assert rule(PROFILE, Context(now=NOW, memberships=frozenset({"vip"}))) is expected


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"property": "x", "op": "nope", "value": 1}, "definition.op"),
        ({"and": []}, "definition.and"),
        ({"and": [{"property": "a", "op": "in", "value": 3}]}, "definition.and[0].value"),
        ({"property": "a", "op": "matches", "value": "("}, "definition.value"),
        ({"property": "a", "op": "between", "value": [1]}, "definition.value"),
        ({"event": "Order Completed", "min_count": -1}, "definition.min_count"),
        ({"event": "Order Completed", "where": [{"property": "total"}]}, "definition.where[0].op"),
        ({"what": 1}, "definition"),
        ([], "definition"),
    ],
)
def test_invalid_rules_name_the_part(definition: Any, field: str) -> None:
    with pytest.raises(FieldError) as info:
        compile_rule(definition)
    assert info.value.field == field


# -- the service and the API ----------------------------------------------------------------


def _shop(engine: Engine, ws: Any, n: int = 30) -> None:
    items = []
    for i in range(n):
        items.append(
            {
                "type": "identify",
                "userId": f"u{i}",
                "traits": {"plan": "pro" if i % 3 == 0 else "free"},
            }
        )
        for j in range(i % 4):
            items.append(
                {
                    "type": "track",
                    "userId": f"u{i}",
                    "event": "Order Completed",
                    "properties": {"total": 40 + 10 * j},
                }
            )
    engine.ingest(ws, items)
    engine.updater.replay()


def test_segment_api_crud_preview_members_and_csv(client, engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws, keys = workspace.workspace, workspace.keys
    _shop(engine, ws)
    definition = {
        "and": [
            {"property": "traits.plan", "op": "equals", "value": "pro"},
            {
                "event": "Order Completed",
                "min_count": 2,
                "where": [{"property": "total", "op": "gte", "value": 50}],
            },
        ]
    }
    r = client.post(
        "/v1/segments/preview", headers=bearer(keys["read"]), json={"definition": definition}
    )
    assert r.status_code == 200
    # pro users are u0, u3, ..., u27; two orders of total >= 50 need i % 4 == 3.
    expected = {f"u{i}" for i in range(30) if i % 3 == 0 and i % 4 == 3}
    assert r.json()["size"] == len(expected)

    body = {"key": "loyal-pros", "name": "Loyal pros", "definition": definition}
    assert client.post("/v1/segments", headers=bearer(keys["read"]), json=body).status_code == 403
    r = client.post("/v1/segments", headers=bearer(keys["admin"]), json=body)
    assert r.status_code == 201 and r.json()["size"] == len(expected)
    assert client.post("/v1/segments", headers=bearer(keys["admin"]), json=body).status_code == 409
    bad = dict(body, key="bad", definition={"property": "x", "op": "gt"})
    r = client.post("/v1/segments", headers=bearer(keys["admin"]), json=bad)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "definition.value"

    listed = {
        s["key"]
        for s in client.get("/v1/segments", headers=bearer(keys["read"])).json()["segments"]
    }
    assert {
        "loyal-pros",
        "active",
        "lapsed-users",
        "frequent-buyers",
        "high-value-shoppers",
    } <= listed

    seen, cursor = [], None
    while True:
        url = "/v1/segments/loyal-pros/members?limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=bearer(keys["read"])).json()
        seen += [m["profileId"] for m in page["members"]]
        cursor = page["next"]
        if cursor is None:
            break
    users = {engine.profile(ws, u)["profileId"]: u for u in expected}
    assert sorted(seen) == sorted(users)
    r = client.get("/v1/segments/loyal-pros/members?format=csv", headers=bearer(keys["read"]))
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert r.headers["content-type"].startswith("text/csv") and len(rows) == len(expected)
    assert client.get("/v1/segments/loyal-pros/sizes", headers=bearer(keys["read"])).json()["sizes"]

    narrower = dict(body, definition={"property": "traits.plan", "op": "equals", "value": "nobody"})
    r = client.put("/v1/segments/loyal-pros", headers=bearer(keys["admin"]), json=narrower)
    assert r.status_code == 200 and r.json()["size"] == 0
    assert (
        client.delete("/v1/segments/loyal-pros", headers=bearer(keys["admin"])).status_code == 200
    )
    assert client.get("/v1/segments/loyal-pros", headers=bearer(keys["read"])).status_code == 404


def test_membership_changes_within_100ms_and_are_logged(client, engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    engine.start()
    ws, keys = workspace.workspace, workspace.keys
    engine.segments.save(
        ws.id,
        "big-order",
        "Big order",
        {"event": "Order Completed", "where": [{"property": "total", "op": "gt", "value": 500}]},
    )
    latencies = []
    for i in range(5):
        user = f"fast-{i}"
        start = time.perf_counter()
        client.post(
            "/v1/track",
            auth=(keys["write"], ""),
            json={"userId": user, "event": "Order Completed", "properties": {"total": 900}},
        )
        while time.perf_counter() - start < 5:
            profile = client.get(f"/v1/profiles/{user}", headers=bearer(keys["read"])).json()
            if "big-order" in profile.get("segments", []):
                break
            time.sleep(0.002)
        latencies.append(time.perf_counter() - start)
        assert "big-order" in profile["segments"]
    assert statistics.median(latencies) < 0.1, latencies
    names = [e["event"] for e in engine.events(ws, user="fast-0")]
    assert "Segment Entered" in names


EVENT_CONDITIONS: list[dict[str, Any]] = [
    {"event": "Order Completed", "min_count": 5, "within_days": 90},
    {"event": "Order Completed", "min_count": 2, "max_count": 3, "within_days": 30},
    {"event": "Order Completed", "min_count": 0, "max_count": 0, "within_days": 10},
    {"event": "Order Completed", "where": [{"property": "total", "op": "gt", "value": 500}]},
    {"event": "Product Viewed", "min_count": 3, "within_days": 7},
    {"event": "Product Viewed", "min_count": 2, "max_count": 4},
    {"event": "Product Viewed", "since": "{50 days ago}", "min_count": 2},
    {"event": "Product Viewed", "until": "{50 days ago}"},
    {"event": "Product Viewed", "since": "2020-01-01T00:00:00Z", "until": "{50 days ago}"},
    {"event": "Segment Entered", "min_count": 1},
    {"event": "Never Happened", "min_count": 0, "max_count": 0},
]


def test_counts_known_from_the_profile_decide_as_counting_would(
    engine: Engine, workspace: CreatedWorkspace
) -> None:
    """Event conditions are mostly decided from the folded profile (its count of the name
    bounds every count; when all of its events fall in the window, it is the count): the
    decision must be the one counting the logged events gives, for every person."""
    from functools import partial

    from sartor.segments.service import _count_range

    ws = workspace.workspace
    now = int(time.time() * 1000)
    # (orders days ago, views days ago) per person: inside and across the windows. The
    # first order of each is a big one, except for the small spender.
    people = {
        "new": ([1, 2], [0, 1, 3]),
        "loyal-recent": ([1, 5, 9, 20, 40, 60], [2]),
        "loyal-old": ([5, 100, 120, 150, 200, 300], [1, 2, 3, 400]),
        "lapsed": ([95, 200], [100]),
        "browser": ([], [0, 1, 2, 6, 8, 9]),
        "big-once": ([12], []),
        "small-spender": ([3, 4], [3]),
    }
    for user, (orders, views) in people.items():
        for i, days in enumerate(orders):
            total = 900 if i == 0 and user != "small-spender" else 40
            engine.track(
                ws,
                "Order Completed",
                user_id=user,
                timestamp=now - days * DAY - 1000,
                properties={"total": total},
            )
        for days in views:
            engine.track(ws, "Product Viewed", user_id=user, timestamp=now - days * DAY - 1000)
    engine.updater.replay()  # folds them (and logs everyone's entry into "active")
    engine.updater.replay()  # folds those transitions
    segs = engine.segments
    ago = datetime.fromtimestamp((now - 50 * DAY) / 1000, UTC).isoformat()
    definitions = [
        {k: ago if v == "{50 days ago}" else v for k, v in d.items()} for d in EVENT_CONDITIONS
    ]
    rules = [(d, compile_rule(d)) for d in definitions]
    pids = [engine.profile(ws, user)["profileId"] for user in people]
    counted: list[str] = []  # the decisions the bounds left to counting

    with engine.db.connect() as conn:
        states = segs._states(conn, ws.id, pids)
        known = _count_range(states, now)
        counter = segs._event_counter(conn, ws.id, pids, now)  # counts everyone

        def count(pid: str, cond: Any) -> int:
            counted.append(pid)
            return counter(pid, cond)

        for pid in pids:
            view = segs._view(pid, *states[pid], now)
            for definition, rule in rules:
                fast = Context(now=now, count_events=partial(count, pid))
                fast.event_range = partial(known, pid)
                slow = Context(now=now, count_events=partial(counter, pid))
                assert rule(view, fast) == rule(view, slow), (pid, definition)
    # Most decisions need no query (the point of the bounds), not all (old orders do).
    checks = len(pids) * len(rules)
    assert 0 < len(counted) < checks // 2, (len(counted), checks)


def test_a_lapsing_user_leaves_active_at_the_next_scheduled_evaluation(
    engine: Engine, workspace
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    now = int(time.time() * 1000)
    engine.track(ws, "Product Viewed", user_id="fading", timestamp=now - 29 * DAY)
    engine.updater.replay()
    assert "active" in engine.profile(ws, "fading")["segments"]
    pid = engine.profile(ws, "fading")["profileId"]
    # Two days later, with no new event, the scheduled run moves them out. (Read the
    # memberships directly: a profile read would re-evaluate at the real clock.)
    engine.scheduler.tick(now=now + 2 * DAY, force=True)
    assert "active" not in engine.segments.of_profile(ws.id, pid)
    assert "Segment Exited" in [e["event"] for e in engine.events(ws, user="fading")]


def test_erasure_removes_memberships(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    engine.track(ws, "Order Completed", user_id="gone", properties={"total": 5000})
    pid = engine.profile(ws, "gone")["profileId"]
    assert engine.segments.of_profile(ws.id, pid)
    counts = engine.erase_user(ws, "gone")
    assert counts["memberships"] >= 1
    assert engine.segments.of_profile(ws.id, pid) == []


# -- RFM against a separate pandas computation -------------------------------------------------


def _retail_slice(rows: int = 25_000) -> pd.DataFrame:
    path = shared_data("online-retail") / "online_retail_2010-12-01_2011-12-09.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        frame = pd.read_csv(fh, nrows=rows, dtype={"InvoiceNo": str, "StockCode": str})
    return frame


def test_rfm_matches_a_pandas_computation_on_online_retail(sqlite_engine: Engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sartor.demo import IMPORT_EVENT_BYTES, retail_messages

    frame = _retail_slice()
    sample = tmp_path / "slice.csv"
    frame.to_csv(sample, index=False)
    engine = sqlite_engine
    ws = engine.create_workspace("retail").workspace
    messages = retail_messages(sample)
    for start in range(0, len(messages), 2000):
        result = engine.ingest(
            ws, messages[start : start + 2000], max_event_bytes=IMPORT_EVENT_BYTES
        )
        assert not result.errors
    reference = int(datetime(2011, 12, 10, tzinfo=UTC).timestamp() * 1000)
    engine.segments.run_rfm(ws.id, reference)

    # The pandas side: straight from the CSV lines, independent of Sartor's folds.
    lines = frame[frame["CustomerID"].notna()].copy()
    lines["customer"] = lines["CustomerID"].astype(int).astype(str)  # the preset's userId
    lines["amount"] = lines["Quantity"] * lines["UnitPrice"]
    lines["ts"] = pd.to_datetime(lines["InvoiceDate"]).dt.tz_localize("UTC")
    orders = lines[~lines["InvoiceNo"].str.startswith("C")]
    per = pd.DataFrame(
        {
            "last": orders.groupby("customer")["ts"].max(),
            "frequency": orders.groupby("customer")["InvoiceNo"].nunique(),
            "monetary": lines.groupby("customer")["amount"].sum().round(2),
        }
    ).dropna(subset=["last"])
    ref = pd.Timestamp(reference, unit="ms", tz="UTC")
    per["recency_days"] = (ref - per["last"]).dt.total_seconds() / 86_400
    per.index = [engine.profile(ws, c)["profileId"] for c in per.index]
    per = per.sort_index()
    r = quantile_scores(per["recency_days"], 5, higher_is_better=False)
    f = quantile_scores(per["frequency"], 5)
    m = quantile_scores(per["monetary"], 5)
    expected = {
        pid: (group_of(r[pid], f[pid]), int(r[pid]), int(f[pid]), int(m[pid])) for pid in per.index
    }

    got = {}
    for key in {f"rfm:{g}" for g, _, _, _ in expected.values()}:
        after = None
        while True:
            page, after = engine.segments.members(ws.id, key, after, 1000)
            for mem in page:
                got[mem["profileId"]] = (key[4:], mem["R"], mem["F"], mem["M"])
            if after is None:
                break
    assert len(expected) > 200
    assert got == expected


def test_rfm_quantiles_are_configurable(client, engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from sartor.segments.rfm import RFM, to_five

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "recency_days": rng.uniform(0, 300, 400),
            "frequency": rng.integers(1, 30, 400),
            "monetary": rng.gamma(2.0, 80.0, 400),
        },
        index=[f"p{i:04d}" for i in range(400)],
    )
    ten = RFM(n_quantiles=10).fit(frame)
    assert ten.scores_["F"].min() == 1 and ten.scores_["F"].max() == 10
    assert (ten.scores_["F"].value_counts() == 40).all()  # equal-sized bins
    r5, f5 = to_five(ten.scores_["R"].iloc[0], 10), to_five(ten.scores_["F"].iloc[0], 10)
    assert ten.groups_.iloc[0] == group_of(r5, f5)
    with pytest.raises(ValueError):
        RFM(n_quantiles=1).fit(frame)
    # Same data as the 1-5 grid when n = 5.
    assert (RFM(n_quantiles=5).fit(frame).groups_ == RFM().fit(frame).groups_).all()

    _shop(engine, workspace.workspace)
    admin = bearer(workspace.keys["admin"])
    r = client.post("/v1/rfm/run", headers=admin, json={"quantiles": 4})
    assert r.status_code == 200 and sum(r.json()["groups"].values()) > 0
    r = client.post("/v1/rfm/run", headers=admin, json={"quantiles": 11})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "quantiles"
