"""Interactions read from the event log, on SQLite and PostgreSQL: event weights, time decay,
explicit ratings, ``products[]``, identity merges, consent, and batch boundaries."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

from sartor.engine import Engine
from sartor.recommend.interactions import (
    Interactions,
    _Pairs,
    event_items,
    load_interactions,
    rating_value,
    user_history,
)
from sartor.storage.tables import events

T0 = 1_700_000_000_000
DAY = 86_400_000
HALF_LIFE_DAYS = 10.0
HL = int(HALF_LIFE_DAYS * DAY)
WEIGHTS = {
    "Product Viewed": 1.0,
    "Product Added": 3.0,
    "Checkout Started": 2.0,
    "Order Completed": 5.0,
    "Product Reviewed": 1.5,
}


def load(engine: Engine, ws: Any, **kwargs: Any) -> Interactions:
    args: dict[str, Any] = {"weights": WEIGHTS, "half_life_days": HALF_LIFE_DAYS, "now_ms": T0}
    args.update(kwargs)
    return load_interactions(engine.db, ws.id, **args)


def pairs(data: Interactions) -> dict[tuple[str, str], float]:
    coo = data.matrix.tocoo()
    return {
        (data.users.id(int(u)), data.items.id(int(i))): float(w)
        for u, i, w in zip(coo.row, coo.col, coo.data, strict=True)
    }


def by_user(engine: Engine, ws: Any, data: Interactions) -> dict[tuple[str, str], float]:
    """Pairs keyed by userId instead of profile id."""
    names = {}
    for (pid, _item), _w in pairs(data).items():
        doc = engine.profile(ws, pid)
        ids = [link["value"] for link in doc["identities"] if link["kind"] == "user_id"]
        names[pid] = ids[0] if ids else pid
    return {(names[pid], item): w for (pid, item), w in pairs(data).items()}


def track(engine: Engine, ws: Any, user: str, event: str, at: int, **props: Any) -> None:
    result = engine.track(ws, event, user_id=user, timestamp=at, properties=props)
    assert result.stored == 1, result.as_dict()


def test_weights_per_event_name_and_unknown_events_ignored(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    track(engine, ws, "u1", "Product Viewed", T0, product_id="A")
    track(engine, ws, "u1", "Product Added", T0, product_id="A", quantity=4)
    track(engine, ws, "u1", "Order Completed", T0, products=[{"product_id": "A"}])
    track(engine, ws, "u1", "Product Removed", T0, product_id="A")  # not in the weights
    track(engine, ws, "u1", "Product Shared", T0, product_id="Z")  # not in the weights
    track(engine, ws, "u2", "Product Viewed", T0, product_id="B")
    engine.page(ws, user_id="u2", name="Product Viewed", properties={"product_id": "P"})
    engine.track(ws, "Product Viewed", user_id="u3", properties={"name": "no id"})
    data = load(engine, ws)
    assert by_user(engine, ws, data) == {("u1", "A"): 9.0, ("u2", "B"): 1.0}
    assert data.n_events == 4
    assert data.matrix.dtype == np.float32
    assert data.shape == data.matrix.shape == data.last_at.shape == (2, 2)


def test_weights_decay_with_age_and_future_events_count_as_new(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    track(engine, ws, "u1", "Product Viewed", T0 - HL, product_id="A")
    track(engine, ws, "u1", "Product Viewed", T0 - 2 * HL, product_id="B")
    track(engine, ws, "u1", "Product Added", T0 - 3 * HL, product_id="B")
    track(engine, ws, "u1", "Product Viewed", T0 + DAY, product_id="C")
    got = by_user(engine, ws, load(engine, ws))
    assert got[("u1", "A")] == pytest.approx(0.5)
    assert got[("u1", "B")] == pytest.approx(0.25 + 3 * 0.125)
    assert got[("u1", "C")] == pytest.approx(1.0)


def test_without_now_ages_count_from_the_newest_event(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    old = 1_300_000_000_000  # 2011: hundreds of 10-day half-lives before the clock
    track(engine, ws, "u1", "Product Viewed", old, product_id="A")
    track(engine, ws, "u1", "Product Viewed", old - HL, product_id="B")
    got = by_user(engine, ws, load(engine, ws, now_ms=None))
    assert got == {("u1", "A"): pytest.approx(1.0), ("u1", "B"): pytest.approx(0.5)}
    # Measured from the clock instead, the same pairs keep the same ratio, tiny but present.
    tiny = pairs(load(engine, ws, now_ms=old + 50 * HL))
    assert len(tiny) == 2 and all(0 < w < 1e-14 for w in tiny.values())


def test_a_rating_replaces_the_implicit_weight_of_its_pair(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    track(engine, ws, "u1", "Order Completed", T0, products=[{"product_id": "A"}])
    track(engine, ws, "u1", "Product Reviewed", T0, product_id="A", rating=4)
    track(engine, ws, "u1", "Product Viewed", T0, product_id="A")  # after the rating: ignored
    # The latest rating by event time wins, even when it arrives first.
    track(engine, ws, "u1", "Product Reviewed", T0 - 1000, product_id="B", rating=5)
    track(engine, ws, "u1", "Product Reviewed", T0 - 2000, product_id="B", rating=1)
    track(engine, ws, "u1", "Product Reviewed", T0, product_id="C")  # no rating: implicit
    track(engine, ws, "u1", "Product Viewed", T0, product_id="C")
    track(engine, ws, "u1", "Product Reviewed", T0, product_id="D", rating="2.5")
    track(engine, ws, "u1", "Product Reviewed", T0, product_id="E", rating=-3)  # unusable
    track(engine, ws, "u1", "Product Reviewed", T0 - HL, product_id="F", rating=4)
    got = by_user(engine, ws, load(engine, ws))
    assert got == {
        ("u1", "A"): pytest.approx(4.0),
        ("u1", "B"): pytest.approx(5.0),
        ("u1", "C"): pytest.approx(1.5 + 1.0),
        ("u1", "D"): pytest.approx(2.5),
        ("u1", "E"): pytest.approx(1.5),
        ("u1", "F"): pytest.approx(2.0),  # a rating decays like any interaction
    }


def test_a_zero_rating_removes_the_pair(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    track(engine, ws, "u1", "Order Completed", T0, products=[{"product_id": "A"}])
    track(engine, ws, "u1", "Product Reviewed", T0, product_id="A", rating=0)
    track(engine, ws, "u1", "Product Viewed", T0, product_id="B")
    assert by_user(engine, ws, load(engine, ws)) == {("u1", "B"): 1.0}


def test_every_product_of_an_order_or_checkout_counts_once(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    track(
        engine,
        ws,
        "u1",
        "Order Completed",
        T0,
        order_id="o1",
        products=[
            {"product_id": "A", "quantity": 3, "price": 2},
            {"product_id": "B"},
            {"product_id": "A", "quantity": 1},  # listed twice: still one interaction
            {"sku": "S-9"},  # no product_id: the sku is the item id
            {"name": "nameless"},
        ],
    )
    track(engine, ws, "u1", "Checkout Started", T0, products=[{"product_id": "C"}])
    # GA4 spelling: stored as Order Completed with products[]
    result = engine.track(
        ws, "purchase", user_id="u2", timestamp=T0, properties={"items": [{"item_id": "A"}]}
    )
    assert result.stored == 1
    got = by_user(engine, ws, load(engine, ws))
    assert got == {
        ("u1", "A"): 5.0,
        ("u1", "B"): 5.0,
        ("u1", "S-9"): 5.0,
        ("u1", "C"): 2.0,
        ("u2", "A"): 5.0,
    }


def test_merged_profiles_count_as_one_user(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    engine.track(
        ws, "Product Viewed", anonymous_id="a1", timestamp=T0, properties={"product_id": "X"}
    )
    track(engine, ws, "u1", "Product Viewed", T0, product_id="Y")
    before = load(engine, ws)
    assert len(before.users) == 2
    # One event with both ids merges the anonymous profile into the user's.
    engine.track(
        ws,
        "Product Added",
        anonymous_id="a1",
        user_id="u1",
        timestamp=T0,
        properties={"product_id": "X"},
    )
    pid = engine.profile(ws, "u1")["profileId"]
    data = load(engine, ws)
    assert data.users.ids() == [pid]
    assert pairs(data) == {(pid, "X"): 4.0, (pid, "Y"): 1.0}


def test_an_event_of_a_vanished_profile_goes_to_the_profile_of_its_ids(
    engine: Engine, workspace
) -> None:  # type: ignore[no-untyped-def]
    """Merges rewrite events; an event written around that (an import, a race) still
    lands on the profile that holds its userId or anonymousId now."""
    ws = workspace.workspace
    track(engine, ws, "u1", "Product Viewed", T0, product_id="A")
    engine.track(
        ws, "Product Viewed", anonymous_id="a9", timestamp=T0, properties={"product_id": "B"}
    )
    engine.track(
        ws, "Product Viewed", user_id="ghost", timestamp=T0, properties={"product_id": "C"}
    )
    pid = engine.profile(ws, "u1")["profileId"]
    anon_pid = engine.profile(ws, "a9")["profileId"]
    with engine.db.begin() as conn:
        for user, gone in (("u1", "p_gone_1"), ("ghost", "p_gone_2")):
            conn.execute(
                update(events)
                .where(events.c.workspace_id == ws.id, events.c.user_id == user)
                .values(profile_id=gone)
            )
        # The ghost's identity is gone too: nothing left to place its event with.
        conn.execute(
            update(events)
            .where(events.c.workspace_id == ws.id, events.c.user_id == "ghost")
            .values(user_id="nobody-knows")
        )
    data = load(engine, ws)
    assert pairs(data) == {(pid, "A"): 1.0, (anon_pid, "B"): 1.0}


def test_profiles_without_personalization_consent_are_left_out(engine: Engine) -> None:
    opt_out = engine.create_workspace("out", consent_mode="opt_out").workspace
    declined = {"consent": {"categoryPreferences": {"personalization": False}}}
    track(engine, opt_out, "yes", "Product Viewed", T0, product_id="A")
    engine.track(
        opt_out,
        "Product Viewed",
        user_id="no",
        timestamp=T0,
        context=declined,
        properties={"product_id": "B"},
    )
    # Consent withdrawn later: the earlier events stop counting too.
    track(engine, opt_out, "later", "Product Viewed", T0, product_id="C")
    engine.identify(opt_out, user_id="later", traits={"consent": {"personalization": False}})
    assert by_user(engine, opt_out, load(engine, opt_out)) == {("yes", "A"): 1.0}

    opt_in = engine.create_workspace("in", consent_mode="opt_in").workspace
    analytics = {"consent": {"categoryPreferences": {"analytics": True}}}
    both = {"consent": {"categoryPreferences": {"analytics": True, "personalization": True}}}
    for user, context, item in (("only-analytics", analytics, "D"), ("both", both, "E")):
        result = engine.track(
            opt_in,
            "Product Viewed",
            user_id=user,
            timestamp=T0,
            context=context,
            properties={"product_id": item},
        )
        assert result.stored == 1
    assert by_user(engine, opt_in, load(engine, opt_in)) == {("both", "E"): 1.0}


def test_batch_size_does_not_change_the_result(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    rng = random.Random(7)
    batch = []
    for n in range(60):
        user, item = f"u{rng.randrange(6)}", f"i{rng.randrange(8)}"
        at = T0 - rng.randrange(40) * DAY
        name = rng.choice(
            ["Product Viewed", "Product Added", "Order Completed", "Product Reviewed", "Signed Up"]
        )
        props: dict[str, Any] = {"product_id": item}
        if name == "Order Completed":
            props = {"products": [{"product_id": item}, {"product_id": f"i{rng.randrange(8)}"}]}
        if name == "Product Reviewed" and rng.random() < 0.7:
            props["rating"] = rng.randrange(1, 6)
        batch.append(
            {
                "type": "track",
                "event": name,
                "userId": user,
                "timestamp": at,
                "messageId": f"m{n}",
                "properties": props,
            }
        )
    assert engine.batch(ws, {"batch": batch}).stored == 60
    big = load(engine, ws)
    small = load(engine, ws, batch_size=3)
    assert big.users.ids() == small.users.ids() and big.items.ids() == small.items.ids()
    assert big.n_events == small.n_events > 40
    assert np.array_equal(big.matrix.toarray(), small.matrix.toarray())
    assert np.array_equal(big.last_at.toarray(), small.last_at.toarray())
    assert big.matrix.nnz == big.last_at.nnz > 10


def test_last_at_since_and_min_weight(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    track(engine, ws, "u1", "Product Viewed", T0 - 5 * DAY, product_id="A")
    track(engine, ws, "u1", "Product Viewed", T0 - 2 * DAY, product_id="A")
    track(engine, ws, "u1", "Product Viewed", T0 - 30 * DAY, product_id="B")
    data = load(engine, ws)
    u, a, b = data.users.row(data.users.id(0)), data.items.row("A"), data.items.row("B")
    assert data.last_at[u, a] == T0 - 2 * DAY and data.last_at[u, b] == T0 - 30 * DAY
    assert data.last_at.dtype == np.int64
    assert set(load(engine, ws, since_ms=T0 - 10 * DAY).items.ids()) == {"A"}
    assert set(load(engine, ws, min_weight=0.2).items.ids()) == {"A"}  # B decayed to 0.125


def test_other_workspaces_do_not_leak_in(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    other = engine.create_workspace("other").workspace
    track(engine, ws, "u1", "Product Viewed", T0, product_id="A")
    track(engine, other, "u1", "Product Viewed", T0, product_id="B")
    assert by_user(engine, ws, load(engine, ws)) == {("u1", "A"): 1.0}
    empty = load(engine, engine.create_workspace("empty").workspace)
    assert empty.shape == empty.matrix.shape == (0, 0) and empty.n_events == 0
    assert load(engine, ws, weights={}).shape == (0, 0)
    with pytest.raises(LookupError):
        load_interactions(engine.db, "ws_nope", weights=WEIGHTS, half_life_days=1.0)


def test_user_history_is_the_newest_interactions_weighted_alike(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    track(engine, ws, "u1", "Product Viewed", T0 - 3 * DAY, product_id="A")
    track(engine, ws, "u1", "Product Added", T0 - 2 * DAY, product_id="A")
    track(engine, ws, "u1", "Order Completed", T0 - DAY, products=[{"product_id": "B"}])
    track(engine, ws, "u1", "Product Reviewed", T0, product_id="C", rating=3)
    track(engine, ws, "u1", "Product Viewed", T0 - 4 * DAY, product_id="D")
    track(engine, ws, "u2", "Product Viewed", T0, product_id="E")
    pid = engine.profile(ws, "u1")["profileId"]
    history = user_history(engine.db, ws.id, pid, WEIGHTS, HALF_LIFE_DAYS, now_ms=T0)
    assert [h[0] for h in history] == ["C", "B", "A", "D"]
    assert [h[2] for h in history] == [T0, T0 - DAY, T0 - 2 * DAY, T0 - 4 * DAY]
    data = load(engine, ws)
    expected = {item: w for (p, item), w in pairs(data).items() if p == pid}
    assert {item: pytest.approx(w, rel=1e-6) for item, w, _ in history} == expected
    top2 = user_history(engine.db, ws.id, pid, WEIGHTS, HALF_LIFE_DAYS, limit=2, now_ms=T0)
    assert [h[0] for h in top2] == ["C", "B"]
    assert user_history(engine.db, ws.id, "p_unknown", WEIGHTS, HALF_LIFE_DAYS) == []


# -- pure logic -------------------------------------------------------------------------


def test_rating_values() -> None:
    assert rating_value(4) == 4.0
    assert rating_value(" 3.5 ") == 3.5
    assert rating_value(0) == 0.0
    for bad in (-1, True, "five", float("nan"), float("inf"), None, [4], {"stars": 4}):
        assert rating_value(bad) is None


def test_event_items() -> None:
    assert event_items("Product Viewed", "A", "S", None) == ["A"]
    assert event_items("Product Viewed", " ", "S", None) == ["S"]
    assert event_items("Product Viewed", None, None, [{"product_id": "B"}]) == ["B"]
    products = [{"product_id": "B"}, {"sku": "C"}, {"product_id": "B"}, "junk", {"x": 1}]
    assert event_items("Order Completed", "A", None, products) == ["B", "C"]
    assert event_items("Order Completed", "A", None, None) == []
    assert event_items("Video Watched", "V", None, products) == ["V"]  # a custom event


def test_pair_compaction_matches_a_brute_force_reference() -> None:
    """Compacting in many steps gives the sums, newest times and newest ratings of a
    reference that sees every observation at once."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(1, 400))
        keys = rng.integers(0, 15, n).astype(np.int64)
        weight = rng.random(n)
        at = rng.integers(0, 30, n).astype(np.int64)
        rating = np.where(rng.random(n) < 0.3, rng.integers(0, 6, n).astype(float), np.nan)
        acc = _Pairs()
        for lo in range(0, n, 7):
            acc.add(keys[lo : lo + 7], weight[lo : lo + 7], at[lo : lo + 7], rating[lo : lo + 7])
            if rng.random() < 0.5:
                acc.compact()
        acc.compact()
        ref: dict[int, list[Any]] = {}
        for k, w, t, r in zip(keys.tolist(), weight, at.tolist(), rating, strict=True):
            entry = ref.setdefault(k, [0.0, -1, np.nan, -1])
            entry[0] += w
            entry[1] = max(entry[1], t)
            if not np.isnan(r) and t >= entry[3]:  # the later of equal times wins
                entry[2], entry[3] = r, t
        assert acc.keys.tolist() == sorted(ref)
        for j, k in enumerate(acc.keys.tolist()):
            assert acc.weight[j] == pytest.approx(ref[k][0])
            assert acc.at[j] == ref[k][1]
            assert (np.isnan(acc.rating[j]) and np.isnan(ref[k][2])) or acc.rating[j] == ref[k][2]
