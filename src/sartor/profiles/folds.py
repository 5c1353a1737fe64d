"""The profile fold: ``fold(profile, event) -> profile``, pure and order-independent.

Every computed field is a commutative, associative summary of the events, so:

* applying events in any order gives the same profile (timestamps may arrive out of order);
* :func:`merge` of two profiles equals folding all their events into one: when identity
  links two people, their profiles combine as if all events had been one person's;
* redelivery is harmless because the updater folds each event exactly once, in log order,
  behind the profile's ``last_seq`` watermark (see :mod:`sartor.profiles.updater`).

Summaries used: counters (add), first/last times (min/max), session intervals (union of
``[t, t + gap)`` windows), last-writer-wins registers for traits (by timestamp, then
messageId), exponentially decayed affinity scores kept relative to the newest event time,
a log-scale price histogram (for medians), and a bounded newest-first recent-items list.
Floats are the only place order shows: sums may differ in the last bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

Doc = dict[str, Any]

VIEW, ADD, CHECKOUT, ORDER, REFUND = (
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Order Refunded",
)
ACTIONS = {VIEW: "viewed", ADD: "added", ORDER: "bought"}
# Written by Sartor itself (segment transitions): not the person's behaviour.
SYSTEM_EVENTS = frozenset({"Segment Entered", "Segment Exited"})
# Traits that Sartor itself writes (CRM and social imports, server-side pushes) are not the
# person's activity: they set traits but leave first/last seen, counts and sessions alone,
# or a CRM import would make every customer look active today.
TRAITS_ONLY_LIBRARIES = frozenset({"sartor-import", "sartor-server"})
PRICE_BIN = math.log(1.05)  # 5%-wide price bins


@dataclass(frozen=True)
class ProfileConfig:
    """Knobs of the fold; the defaults are the product's."""

    session_gap_ms: int = 30 * 60 * 1000
    half_life_days: float = 30.0
    recent_items: int = 50
    max_sessions: int = 500
    abandoned_cart_ms: int = 24 * 3600 * 1000
    weight_view: float = 1.0
    weight_add: float = 3.0
    weight_order: float = 5.0

    @property
    def half_life_ms(self) -> float:
        return self.half_life_days * 86_400_000


def empty() -> Doc:
    return {
        "traits": {},
        "trait_clock": {},
        "first_seen": None,
        "last_seen": None,
        "events": 0,
        "counts": {},
        "sessions": [],
        "sessions_dropped": 0,
        "product_views": 0,
        "cart_adds": 0,
        "checkouts": 0,
        "orders": 0,
        "revenue": 0.0,
        "refunds": 0,
        "refunded": 0.0,
        "first_order_at": None,
        "last_order_at": None,
        "last_cart_add_at": None,
        "affinity_at": None,
        "category_affinity": {},
        "brand_affinity": {},
        "price_hist": {},
        "category_prices": {},
        "recent_items": [],
    }


