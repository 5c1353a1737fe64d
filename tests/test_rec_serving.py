"""Serving recommendations: real time, filters and rules, cold start, consent, holdout,
experiments, explanations, attribution, erasure, cache and ANN, on real models trained on a
synthetic shop with a planted structure (tests/rec_shop.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from sartor.engine import Engine
from sartor.experiments.service import in_holdout
from sartor.profiles.updater import ProfileChange
from sartor.recommend import attribution
from sartor.recommend.diversity import level_table, mmr, path_similarity, similarity_matrix
from sartor.recommend.filters import (
    Boost,
    CatalogView,
    Filters,
    allowed_rows,
    boost_factors,
    category_key,
    under,
)
from sartor.recommend.interactions import user_history
from sartor.recommend.lookups import MAX_HELD
from sartor.recommend.serving import UnknownItem, UnknownSlot, _best_rows, _RecommendationIds
from sartor.recommend.slots import DEFAULT_SLOTS, payload_overrides, validate_settings
from sartor.storage.tables import recommendation_outcomes, recommendations
from tests.rec_shop import Shop, build_shop, catalog_items, group_of, shop, shop_events

__all__ = ["shop"]  # the fixture
SAMPLE = [f"u{n}" for n in range(18)]  # three users of each group; u0, u3, ... bought


def ids(result: dict[str, Any]) -> list[str]:
    return [i["id"] for i in result["items"]]


def recs(shop: Shop, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("k", 10)
    return shop.engine.recs.recommend(shop.ws, **kwargs)


def bought_by(user: str) -> set[str]:
    out: set[str] = set()
    for e in shop_events(0):
        if e.get("userId") == user and e.get("event") == "Order Completed":
            out |= {p["product_id"] for p in e["properties"]["products"]}
    return out


def viewed_by(user: str) -> set[str]:
    return {
        e["properties"]["product_id"]
        for e in shop_events(0)
        if e.get("userId") == user and e.get("event") == "Product Viewed"
    }


def with_slots(shop: Shop, slots: dict[str, Any]) -> None:
    shop.engine.update_workspace_settings(shop.ws, {"recommendations": {"slots": slots}})
    shop.refresh()


# -- real time (the acceptance test) ------------------------------------------------------


def test_a_new_users_first_view_shapes_their_list_within_a_second(shop: Shop) -> None:
    eng, ws = shop.engine, shop.ws
    started = time.monotonic()
    eng.track(ws, "Product Viewed", user_id="fresh-1", properties={"product_id": "g4-i7"})
    out = eng.recs.recommend(ws, user="fresh-1", slot="home", k=10)
    assert time.monotonic() - started < 1.0
    assert out["strategy"] == "personal" and out["personalized"] is True
    groups = [group_of(i) for i in ids(out)]
    assert groups.count(4) >= 8, groups  # the planted neighbours of g4-i7
    assert "g4-i7" not in ids(out)  # just seen
    assert out["items"][0]["reason"] == "because you viewed Widget 7 of line 4 gizmo4"
    assert out["items"][0]["reasonItem"] == "g4-i7"

    # The next events move the list at once: no retraining, no waiting for a fold.
    for j in (1, 2, 3):
        eng.track(ws, "Product Added", user_id="fresh-1", properties={"product_id": f"g1-i{j}"})
    again = eng.recs.recommend(ws, user="fresh-1", slot="home", k=10)
    assert [group_of(i) for i in ids(again)].count(1) >= 5
    assert {"g1-i1", "g1-i2", "g1-i3"}.isdisjoint(ids(again))


def test_similar_items_and_cart(shop: Shop) -> None:
    similar = recs(shop, slot="product", item="g2-i3")
    assert similar["strategy"] == "similar" and similar["personalized"] is False
    assert "reason" not in similar  # not a cold start: the list is about the item
    assert "g2-i3" not in ids(similar)
    assert all(group_of(i) == 2 for i in ids(similar))
    assert all(i["reason"] == "similar to Widget 3 of line 2 gizmo2" for i in similar["items"])

    cart = recs(shop, slot="cart", item="g5-i0", k=5)
    assert cart["strategy"] == "cart" and all(group_of(i) == 5 for i in ids(cart))
    # The user's own cart when no item is given: the adds since their last order.
    shop.engine.track(
        shop.ws, "Product Added", user_id="carter", properties={"product_id": "g3-i4"}
    )
    mine = recs(shop, slot="cart", user="carter", k=5)
    assert mine["strategy"] == "cart" and mine["personalized"] is True
    assert "g3-i4" not in ids(mine) and all(group_of(i) == 3 for i in ids(mine))


# -- filters and rules: an excluded item never comes back ----------------------------------


def test_bought_items_never_come_back(shop: Shop) -> None:
    buyers = [u for u in SAMPLE if bought_by(u)]
    assert len(buyers) == 6
    for user in buyers:
        for slot in ("home", "email"):
            assert bought_by(user).isdisjoint(ids(recs(shop, user=user, slot=slot, k=30)))
    # Control: a slot that keeps bought items does show them (the filter is what hides them).
    with_slots(
        shop, {"keep": {"kind": "personal", "models": {"itemknn": 1}, "exclude_purchased": False}}
    )
    try:
        shown = sum(
            len(bought_by(u) & set(ids(recs(shop, user=u, slot="keep", k=30)))) for u in buyers
        )
        assert shown > 0
    finally:
        with_slots(shop, {})


def test_recently_seen_items_never_come_back(shop: Shop) -> None:
    for user in SAMPLE:
        assert viewed_by(user).isdisjoint(ids(recs(shop, user=user, slot="email", k=30)))
        if user in ("u0", "u6", "u12"):  # group 0 viewed a day ago: inside home's 2 days
            assert viewed_by(user).isdisjoint(ids(recs(shop, user=user, slot="home", k=30)))
    with_slots(
        shop,
        {"again": {"kind": "personal", "models": {"itemknn": 1}, "exclude_purchased": False}},
    )
    try:
        shown = sum(
            len(viewed_by(u) & set(ids(recs(shop, user=u, slot="again", k=30)))) for u in SAMPLE
        )
        assert shown > 0
    finally:
        with_slots(shop, {})


def test_out_of_stock_and_deleted_items_never_come_back(shop: Shop) -> None:
    eng, ws = shop.engine, shop.ws
    eng.recs.catalog_check_seconds = 0.0
    top = ids(recs(shop, user="u4", slot="home"))
    gone, deleted = top[0], top[1]
    eng.catalog.upsert(ws.id, [{"id": gone, "inStock": False}])
    assert eng.catalog.delete(ws.id, deleted)
    try:
        for user in SAMPLE:
            for slot in ("home", "email"):
                assert {gone, deleted}.isdisjoint(ids(recs(shop, user=user, slot=slot, k=40)))
        for seed in ("g4-i0", "g4-i1", "g4-i2"):
            assert {gone, deleted}.isdisjoint(ids(recs(shop, slot="product", item=seed, k=19)))
        assert {gone, deleted}.isdisjoint(ids(recs(shop, user="nobody", k=100)))
    finally:
        doc = next(i for i in catalog_items() if i["id"] == deleted)
        eng.catalog.upsert(ws.id, [{"id": gone, "inStock": True}, doc])
    back = ids(recs(shop, user="u4", slot="home"))
    assert gone in back and deleted in back  # and they return once available again
    eng.recs.catalog_check_seconds = 1.0


def test_explicit_exclusions_never_come_back(shop: Shop) -> None:
    for user in SAMPLE[:6]:
        first = ids(recs(shop, user=user))
        dropped = first[:3]
        again = recs(shop, user=user, filters=Filters(exclude=tuple(dropped)), k=30)
        assert set(dropped).isdisjoint(ids(again)) and len(again["items"]) == 30
    similar = ids(recs(shop, slot="product", item="g1-i1"))
    assert set(similar[:5]).isdisjoint(
        ids(recs(shop, slot="product", item="g1-i1", filters=Filters(exclude=tuple(similar[:5]))))
    )


def test_category_filters(shop: Shop) -> None:
    for user in SAMPLE:
        kept = recs(shop, user=user, filters=Filters(categories=("cat1",)), k=20)
        assert kept["items"] and all(i["category"].startswith("Cat1 > ") for i in kept["items"])
        dropped = recs(shop, user=user, filters=Filters(exclude_categories=("Cat1 > Sub4",)), k=40)
        assert all(i["category"] != "Cat1 > Sub4" for i in dropped["items"])
    # A prefix matches whole levels only: "Cat1 > Sub" is not a parent of "Cat1 > Sub4".
    assert recs(shop, user="u1", filters=Filters(categories=("Cat1 > Sub",)))["items"] == []


def test_price_range(shop: Shop) -> None:
    for user in SAMPLE:
        out = recs(shop, user=user, filters=Filters(min_price=15, max_price=20), k=30)
        assert out["items"] and all(15 <= i["price"] <= 20 for i in out["items"])
    with pytest.raises(Exception, match="minPrice"):
        recs(shop, user="u1", filters=Filters(min_price=30, max_price=20))


def test_boosts_move_matching_items_up(shop: Shop) -> None:
    brand = Boost.parse("brand:brand1:50")  # case-insensitive
    red = Boost.parse("attributes.color:red:50")
    tag = Boost.parse("tag:T2:50")
    for user in SAMPLE[:6]:
        plain = recs(shop, user=user, k=5)
        boosted = recs(shop, user=user, k=5, filters=Filters(boosts=(brand,)))
        assert sum(i["brand"] == "Brand1" for i in boosted["items"]) > sum(
            i["brand"] == "Brand1" for i in plain["items"]
        )
        reds = recs(shop, user=user, k=5, filters=Filters(boosts=(red,)))
        assert all(int(i["id"].split("-i")[1]) % 2 == 0 for i in reds["items"])  # red = even
        tagged = recs(shop, user=user, k=3, filters=Filters(boosts=(tag,)))
        assert all(int(i["id"].split("-i")[1]) % 3 == 2 for i in tagged["items"])


def test_mmr_spreads_the_list_over_categories(shop: Shop) -> None:
    with_slots(
        shop,
        {
            "focused": {"kind": "personal", "models": {"als": 1, "content": 1}, "mmr_lambda": 1.0},
            "diverse": {"kind": "personal", "models": {"als": 1, "content": 1}, "mmr_lambda": 0.2},
        },
    )
    try:
        for user in SAMPLE[:6]:
            focused = {i["category"] for i in recs(shop, user=user, slot="focused")["items"]}
            diverse = {i["category"] for i in recs(shop, user=user, slot="diverse")["items"]}
            assert len(diverse) > len(focused)
    finally:
        with_slots(shop, {})


# -- cold start, consent, holdout, experiments ----------------------------------------------


def test_cold_start_chain(shop: Shop) -> None:
    eng, ws = shop.engine, shop.ws
    nobody = recs(shop, user="nobody-at-all")
    assert nobody["strategy"] == "trending" and nobody["personalized"] is False
    assert nobody["reason"] == "no_history"
    assert all(group_of(i) == 0 for i in ids(nobody))  # only group 0 was active this week
    assert {i["reason"] for i in nobody["items"]} == {"trending"}
    assert recs(shop)["strategy"] == "trending"  # no user at all

    # An anonymous visitor's session, and a new login that brings it along.
    for j in (2, 4, 6):
        eng.track(
            ws, "Product Viewed", anonymous_id="anon-77", properties={"product_id": f"g5-i{j}"}
        )
    visitor = recs(shop, user="anon-77")
    assert visitor["strategy"] == "session" and visitor["personalized"] is True
    assert [group_of(i) for i in ids(visitor)].count(5) >= 8
    login = recs(shop, user="just-registered", anonymous_id="anon-77")
    assert login["strategy"] == "session" and ids(login) == ids(visitor)

    # Nothing seen, but in a segment: what its members liked.
    eng.updater.replay()  # fold every profile (a running server does it continuously)
    eng.segments.save(
        ws.id,
        "fans-g2",
        "Fans of line 2",
        {"property": "traits.fan", "op": "equals", "value": "g2"},
    )
    eng.identify(ws, user_id="new-fan", traits={"fan": "g2"})
    eng.profile(ws, "new-fan")  # fold now: membership follows the profile
    fan = recs(shop, user="new-fan")
    assert fan["strategy"] == "segment" and fan["personalized"] is True
    assert all(group_of(i) == 2 for i in ids(fan))
    assert {i["reason"] for i in fan["items"]} == {"popular in your segment Fans of line 2"}

    # Trending runs out (k beyond group 0): popular items fill the rest.
    many = recs(shop, user="nobody-at-all", k=40)
    assert len(many["items"]) == 40 and {i["reason"] for i in many["items"]} == {
        "trending",
        "popular",
    }
    assert set(many["models"]) == {"trending", "popularity"}


def test_without_personalization_consent_nothing_personal_is_used(shop: Shop) -> None:
    eng, ws = shop.engine, shop.ws
    no = {"categoryPreferences": {"personalization": False}}
    for j in range(5):
        eng.track(
            ws,
            "Product Viewed",
            user_id="private-1",
            properties={"product_id": f"g3-i{j}"},
            context={"consent": no},
        )
    out = recs(shop, user="private-1")
    assert out["personalized"] is False and out["reason"] == "no_consent"
    assert out["strategy"] == "trending" and all(group_of(i) == 0 for i in ids(out))
    assert all(i["reason"] in ("trending", "popular") for i in out["items"])
    # Granting it personalizes at once.
    yes = {"categoryPreferences": {"personalization": True}}
    eng.track(
        ws,
        "Product Viewed",
        user_id="private-1",
        properties={"product_id": "g3-i9"},
        context={"consent": yes},
    )
    assert recs(shop, user="private-1")["strategy"] == "personal"


def test_the_global_holdout_gets_the_default_experience(shop: Shop) -> None:
    eng = shop.engine
    ws = eng.update_workspace_settings(shop.ws, {"holdout_share": 0.5})
    try:
        held = [u for u in SAMPLE if in_holdout(0.5, ws.settings.holdout_seed, u)]
        free = [u for u in SAMPLE if u not in held]
        assert held and free
        for user in held:
            out = eng.recs.recommend(ws, user=user)
            assert out["personalized"] is False and out["reason"] == "holdout"
        for user in free:
            assert eng.recs.recommend(ws, user=user)["personalized"] is True
    finally:
        eng.update_workspace_settings(ws, {"holdout_share": 0})
        shop.refresh()


def test_an_experiment_on_the_slot_overrides_its_models(shop: Shop) -> None:
    eng, ws = shop.engine, shop.ws
    eng.experiments.create(
        ws,
        {
            "key": "home-models",
            "name": "Home models",
            "slot": "home",
            "variations": [
                {"key": "knn", "payload": {"recommendations": {"models": {"itemknn": 1}}}},
                {"key": "text", "payload": {"models": {"content": 1}, "hero": "blue"}},
            ],
            "goal": {"type": "conversion", "event": "Order Completed"},
        },
    )
    eng.experiments.start(ws, "home-models")
    try:
        seen = set()
        for user in SAMPLE:
            out = recs(shop, user=user, k=5)
            variation = out["experiment"]["variation"]
            assert out["experiment"]["key"] == "home-models"
            assert set(out["models"]) == ({"itemknn"} if variation == "knn" else {"content"})
            seen.add(variation)
        assert seen == {"knn", "text"}
        assert "experiment" not in recs(shop, slot="product", item="g1-i1")
    finally:
        eng.experiments.stop(ws, "home-models")


# -- attribution, erasure -----------------------------------------------------------------


def test_attribution_report(shop: Shop) -> None:
    eng, ws = shop.engine, shop.ws
    with_slots(shop, {"attrib": {"kind": "personal", "models": {"itemknn": 1}}})
    try:
        first = recs(shop, user="u5", slot="attrib", k=5)
        second = recs(shop, user="u7", slot="attrib", k=5)
        third = recs(shop, user="u8", slot="attrib", k=5)
        assert len({first["recommendationId"], second["recommendationId"]}) == 2
        rid, item = first["recommendationId"], first["items"][0]["id"]
        eng.track(
            ws,
            "Product Clicked",
            user_id="u5",
            properties={"product_id": item, "recommendation_id": rid},
        )
        eng.track(
            ws,
            "Product Viewed",
            user_id="u5",
            properties={"product_id": item, "recommendation_id": rid},
        )
        eng.track(
            ws,
            "Order Completed",
            user_id="u5",
            properties={
                "order_id": "x1",
                "revenue": 42.0,
                "recommendationId": rid,
                "products": [{"product_id": item, "price": 42.0}],
            },
        )
        # An id on one line of an order: that line's value.
        eng.track(
            ws,
            "Order Completed",
            user_id="u7",
            properties={
                "order_id": "x2",
                "products": [
                    {
                        "product_id": "g1-i1",
                        "price": 5.0,
                        "quantity": 2,
                        "recommendation_id": second["recommendationId"],
                    },
                    {"product_id": "g1-i2", "price": 100.0},
                ],
            },
        )
        eng.track(
            ws,
            "Product Clicked",
            user_id="u8",
            properties={"product_id": "x", "recommendation_id": "r_not_a_real_list"},
        )
        # Outcomes are recorded just after each event's commit (the ingest does not wait).
        deadline = time.monotonic() + 2
        while True:
            (entry,) = eng.recs.report(ws, slot="attrib")["slots"]
            if entry["orders"] == 2 and entry["clicks"] or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert entry["slot"] == "attrib" and entry["served"] == 3
        assert entry["clicks"] == 1 and entry["ctr"] == pytest.approx(1 / 3, abs=1e-5)
        assert entry["orders"] == 2 and entry["conversionRate"] == pytest.approx(2 / 3, abs=1e-5)
        assert entry["revenue"] == pytest.approx(52.0)
        (group,) = entry["byModels"]
        assert group["models"] == first["models"] == third["models"]
        later = eng.recs.report(ws, slot="attrib", since=int(time.time() * 1000) + 60_000)
        assert later["slots"] == []
    finally:
        with_slots(shop, {})


def test_erasure_removes_served_lists_and_outcomes(shop: Shop) -> None:
    eng, ws = shop.engine, shop.ws
    eng.track(ws, "Product Viewed", user_id="forget-me", properties={"product_id": "g2-i2"})
    out = recs(shop, user="forget-me")
    recs(shop, user="forget-me", slot="email")
    eng.track(
        ws,
        "Product Clicked",
        user_id="forget-me",
        properties={
            "product_id": out["items"][0]["id"],
            "recommendation_id": out["recommendationId"],
        },
    )
    pid = eng.profile(ws, "forget-me")["profileId"]

    def counts() -> tuple[int, int]:
        with eng.db.connect() as conn:
            lists = conn.execute(
                select(func.count()).where(
                    recommendations.c.workspace_id == ws.id, recommendations.c.profile_id == pid
                )
            ).scalar_one()
            outcomes = conn.execute(
                select(func.count()).where(
                    recommendation_outcomes.c.workspace_id == ws.id,
                    recommendation_outcomes.c.recommendation_id == out["recommendationId"],
                )
            ).scalar_one()
        return int(lists), int(outcomes)

    deadline = time.monotonic() + 2
    while counts() != (2, 1) and time.monotonic() < deadline:
        eng.recs.flush()
        time.sleep(0.02)
    assert counts() == (2, 1)
    erased = eng.erase_user(ws, "forget-me")
    assert erased["recommendations"] == 3
    assert counts() == (0, 0)


# -- errors, settings, hot swap, cache, ANN -------------------------------------------------


def test_unknown_slot_item_and_bad_arguments(shop: Shop) -> None:
    with pytest.raises(UnknownSlot, match="known slots: cart, email, home, product"):
        recs(shop, user="u1", slot="sidebar")
    with pytest.raises(UnknownItem, match="no-such-item"):
        recs(shop, slot="product", item="no-such-item")
    with pytest.raises(Exception, match="item: is required"):
        recs(shop, slot="product")
    with pytest.raises(Exception, match="k: must be"):
        recs(shop, user="u1", k=0)
    # A catalog item no model knows yet: popular items of its category.
    shop.engine.catalog.upsert(
        shop.ws.id, [{"id": "brand-new", "title": "New", "category": "Cat2 > Sub5"}]
    )
    fresh = recs(shop, slot="product", item="brand-new")
    assert fresh["strategy"] == "category" and fresh["reason"] == "no_history"
    assert all(i["category"] == "Cat2 > Sub5" for i in fresh["items"])
    assert fresh["items"][0]["reason"] == "popular in Cat2 > Sub5"


def test_workspace_slot_settings(shop: Shop) -> None:
    with_slots(shop, {"home": {"models": {"itemknn": 1}}})
    try:
        assert set(recs(shop, user="u1", k=5)["models"]) == {"itemknn"}
        assert "home" in shop.engine.recs.slots(shop.ws)
    finally:
        with_slots(shop, {})
    assert set(recs(shop, user="u1", k=5)["models"]) == {"als", "content", "ease", "itemknn"}
    with pytest.raises(ValueError, match="recommendations.slots.home.models"):
        shop.engine.update_workspace_settings(
            shop.ws, {"recommendations": {"slots": {"home": {"models": {"als": -1}}}}}
        )
    with pytest.raises(ValueError, match="a new slot needs `kind`"):
        shop.engine.update_workspace_settings(
            shop.ws, {"recommendations": {"slots": {"side": {"models": {"als": 1}}}}}
        )


def test_a_retrained_model_is_served_without_a_restart(shop: Shop) -> None:
    before = recs(shop, user="u2")["models"]["itemknn"]
    shop.engine.train(shop.ws, ["itemknn"])
    # The new version is aligned in the background while the old one keeps serving.
    deadline = time.monotonic() + 10
    served = [recs(shop, user="u2")["models"]["itemknn"]]
    while served[-1] == before and time.monotonic() < deadline:
        time.sleep(0.02)
        served.append(recs(shop, user="u2")["models"]["itemknn"])
    assert served[-1] == before + 1 and set(served) <= {before, before + 1}


def test_cache_is_keyed_by_history_and_dropped_on_profile_change(shop: Shop) -> None:
    eng, ws = shop.engine, shop.ws
    eng.track(ws, "Product Viewed", user_id="cached-1", properties={"product_id": "g1-i1"})
    first = recs(shop, user="cached-1")
    hits = eng.recs.cache_hits
    second = recs(shop, user="cached-1")
    assert eng.recs.cache_hits == hits + 1
    assert ids(second) == ids(first) and second["recommendationId"] != first["recommendationId"]
    # A new event is a new list, whatever the cache holds.
    eng.track(ws, "Product Viewed", user_id="cached-1", properties={"product_id": "g5-i1"})
    third = recs(shop, user="cached-1")
    assert eng.recs.cache_hits == hits + 1 and "g5-i1" not in ids(third)
    pid = eng.profile(ws, "cached-1")["profileId"]  # a fold: its listener drops the lists
    recs(shop, user="cached-1")
    assert eng.recs.cache_hits == hits + 1
    recs(shop, user="cached-1")
    assert eng.recs.cache_hits == hits + 2
    eng.recs.on_profile_change(ProfileChange(ws.id, pid, 0, 0, "profile.refreshed"))
    recs(shop, user="cached-1")
    assert eng.recs.cache_hits == hits + 2


def test_a_cached_list_lives_until_a_seen_item_leaves_its_window(shop: Shop) -> None:
    """A slot that leaves out items seen in the last N days caches a list only until the
    first of them ages out: then the list may change."""
    eng = shop.engine
    with_slots(
        shop,
        {"fresh": {"kind": "personal", "models": {"itemknn": 1}, "exclude_seen_days": 1}},
    )
    try:
        ws = shop.ws
        day = 86_400_000
        now = int(time.time() * 1000)
        eng.track(
            ws,
            "Product Viewed",
            user_id="window-1",
            properties={"product_id": "g2-i1"},
            timestamp=now - day + 1500,
        )
        eng.track(
            ws,
            "Product Viewed",
            user_id="window-1",
            properties={"product_id": "g2-i2"},
            timestamp=now - 3 * day,  # outside the window: no bound on the cache
        )
        first = recs(shop, user="window-1", slot="fresh", k=25)
        assert "g2-i1" not in ids(first) and first["strategy"] == "personal"
        hits = eng.recs.cache_hits
        recs(shop, user="window-1", slot="fresh", k=25)
        assert eng.recs.cache_hits == hits + 1
        time.sleep(1.6)  # g2-i1 is now more than a day old
        again = recs(shop, user="window-1", slot="fresh", k=25)
        assert eng.recs.cache_hits == hits + 1  # computed anew
        assert "g2-i1" in ids(again)  # a neighbour of g2-i2, no longer left out
    finally:
        with_slots(shop, {})


def test_ann_candidates_agree_with_the_exact_ones(shop: Shop) -> None:
    eng = shop.engine
    exact = {u: ids(recs(shop, user=u)) for u in SAMPLE[:6]}
    exact_similar = ids(recs(shop, slot="product", item="g3-i3"))
    eng.settings.rec_ann_threshold = 0
    eng.settings.rec_cache_seconds = 0  # every call through the pipeline
    try:
        deadline = time.monotonic() + 20
        while eng.recs.ann.ready() < 2 and time.monotonic() < deadline:
            recs(shop, user="u1")
            recs(shop, slot="product", item="g3-i3")
            time.sleep(0.05)
        assert eng.recs.ann.ready() >= 2
        for user, expected in exact.items():
            assert len(set(ids(recs(shop, user=user))) & set(expected)) >= 8
        assert len(set(ids(recs(shop, slot="product", item="g3-i3"))) & set(exact_similar)) >= 8
    finally:
        eng.settings.rec_ann_threshold = 50_000
        eng.settings.rec_cache_seconds = 300


# -- the history read at serving time ------------------------------------------------------


def test_serving_history_follows_the_training_rules(engine: Engine) -> None:
    ws = engine.create_workspace("h").workspace
    now = int(time.time() * 1000)
    events: list[dict[str, Any]] = [
        {"event": "Product Viewed", "properties": {"product_id": "a"}, "timestamp": now - 5000},
        {"event": "Product Viewed", "properties": {"sku": "b"}, "timestamp": now - 4000},
        {"event": "Product Added", "properties": {"product_id": "a"}, "timestamp": now - 3000},
        {
            "event": "Product Reviewed",
            "properties": {"product_id": "b", "rating": 4},
            "timestamp": now - 2000,
        },
        {
            "event": "Order Completed",
            "properties": {"products": [{"product_id": "c"}, {"product_id": "a"}]},
            "timestamp": now - 86_400_000 * 40,
        },
        {"event": "Product Added", "properties": {"product_id": "d"}, "timestamp": now - 1000},
        {"event": "Page Viewed", "properties": {"product_id": "z"}, "timestamp": now - 500},
    ]
    engine.batch(ws, {"batch": [{"type": "track", "userId": "h1", **e} for e in events]})
    pid = engine.profile(ws, "h1")["profileId"]
    s = engine.settings
    mine = engine.recs._history(ws.id, pid, now=now)
    theirs = user_history(
        engine.db, ws.id, pid, s.rec_event_weights, s.rec_half_life_days, 100, now_ms=now
    )
    assert len(theirs) == 4
    assert mine.items == [t[0] for t in theirs] and mine.at == [t[2] for t in theirs]
    assert mine.weights == pytest.approx([t[1] for t in theirs], rel=1e-12)
    assert mine.purchased == {"a", "c"}
    assert mine.cart == ["d", "a"]  # added after the (older) order, newest first


# -- pure parts -------------------------------------------------------------------------------


def test_boost_parsing() -> None:
    assert Boost.parse("brand:Acme:1.5") == Boost("brand", "Acme", 1.5)
    assert Boost.parse("attributes.size:10:30:2") == Boost("attributes.size", "10:30", 2.0)
    for bad, message in [
        ("brand:Acme", "factor"),
        ("colour:red:2", "field must be"),
        ("brand:Acme:-1", "above 0"),
        ("brand:Acme:x", "not a number"),
        ("brand:Acme:1000", "at most 100"),
        ("brand::2", "expected"),
    ]:
        with pytest.raises(ValueError, match=message):
            Boost.parse(bad)


def test_category_paths_match_whole_levels() -> None:
    assert category_key(" Home>Kitchen / Mugs ") == "home > kitchen > mugs"
    assert under("home > kitchen > mugs", "home > kitchen")
    assert under("home > kitchen", "home > kitchen")
    assert not under("home > kitchenware", "home > kitchen")
    assert not under(None, "home")


def test_allowed_rows_and_boost_factors() -> None:
    docs = {
        "a": {
            "id": "a",
            "category": "A > B",
            "brand": "X",
            "price": 5.0,
            "inStock": True,
            "tags": ["sale"],
            "attributes": {"color": "Red"},
        },
        "b": {"id": "b", "category": "A > C", "brand": "Y", "price": 15.0, "inStock": False},
        "c": {
            "id": "c",
            "category": "D",
            "brand": "x",
            "price": None,
            "inStock": True,
            "attributes": {"color": ["blue", "red"]},
        },
    }
    view = CatalogView.build(["a", "b", "c", "gone"], docs)
    assert allowed_rows(view, Filters()).tolist() == [True, False, True, False]
    assert allowed_rows(view, Filters(), require_catalog=False).tolist() == [
        True,
        False,
        True,
        True,
    ]
    assert allowed_rows(view, Filters(in_stock_only=False)).tolist() == [True, True, True, False]
    assert allowed_rows(view, Filters(exclude=("a", "zz"))).tolist() == [False, False, True, False]
    assert allowed_rows(view, Filters(categories=("a",), in_stock_only=False)).tolist() == [
        True,
        True,
        False,
        False,
    ]
    assert allowed_rows(view, Filters(exclude_categories=("A > B",))).tolist() == [
        False,
        False,
        True,
        False,
    ]
    assert allowed_rows(view, Filters(min_price=1, max_price=10)).tolist() == [
        True,
        False,
        False,
        False,
    ]  # an unknown price never passes a price filter
    assert allowed_rows(view, Filters(), [2]).tolist() == [True, False, False, False]
    rows = np.arange(4)
    assert boost_factors(view, [Boost("brand", "X", 2.0)], rows).tolist() == [2, 1, 2, 1]
    assert boost_factors(
        view, [Boost("attributes.color", "red", 3.0), Boost("tag", "SALE", 2.0)], rows
    ).tolist() == [6, 1, 3, 1]
    view.patch({0: {"id": "a", "inStock": False}, 3: {"id": "gone", "category": "A"}})
    assert allowed_rows(view, Filters()).tolist() == [False, False, True, True]
    assert boost_factors(view, [Boost("brand", "X", 2.0)], rows).tolist() == [1, 1, 2, 1]


def test_mmr() -> None:
    levels, depth = level_table(["a > x", "a > y", "b", "a > x > z"])
    assert depth.tolist() == [2, 2, 1, 3, 0]
    scores = np.array([1.0, 0.9, 0.8, 0.5, 0.4, 0.3])
    codes = np.array([0, 0, 0, 1, 2, 3])
    assert mmr(scores, codes, levels, depth, 3, 1.0).tolist() == [0, 1, 2]
    # "a > y" shares half of "a > x"; "b" nothing: it comes second.
    assert mmr(scores, codes, levels, depth, 3, 0.3).tolist() == [0, 4, 3]
    # "a > x > z" is 2/3 like "a > x": kept below "a > y" (1/2) at a low lambda.
    assert mmr(np.array([1.0, 0.9, 0.9]), np.array([0, 3, 1]), levels, depth, 3, 0.2).tolist() == [
        0,
        2,
        1,
    ]
    none = np.array([-1, -1, -1, -1, -1, -1])
    assert mmr(scores, none, levels, depth, 2, 0.3).tolist() == [0, 1]  # no category: no penalty
    assert path_similarity("a > x", "a > y") == 0.5 and path_similarity("a", None) == 0.0


def test_slot_settings_validation() -> None:
    assert validate_settings({"slots": {"home": {"mmr_lambda": 0.5}}})
    for bad, message in [
        ([], "must be an object"),
        ({"other": 1}, "unknown keys"),
        ({"slots": {"Home!": {}}}, "slot name"),
        ({"slots": {"home": {"mmr_lambda": 2}}}, "mmr_lambda"),
        ({"slots": {"home": {"fallback": ["magic"]}}}, "unknown fallback"),
        ({"slots": {"home": {"models": {}}}}, "at least one model"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate_settings(bad)
    assert payload_overrides({"hero": "x", "models": {"als": 1}, "kind": "cart"}) == {
        "models": {"als": 1}
    }
    assert payload_overrides({"recommendations": {"mmr_lambda": 1}, "models": 3}) == {
        "mmr_lambda": 1
    }
    assert set(DEFAULT_SLOTS) == {"home", "product", "cart", "email"}


def test_outcomes_read_from_events() -> None:
    got = attribution.outcome_of(
        "m1", "Product Clicked", {"product_id": 12, "recommendationId": "r_1"}, 5
    )
    assert got == attribution.Outcome("m1", "r_1", "Product Clicked", "12", None, 5)
    order = attribution.outcome_of(
        "m2",
        "Order Completed",
        {"recommendation_id": "r_2", "products": [{"product_id": "a", "price": 2, "quantity": 3}]},
        6,
    )
    assert order is not None and order.revenue == 6.0 and order.item_id == "a"
    line = attribution.outcome_of(
        "m3",
        "Order Completed",
        {
            "total": 99,
            "products": [
                {"product_id": "a", "price": 2},
                {"product_id": "b", "price": 4, "recommendation_id": "r_3"},
            ],
        },
        7,
    )
    assert line is not None and (line.recommendation_id, line.item_id, line.revenue) == (
        "r_3",
        "b",
        4.0,
    )
    assert attribution.outcome_of("m4", "Product Clicked", {"product_id": "a"}, 1) is None
    assert (
        attribution.outcome_of("m5", "Product Clicked", {"recommendation_id": "x" * 41}, 1) is None
    )


def test_serving_shortcuts_equal_the_models_own_scores(shop: Shop) -> None:
    """The serving fast paths (ALS and content history scores, sums of similar items) give
    the models' own numbers."""
    service = shop.engine.recs
    loaded = shop.engine.models.active(shop.ws.id)
    rows = np.array([3, 17, 17, 40])
    weights = np.array([1.0, 0.5, 2.0, 3.0])
    for slot in ("als", "itemknn", "ease", "content"):
        model = loaded[slot].model
        assert service._history_scores(model, rows, weights) == pytest.approx(
            np.asarray(model.score_history(rows, weights), dtype=np.float64), rel=1e-4, abs=1e-6
        ), slot
        expected = np.asarray(model.similar_scores(rows[:3]), dtype=np.float64).sum(axis=0)
        assert service._similar_sum(model, rows[:3]) == pytest.approx(expected, abs=1e-5), slot


