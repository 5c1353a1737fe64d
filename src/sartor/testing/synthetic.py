"""A synthetic shop with planted behaviour segments, for tests and benchmarks.

:func:`generate` writes realistic Segment e-commerce streams: page views, ``Product Viewed``
/ ``Product Added`` with ``product_id``, ``sku``, ``category``, ``brand``, ``name``,
``price``; ``Checkout Started``; ``Order Completed`` with ``order_id``, ``total``,
``revenue`` and ``products[]`` (with ``quantity``); an ``identify`` for registered people.
Each person belongs to one planted :class:`Behaviour` (the returned label), so a clustering
of the resulting profiles can be scored against the truth. Message ids are deterministic:
the same arguments give the same messages, and loading them twice stores nothing new.

For sizes where events are too slow (a million people), :func:`feature_frame` samples the
clustering features directly from the same behaviours, and :func:`iter_profile_docs` the
profile fold state (``profiles.computed``) that the events would have produced, roughly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

DAY_MS = 86_400_000
PRICE_SIGMA = 0.45  # log-normal spread of list prices within a category

# Category -> median list price.
CATALOG_CATEGORIES: dict[str, float] = {
    "Home Decor": 45.0,
    "Electronics": 120.0,
    "Fashion": 40.0,
    "Beauty": 25.0,
    "Toys": 30.0,
    "Sports": 60.0,
    "Books": 15.0,
    "Garden": 35.0,
}
BRANDS = (
    "Acme",
    "Northwind",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Soylent",
    "Wonka",
    "Tyrell",
    "Cyberdyne",
    "Monarch",
)
PAGES = (
    ("Home", "/"),
    ("Search", "/search"),
    ("Deals", "/deals"),
    ("New In", "/new"),
    ("Account", "/account"),
    ("Help", "/help"),
)
COUNTRIES = ("US", "GB", "DE", "FR", "NL", "ES", "IT", "CA")
CATEGORY_NAMES = list(CATALOG_CATEGORIES)


@dataclass(frozen=True)
class Behaviour:
    """How the people of one planted segment shop.

    Ranges are inclusive ``(low, high)``; ``window_days`` is when they are active, in days
    before the end of the data (``(0, 30)``: the last month); ``price_band`` the quantile
    band of a category's prices they pick from (``(0, 0.25)``: the cheapest quarter).
    """

    name: str
    weight: float
    categories: dict[str, float]
    orders: tuple[int, int] = (0, 0)
    browse_sessions: tuple[int, int] = (1, 3)
    views_per_session: tuple[int, int] = (1, 5)
    pages_per_session: tuple[int, int] = (1, 2)
    add_rate: float = 0.2
    items_per_order: tuple[int, int] = (1, 2)
    quantity: tuple[int, int] = (1, 1)
    price_band: tuple[float, float] = (0.25, 0.75)
    window_days: tuple[float, float] = (0.0, 180.0)
    registered: bool = True


SEGMENTS: tuple[Behaviour, ...] = (
    Behaviour(
        "vip-home-decor",
        0.2,
        {"Home Decor": 0.85, "Garden": 0.15},
        orders=(3, 6),
        browse_sessions=(0, 2),
        views_per_session=(1, 3),
        pages_per_session=(0, 1),
        add_rate=0.4,
        items_per_order=(1, 3),
        quantity=(1, 3),
        price_band=(0.7, 1.0),
        window_days=(0.0, 120.0),
    ),
    Behaviour(
        "bargain-hunters",
        0.3,
        {"Electronics": 0.7, "Toys": 0.2, "Fashion": 0.1},
        orders=(2, 3),
        browse_sessions=(1, 3),
        views_per_session=(5, 8),
        pages_per_session=(1, 2),
        add_rate=0.05,
        items_per_order=(1, 2),
        quantity=(1, 2),
        price_band=(0.0, 0.25),
        window_days=(0.0, 60.0),
    ),
    Behaviour(
        "lapsed-one-time",
        0.25,
        {"Fashion": 1.0},
        orders=(1, 1),
        browse_sessions=(0, 1),
        views_per_session=(1, 3),
        pages_per_session=(0, 1),
        add_rate=0.2,
        items_per_order=(1, 2),
        quantity=(1, 1),
        price_band=(0.3, 0.7),
        window_days=(150.0, 330.0),
    ),
    Behaviour(
        "new-browsers",
        0.25,
        {"Books": 0.75, "Sports": 0.25},
        orders=(0, 0),
        browse_sessions=(1, 2),
        views_per_session=(2, 5),
        pages_per_session=(0, 2),
        add_rate=0.15,
        price_band=(0.2, 0.8),
        window_days=(0.0, 14.0),
        registered=False,
    ),
)


@dataclass
class SyntheticShop:
    """What :func:`generate` returns: the messages in time order, the planted segment of
    each person (keyed by the ``userId`` they send, or ``anonymousId`` when they never
    sign in), and the end of the data (epoch ms), the natural ``now`` of an analysis."""

    messages: list[dict[str, Any]]
    labels: dict[str, str]
    now: int
    start: int
    segments: tuple[Behaviour, ...]
    catalog: dict[str, list[dict[str, Any]]] = field(repr=False, default_factory=dict)


def _ms(when: str | datetime | int) -> int:
    if isinstance(when, int):
        return when
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _iso(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def catalog(random_state: int = 0, per_category: int = 40) -> dict[str, list[dict[str, Any]]]:
    """Products per category, sorted by price (log-normal around the category median)."""
    rng = random.Random(f"catalog-{random_state}")
    out: dict[str, list[dict[str, Any]]] = {}
    for ci, (category, median) in enumerate(CATALOG_CATEGORIES.items()):
        code = "".join(w[0] for w in category.split()).upper() + str(ci)
        items = []
        for i in range(per_category):
            price = round(median * math.exp(rng.gauss(0.0, PRICE_SIGMA)), 2)
            items.append(
                {
                    "product_id": f"{code}-{i:03d}",
                    "sku": f"SKU-{code}-{i:03d}",
                    "category": category,
                    "brand": BRANDS[(ci * 7 + i) % len(BRANDS)],
                    "name": f"{category} item {i}",
                    "price": max(price, 0.5),
                }
            )
        out[category] = sorted(items, key=lambda p: (p["price"], p["product_id"]))
    return out


def _allocate(n: int, segments: Sequence[Behaviour], rng: random.Random) -> list[int]:
    """Exactly proportional segment sizes (largest remainders), shuffled."""
    total = sum(s.weight for s in segments)
    exact = [n * s.weight / total for s in segments]
    sizes = [int(x) for x in exact]
    by_remainder = sorted(range(len(segments)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    out = [i for i, size in enumerate(sizes) for _ in range(size)]
    rng.shuffle(out)
    return out


class _Person:
    def __init__(
        self,
        idx: int,
        b: Behaviour,
        rng: random.Random,
        products: dict[str, list[dict[str, Any]]],
        seed: int,
    ) -> None:
        self.b, self.rng, self.products = b, rng, products
        self.user_id = f"user-{seed}-{idx:07d}" if b.registered else None
        self.anonymous_id = f"anon-{seed}-{idx:07d}"
        self.key = self.user_id or self.anonymous_id
        self.prefix = f"syn-{seed}-{idx:07d}"
        self.n = 0
        self.messages: list[dict[str, Any]] = []
        self.cats = list(b.categories)
        self.cat_weights = [b.categories[c] for c in self.cats]

    def _ids(self) -> dict[str, str]:
        ids = {"anonymousId": self.anonymous_id}
        if self.user_id:
            ids["userId"] = self.user_id
        return ids

    def emit(self, ts: int, msg: dict[str, Any]) -> None:
        self.n += 1
        self.messages.append(
            {
                **msg,
                **self._ids(),
                "messageId": f"{self.prefix}-{self.n:04d}",
                "timestamp": _iso(ts),
                "context": {"library": {"name": "sartor-synthetic", "version": "1"}},
            }
        )

    def pick(self) -> dict[str, Any]:
        category = self.rng.choices(self.cats, self.cat_weights)[0]
        items = self.products[category]
        lo, hi = self.b.price_band
        a = min(int(lo * len(items)), len(items) - 1)
        z = max(a + 1, int(math.ceil(hi * len(items))))
        return items[self.rng.randrange(a, min(z, len(items)))]

    def session(self, t: int, order: bool) -> None:
        rng, b = self.rng, self.b

        def step() -> int:
            nonlocal t
            t += int(rng.uniform(15, 90) * 1000)
            return t

        pages = rng.randint(*b.pages_per_session)
        views = rng.randint(*b.views_per_session)
        actions = ["page"] * pages + ["view"] * views
        rng.shuffle(actions)
        actions.insert(0, "page")  # a session starts on a page
        for action in actions:
            if action == "page":
                name, path = rng.choice(PAGES)
                self.emit(
                    step(),
                    {"type": "page", "name": name, "properties": {"path": path, "title": name}},
                )
                continue
            product = self.pick()
            self.emit(
                step(), {"type": "track", "event": "Product Viewed", "properties": dict(product)}
            )
            if rng.random() < b.add_rate:
                self.emit(
                    step(),
                    {
                        "type": "track",
                        "event": "Product Added",
                        "properties": {**product, "quantity": rng.randint(*b.quantity)},
                    },
                )
        if not order:
            return
        basket = []
        for _ in range(rng.randint(*b.items_per_order)):
            product = self.pick()
            qty = rng.randint(*b.quantity)
            self.emit(
                step(), {"type": "track", "event": "Product Viewed", "properties": dict(product)}
            )
            self.emit(
                step(),
                {
                    "type": "track",
                    "event": "Product Added",
                    "properties": {**product, "quantity": qty},
                },
            )
            basket.append({**product, "quantity": qty})
        total = round(sum(p["price"] * p["quantity"] for p in basket), 2)
        order_id = f"{self.prefix}-o{self.n:04d}"
        self.emit(
            step(),
            {
                "type": "track",
                "event": "Checkout Started",
                "properties": {"order_id": order_id, "value": total, "currency": "USD"},
            },
        )
        self.emit(
            step(),
            {
                "type": "track",
                "event": "Order Completed",
                "properties": {
                    "order_id": order_id,
                    "total": total,
                    "revenue": total,
                    "currency": "USD",
                    "products": basket,
                },
            },
        )


def generate(
    n_users: int,
    segments: Sequence[Behaviour] = SEGMENTS,
    random_state: int = 0,
    start: str | datetime | int = "2024-01-01",
    days: float = 365.0,
) -> SyntheticShop:
    """Events of ``n_users`` people of the planted ``segments`` between ``start`` and
    ``start + days``; see :class:`SyntheticShop`."""
    if n_users < 0:
        raise ValueError("n_users must be >= 0")
    start_ms = _ms(start)
    now = start_ms + int(days * DAY_MS)
    products = catalog(random_state)
    plan = _allocate(n_users, segments, random.Random(f"plan-{random_state}"))
    messages: list[dict[str, Any]] = []
    labels: dict[str, str] = {}
    for idx, si in enumerate(plan):
        b = segments[si]
        rng = random.Random(f"{random_state}-{idx}")
        person = _Person(idx, b, rng, products, random_state)
        labels[person.key] = b.name
        lo, hi = (min(max(d, 0.0), days) for d in b.window_days)
        n_orders = rng.randint(*b.orders)
        n_browse = rng.randint(*b.browse_sessions)
        if n_orders + n_browse == 0:
            n_browse = 1
        kinds = [True] * n_orders + [False] * n_browse
        rng.shuffle(kinds)
        # Leave an hour at the end for the session's own events.
        times = sorted(now - int(rng.uniform(lo, hi) * DAY_MS) - 3_600_000 for _ in kinds)
        if person.user_id:
            person.emit(
                times[0] - 1000,
                {"type": "identify", "traits": {"country": rng.choice(COUNTRIES)}},
            )
        for t, order in zip(times, kinds, strict=True):
            person.session(t, order)
        messages.extend(person.messages)
    messages.sort(key=lambda m: (m["timestamp"], m["messageId"]))
    return SyntheticShop(messages, labels, now, start_ms, tuple(segments), products)


# -- fast paths: features and fold state without events ----------------------------------


def _band_multiplier(band: tuple[float, float]) -> float:
    """Price relative to the category median at the middle of a quantile band."""
    q = min(max((band[0] + band[1]) / 2, 0.01), 0.99)
    return math.exp(PRICE_SIGMA * NormalDist().inv_cdf(q))


def _mean(r: tuple[float, float]) -> float:
    return (r[0] + r[1]) / 2


@dataclass
class _Sample:
    label: np.ndarray
    frequency: np.ndarray
    aov: np.ndarray
    recency: np.ndarray  # days since last order (NaN without orders)
    oldest: np.ndarray  # days since first activity
    newest: np.ndarray  # days since last activity
    depth: np.ndarray
    sessions: np.ndarray
    views: np.ndarray
    adds: np.ndarray
    shares: np.ndarray  # n x categories
    sensitivity: np.ndarray
    categories: list[str]


def _sample(n: int, segments: Sequence[Behaviour], rng: np.random.Generator) -> _Sample:
    cats = list(CATALOG_CATEGORIES)
    total = sum(s.weight for s in segments)
    label = rng.choice(len(segments), size=n, p=[s.weight / total for s in segments])
    out = _Sample(
        label=label,
        frequency=np.zeros(n),
        aov=np.zeros(n),
        recency=np.full(n, np.nan),
        oldest=np.zeros(n),
        newest=np.zeros(n),
        depth=np.zeros(n),
        sessions=np.zeros(n),
        views=np.zeros(n),
        adds=np.zeros(n),
        shares=np.zeros((n, len(cats))),
        sensitivity=np.zeros(n),
        categories=cats,
    )
    for si, b in enumerate(segments):
        idx = np.flatnonzero(label == si)
        m = len(idx)
        if not m:
            continue
        f = rng.integers(b.orders[0], b.orders[1] + 1, size=m).astype(float)
        browse = rng.integers(b.browse_sessions[0], b.browse_sessions[1] + 1, size=m)
        sessions = np.maximum(f + browse, 1)
        weights = np.array([b.categories.get(c, 0.0) for c in cats])
        weights = weights / weights.sum()
        median = float(weights @ np.array([CATALOG_CATEGORIES[c] for c in cats]))
        mult = _band_multiplier(b.price_band)
        price = median * mult * rng.lognormal(0.0, 0.25, size=m)
        items = _mean(b.items_per_order) * _mean(b.quantity)
        lo, hi = b.window_days
        oldest = rng.uniform(lo, hi, size=m)
        # Most recent of `sessions` uniform times in the window.
        newest = lo + (hi - lo) * rng.beta(1.0, sessions)
        out.frequency[idx] = f
        out.aov[idx] = np.where(f > 0, items * price * rng.lognormal(0.0, 0.2, size=m), 0.0)
        buyers = f > 0
        out.recency[idx[buyers]] = lo + (hi - lo) * rng.beta(1.0, f[buyers])
        out.oldest[idx] = np.maximum(oldest, newest)
        out.newest[idx] = newest
        per_session = (
            1
            + _mean(b.pages_per_session)
            + _mean(b.views_per_session) * (1 + b.add_rate)
            + (f / sessions) * (2 * _mean(b.items_per_order) + 2)
        )
        out.depth[idx] = per_session * rng.lognormal(0.0, 0.15, size=m)
        out.sessions[idx] = sessions
        views = sessions * _mean(b.views_per_session) + f * _mean(b.items_per_order)
        out.views[idx] = np.round(views * rng.lognormal(0.0, 0.1, size=m))
        out.adds[idx] = np.round(out.views[idx] * b.add_rate + f * _mean(b.items_per_order))
        used = np.flatnonzero(weights > 0)
        if len(used) > 1:
            out.shares[np.ix_(idx, used)] = rng.dirichlet(weights[used] * 12, size=m)
        else:
            out.shares[np.ix_(idx, used)] = 1.0
        out.sensitivity[idx] = mult * rng.lognormal(0.0, 0.12, size=m)
    return out


def feature_frame(
    n: int,
    segments: Sequence[Behaviour] = SEGMENTS,
    random_state: int = 0,
    top_categories: int = 8,
) -> tuple[pd.DataFrame, np.ndarray]:
    """The clustering features of :func:`sartor.segments.clustering.profile_features`
    (same columns, same filling of missing values) for ``n`` people sampled from the
    behaviours, and each row's planted segment index. Vectorized: a million rows in
    about a second."""
    from sartor.segments.clustering import BASE_COLUMNS, fill_features

    rng = np.random.default_rng(random_state)
    s = _sample(n, segments, rng)
    frame = pd.DataFrame(
        {
            "recency_days": s.recency,
            "frequency": s.frequency,
            "monetary": s.frequency * s.aov,
            "average_order_value": np.where(s.frequency > 0, s.aov, np.nan),
            "session_depth": s.depth,
        },
        index=pd.Index([f"p_syn{random_state}_{i:08d}" for i in range(n)], name="profile_id"),
    )
    order = np.argsort(-s.shares.sum(axis=0), kind="stable")[:top_categories]
    for j in order:
        frame[f"cat:{s.categories[j]}"] = s.shares[:, j]
    frame["price_sensitivity"] = s.sensitivity
    assert list(frame.columns[:5]) == list(BASE_COLUMNS)
    return fill_features(frame), s.label


def iter_profile_docs(
    n: int,
    segments: Sequence[Behaviour] = SEGMENTS,
    random_state: int = 0,
    now: int | str = "2025-01-01",
    chunk: int = 10_000,
) -> Iterator[list[tuple[str, str, dict[str, Any]]]]:
    """Profile fold states (the ``profiles.computed`` document of
    :mod:`sartor.profiles.folds`) of ``n`` people, as lists of ``(profile_id, planted
    segment, doc)`` of ``chunk`` rows: what their events would have folded to, roughly
    (sessions spread over the person's active window, the last one at their last order)."""
    now_ms = _ms(now)
    rng = np.random.default_rng(random_state)
    medians = CATALOG_CATEGORIES
    bin_width = math.log(1.05)
    names = [b.name for b in segments]
    for base in range(0, n, chunk):
        m = min(chunk, n - base)
        s = _sample(m, segments, rng)
        order = np.argsort(-s.shares, axis=1)[:, :2].tolist()
        cols = zip(
            s.label.tolist(),
            s.frequency.astype(int).tolist(),
            s.aov.tolist(),
            s.recency.tolist(),
            s.oldest.tolist(),
            s.newest.tolist(),
            s.sessions.astype(int).tolist(),
            np.maximum(np.rint(s.depth), 1).astype(int).tolist(),
            s.views.astype(int).tolist(),
            s.adds.astype(int).tolist(),
            s.shares.tolist(),
            s.sensitivity.tolist(),
            order,
            strict=True,
        )
        rows: list[tuple[str, str, dict[str, Any]]] = []
        for i, (
            label,
            f,
            aov,
            recency,
            oldest,
            newest,
            n_sessions,
            depth,
            views,
            adds,
            shares,
            sens,
            top2,
        ) in enumerate(cols):
            latest = recency if f else newest  # days ago
            step = max((oldest - latest) / (n_sessions - 1), 0.5) if n_sessions > 1 else 0.0
            starts = [now_ms - int((latest + k * step) * DAY_MS) for k in range(n_sessions)]
            starts.reverse()
            sessions = [[t, t + depth * 45_000, depth] for t in starts]
            last_order = starts[-1] if f else None
            first_order = starts[max(n_sessions - f, 0)] if f else None
            weight = views + 3 * adds + 5 * f
            affinity = {
                cat: round(w * weight, 4)
                for cat, w in zip(CATEGORY_NAMES, shares, strict=True)
                if w > 0.02
            }
            price_cats = [CATEGORY_NAMES[j] for j in top2 if shares[j] > 0.02] or ["Books"]
            priced = max(views, 1)
            cat_prices = {c: [round(medians[c] * sens * priced, 2), priced] for c in price_cats}
            price = max(sum(medians[c] for c in price_cats) / len(price_cats) * sens, 0.5)
            last_seen = sessions[-1][1]
            rows.append(
                (
                    f"p_syn{random_state}_{base + i:08d}",
                    names[label],
                    {
                        "trait_clock": {},
                        "first_seen": sessions[0][0],
                        "last_seen": last_seen,
                        "events": n_sessions * depth,
                        "counts": {
                            "page": n_sessions,
                            "Product Viewed": views,
                            "Product Added": adds,
                            "Order Completed": f,
                        },
                        "sessions": sessions,
                        "sessions_dropped": 0,
                        "product_views": views,
                        "cart_adds": adds,
                        "checkouts": f,
                        "orders": f,
                        "revenue": round(f * aov, 2),
                        "refunds": 0,
                        "refunded": 0.0,
                        "first_order_at": first_order,
                        "last_order_at": last_order,
                        "last_cart_add_at": last_order,
                        "affinity_at": last_seen,
                        "category_affinity": affinity,
                        "brand_affinity": {},
                        "price_hist": {str(math.floor(math.log(price) / bin_width)): priced},
                        "category_prices": cat_prices,
                        "recent_items": [],
                    },
                )
            )
        yield rows
