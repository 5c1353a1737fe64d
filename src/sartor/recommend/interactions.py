"""Interactions read from the event log: who did what with which item, weighted and decayed.

The rules, shared by training (:func:`load_interactions`) and serving
(:func:`user_history`):

* Only ``track`` events named in ``weights`` count; every other event is ignored. An
  event's items are, as for the catalog (:func:`sartor.recommend.catalog.products_of`),
  the product at the top of a single-product event (``Product Viewed``, ``Product
  Added``...) and every entry of ``products[]`` otherwise (``Order Completed``, ``Checkout
  Started``...); a custom event named in ``weights`` counts with its top-level
  ``product_id`` (else its ``products[]``). An item is its ``product_id``, else its ``sku``.
  A product counts once per event: ``quantity`` does not multiply, nor does a product
  listed twice.
* An event adds ``weights[name] * 0.5 ** (age / half_life)`` to each of its (user, item)
  pairs; ``age`` is measured back from ``now_ms`` and an event dated after it counts as new.
* **Explicit feedback wins.** A ``Product Reviewed`` with a numeric ``rating`` (a finite
  number >= 0) is a rating. A pair with at least one rating is worth its **latest rating**
  (by event time), decayed from that time, and nothing else: views, adds and purchases of
  that pair are not added on top (they are on another scale, and a review usually follows
  a purchase it would double count). A review without a usable rating counts as an
  implicit event with ``weights["Product Reviewed"]``.
* Weights below zero cannot be learnt from: a pair whose weight ends at or below zero, or
  below ``min_weight``, is left out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sqlalchemy import Connection, Engine, func, select

from sartor.collect.normalize import SEGMENT_ECOMMERCE_EVENTS, SINGLE_PRODUCT_EVENTS
from sartor.privacy.consent import allowed
from sartor.recommend.catalog import product_key
from sartor.recommend.vocab import Vocabulary
from sartor.storage import workspaces as ws_store
from sartor.storage.sql import chunks
from sartor.storage.tables import events, identities, profiles

REVIEW = "Product Reviewed"
_ECOMMERCE = frozenset(SEGMENT_ECOMMERCE_EVENTS)
DAY_MS = 86_400_000
# Users and items are packed in one int64 key per pair: the user row in the high half.
_SHIFT = np.int64(32)
_LOW = np.int64(0xFFFFFFFF)
# The smallest positive float32: a very old interaction keeps its place in the matrix
# instead of underflowing to an explicit zero.
_TINY = float(np.finfo(np.float32).tiny)


@dataclass
class Interactions:
    """Users x items, from the log.

    ``matrix`` (float32) holds the weight of each pair, ``last_at`` (int64 epoch ms, same
    sparsity) the time of the pair's newest counted event. ``users`` holds profile ids,
    ``items`` item ids; only users and items with at least one pair are in them.
    ``n_events`` is how many events contributed.
    """

    matrix: sp.csr_matrix
    users: Vocabulary
    items: Vocabulary
    last_at: sp.csr_matrix
    n_events: int

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.users), len(self.items))


def rating_value(value: Any) -> float | None:
    """An explicit rating: a finite number >= 0 (or a numeric string); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _text_id(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def event_items(name: str, product_id: Any, sku: Any, products: Any) -> list[str]:
    """The distinct item ids of an event, from its ``properties.product_id``, ``.sku`` and
    ``.products`` (read one by one from the database: no need to decode whole payloads)."""
    top = _text_id(product_id) or _text_id(sku)
    if top is not None and (name in SINGLE_PRODUCT_EVENTS or name not in _ECOMMERCE):
        return [top]
    out: list[str] = []
    if isinstance(products, list):
        for product in products:
            if isinstance(product, Mapping):
                item_id = product_key(product)
                if item_id is not None and item_id not in out:
                    out.append(item_id)
    return out


class _Pairs:
    """Growing arrays of pair observations, compacted (one entry per pair) when they
    outgrow the compacted part, so memory follows distinct pairs, not events.

    Per pair: the summed implicit weight, the newest event time, and the newest rating
    with its time (``rating`` NaN and ``rated_at`` at the int64 minimum when none).
    """

    _NONE = np.iinfo(np.int64).min

    def __init__(self) -> None:
        self.keys = np.empty(0, np.int64)
        self.weight = np.empty(0, np.float64)
        self.at = np.empty(0, np.int64)
        self.rating = np.empty(0, np.float64)
        self.rated_at = np.empty(0, np.int64)
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._n_pending = 0

    def add(self, keys: np.ndarray, weight: np.ndarray, at: np.ndarray, rating: np.ndarray) -> None:
        """Observations in log order; ``rating`` is NaN where the event is not a rating."""
        if not len(keys):
            return
        rated_at = np.where(np.isnan(rating), self._NONE, at)
        self._pending.append((keys, weight, at, rating, rated_at))
        self._n_pending += len(keys)
        if self._n_pending > max(len(self.keys), 100_000):
            self.compact()

    def compact(self) -> None:
        if not self._pending:
            return
        parts = [(self.keys, self.weight, self.at, self.rating, self.rated_at), *self._pending]
        keys, weight, at, rating, rated_at = (
            np.concatenate([p[j] for p in parts]) for j in range(5)
        )
        self._pending, self._n_pending = [], 0
        # By pair, then rating time; lexsort is stable, so among equal times the later
        # observation (the compacted part comes first, then the log order) is last.
        order = np.lexsort((rated_at, keys))
        keys, weight, at, rating, rated_at = (
            a[order] for a in (keys, weight, at, rating, rated_at)
        )
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)] - 1
        self.keys = keys[starts]
        self.weight = np.add.reduceat(weight, starts)
        self.at = np.maximum.reduceat(at, starts)
        self.rating = rating[ends]  # NaN only when no entry of the pair is a rating
        self.rated_at = rated_at[ends]