# -- small commutative pieces -----------------------------------------------------------


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _add_counts(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def _add_session(
    sessions: list[list[int]], start: int, end: int, n: int, gap: int
) -> list[list[int]]:
    """Union of session intervals: ``[start, end]`` (with ``n`` events) joins every interval
    less than ``gap`` away. Intervals stay sorted and disjoint."""
    lo, hi, count = start, end, n
    kept: list[list[int]] = []
    for s in sessions:
        if s[0] - hi < gap and lo - s[1] < gap:
            lo, hi, count = min(lo, s[0]), max(hi, s[1]), count + s[2]
        else:
            kept.append(s)
    kept.append([lo, hi, count])
    kept.sort()
    return kept


def _trim_sessions(doc: Doc, limit: int) -> None:
    extra = len(doc["sessions"]) - limit
    if extra > 0:
        doc["sessions_dropped"] += extra
        doc["sessions"] = doc["sessions"][extra:]


def _decayed_add(
    scores: dict[str, float], ref: int | None, at: int, adds: dict[str, float], half_life: float
) -> tuple[dict[str, float], int]:
    """Scores are ``sum(w * 2 ** (-(ref - t) / half_life))`` with ``ref`` the newest time."""
    if ref is None or at >= ref:
        factor = 1.0 if ref is None else 2.0 ** (-(at - ref) / half_life)
        out = {k: v * factor for k, v in scores.items()}
        weight, new_ref = 1.0, at
    else:
        out = dict(scores)
        weight, new_ref = 2.0 ** (-(ref - at) / half_life), ref
    for k, w in adds.items():
        out[k] = out.get(k, 0.0) + w * weight
    return out, new_ref


def _lww(clock: Mapping[str, list[Any]], key: str, stamp: list[Any]) -> bool:
    """True when ``stamp`` ([ts, messageId, op]) is newer than the trait's current one."""
    cur = clock.get(key)
    return cur is None or (stamp[0], stamp[1]) > (cur[0], cur[1])


def _price_bin(price: float) -> str:
    return str(math.floor(math.log(price) / PRICE_BIN))


def _recent_key(item: Mapping[str, Any]) -> tuple[int, str, str]:
    return (item["at"], item["mid"], item["product_id"])


def _merge_recent(
    a: list[dict[str, Any]], b: list[dict[str, Any]], limit: int
) -> list[dict[str, Any]]:
    """The newest ``limit`` of both, newest first, each key once (``a``'s item wins).

    ``a`` is a profile's list (newest first, keys unique): one event's few items are put
    in place by binary search instead of sorting the whole list again."""
    if len(b) > 8:
        seen: dict[tuple[int, str, str], dict[str, Any]] = {}
        for item in a + b:
            seen.setdefault(_recent_key(item), item)
        return sorted(seen.values(), key=_recent_key, reverse=True)[:limit]
    out = list(a)
    added: set[tuple[int, str, str]] = set()
    for item in b:
        key = _recent_key(item)
        if key in added:
            continue  # the first of b's items with a key wins
        lo, hi = 0, len(out)
        while lo < hi:  # the first position whose key is not above this one
            mid = (lo + hi) // 2
            if _recent_key(out[mid]) > key:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(out) and _recent_key(out[lo]) == key:
            continue  # already kept
        out.insert(lo, item)
        added.add(key)
    return out[:limit]


# -- the fold ------------------------------------------------------------------------------


def _products(event: str | None, props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    products = props.get("products")
    if event in (VIEW, ADD) and props.get("product_id") is not None:
        return [props]
    if isinstance(products, list):
        return [p for p in products if isinstance(p, Mapping)]
    return []


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _order_value(props: Mapping[str, Any], products: list[Mapping[str, Any]]) -> float:
    for key in ("revenue", "total", "value"):
        v = _num(props.get(key))
        if v is not None:
            return v
    total = 0.0
    for p in products:
        price, qty = _num(p.get("price")), _num(p.get("quantity"))
        if price is not None:
            total += price * (qty if qty is not None else 1.0)
    return total


def _apply_traits(doc: Doc, traits: Mapping[str, Any], ts: int, mid: str) -> None:
    """``$set`` (plain keys too), ``$set_once`` and ``$unset``, as last-writer-wins
    registers stamped ``[ts, messageId, op]`` so arrival order does not matter."""
    ops: list[tuple[str, str, Any]] = []
    # Sorted: within one message the first op on a trait wins, and JSONB does not keep key
    # order, so the order must not depend on storage ("$set" comes before plain keys).
    for key, value in sorted(traits.items(), key=lambda kv: kv[0]):
        if key == "$set" and isinstance(value, Mapping):
            ops += [("set", k, v) for k, v in value.items()]
        elif key == "$set_once" and isinstance(value, Mapping):
            ops += [("set_once", k, v) for k, v in value.items()]
        elif key == "$unset":
            names = value if isinstance(value, list) else [value]
            ops += [("unset", str(k), None) for k in names]
        elif not key.startswith("$"):
            ops.append(("set", key, value))
    for op, key, value in ops:
        _apply_trait_op(doc, op, key, value, ts, mid)


def _apply_trait_op(doc: Doc, op: str, key: str, value: Any, ts: int, mid: str) -> None:
    clock: dict[str, list[Any]] = doc["trait_clock"]
    if op == "set_once":
        # The earliest $set_once wins, and only while no $set or $unset has spoken.
        once_key = "$once:" + key
        cur = clock.get(once_key)
        if cur is None or (ts, mid) < (cur[0], cur[1]):
            clock[once_key] = [ts, mid, "set_once", value]
    else:
        stamp = [ts, mid, op, value]
        if _lww(clock, key, stamp):
            clock[key] = stamp
    _render_trait(doc, key)


def _render_trait(doc: Doc, key: str) -> None:
    clock = doc["trait_clock"]
    direct, once = clock.get(key), clock.get("$once:" + key)
    if direct is not None:
        if direct[2] == "set":
            doc["traits"][key] = direct[3]
        else:
            doc["traits"].pop(key, None)
    elif once is not None:
        doc["traits"][key] = once[3]


def _library(payload: Mapping[str, Any]) -> Any:
    context = payload.get("context")
    library = context.get("library") if isinstance(context, Mapping) else None
    return library.get("name") if isinstance(library, Mapping) else None


def fold(doc: Doc, event: Mapping[str, Any], config: ProfileConfig) -> Doc:
    """The profile with one more event. ``event`` is a stored event row (``seq``,
    ``message_id``, ``type``, ``event``, ``timestamp``, ``payload``)."""
    if event["event"] in SYSTEM_EVENTS and event["type"] == "track":
        return doc
    doc = {**doc}
    ts: int = event["timestamp"]
    mid: str = event["message_id"]
    name: str | None = event["event"]
    kind: str = event["type"]
    payload: Mapping[str, Any] = event.get("payload") or {}
    props: Mapping[str, Any] = payload.get("properties") or {}

    traits = payload.get("traits")
    if kind == "identify" and _library(payload) in TRAITS_ONLY_LIBRARIES:
        if isinstance(traits, Mapping):
            doc["traits"], doc["trait_clock"] = dict(doc["traits"]), dict(doc["trait_clock"])
            _apply_traits(doc, traits, ts, mid)
        return doc

    doc["first_seen"] = _min(doc["first_seen"], ts)
    doc["last_seen"] = _max(doc["last_seen"], ts)
    doc["events"] += 1
    label = name if kind == "track" and name else kind
    doc["counts"] = _add_counts(doc["counts"], {label: 1})
    if kind in ("track", "page", "screen"):
        doc["sessions"] = _add_session(doc["sessions"], ts, ts, 1, config.session_gap_ms)
        _trim_sessions(doc, config.max_sessions)

    if kind == "identify" and isinstance(traits, Mapping):
        doc["traits"], doc["trait_clock"] = dict(doc["traits"]), dict(doc["trait_clock"])
        _apply_traits(doc, traits, ts, mid)

    if kind != "track":
        return doc
    products = _products(name, props)
    if name == VIEW:
        doc["product_views"] += 1
    elif name == ADD:
        doc["cart_adds"] += 1
        doc["last_cart_add_at"] = _max(doc["last_cart_add_at"], ts)
    elif name == CHECKOUT:
        doc["checkouts"] += 1
    elif name == ORDER:
        doc["orders"] += 1
        doc["revenue"] += _order_value(props, products)
        doc["first_order_at"] = _min(doc["first_order_at"], ts)
        doc["last_order_at"] = _max(doc["last_order_at"], ts)
    elif name == REFUND:
        doc["refunds"] += 1
        doc["refunded"] += abs(_order_value(props, products))

    action = ACTIONS.get(name or "")
    if action is None or not products:
        return doc
    weight = {VIEW: config.weight_view, ADD: config.weight_add, ORDER: config.weight_order}[
        name or ""
    ]
    cats: dict[str, float] = {}
    brands: dict[str, float] = {}
    hist: dict[str, int] = {}
    cat_prices: dict[str, list[float]] = {}
    recent: list[dict[str, Any]] = []
    for i, p in enumerate(products):
        category, brand = p.get("category"), p.get("brand")
        if isinstance(category, str) and category:
            cats[category] = cats.get(category, 0.0) + weight
        if isinstance(brand, str) and brand:
            brands[brand] = brands.get(brand, 0.0) + weight
        price = _num(p.get("price"))
        if price is not None and price > 0:
            b = _price_bin(price)
            hist[b] = hist.get(b, 0) + 1
            if isinstance(category, str) and category:
                cur = cat_prices.setdefault(category, [0.0, 0])
                cur[0] += price
                cur[1] += 1
        pid = p.get("product_id") or p.get("sku")
        if pid is not None:
            recent.append({"product_id": str(pid), "action": action, "at": ts, "mid": f"{mid}#{i}"})
    if cats or brands:
        doc["category_affinity"], ref = _decayed_add(
            doc["category_affinity"], doc["affinity_at"], ts, cats, config.half_life_ms
        )
        doc["brand_affinity"], _ = _decayed_add(
            doc["brand_affinity"], doc["affinity_at"], ts, brands, config.half_life_ms
        )
        doc["affinity_at"] = ref
    if hist:
        doc["price_hist"] = _add_counts(doc["price_hist"], hist)
    if cat_prices:
        merged = {k: list(v) for k, v in doc["category_prices"].items()}
        for k, (s, n) in cat_prices.items():
            cur = merged.setdefault(k, [0.0, 0])
            cur[0] += s
            cur[1] += n
        doc["category_prices"] = merged
    if recent:
        doc["recent_items"] = _merge_recent(doc["recent_items"], recent, config.recent_items)
    return doc


def merge(a: Doc, b: Doc, config: ProfileConfig) -> Doc:
    """One profile from two, as if all their events had been one person's."""
    out = empty()
    out["first_seen"] = _min(a["first_seen"], b["first_seen"])
    out["last_seen"] = _max(a["last_seen"], b["last_seen"])
    for key in (
        "events",
        "product_views",
        "cart_adds",
        "checkouts",
        "orders",
        "revenue",
        "refunds",
        "refunded",
        "sessions_dropped",
    ):
        out[key] = a[key] + b[key]
    out["counts"] = _add_counts(a["counts"], b["counts"])
    out["price_hist"] = _add_counts(a["price_hist"], b["price_hist"])
    for key in ("first_order_at",):
        out[key] = _min(a[key], b[key])
    for key in ("last_order_at", "last_cart_add_at"):
        out[key] = _max(a[key], b[key])
    sessions = [list(s) for s in a["sessions"]]
    for s in b["sessions"]:
        sessions = _add_session(sessions, s[0], s[1], s[2], config.session_gap_ms)
    out["sessions"] = sessions
    _trim_sessions(out, config.max_sessions)
    ref = _max(a["affinity_at"], b["affinity_at"])
    for key in ("category_affinity", "brand_affinity"):
        scores: dict[str, float] = {}
        for side in (a, b):
            if side["affinity_at"] is None:
                continue
            factor = 2.0 ** (-((ref or 0) - side["affinity_at"]) / config.half_life_ms)
            for k, v in side[key].items():
                scores[k] = scores.get(k, 0.0) + v * factor
        out[key] = scores
    out["affinity_at"] = ref
    prices = {k: list(v) for k, v in a["category_prices"].items()}
    for k, (s, n) in b["category_prices"].items():
        cur = prices.setdefault(k, [0.0, 0])
        cur[0] += s
        cur[1] += n
    out["category_prices"] = prices
    out["recent_items"] = _merge_recent(a["recent_items"], b["recent_items"], config.recent_items)
    clock = dict(a["trait_clock"])
    for key, stamp in b["trait_clock"].items():
        held = clock.get(key)
        if key.startswith("$once:"):
            if held is None or (stamp[0], stamp[1]) < (held[0], held[1]):
                clock[key] = stamp
        elif held is None or (stamp[0], stamp[1]) > (held[0], held[1]):
            clock[key] = stamp
    out["trait_clock"] = clock
    for key in {k.removeprefix("$once:") for k in clock}:
        _render_trait(out, key)
    return out


# -- reading -------------------------------------------------------------------------------


def price_median(hist: Mapping[str, int]) -> float | None:
    """The median price from the log-scale histogram (centre of the median's 5% bin)."""
    total = sum(hist.values())
    if not total:
        return None
    seen = 0
    for b in sorted(hist, key=int):
        seen += hist[b]
        if seen * 2 >= total:
            return round(math.exp((int(b) + 0.5) * PRICE_BIN), 2)
    return None


def _shares(doc: Doc, scores: Mapping[str, float], now: int, config: ProfileConfig) -> Any:
    if not scores or doc["affinity_at"] is None:
        return {}
    factor = 2.0 ** (-max(0, now - doc["affinity_at"]) / config.half_life_ms)
    total = sum(scores.values())
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return {k: round(v / total, 6) for k, v in ranked if v * factor > 0} if total else {}


def _sensitivity(doc: Doc, category_medians: Mapping[str, float] | None) -> float | None:
    if not category_medians:
        return None
    ratios = [
        (s / n) / category_medians[c] * n
        for c, (s, n) in doc["category_prices"].items()
        if n and category_medians.get(c)
    ]
    weight = sum(n for c, (_, n) in doc["category_prices"].items() if category_medians.get(c))
    return round(sum(ratios) / weight, 4) if weight else None


def _abandoned(doc: Doc, now: int, config: ProfileConfig) -> bool:
    return (
        doc["last_cart_add_at"] is not None
        and (doc["last_order_at"] is None or doc["last_order_at"] < doc["last_cart_add_at"])
        and now - doc["last_cart_add_at"] >= config.abandoned_cart_ms
    )


_Field = Callable[[Doc, int, ProfileConfig, Mapping[str, float] | None], Any]

# The fields of the view, in the order the API shows them; each computed on its own, so a
# reader that looks at a few (a segment rule) does not pay for the others.
_FIELDS: dict[str, _Field] = {
    "first_seen": lambda d, now, c, m: d["first_seen"],
    "last_seen": lambda d, now, c, m: d["last_seen"],
    "events": lambda d, now, c, m: d["events"],
    "counts": lambda d, now, c, m: d["counts"],
    "sessions": lambda d, now, c, m: len(d["sessions"]) + d["sessions_dropped"],
    "avg_session_depth": lambda d, now, c, m: (
        round(sum(s[2] for s in d["sessions"]) / len(d["sessions"]), 3) if d["sessions"] else 0
    ),
    "product_views": lambda d, now, c, m: d["product_views"],
    "cart_adds": lambda d, now, c, m: d["cart_adds"],
    "checkouts": lambda d, now, c, m: d["checkouts"],
    "orders": lambda d, now, c, m: d["orders"],
    "revenue": lambda d, now, c, m: round(d["revenue"], 2),
    "average_order_value": lambda d, now, c, m: (
        round(d["revenue"] / d["orders"], 2) if d["orders"] else None
    ),
    "last_order_at": lambda d, now, c, m: d["last_order_at"],
    "refunds": lambda d, now, c, m: d["refunds"],
    "category_affinity": lambda d, now, c, m: _shares(d, d["category_affinity"], now, c),
    "brand_affinity": lambda d, now, c, m: _shares(d, d["brand_affinity"], now, c),
    "price_median": lambda d, now, c, m: price_median(d["price_hist"]),
    "price_sensitivity": lambda d, now, c, m: _sensitivity(d, m),
    "recent_items": lambda d, now, c, m: [
        {k: v for k, v in item.items() if k != "mid"} for item in d["recent_items"]
    ],
    "intent": lambda d, now, c, m: {
        "abandoned_cart": _abandoned(d, now, c),
        "last_cart_add_at": d["last_cart_add_at"],
    },
    "rfm": lambda d, now, c, m: {
        "recency_days": round((now - d["last_order_at"]) / 86_400_000, 3)
        if d["last_order_at"] is not None
        else None,
        "frequency": d["orders"],
        "monetary": round(d["revenue"] - d["refunded"], 2),
        "first_order_at": d["first_order_at"],
    },
}


def view(
    doc: Doc, now: int, config: ProfileConfig, category_medians: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The profile's ``computed`` section as the API shows it, at time ``now``: decayed
    affinities as shares, medians, session stats, intent signals and RFM inputs."""
    return {key: field(doc, now, config, category_medians) for key, field in _FIELDS.items()}


class LazyView(Mapping[str, Any]):
    """:func:`view`, each field computed when first read (segment rules read a few)."""

    def __init__(self, doc: Doc, now: int, config: ProfileConfig) -> None:
        self._args = (doc, now, config, None)
        self._done: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._done[key]
        except KeyError:
            field = _FIELDS[key]  # KeyError for an unknown field, as a dict would raise
            value = self._done[key] = field(*self._args)
            return value

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS)