# -- the fast paths hold the exact answers ----------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([0.0, 0.0, 0.1, 0.5, 0.5, 1.0, 2.0, 3.5]), min_size=0, max_size=900
    ),
    count=st.integers(min_value=1, max_value=60),
)
def test_best_rows_are_the_largest_positive_values(values: list[float], count: int) -> None:
    scores = np.asarray(values)
    got = _best_rows(scores, count)
    positive = int((scores > 0).sum())
    assert len(got) == min(count, positive) and len(set(got.tolist())) == len(got)
    assert (scores[got] > 0).all()
    if len(got):
        # Every row left out is no better than the worst one taken (ties at the cut may go
        # either way).
        left = np.setdiff1d(np.flatnonzero(scores > 0), got)
        assert not len(left) or scores[left].max() <= scores[got].min()


def _mmr_reference(scores: np.ndarray, paths: list[str | None], k: int, lam: float) -> list[int]:
    """MMR written out from its definition, one candidate at a time."""
    n = len(scores)
    lo, hi = scores.min(), scores.max()
    rel = (scores - lo) / (hi - lo) if hi > lo else np.ones(n)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    picked: list[int] = []
    while len(picked) < min(k, n):
        best, best_value = -1, -np.inf
        for i in order:
            if i in picked:
                continue
            penalty = max((path_similarity(paths[i], paths[p]) for p in picked), default=0.0)
            value = lam * rel[i] - (1 - lam) * penalty
            if value > best_value:
                best, best_value = i, value
        picked.append(best)
    return picked