def _decay(at: np.ndarray, now: int, half_life_ms: float) -> np.ndarray:
    age = np.maximum(0, now - at).astype(np.float64)
    return np.power(0.5, age / half_life_ms)


class _Users:
    """Event profile ids -> matrix rows, with consent and merges resolved once per id."""

    def __init__(self, ws_id: str, mode: str) -> None:
        self.ws_id = ws_id
        self.mode = mode
        self.vocab = Vocabulary()
        # profile id as stored on an event -> canonical profile allowed in training, or None
        self._resolved: dict[str, str | None] = {}

    def resolve(self, conn: Connection, rows: Sequence[Any]) -> None:
        """Learn the profiles of a batch of event rows (a few IN queries per batch)."""
        new = sorted({r.profile_id for r in rows if r.profile_id not in self._resolved})
        if not new:
            return
        consent = self._consent(conn, new)
        orphans = [pid for pid in new if pid not in consent]
        for pid in new:
            if pid in consent:
                self._resolved[pid] = pid if consent[pid] else None
        if orphans:
            # Merges rewrite the events of the merged profile, so an event normally names a
            # live profile. One that does not (written around the collection layer, or
            # racing a merge) is placed by its own userId / anonymousId.
            self._resolve_orphans(conn, set(orphans), rows)

    def _consent(self, conn: Connection, pids: list[str]) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for part in chunks(pids):
            for pid, state in conn.execute(
                select(profiles.c.profile_id, profiles.c.consent).where(
                    profiles.c.workspace_id == self.ws_id, profiles.c.profile_id.in_(part)
                )
            ):
                out[pid] = allowed(state or {}, "personalization", self.mode)
        return out

    def _resolve_orphans(self, conn: Connection, orphans: set[str], rows: Sequence[Any]) -> None:
        wanted: dict[str, tuple[str | None, str | None]] = {}
        for r in rows:
            if r.profile_id in orphans and r.profile_id not in wanted:
                wanted[r.profile_id] = (r.user_id, r.anonymous_id)
        links: dict[tuple[str, str], str] = {}
        for kind, pos in (("user_id", 0), ("anonymous_id", 1)):
            values = sorted({v for pair in wanted.values() if (v := pair[pos]) is not None})
            for part in chunks(values):
                for value, pid in conn.execute(
                    select(identities.c.value, identities.c.profile_id).where(
                        identities.c.workspace_id == self.ws_id,
                        identities.c.kind == kind,
                        identities.c.value.in_(part),
                    )
                ):
                    links[(kind, value)] = pid
        targets: dict[str, str | None] = {}
        for orphan, (uid, aid) in wanted.items():
            target = (uid and links.get(("user_id", uid))) or (
                aid and links.get(("anonymous_id", aid))
            )
            targets[orphan] = target or None
        live = sorted({t for t in targets.values() if t})
        consent = self._consent(conn, live)
        for orphan, target in targets.items():
            ok = target is not None and consent.get(target, False)
            self._resolved[orphan] = target if ok else None

    def row(self, event_pid: str) -> int | None:
        pid = self._resolved.get(event_pid)
        return None if pid is None else self.vocab.add(pid)


def _workspace_mode(conn: Connection, ws_id: str) -> str:
    ws = ws_store.get_workspace(conn, ws_id)
    if ws is None:
        raise LookupError(f"no workspace {ws_id!r}")
    return ws.settings.consent_mode


_PAYLOAD = events.c.payload
# Only the fields read, not the payloads: a payload is mostly context, and decoding it is
# most of the cost of reading the log.
_FIELDS = (
    _PAYLOAD[("properties", "product_id")].as_string().label("product_id"),
    _PAYLOAD[("properties", "sku")].as_string().label("sku"),
    _PAYLOAD[("properties", "products")].label("products"),
    _PAYLOAD[("properties", "rating")].label("rating"),
)


