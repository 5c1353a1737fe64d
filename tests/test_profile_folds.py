"""The profile fold, pure: order independence, mergeability, and ``view()`` against a naive
reference computed straight from the raw events.

Hypothesis (derandomized, no example database) draws event streams mixing Segment
e-commerce tracks (with products), pages and identifies carrying ``$set``, ``$set_once``
and ``$unset``, at timestamps chosen so session gaps around 30 minutes come up often.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sartor.profiles import folds
from sartor.profiles.folds import ADD, CHECKOUT, ORDER, REFUND, VIEW, ProfileConfig

CONFIG = ProfileConfig()
SMALL = ProfileConfig(recent_items=5)  # the recent-items bound comes into play
configs = st.sampled_from([CONFIG, SMALL])
T0 = 1_700_000_000_000
MINUTE = 60_000
GAP = CONFIG.session_gap_ms  # the same in SMALL

PURE = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- comparing with a float tolerance ----------------------------------------------------------


def close(a: Any, b: Any, rel: float = 1e-9, abs_: float = 1e-9, path: str = "$") -> None:
    """Recursive equality where floats may differ in their last bits (sums in another
    order); raises AssertionError naming the first differing path."""
    if isinstance(a, bool) or isinstance(b, bool):
        assert a == b, f"{path}: {a!r} != {b!r}"
    elif isinstance(a, int | float) and isinstance(b, int | float):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=abs_), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))} differ"
        for k in a:
            close(a[k], b[k], rel, abs_, f"{path}.{k}")
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, rel, abs_, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# -- strategies ------------------------------------------------------------------------------

timestamps = st.one_of(
    # Minutes plus milliseconds over ten hours: gaps either side of 30 minutes are common.
    st.builds(lambda m, ms: T0 + m * MINUTE + ms, st.integers(0, 600), st.integers(0, 59_999)),
    # Exact quarter hours: gaps of exactly 30 minutes (the boundary: a new session).
    st.builds(lambda q: T0 + q * 15 * MINUTE, st.integers(0, 40)),
)
prices = st.one_of(
    st.floats(0.5, 500, allow_nan=False).map(lambda p: round(p, 2)),
    st.integers(1, 300),
)


@st.composite
def products(draw: st.DrawFn) -> dict[str, Any]:
    p: dict[str, Any] = {"product_id": draw(st.sampled_from([f"sku-{i}" for i in range(8)]))}
    for key, values in (("category", ["shoes", "hats", "bags"]), ("brand", ["acme", "zeta"])):
        if draw(st.booleans()):
            p[key] = draw(st.sampled_from(values))
    if draw(st.integers(0, 4)):
        p["price"] = draw(prices)
    if draw(st.booleans()):
        p["quantity"] = draw(st.integers(1, 5))
    return p


trait_keys = st.sampled_from(["plan", "country", "age", "name"])
trait_values = st.one_of(st.sampled_from(["free", "pro", "FR", "DE"]), st.integers(0, 99))


@st.composite
def identify_traits(draw: st.DrawFn) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    for key in draw(st.lists(trait_keys, max_size=2, unique=True)):
        traits[key] = draw(trait_values)
    for op in ("$set", "$set_once"):
        if draw(st.booleans()):
            traits[op] = draw(st.dictionaries(trait_keys, trait_values, max_size=2))
    if draw(st.integers(0, 3)) == 0:
        unset = draw(st.lists(trait_keys, min_size=1, max_size=2, unique=True))
        traits["$unset"] = unset if len(unset) > 1 or draw(st.booleans()) else unset[0]
    return traits


@st.composite
def raw_event(draw: st.DrawFn) -> dict[str, Any]:
    """An event row without its ids (``message_id``/``seq`` are given by position)."""
    kind = draw(st.sampled_from(["track"] * 6 + ["page", "identify"]))
    ts = draw(timestamps)
    if kind == "page":
        return {
            "type": "page",
            "event": draw(st.sampled_from([None, "Home", "Cart"])),
            "timestamp": ts,
            "payload": {},
        }
    if kind == "identify":
        return {
            "type": "identify",
            "event": None,
            "timestamp": ts,
            "payload": {"traits": draw(identify_traits())},
        }
    name = draw(st.sampled_from([VIEW, ADD, CHECKOUT, ORDER, REFUND, "Products Searched"]))
    props: dict[str, Any] = {}
    if name in (VIEW, ADD) and draw(st.integers(0, 3)):
        props = draw(products())  # Segment's single-product shape: fields at the top
    elif name != "Products Searched":
        props["products"] = draw(st.lists(products(), max_size=3))
    if name in (ORDER, REFUND) and draw(st.booleans()):
        props[draw(st.sampled_from(["revenue", "total", "value"]))] = draw(prices)
    return {"type": "track", "event": name, "timestamp": ts, "payload": {"properties": props}}


@st.composite
def streams(draw: st.DrawFn, max_size: int = 40) -> list[dict[str, Any]]:
    raws = draw(st.lists(raw_event(), max_size=max_size))
    return [{**r, "seq": i + 1, "message_id": f"m{i:04d}"} for i, r in enumerate(raws)]


def fold_all(evs: list[dict[str, Any]], config: ProfileConfig = CONFIG) -> folds.Doc:
    doc = folds.empty()
    for e in evs:
        doc = folds.fold(doc, e, config)
    return doc


# -- (a) order independence, (b) mergeability --------------------------------------------------


@PURE
@given(streams(), st.randoms(use_true_random=False), configs)
def test_any_permutation_folds_to_the_same_profile(
    evs: list[dict[str, Any]], rnd: Any, cfg: ProfileConfig
) -> None:
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    close(fold_all(shuffled, cfg), fold_all(evs, cfg))
    close(fold_all(list(reversed(evs)), cfg), fold_all(evs, cfg))


@PURE
@given(streams(), st.data(), configs)
def test_merge_of_two_folds_equals_the_fold_of_all(
    evs: list[dict[str, Any]], data: Any, cfg: ProfileConfig
) -> None:
    split = data.draw(st.integers(0, len(evs)))
    # Any split, not only a prefix: each event goes to one side.
    sides = data.draw(st.lists(st.booleans(), min_size=len(evs), max_size=len(evs)))
    left = [e for e, s in zip(evs, sides, strict=True) if s]
    right = [e for e, s in zip(evs, sides, strict=True) if not s]
    whole = fold_all(evs, cfg)
    close(folds.merge(fold_all(left, cfg), fold_all(right, cfg), cfg), whole)
    close(folds.merge(fold_all(evs[:split], cfg), fold_all(evs[split:], cfg), cfg), whole)
    close(folds.merge(fold_all(right, cfg), fold_all(left, cfg), cfg), whole)
    close(folds.merge(folds.empty(), whole, cfg), whole)
    close(folds.merge(whole, folds.empty(), cfg), whole)


@settings(PURE, max_examples=60)
@given(streams(max_size=25), streams(max_size=25), streams(max_size=25))
def test_merge_is_associative(a: list[Any], b: list[Any], c: list[Any]) -> None:
    # Distinct message ids per part, so the parts are three people's events.
    b = [{**e, "message_id": "b" + e["message_id"]} for e in b]
    c = [{**e, "message_id": "c" + e["message_id"]} for e in c]
    fa, fb, fc = fold_all(a), fold_all(b), fold_all(c)
    close(
        folds.merge(folds.merge(fa, fb, CONFIG), fc, CONFIG),
        folds.merge(fa, folds.merge(fb, fc, CONFIG), CONFIG),
    )
    close(folds.merge(folds.merge(fa, fb, CONFIG), fc, CONFIG), fold_all(a + b + c))


# -- (c) view() against a naive reference ------------------------------------------------------


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _products_of(e: dict[str, Any]) -> list[dict[str, Any]]:
    props = e["payload"].get("properties") or {}
    if e["event"] in (VIEW, ADD) and props.get("product_id") is not None:
        return [props]
    return list(props.get("products") or [])


def _value(e: dict[str, Any]) -> float:
    props = e["payload"].get("properties") or {}
    for key in ("revenue", "total", "value"):
        if _num(props.get(key)) is not None:
            return float(props[key])
    return sum(
        float(p["price"]) * float(p.get("quantity", 1))
        for p in _products_of(e)
        if _num(p.get("price")) is not None
    )


def reference(evs: list[dict[str, Any]], now: int, config: ProfileConfig) -> dict[str, Any]:
    """What the profile should say, computed the obvious (non-incremental) way."""
    tracks = [e for e in evs if e["type"] == "track"]
    named = lambda n: [e for e in tracks if e["event"] == n]  # noqa: E731
    orders, refunds = named(ORDER), named(REFUND)
    revenue = sum(_value(e) for e in orders)
    refunded = sum(abs(_value(e)) for e in refunds)

    times = sorted(e["timestamp"] for e in evs if e["type"] in ("track", "page", "screen"))
    sessions: list[list[int]] = []
    for t in times:
        if sessions and t - sessions[-1][-1] < GAP:
            sessions[-1].append(t)
        else:
            sessions.append([t])

    actions = {VIEW: ("viewed", 1.0), ADD: ("added", 3.0), ORDER: ("bought", 5.0)}
    items: list[tuple[int, str, str, str]] = []
    all_prices: list[float] = []
    scores: dict[str, dict[str, float]] = {"category": {}, "brand": {}}
    for e in tracks:
        if e["event"] not in actions:
            continue
        action, weight = actions[e["event"]]
        for i, p in enumerate(_products_of(e)):
            items.append((e["timestamp"], f"{e['message_id']}#{i}", str(p["product_id"]), action))
            if _num(p.get("price")) is not None and p["price"] > 0:
                all_prices.append(float(p["price"]))
            for field in ("category", "brand"):
                if p.get(field):
                    decay = 2.0 ** ((e["timestamp"] - T0) / config.half_life_ms)
                    table = scores[field]
                    table[p[field]] = table.get(p[field], 0.0) + weight * decay
    items.sort(reverse=True)
    adds = [e["timestamp"] for e in named(ADD)]
    last_add = max(adds) if adds else None
    last_order = max((e["timestamp"] for e in orders), default=None)

    def shares(table: dict[str, float]) -> dict[str, float]:
        total = sum(table.values())
        return {k: v / total for k, v in table.items()}

    return {
        "events": len(evs),
        "counts": dict(Counter(e["event"] if e["type"] == "track" else e["type"] for e in evs)),
        "first_seen": min((e["timestamp"] for e in evs), default=None),
        "last_seen": max((e["timestamp"] for e in evs), default=None),
        "sessions": len(sessions),
        "avg_session_depth": len(times) / len(sessions) if sessions else 0,
        "product_views": len(named(VIEW)),
        "cart_adds": len(adds),
        "checkouts": len(named(CHECKOUT)),
        "orders": len(orders),
        "refunds": len(refunds),
        "revenue": revenue,
        "monetary": revenue - refunded,
        "average_order_value": revenue / len(orders) if orders else None,
        "last_order_at": last_order,
        "first_order_at": min((e["timestamp"] for e in orders), default=None),
        "recent_items": [(pid, action, at) for at, _, pid, action in items[: config.recent_items]],
        "price_median": statistics.median_low(all_prices) if all_prices else None,
        "category_affinity": shares(scores["category"]),
        "brand_affinity": shares(scores["brand"]),
        "abandoned_cart": last_add is not None
        and (last_order is None or last_order < last_add)
        and now - last_add >= config.abandoned_cart_ms,
        "recency_days": (now - last_order) / 86_400_000 if last_order is not None else None,
    }


def _approx(a: float | None, b: float | None, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= tol


@PURE
@given(streams(max_size=60), st.integers(0, 3 * 86_400_000), configs)
def test_view_matches_a_naive_reference(
    evs: list[dict[str, Any]], later: int, cfg: ProfileConfig
) -> None:
    now = T0 + 600 * MINUTE + later
    got = folds.view(fold_all(evs, cfg), now, cfg)
    ref = reference(evs, now, cfg)
    for key in (
        "events",
        "counts",
        "first_seen",
        "last_seen",
        "sessions",
        "product_views",
        "cart_adds",
        "checkouts",
        "orders",
        "refunds",
        "last_order_at",
    ):
        assert got[key] == ref[key], (key, got[key], ref[key])
    assert got["rfm"]["frequency"] == ref["orders"]
    assert got["rfm"]["first_order_at"] == ref["first_order_at"]
    assert _approx(got["avg_session_depth"], ref["avg_session_depth"], 0.0005 + 1e-9)
    assert _approx(got["revenue"], ref["revenue"], 0.005 + 1e-6), (got["revenue"], ref["revenue"])
    assert _approx(got["rfm"]["monetary"], ref["monetary"], 0.005 + 1e-6)
    if ref["average_order_value"] is None:
        assert got["average_order_value"] is None
    else:
        assert _approx(got["average_order_value"], ref["average_order_value"], 0.005 + 1e-6)
    assert [(i["product_id"], i["action"], i["at"]) for i in got["recent_items"]] == ref[
        "recent_items"
    ]
    if ref["price_median"] is None:
        assert got["price_median"] is None
    else:  # the centre of the median's 5% bin (rounded to cents)
        m = ref["price_median"]
        assert abs(got["price_median"] - m) <= 0.05 * m + 0.005, (got["price_median"], m)
    for key in ("category_affinity", "brand_affinity"):
        assert set(got[key]) == set(ref[key]), key
        for k, share in ref[key].items():
            assert abs(got[key][k] - share) <= 1e-6, (key, k, got[key][k], share)
        assert list(got[key].values()) == sorted(got[key].values(), reverse=True)
    assert got["intent"]["abandoned_cart"] == ref["abandoned_cart"]
    assert _approx(got["rfm"]["recency_days"], ref["recency_days"], 0.0005 + 1e-9)


def test_an_empty_profile_views_as_nothing() -> None:
    got = folds.view(folds.empty(), T0, CONFIG)
    assert got["events"] == 0 and got["sessions"] == 0 and got["recent_items"] == []
    assert got["price_median"] is None and got["average_order_value"] is None
    assert got["category_affinity"] == {} and not got["intent"]["abandoned_cart"]


@PURE
@given(streams(max_size=60), st.integers(0, 3 * 86_400_000), configs, st.data())
def test_the_lazy_view_reads_as_the_view(
    evs: list[dict[str, Any]], later: int, cfg: ProfileConfig, data: Any
) -> None:
    doc = fold_all(evs, cfg)
    now = T0 + 600 * MINUTE + later
    full = folds.view(doc, now, cfg)
    lazy = folds.LazyView(doc, now, cfg)
    # One field read on its own (what a segment rule does), then all of them, in order.
    key = data.draw(st.sampled_from(sorted(full)))
    assert key in lazy and lazy[key] == full[key]
    assert "no_such_field" not in lazy
    assert list(lazy) == list(full) and len(lazy) == len(full)
    assert dict(lazy) == full and lazy == full


def _recent_reference(
    a: list[dict[str, Any]], b: list[dict[str, Any]], limit: int
) -> list[dict[str, Any]]:
    """Recent items merged the obvious way: every item, first of a key kept, newest first."""
    seen: dict[tuple[int, str, str], dict[str, Any]] = {}
    for item in a + b:
        seen.setdefault((item["at"], item["mid"], item["product_id"]), item)
    return [seen[k] for k in sorted(seen, reverse=True)][:limit]


recent_items = st.builds(
    lambda pid, at, mid, action: {"product_id": pid, "action": action, "at": at, "mid": mid},
    st.sampled_from(["sku-1", "sku-2", "sku-3"]),
    st.integers(0, 5),  # few values: equal times, and equal keys, are common
    st.sampled_from(["m1#0", "m1#1", "m2#0", "m10#0"]),
    st.sampled_from(["viewed", "bought"]),
)


@PURE
@given(st.lists(recent_items, max_size=12), st.lists(recent_items, max_size=12), configs)
def test_recent_items_merge_as_a_full_sort_would(
    kept: list[dict[str, Any]], new: list[dict[str, Any]], cfg: ProfileConfig
) -> None:
    limit = cfg.recent_items
    a = _recent_reference(kept, [], limit)  # a profile's list: newest first, keys unique
    got = folds._merge_recent(a, new, limit)
    want = _recent_reference(a, new, limit)
    assert got == want
    # The same items, not equal copies: for a key in both, the kept item wins.
    assert all(x is y for x, y in zip(got, want, strict=True))


def test_sessions_split_at_exactly_the_gap() -> None:
    evs = [
        {
            "seq": i,
            "message_id": f"m{i}",
            "type": "page",
            "event": None,
            "timestamp": t,
            "payload": {},
        }
        for i, t in enumerate([T0, T0 + GAP - 1, T0 + 2 * GAP - 2, T0 + 3 * GAP - 2])
    ]
    # Gaps of GAP-1, GAP-1, then exactly GAP: the last event starts a second session.
    assert folds.view(fold_all(evs), T0, CONFIG)["sessions"] == 2
    # Folding the middle event last bridges two sessions into one.
    assert folds.view(fold_all([evs[0], evs[2], evs[3], evs[1]]), T0, CONFIG)["sessions"] == 2
    assert folds.view(fold_all([evs[0], evs[2]]), T0, CONFIG)["sessions"] == 2


# -- traits: $set, $set_once, $unset -----------------------------------------------------------


def ident(i: int, ts: int, traits: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": i,
        "message_id": f"t{i:03d}",
        "type": "identify",
        "event": None,
        "timestamp": T0 + ts,
        "payload": {"traits": traits},
    }


def traits_all_orders(evs: list[dict[str, Any]]) -> dict[str, Any]:
    """The traits, checked to be the same for every order of ``evs`` and every split."""
    import itertools

    results = [fold_all(list(p))["traits"] for p in itertools.permutations(evs)]
    for r in results:
        assert r == results[0]
    for k in range(len(evs) + 1):
        merged = folds.merge(fold_all(evs[:k]), fold_all(evs[k:]), CONFIG)
        assert merged["traits"] == results[0]
    return results[0]


def test_set_once_keeps_the_first_value() -> None:
    evs = [
        ident(1, 3000, {"$set_once": {"first_source": "ads"}}),
        ident(2, 1000, {"$set_once": {"first_source": "seo"}}),
        ident(3, 2000, {"$set_once": {"first_source": "mail"}}),
    ]
    assert traits_all_orders(evs) == {"first_source": "seo"}


def test_set_once_does_not_override_a_set() -> None:
    evs = [
        ident(1, 1000, {"$set_once": {"plan": "free"}}),
        ident(2, 2000, {"plan": "pro"}),
        ident(3, 3000, {"$set_once": {"plan": "trial"}}),
    ]
    assert traits_all_orders(evs) == {"plan": "pro"}


def test_unset_removes_a_trait() -> None:
    evs = [
        ident(1, 1000, {"plan": "pro", "country": "FR"}),
        ident(2, 2000, {"$unset": ["plan"]}),
    ]
    assert traits_all_orders(evs) == {"country": "FR"}
    # A single name is accepted too; a later $set brings the trait back.
    evs2 = [*evs[:1], ident(2, 2000, {"$unset": "country"}), ident(3, 3000, {"country": "DE"})]
    assert traits_all_orders(evs2) == {"plan": "pro", "country": "DE"}
    # An $unset older than the $set does nothing.
    evs3 = [ident(1, 5000, {"plan": "pro"}), ident(2, 2000, {"$unset": ["plan"]})]
    assert traits_all_orders(evs3) == {"plan": "pro"}


def test_the_later_set_wins_by_timestamp_whatever_the_arrival_order() -> None:
    evs = [
        ident(1, 3000, {"$set": {"plan": "enterprise"}}),
        ident(2, 1000, {"plan": "free"}),
        ident(3, 2000, {"$set": {"plan": "pro"}, "country": "FR"}),
    ]
    assert traits_all_orders(evs) == {"plan": "enterprise", "country": "FR"}
    # Same timestamp: the messageId breaks the tie, the same way in every order.
    tie = [ident(1, 1000, {"plan": "a"}), ident(2, 1000, {"plan": "b"})]
    assert traits_all_orders(tie) == {"plan": "b"}


def test_traits_only_come_from_identify() -> None:
    ev = {
        "seq": 1,
        "message_id": "x",
        "type": "track",
        "event": "Signed Up",
        "timestamp": T0,
        "payload": {"traits": {"plan": "pro"}, "properties": {}},
    }
    assert fold_all([ev])["traits"] == {}


def test_one_message_setting_a_trait_twice_does_not_depend_on_key_order() -> None:
    # PostgreSQL's JSONB does not keep key order: the same identify must fold the same way
    # whichever order its keys come back in.
    one = ident(1, 1000, {"plan": "a", "$set": {"plan": "b"}, "$unset": ["plan"]})
    other = ident(1, 1000, {"$unset": ["plan"], "$set": {"plan": "b"}, "plan": "a"})
    assert fold_all([one])["traits"] == fold_all([other])["traits"] == {"plan": "b"}


def test_traits_written_by_sartor_are_not_activity() -> None:
    """A CRM import or a server-side push sets traits without making the person look active
    (first/last seen, counts and sessions stay as their own events left them)."""
    own = ident(1, 1000, {"plan": "free"})
    crm = {**ident(2, 9000, {"plan": "gold", "ltv": 120})}
    crm["payload"] = {**crm["payload"], "context": {"library": {"name": "sartor-import"}}}
    push = {**ident(3, 9500, {"vip": True})}
    push["payload"] = {**push["payload"], "context": {"library": {"name": "sartor-server"}}}
    doc = fold_all([own, crm, push])
    assert doc["traits"] == {"plan": "gold", "ltv": 120, "vip": True}
    assert doc["first_seen"] == doc["last_seen"] == T0 + 1000
    assert doc["events"] == 1
    assert traits_all_orders([own, crm, push]) == doc["traits"]