@settings(max_examples=100, deadline=None)
@given(
    scores=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    seed=st.integers(0, 10_000),
    k=st.integers(1, 12),
    lam=st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9]),
)
def test_mmr_follows_its_definition_with_and_without_a_table(
    scores: list[int], seed: int, k: int, lam: float
) -> None:
    cats = ["a > x", "a > y", "b", "a > x > z", "c > d"]
    levels, depth = level_table(cats)
    table = similarity_matrix(levels, depth)
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, len(cats), len(scores))
    values = np.asarray(scores, dtype=np.float64) / 2
    paths = [cats[c] if c >= 0 else None for c in codes]
    expected = _mmr_reference(values, paths, k, lam)
    assert mmr(values, codes, levels, depth, k, lam).tolist() == expected
    assert mmr(values, codes, levels, depth, k, lam, table).tolist() == expected


def test_served_ids_are_distinct_and_shaped_like_uuids() -> None:
    ids = _RecommendationIds()
    drawn = [ids.next() for _ in range(3 * _RecommendationIds.BATCH)]
    assert len(set(drawn)) == len(drawn)
    assert all(len(i) == 34 and i.startswith("r_") and int(i[2:], 16) >= 0 for i in drawn)


def test_reads_beyond_the_kept_connections_use_the_pool(shop: Shop) -> None:
    eng, ws = shop.engine, shop.ws
    lookups = eng.recs.lookups
    eng.track(ws, "Product Viewed", user_id="threads-1", properties={"product_id": "g3-i1"})
    results: list[list[str]] = []

    def ask() -> None:
        results.append(ids(eng.recs.recommend(ws, user="threads-1", k=5)))

    threads = [threading.Thread(target=ask) for _ in range(MAX_HELD + 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == MAX_HELD + 4 and all(r == results[0] for r in results)
    assert len(lookups._held) <= MAX_HELD
    # A kept connection sees the next commit at once (no snapshot held between requests).
    eng.track(ws, "Product Viewed", user_id="threads-1", properties={"product_id": "g5-i2"})
    assert "g5-i2" not in ids(eng.recs.recommend(ws, user="threads-1", k=5))
    assert [group_of(i) for i in ids(eng.recs.recommend(ws, user="threads-1"))].count(5) >= 3


def test_explanations_through_a_model_on_another_vocabulary(shop: Shop) -> None:
    """A model retrained alone on a newer item set is mapped onto the others: its lists and
    their reasons still name the right items."""
    other = build_shop(shop.engine, "vocab")
    eng, ws = other.engine, other.ws
    eng.catalog.upsert(ws.id, [{"id": "g1-new", "title": "New gizmo", "category": "Cat1 > Sub1"}])
    eng.track(ws, "Product Viewed", user_id="u1", properties={"product_id": "g1-new"})
    eng.train(ws, ["itemknn"])  # the largest vocabulary: the others are mapped onto it
    with_slots(other, {"linear": {"kind": "personal", "models": {"ease": 1}}})
    ws = other.ws
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        eng.recs.recommend(ws, user="u1", slot="linear")
        space = eng.recs._space(ws.id)
        if space is not None and space.models["ease"].from_space is not None:
            break
        time.sleep(0.05)
    model = space.models["ease"]
    assert model.from_space is not None and model.to_space is not None
    assert (model.from_space[model.to_space] == np.arange(len(model.to_space))).all()
    out = recs(other, user="u1", slot="linear")
    assert out["strategy"] == "personal" and all(group_of(i) == 1 for i in ids(out))
    viewed = viewed_by("u1")
    assert all(i["reasonItem"] in viewed for i in out["items"]), out["items"]
    assert all(i["reason"].startswith("because you") for i in out["items"])