def _event_query(ws_id: str, names: list[str], since_ms: int | None) -> Any:
    t = events
    query = select(
        t.c.seq, t.c.event, t.c.profile_id, t.c.user_id, t.c.anonymous_id, t.c.timestamp, *_FIELDS
    ).where(
        # `|| ''` keeps both planners off the (workspace, profile) index: walking the log by
        # seq ranges on the primary key is linear, while that index would be re-read and
        # sorted for every window.
        t.c.workspace_id.concat("") == ws_id,
        t.c.type == "track",
        t.c.event.in_(names),
    )
    if since_ms is not None:
        query = query.where(t.c.timestamp >= since_ms)
    return query


def load_interactions(
    db: Engine,
    ws_id: str,
    *,
    weights: Mapping[str, float],
    half_life_days: float,
    now_ms: int | None = None,
    batch_size: int = 20_000,
    since_ms: int | None = None,
    min_weight: float = 0.0,
) -> Interactions:
    """The workspace's users x items matrix, streamed from the event log.

    See the module docstring for how events become weights. The log is read in ``seq``
    windows of ``batch_size`` (one short read each by primary-key range, no long
    transaction), and pairs are kept compacted, so memory follows the number of distinct
    user-item pairs, not of events. ``since_ms`` skips older events (by event time).

    Users are canonical profile ids: an identity merge rewrites the merged profile's events,
    and an event naming a profile that no longer exists is mapped through its own
    userId / anonymousId to the profile that holds that identity now. **Profiles without
    personalization consent are left out** (the workspace's consent mode decides what no
    answer means, as at collection), whatever their events.

    ``now_ms`` is the moment ages are measured from. Left out, it is the newest counted
    event's time (never later than the clock): moving the anchor scales every weight by the
    same factor, and anchoring at the data keeps an old import's weights near their nominal
    values instead of vanishing (a 2011 data set is 60 half-lives of 90 days old in 2026).
    """
    if half_life_days <= 0:
        raise ValueError("half_life_days must be positive")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    names = sorted(weights)
    half_life_ms = half_life_days * DAY_MS
    clock = int(time.time() * 1000)
    t = events
    with db.connect() as conn:
        mode = _workspace_mode(conn, ws_id)
        head = int(conn.execute(select(func.max(t.c.seq))).scalar() or 0)
        anchor = now_ms
        if anchor is None and names:
            # One aggregate in the database; weights then stay in range whatever the age
            # of the data (0.5 ** 1075 is 0 in float64).
            query = select(func.max(t.c.timestamp)).where(
                t.c.workspace_id == ws_id, t.c.type == "track", t.c.event.in_(names)
            )
            if since_ms is not None:
                query = query.where(t.c.timestamp >= since_ms)
            newest = conn.execute(query).scalar()
            anchor = min(int(newest), clock) if newest is not None else clock
    anchor = anchor if anchor is not None else clock
    users = _Users(ws_id, mode)
    items = Vocabulary()
    pairs = _Pairs()
    n_events = 0
    base = _event_query(ws_id, names, since_ms)
    # Windows of `batch_size` seqs: at most that many rows each, read by primary key range.
    # Events appended meanwhile (past `head`) wait for the next training.
    for after in range(0, head if names else 0, batch_size):
        with db.connect() as conn:
            rows = conn.execute(
                base.where(t.c.seq > after, t.c.seq <= after + batch_size).order_by(t.c.seq)
            ).all()
            if not rows:
                continue
            users.resolve(conn, rows)
        keys: list[int] = []
        ws: list[float] = []
        ats: list[int] = []
        ratings: list[float] = []
        for r in rows:
            ids = event_items(r.event, r.product_id, r.sku, r.products)
            if not ids:
                continue
            u = users.row(r.profile_id)
            if u is None:
                continue
            n_events += 1
            rating = rating_value(r.rating) if r.event == REVIEW else None
            w = 0.0 if rating is not None else float(weights[r.event])
            ts = int(r.timestamp)
            for item_id in ids:
                keys.append((u << 32) | items.add(item_id))
                ws.append(w)
                ats.append(ts)
                ratings.append(math.nan if rating is None else rating)
        if keys:
            at = np.asarray(ats, dtype=np.int64)
            factor = _decay(at, anchor, half_life_ms)
            pairs.add(
                np.asarray(keys, dtype=np.int64),
                np.asarray(ws, dtype=np.float64) * factor,
                at,
                np.asarray(ratings, dtype=np.float64) * factor,  # NaN stays NaN: no rating
            )
    pairs.compact()
    weight = np.where(np.isnan(pairs.rating), pairs.weight, pairs.rating)
    keep = (weight > 0) & (weight >= min_weight)
    return _assemble(pairs.keys[keep], weight[keep], pairs.at[keep], users.vocab, items, n_events)


def _assemble(
    keys: np.ndarray,
    weight: np.ndarray,
    at: np.ndarray,
    users: Vocabulary,
    items: Vocabulary,
    n_events: int,
) -> Interactions:
    """CSR matrices over only the users and items that kept a pair (keys are sorted)."""
    rows = (keys >> _SHIFT).astype(np.int64)
    cols = (keys & _LOW).astype(np.int64)
    used_users = np.unique(rows)
    used_items = np.unique(cols)
    new_rows = np.searchsorted(used_users, rows)
    new_cols = np.searchsorted(used_items, cols)
    user_vocab = Vocabulary(users.id(int(r)) for r in used_users)
    item_vocab = Vocabulary(items.id(int(c)) for c in used_items)
    shape = (len(user_vocab), len(item_vocab))
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(new_rows, minlength=shape[0]), out=indptr[1:])
    indices = new_cols.astype(np.int32)
    data = np.maximum(weight, _TINY).astype(np.float32)
    matrix = sp.csr_matrix((data, indices, indptr), shape=shape)
    last_at = sp.csr_matrix((at.astype(np.int64), indices.copy(), indptr.copy()), shape=shape)
    return Interactions(matrix, user_vocab, item_vocab, last_at, n_events)


def user_history(
    db: Engine,
    ws_id: str,
    profile_id: str,
    weights: Mapping[str, float],
    half_life_days: float,
    limit: int = 200,
    *,
    now_ms: int | None = None,
    max_events: int | None = None,
) -> list[tuple[str, float, int]]:
    """The newest interactions of one profile, from the log, for fold-in at serving time:
    ``(item_id, weight, at)`` newest first, at most ``limit`` items, weighted by the rules
    of :func:`load_interactions` with ages measured from ``now_ms`` (default: the clock).

    Reads the profile's newest ``max_events`` weighted events (default ``10 * limit``)
    through the ``(workspace_id, profile_id)`` index. Consent is the caller's to check.
    """
    if limit < 1 or not weights:
        return []
    names = sorted(weights)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    t = events
    query = (
        select(t.c.seq, t.c.event, t.c.timestamp, *_FIELDS)
        .where(
            t.c.workspace_id == ws_id,
            t.c.profile_id == profile_id,
            t.c.type == "track",
            t.c.event.in_(names),
        )
        .order_by(t.c.seq.desc())
        .limit(max_events if max_events is not None else 10 * limit)
    )
    with db.connect() as conn:
        rows = conn.execute(query).all()
    acc = HistoryWeights(weights, half_life_days, now)
    for r in reversed(rows):  # log order, so the later of two equal times wins
        ids = event_items(r.event, r.product_id, r.sku, r.products)
        if ids:
            acc.add(r.event, ids, int(r.timestamp), r.rating)
    return acc.newest(limit)


class HistoryWeights:
    """One person's weight per item from their events, by the rules of
    :func:`load_interactions`: the latest rating of an item wins over everything else,
    other events add their decayed weight. Feed events in log order."""

    def __init__(self, weights: Mapping[str, float], half_life_days: float, now: int) -> None:
        self.weights = weights
        self.half_life_ms = half_life_days * DAY_MS
        self.now = now
        self.implicit: dict[str, float] = {}
        self.rated: dict[str, tuple[int, float]] = {}  # item -> (time, decayed rating)
        self.last: dict[str, int] = {}

    def add(self, event: str, ids: Sequence[str], ts: int, raw_rating: Any = None) -> None:
        weight = self.weights.get(event)
        if weight is None:
            return
        factor = 0.5 ** (max(0, self.now - ts) / self.half_life_ms)
        rating = rating_value(raw_rating) if event == REVIEW else None
        for item_id in ids:
            self.last[item_id] = max(self.last.get(item_id, ts), ts)
            if rating is not None:
                if item_id not in self.rated or self.rated[item_id][0] <= ts:
                    self.rated[item_id] = (ts, rating * factor)
            else:
                self.implicit[item_id] = self.implicit.get(item_id, 0.0) + float(weight) * factor

    def newest(self, limit: int) -> list[tuple[str, float, int]]:
        """``(item_id, weight, at)`` of the items with a positive weight, newest first."""
        out: list[tuple[str, float, int]] = []
        for item_id, at in self.last.items():
            w = self.rated[item_id][1] if item_id in self.rated else self.implicit.get(item_id, 0.0)
            if w > 0:
                out.append((item_id, w, at))
        out.sort(key=lambda x: (-x[2], x[0]))
        return out[:limit]
