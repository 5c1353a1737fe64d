"""Serving recommendations in real time: ``engine.recs.recommend(ws, user=..., slot=...)``.

One request:

1. **who**: the person (userId, anonymousId, email or profile id) and their consent, in one
   query; the global holdout and a running experiment on the slot may change the slot's
   configuration (see :mod:`sartor.recommend.slots`);
2. **history**: their newest interactions, read from the event log
   (:func:`~sartor.recommend.interactions.user_history`), so an event stored a moment ago
   already counts: models score an ad-hoc history (ALS folds it in, ItemKNN sums the
   neighbours of the newest items, EASE multiplies it by its weights) and nothing waits
   for a retrain;
3. **candidates** from each model of the slot (from a FAISS index over item vectors when
   the catalog is large), with the filters applied first (bought, seen within N days, out
   of stock, deleted, ``exclude``, categories, price), so a filtered item can never come
   back;
4. **blend** of per-model max-normalized scores with the slot's weights (or a cascade),
   **boosts**, **MMR** diversity over categories, the top ``k``, each with its reason;
5. **cold start** when there is nothing to go on: the anonymous session's items, then
   what is popular in the person's segment, trending, then popular overall;
6. the served list is logged for attribution by a background writer (no write on the
   request path) and may be cached until the person's profile changes.

Ids and model rows: each loaded model has its own item vocabulary; all of a workspace's
active models are aligned once to one of them (the "space"), with the catalog data the
filters read, and re-aligned when a model version or the catalog changes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import Connection, func, select

from sartor.clock import now_ms
from sartor.collect.errors import FieldError
from sartor.collect.ingest import ANON, USER
from sartor.experiments.service import in_holdout
from sartor.privacy.consent import allowed
from sartor.recommend import attribution
from sartor.recommend.ann import IndexCache, VectorIndex, normalized
from sartor.recommend.attribution import AttributionWriter
from sartor.recommend.catalog import item_document
from sartor.recommend.diversity import mmr
from sartor.recommend.filters import CatalogView, Filters, allowed_rows, boost_factors
from sartor.recommend.interactions import REVIEW, event_items, rating_value
from sartor.recommend.lookups import Lookups, Reader
from sartor.recommend.registry import LoadedModel
from sartor.recommend.slots import SlotConfig, apply_overrides, payload_overrides, workspace_slots
from sartor.recommend.vocab import Vocabulary
from sartor.storage.tables import items, memberships, segments

if TYPE_CHECKING:
    from sartor.collect.ingest import Outcome as IngestOutcome
    from sartor.collect.prepare import PreparedEvent
    from sartor.engine import Engine, WorkspaceRef
    from sartor.profiles.updater import ProfileChange
    from sartor.workspace import Workspace

log = logging.getLogger("sartor.recommend")

DAY_MS = 86_400_000
MAX_K = 100
HISTORY_ITEMS = 50  # newest distinct items a list is computed from
HISTORY_EVENTS = 400  # newest events read to build it
# Item-item models first: "because you viewed X" is literally their score's biggest term.
EXPLAINERS = ("itemknn", "fbt", "ease", "als", "content")
EXPLAIN_ITEMS = 10  # newest history items an explanation may name
ORDER, ADD = "Order Completed", "Product Added"
MIN_SEGMENT_MEMBERS = 5  # fewer: the list would be about a handful of people
SEGMENT_CACHE_SECONDS = 300.0
CACHE_ENTRIES = 20_000
# Strategies that use nothing about the person: their lists say why ("no_history").
COLD_START = frozenset({"category", "trending", "popularity", "none"})


_MARKS = frozenset({ORDER, ADD})


def history_from_rows(
    rows: Sequence[Any],
    weights: Mapping[str, float],
    half_life_days: float,
    now: int,
    limit: int = HISTORY_ITEMS,
) -> History:
    """A person's history from their newest events (``seq``, ``event``, ``timestamp``,
    ``product_id``, ``sku``, ``products``, ``rating``; newest first), from one query.

    The weighted part follows exactly the rules of
    :func:`sartor.recommend.interactions.user_history` (the tests hold the two equal): it is
    recomputed here only because that function reads the log itself, and serving also needs
    what was bought and what is in the cart, from the same rows.
    """
    half_life_ms = half_life_days * DAY_MS
    implicit: dict[str, float] = {}
    rated: dict[str, tuple[int, float]] = {}
    last: dict[str, int] = {}
    bought: set[str] = set()
    last_order = -1
    added: dict[str, int] = {}
    weight_of = weights.get
    # Unpacked, with the maxima written out: this loop runs for every event of every
    # request (the tests hold it equal to the training rules).
    for _seq, event, timestamp, product_id, sku, products, rating in reversed(rows):
        ids = event_items(event, product_id, sku, products)
        if not ids:
            continue
        ts = int(timestamp)
        if event == ORDER:
            bought.update(ids)
            if ts > last_order:
                last_order = ts
        elif event == ADD:
            for item_id in ids:
                if added.get(item_id, ts) <= ts:
                    added[item_id] = ts
        weight = weight_of(event)
        if weight is None:
            continue
        factor = 0.5 ** ((now - ts if now > ts else 0) / half_life_ms)
        value = rating_value(rating) if event == REVIEW else None
        implicit_weight = float(weight) * factor
        for item_id in ids:
            seen = last.get(item_id)
            if seen is None or seen < ts:
                last[item_id] = ts
            if value is not None:
                if item_id not in rated or rated[item_id][0] <= ts:
                    rated[item_id] = (ts, value * factor)
            else:
                implicit[item_id] = implicit.get(item_id, 0.0) + implicit_weight
    found = []
    for item_id, at in last.items():
        w = rated[item_id][1] if item_id in rated else implicit.get(item_id, 0.0)
        if w > 0:
            found.append((item_id, w, at))
    found.sort(key=lambda x: (-x[2], x[0]))
    found = found[:limit]
    cart = sorted((i for i, at in added.items() if at > last_order), key=lambda i: -added[i])
    return History(
        items=[f[0] for f in found],
        weights=[f[1] for f in found],
        at=[f[2] for f in found],
        purchased=bought,
        cart=cart,
    )


def _seen_window_left(config: SlotConfig, now: int, *histories: History) -> float | None:
    """Seconds until the first item left out as "seen in the last N days" leaves that
    window, when the list may change (None: no such item). A cached list lives no longer."""
    if not config.exclude_seen_days:
        return None
    window = int(config.exclude_seen_days * DAY_MS)
    since = now - window
    ends = [at + window for history in histories for at in history.at if at >= since]
    return (min(ends) - now) / 1000 if ends else None


class _RecommendationIds:
    """Random ids for served lists ("r_" and 32 hex digits, as a uuid4 has), drawn from
    the operating system 4 KB at a time: one system call per 256 lists, not per list.
    A forked process draws its own (it must not repeat its parent's buffer)."""

    BYTES = 16
    BATCH = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0
        self._pid = os.getpid()

    def next(self) -> str:
        with self._lock:
            if self._at >= len(self._buffer) or self._pid != os.getpid():
                self._buffer = os.urandom(self.BYTES * self.BATCH)
                self._at = 0
                self._pid = os.getpid()
            chunk = self._buffer[self._at : self._at + self.BYTES]
            self._at += self.BYTES
        return "r_" + chunk.hex()


class UnknownSlot(LookupError):
    def __init__(self, slot: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown slot {slot!r}; known slots: {', '.join(sorted(known))}")
        self.slot = slot
        self.known = sorted(known)


class UnknownItem(LookupError):
    def __init__(self, item: str) -> None:
        super().__init__(
            f"unknown item {item!r}: it is neither in the catalog nor in any trained model"
        )
        self.item = item


@dataclass
class Person:
    """Who a list is for, as far as the database knows them."""

    pid: str | None
    holdout_id: str | None  # the id the holdout hashes (userId, else anonymousId)
    consent: dict[str, Any]
    anonymous_only: bool  # known only by anonymous ids: their history is their session


@dataclass
class History:
    """A person's newest interactions, newest first."""

    items: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    at: list[int] = field(default_factory=list)
    purchased: set[str] = field(default_factory=set)
    cart: list[str] = field(default_factory=list)

    def fingerprint(self) -> tuple[Any, ...]:
        return (
            len(self.items),
            self.items[0] if self.items else None,
            self.at[0] if self.at else None,
            len(self.purchased),
            tuple(self.cart[:3]),
        )


@dataclass
class _Model:
    """A loaded model aligned to the space."""

    loaded: LoadedModel
    to_space: np.ndarray | None  # model row -> space row (-1: not in the space); None: same
    group: int  # models with equal vocabularies share a group (and their history rows)
    from_space: np.ndarray | None = None  # space row -> model row (-1: none); None: same

    @property
    def slot(self) -> str:
        return self.loaded.slot


@dataclass
class _Space:
    """A workspace's active models, aligned to one item vocabulary, with its catalog view."""

    ws_id: str
    key: tuple[Any, ...]  # (slot, version, object id) of each model
    vocab: Vocabulary
    models: dict[str, _Model]
    view: CatalogView
    catalog_count: int
    catalog_updated: int
    catalog_ids: set[str]
    checked_at: float
    version: int = 0  # bumped by every catalog patch (part of the cache key)
    # Per row: the catalog document and the fields shown for it (see ``_shown``).
    shown: dict[int, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __len__(self) -> int:
        return len(self.vocab)


@dataclass
class _Allowed:
    """What a request may show: a bool per space row, and the rows it may not. Those are
    usually few (the person's history, what is out of stock), so zeroing them in the
    models' scores is cheaper than a pass over the whole space."""

    mask: np.ndarray
    off: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> _Allowed:
        return cls(mask, np.flatnonzero(~mask))

    def zero_others(self, scores: np.ndarray) -> None:
        """Set the scores of the rows not allowed to 0, in place."""
        if len(self.off) * 8 < len(scores):
            scores[self.off] = 0.0
        else:
            scores *= self.mask


@dataclass
class _Opinions:
    """The models' opinions over the space, one row of ``scores`` each (in ``slots``
    order): their scores of the items the filters allow, with negatives and filtered items
    at 0. Times ``scales`` (1 / each row's best) each model's best is 1, so the
    ``weights`` alone set its influence."""

    slots: list[str]
    weights: np.ndarray
    scores: np.ndarray  # (models, space) float32
    scales: np.ndarray

    @classmethod
    def of(
        cls, raw: Sequence[tuple[str, np.ndarray, float]], allowed: _Allowed
    ) -> _Opinions | None:
        """From each model's scores over the space (None when no model has anything to
        say). One matrix for all of them: clipping, filtering and normalizing are a few
        operations, not a few per model. In float32 (ranking needs no more), and a copy
        (models may hand back arrays they keep)."""
        if not raw:
            return None
        scores = np.empty((len(raw), len(allowed.mask)), dtype=np.float32)
        for i, (_, values, _) in enumerate(raw):
            np.maximum(values, 0.0, out=scores[i])  # the copy, clipped on the way
            allowed.zero_others(scores[i])  # filtered: never a candidate
        if not scores.shape[1]:
            return None
        best = scores.max(axis=1)
        keep = (best > 0).tolist()  # a model with nothing to say (or NaN) is left out
        if not all(keep):
            if not any(keep):
                return None
            scores, best = scores[np.asarray(keep)], best[np.asarray(keep)]
        slots = [slot for (slot, _, _), k in zip(raw, keep, strict=True) if k]
        weights = np.asarray([w for (_, _, w), k in zip(raw, keep, strict=True) if k])
        return cls(slots, weights, scores, 1.0 / best.astype(np.float64))

    def __len__(self) -> int:
        return len(self.slots)

    def normalized(self, rows: np.ndarray) -> np.ndarray:
        """Each model's normalized scores of ``rows``, ``(models, len(rows))``."""
        return self.scores[:, rows] * self.scales[:, None]


SAMPLE_STRIDE = 16


def _best_rows(values: np.ndarray, count: int) -> np.ndarray:
    """Rows of the ``count`` largest positive values (all the positive ones when fewer), in
    no particular order; which of several equal values at the cut is taken is unspecified.

    A partition of the whole space is the slow part of picking a few rows out of thousands:
    a value that every ``count`` largest reach is read off an evenly spaced sample first
    (about twice ``count`` values lie above it), so only the rows reaching it are
    partitioned; if fewer than ``count`` do, the whole space is."""
    n = len(values)
    if n > 8 * count:
        sample = values[::SAMPLE_STRIDE]
        rank = len(sample) - (2 * count // SAMPLE_STRIDE + 1)
        if rank > 0:
            threshold = np.partition(sample, rank)[rank]
            if threshold > 0:
                rows = np.flatnonzero(values >= threshold)
                if len(rows) >= count:
                    return _partition_rows(values, rows, count)
    return _partition_rows(values, np.flatnonzero(values > 0), count)


def _partition_rows(values: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` of ``rows`` with the largest values (all of them when fewer)."""
    if len(rows) <= count:
        return rows
    cut = len(rows) - count
    # Not negated: a partition from below needs no copy of the values.
    return rows[np.argpartition(values[rows], cut)[cut:]]


def _top(scores: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores of the ``c`` best positive entries, best first (ties: lower row)."""
    rows = _best_rows(scores, c)
    sc = scores[rows]
    order = np.lexsort((rows, -sc))
    return rows[order], sc[order]


def _csr_gather(m: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored entries of ``rows`` of a CSR matrix: (position in ``rows``, column, value),
    read straight from its arrays (scipy's row slicing costs far more on the hot path)."""
    starts = m.indptr[rows].astype(np.int64)
    lengths = m.indptr[rows + 1].astype(np.int64) - starts
    total = int(lengths.sum())
    which = np.repeat(np.arange(len(rows)), lengths)
    pos = np.arange(total, dtype=np.int64) + np.repeat(
        starts - (np.cumsum(lengths) - lengths), lengths
    )
    return which, m.indices[pos].astype(np.int64), np.asarray(m.data[pos], dtype=np.float64)


def _csr_block(m: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``m[rows][:, cols]`` as a dense array (``cols`` distinct)."""
    out = np.zeros((len(rows), len(cols)))
    which, c, v = _csr_gather(m, rows)
    order = np.argsort(cols)
    sorted_cols = cols[order]
    at = np.minimum(np.searchsorted(sorted_cols, c), len(cols) - 1)
    hit = sorted_cols[at] == c
    out[which[hit], order[at[hit]]] = v[hit]
    return out


def _csr_cosine(m: Any, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cosine between rows of a CSR matrix (``(len(rows), len(targets))``)."""
    tw, tc, tv = _csr_gather(m, targets)
    hw, hc, hv = _csr_gather(m, rows)
    cols = np.unique(tc)
    dense = np.zeros((len(targets), len(cols)))
    dense[tw, np.searchsorted(cols, tc)] = tv
    dots = np.zeros((len(rows), len(targets)))
    if len(cols):
        at = np.minimum(np.searchsorted(cols, hc), len(cols) - 1)
        hit = cols[at] == hc
        np.add.at(dots, hw[hit], hv[hit, None] * dense[:, at[hit]].T)
    na = np.sqrt(np.bincount(hw, weights=hv * hv, minlength=len(rows)))
    nb = np.sqrt(np.bincount(tw, weights=tv * tv, minlength=len(targets)))
    denom = np.outer(na, nb)
    return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)


def _pair_similarity(model: Any, hist: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Similarity of each history row to each target row (model rows), ``(H, T)``.

    Reads the model's own item-item structure where it has one, so the named history item
    is the one that contributed most to the score: ItemKNN's neighbour weights, EASE's
    weights, cosine of ALS factors or of content vectors. Any other model goes through the
    contract's ``similar_scores``.
    """
    sim = getattr(model, "similarity_", None)
    if sim is not None and hasattr(sim, "indptr"):
        return _csr_block(sim, hist, targets)
    weights = getattr(model, "weights_", None)
    if isinstance(weights, np.ndarray) and weights.ndim == 2:
        return np.asarray(weights[np.ix_(hist, targets)], dtype=np.float64)
    for name in ("item_factors_", "item_vectors_"):
        vectors = getattr(model, name, None)
        if vectors is None:
            continue
        if hasattr(vectors, "indptr"):
            return _csr_cosine(vectors, hist, targets)
        a = np.asarray(vectors[hist], dtype=np.float64)
        b = np.asarray(vectors[targets], dtype=np.float64)
        dots = a @ b.T
        denom = np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
        return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    return np.asarray(model.similar_scores(hist), dtype=np.float64)[:, targets]


def _title(doc: Mapping[str, Any] | None, item_id: str) -> str:
    title = doc.get("title") if doc else None
    return str(title) if title else item_id


class RecommendationService:
    """Real-time recommendations over the registry's active models. Thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.db = engine.db
        self.settings = engine.settings
        self.writer = AttributionWriter(engine.db)
        self.lookups = Lookups(engine.db)
        self._history_names = sorted(set(engine.settings.rec_event_weights) | _MARKS)
        self.ann = IndexCache()
        self.catalog_check_seconds = 1.0
        self._spaces: dict[str, _Space] = {}
        self._space_keys: dict[str, tuple[dict[str, LoadedModel], tuple[Any, ...]]] = {}
        self._ids = _RecommendationIds()
        self._space_lock = threading.Lock()
        self._swapping: set[str] = set()
        self._slots: dict[str, tuple[Any, dict[str, SlotConfig]]] = {}
        self._segment_lists: dict[tuple[Any, ...], tuple[float, np.ndarray, np.ndarray]] = {}
        self._cache: OrderedDict[tuple[Any, ...], tuple[float, dict[str, Any]]] = OrderedDict()
        self._cache_by_profile: dict[tuple[str, str], set[tuple[Any, ...]]] = {}
        self._cache_lock = threading.Lock()
        self.cache_hits = 0
        self._norms: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()

    # -- configuration --------------------------------------------------------------------

    def slots(self, ref: WorkspaceRef) -> dict[str, SlotConfig]:
        """The workspace's slots: defaults, with its ``recommendations.slots`` overrides."""
        ws = self.engine.workspace(ref)
        own = getattr(ws.settings, "recommendations", None) or {}
        cached = self._slots.get(ws.id)
        if cached is None or cached[0] is not own:
            cached = self._slots[ws.id] = (own, workspace_slots(own))
        return cached[1]

    # -- lifecycle and hooks --------------------------------------------------------------

    def flush(self) -> None:
        """Write every queued served list and outcome now (tests, erasure, shutdown)."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self.lookups.close()

    def on_commit(
        self, ws: Workspace, prepared: Sequence[PreparedEvent], outcomes: Sequence[IngestOutcome]
    ) -> None:
        """After an ingest commit: events carrying a ``recommendation_id`` become outcomes
        (written by the background thread). Never raises: the events are acknowledged."""
        try:
            found = []
            for event, outcome in zip(prepared, outcomes, strict=True):
                if outcome.status != "stored" or event.type != "track":
                    continue
                got = attribution.outcome_of(
                    event.message_id,
                    event.event,
                    event.payload.get("properties"),
                    event.timestamp,
                )
                if got is not None:
                    found.append(got)
            self.writer.outcomes(ws.id, found)
        except Exception:
            log.exception("recommendation outcomes not recorded", extra={"workspace": ws.id})

    def on_profile_change(self, change: ProfileChange) -> None:
        """A profile changed (``profile.updated``/``profile.refreshed``): its cached lists go.
        (Lists are also keyed by the newest history entry, so a list never outlives the
        next event even when profiles are folded in another process.)"""
        self._drop_cached(change.workspace_id, change.profile_id)

    def erase(self, conn: Connection, ws_id: str, profile_ids: Sequence[str]) -> int:
        """Inside the erasure transaction: the lists served to these profiles and every
        outcome tied to them or to their events. Call :meth:`flush` before the transaction."""
        for pid in profile_ids:
            self._drop_cached(ws_id, pid)
        return attribution.erase(conn, ws_id, profile_ids)

    def _drop_cached(self, ws_id: str, pid: str) -> None:
        with self._cache_lock:
            for entry in self._cache_by_profile.pop((ws_id, pid), ()):
                self._cache.pop(entry, None)

    def report(
        self, ref: WorkspaceRef, slot: str | None = None, since: int | None = None
    ) -> dict[str, Any]:
        """Served, clicks, CTR, orders, conversion and revenue per slot and model versions."""
        ws = self.engine.workspace(ref)
        self.flush()
        with self.db.connect() as conn:
            return attribution.report(conn, ws.id, slot, since)

    # -- the space: aligned models and the catalog view -----------------------------------

    def _space(self, ws_id: str) -> _Space | None:
        loaded = self.engine.models.active(ws_id)
        if not loaded:
            return None
        # The objects too: erasure rewrites a version's artifacts and the registry reloads it.
        # The registry hands back the same dict until it looks again: keyed once per dict.
        known = self._space_keys.get(ws_id)
        if known is not None and known[0] is loaded:
            key = known[1]
        else:
            key = tuple(sorted((slot, m.version, id(m)) for slot, m in loaded.items()))
            self._space_keys[ws_id] = (loaded, key)
        space = self._spaces.get(ws_id)
        if space is None:
            with self._space_lock:
                space = self._spaces.get(ws_id)
                if space is None:
                    space = self._spaces[ws_id] = self._build_space(ws_id, key, loaded)
        elif space.key != key and ws_id not in self._swapping:
            # New versions: aligned in the background (reading the catalog takes a while on
            # a large one) while the current ones keep serving.
            self._swapping.add(ws_id)
            threading.Thread(
                target=self._swap, args=(ws_id, key, loaded), name="sartor-recs-swap", daemon=True
            ).start()
        if time.monotonic() - space.checked_at >= self.catalog_check_seconds:
            self._refresh_catalog(ws_id, space)
        return space

    def _swap(self, ws_id: str, key: tuple[Any, ...], loaded: dict[str, LoadedModel]) -> None:
        try:
            space = self._build_space(ws_id, key, loaded)
            with self._space_lock:
                self._spaces[ws_id] = space
        except Exception:
            log.exception("new model versions not aligned; the current ones keep serving")
        finally:
            self._swapping.discard(ws_id)

    def _build_space(
        self, ws_id: str, key: tuple[Any, ...], loaded: dict[str, LoadedModel]
    ) -> _Space:
        # The largest vocabulary (the newest on ties) is the space: usually every slot of a
        # training run shares it and nothing needs mapping.
        base = max(loaded.values(), key=lambda m: (len(m.items), m.trained_at, m.slot))
        base_ids = base.items.to_array()
        groups: list[tuple[Vocabulary, np.ndarray]] = [(base.items, base_ids)]
        models: dict[str, _Model] = {}
        for slot, m in loaded.items():
            group = -1
            for g, (vocab, ids) in enumerate(groups):
                if m.items is vocab or (
                    len(m.items) == len(vocab) and np.array_equal(m.items.to_array(), ids)
                ):
                    group = g
                    break
            if group == -1:
                groups.append((m.items, m.items.to_array()))
                group = len(groups) - 1
            if group == 0:
                models[slot] = _Model(m, None, group)
            else:
                to_space = np.asarray(
                    [base.items.row(i) if i in base.items else -1 for i in m.items.ids()],
                    dtype=np.int64,
                )
                from_space = np.full(len(base.items), -1, dtype=np.int64)
                known = to_space >= 0
                from_space[to_space[known]] = np.flatnonzero(known)
                models[slot] = _Model(m, to_space, group, from_space)
        stamp = self._catalog_stamp(ws_id)
        catalog = {doc["id"]: doc for doc in self.engine.catalog.iter_all(ws_id)}
        view = CatalogView.build(base.items.ids(), catalog)
        return _Space(
            ws_id,
            key,
            base.items,
            models,
            view,
            stamp[0],
            stamp[1],
            set(catalog),
            time.monotonic(),
        )

    def _catalog_stamp(self, ws_id: str) -> tuple[int, int]:
        with self.db.connect() as conn:
            count, newest = conn.execute(
                select(func.count(), func.max(items.c.updated_at)).where(
                    items.c.workspace_id == ws_id
                )
            ).one()
        return int(count or 0), int(newest or 0)

    def _refresh_catalog(self, ws_id: str, space: _Space) -> None:
        """Patch the view with the catalog rows changed since the last look (stock, price,
        new items); a deletion (the count disagrees) rebuilds it."""
        if not space.lock.acquire(blocking=False):
            return  # another request is refreshing it
        try:
            count, newest = self._catalog_stamp(ws_id)
            if count == space.catalog_count and newest == space.catalog_updated:
                space.checked_at = time.monotonic()
                return
            with self.db.connect() as conn:
                changed = [
                    item_document(r)
                    for r in conn.execute(
                        select(items).where(
                            items.c.workspace_id == ws_id,
                            items.c.updated_at >= space.catalog_updated,
                        )
                    )
                ]
            new_ids = {d["id"] for d in changed} - space.catalog_ids
            if count != space.catalog_count + len(new_ids):
                catalog = {doc["id"]: doc for doc in self.engine.catalog.iter_all(ws_id)}
                view = CatalogView.build(space.view.ids, catalog)
                space.view, space.catalog_ids = view, set(catalog)
            else:
                by_row = {}
                for doc in changed:
                    row = space.vocab.row(doc["id"])
                    if row is not None:
                        by_row[row] = doc
                space.view.patch(by_row)
                space.catalog_ids |= new_ids
            space.catalog_count, space.catalog_updated = count, newest
            space.version += 1
            space.checked_at = time.monotonic()
        finally:
            space.lock.release()

    # -- who, and what they did ------------------------------------------------------------

    def _person(self, read: Reader, ws: Workspace, user: str) -> Person:
        rows = read.person(ws.id, self.engine._lookup_id(ws, user))
        if not rows:
            # Someone new: the holdout hashes the id given, as /v1/decide does.
            return Person(None, user, {}, False)
        rank = {USER: 0, ANON: 1}
        best = min(rows, key=lambda r: (rank.get(r.matched, 2), r.profile_id))
        pid = best.profile_id
        mine = [r for r in rows if r.profile_id == pid]
        user_ids = sorted(r.value for r in mine if r.kind == USER)
        anon_ids = sorted(r.value for r in mine if r.kind == ANON)
        if best.matched == USER:
            holdout_id: str | None = user
        else:
            holdout_id = user_ids[0] if user_ids else (anon_ids[0] if anon_ids else user)
        return Person(pid, holdout_id, dict(best.consent or {}), not user_ids)

    def _history(self, ws_id: str, pid: str, *, now: int, read: Reader | None = None) -> History:
        if read is None:
            with self.lookups.reading() as own:
                return self._history(ws_id, pid, now=now, read=own)
        rows = read.events(ws_id, pid, self._history_names, HISTORY_EVENTS)
        return history_from_rows(
            rows, self.settings.rec_event_weights, self.settings.rec_half_life_days, now
        )

    # -- the request ----------------------------------------------------------------------

    def recommend(
        self,
        ref: WorkspaceRef,
        *,
        user: str | None = None,
        anonymous_id: str | None = None,
        item: str | None = None,
        slot: str = "home",
        k: int = 10,
        filters: Filters | None = None,
        now: int | None = None,
    ) -> dict[str, Any]:
        """A list for ``user`` (or an anonymous visitor) on ``slot``; see the module doc.

        Raises :class:`UnknownSlot`, :class:`UnknownItem`, or :class:`FieldError` for bad
        arguments. An unknown user is not an error: they get a cold-start list.
        """
        ws = self.engine.workspace(ref)
        slots = self.slots(ws)
        config = slots.get(slot)
        if config is None:
            raise UnknownSlot(slot, list(slots))
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise FieldError("k", f"must be an integer from 1 to {MAX_K}")
        if config.kind == "similar" and item is None:
            raise FieldError("item", f"is required for slot {slot!r} (items similar to it)")
        filters = filters or Filters()
        if (
            filters.min_price is not None
            and filters.max_price is not None
            and filters.min_price > filters.max_price
        ):
            raise FieldError("minPrice", "must not be above maxPrice")
        now = now_ms() if now is None else now

        # One connection for all the reads about the person (see Lookups.reading).
        with self.lookups.reading() as read:
            person = (
                self._person(read, ws, user) if user is not None else Person(None, None, {}, False)
            )
            if user is None and anonymous_id is not None:
                person = self._person(read, ws, anonymous_id)
                anonymous_id = None
            personalized_ok = person.pid is not None and allowed(
                person.consent, "personalization", ws.consent_mode
            )
            off_reason: str | None = None
            if person.pid is not None and not personalized_ok:
                off_reason = "no_consent"

            experiment: dict[str, Any] | None = None
            holdout = False
            if user is not None and self._experiment_on(ws.id, slot):
                decided = self._decide(ws, user, slot)
                if decided is not None:
                    holdout = bool(decided.get("holdout"))
                    if decided.get("experiment") and not holdout:
                        experiment = {
                            "key": decided["experiment"],
                            "variation": decided["variation"],
                        }
                        config = self._override(config, decided.get("payload"), experiment)
            elif person.holdout_id is not None and ws.settings.holdout_share > 0:
                holdout = in_holdout(
                    ws.settings.holdout_share, ws.settings.holdout_seed, person.holdout_id
                )
            if holdout:
                personalized_ok, off_reason = False, "holdout"

            space = self._space(ws.id)
            if item is not None and not self._item_known(ws.id, space, item):
                raise UnknownItem(item)

            history = History()
            if personalized_ok and person.pid is not None:
                history = self._history(ws.id, person.pid, now=now, read=read)
            session = History()
            # The visitor's anonymous session, unless the person said no or is held out: a new
            # login (no profile yet) still sees what their session was about.
            session_ok = not holdout and (person.pid is None or personalized_ok)
            if session_ok and anonymous_id is not None and not history.items:
                other = self._person(read, ws, anonymous_id)
                if (
                    other.pid is not None
                    and other.pid != person.pid
                    and allowed(other.consent, "personalization", ws.consent_mode)
                ):
                    session = self._history(ws.id, other.pid, now=now, read=read)

        cache_key = (
            ws.id,
            person.pid or (None if personalized_ok else "-"),
            slot,
            config.model_dump_json(),  # settings or an experiment may have changed it
            item,
            k,
            filters.key(),
            None if experiment is None else tuple(experiment.values()),
            personalized_ok,
            history.fingerprint(),
            session.fingerprint(),
            None if space is None else (space.key, space.version),
        )
        cached = self._cached(cache_key)
        if cached is None:
            body = self._build(
                ws,
                space,
                config,
                person,
                personalized_ok,
                history,
                session,
                item,
                k,
                filters,
                now,
            )
            if not body["personalized"]:
                if off_reason is not None:
                    body["reason"] = off_reason
                elif body["strategy"] in COLD_START:
                    body["reason"] = "no_history"
            if experiment is not None:
                body["experiment"] = experiment
            self._remember(
                cache_key, person.pid, body, _seen_window_left(config, now, history, session)
            )
        else:
            body = cached
        rec_id = self._ids.next()
        response = {"recommendationId": rec_id, "slot": slot, **body}
        self.writer.served(
            {
                "id": rec_id,
                "workspace_id": ws.id,
                "profile_id": person.pid,
                "slot": slot,
                "models": body["models"],
                "items": [i["id"] for i in body["items"]],
                "personalized": int(body["personalized"]),
                "created_at": now,
            }
        )
        return response

    # -- experiments ----------------------------------------------------------------------

    def _experiment_on(self, ws_id: str, slot: str) -> bool:
        # The experiments service keeps its running experiments cached (2 s); asking it for
        # them costs nothing, while a full decision costs several queries.
        try:
            live = self.engine.experiments._live(ws_id)
        except Exception:
            log.exception("running experiments unavailable")
            return False
        return any(x.slot == slot for x in live)

    def _decide(self, ws: Workspace, user: str, slot: str) -> dict[str, Any] | None:
        # Without the anonymousId: the exposure event must not link identities as a side
        # effect of reading recommendations.
        try:
            decision = self.engine.experiments.decide(ws, user, slots=[slot])
        except Exception:  # an experiment must never break serving
            log.exception("experiment decision failed; serving the slot's defaults")
            return None
        out = dict(decision["slots"].get(slot) or {})
        out["holdout"] = bool(decision.get("holdout")) or bool(out.get("holdout"))
        return out

    def _override(self, config: SlotConfig, payload: Any, experiment: dict[str, Any]) -> SlotConfig:
        changes = payload_overrides(payload)
        if not changes:
            return config
        try:
            return apply_overrides(config, changes)
        except ValidationError as exc:
            log.warning(
                "experiment %s variation %s has an invalid recommendations payload (%s); "
                "serving the slot's defaults",
                experiment["key"],
                experiment["variation"],
                exc.errors()[0]["msg"],
            )
            return config

    # -- the list -------------------------------------------------------------------------

    def _item_known(self, ws_id: str, space: _Space | None, item: str) -> bool:
        if space is not None and item in space.vocab:
            return True
        return self.engine.catalog.get(ws_id, item) is not None

    def _build(
        self,
        ws: Workspace,
        space: _Space | None,
        config: SlotConfig,
        person: Person,
        personalized_ok: bool,
        history: History,
        session: History,
        item: str | None,
        k: int,
        filters: Filters,
        now: int,
    ) -> dict[str, Any]:
        empty = {"strategy": "none", "personalized": False, "models": {}, "items": []}
        if space is None:
            return empty
        require_catalog = space.catalog_count > 0
        excluded: set[str] = set()
        for known in (history, session):  # the session is the same person, signed out
            if config.exclude_purchased:
                excluded |= known.purchased
            if config.exclude_seen_days > 0:
                since = now - int(config.exclude_seen_days * DAY_MS)
                excluded.update(
                    i for i, at in zip(known.items, known.at, strict=True) if at >= since
                )
        basket: list[str] = []
        if config.kind in ("similar", "cart"):
            basket = [item] if item is not None else list(history.cart)
            excluded.update(basket)
        mask = allowed_rows(
            space.view,
            filters,
            space.view.rows(excluded),
            require_catalog=require_catalog,
        )

        strategy = "none"
        personalized = False
        used: dict[str, int] = {}
        scored: _Opinions | None = None
        source: History | None = None
        if basket and any(space.vocab.row(b) is not None for b in basket):
            allowed = _Allowed.of(mask)
            scored = _Opinions.of(self._similar(space, config, basket, allowed), allowed)
            strategy = "similar" if config.kind == "similar" else "cart"
            personalized = False if item is not None else scored is not None
        elif config.kind == "personal" or (config.kind == "cart" and not basket):
            for candidate, name in ((history, "personal"), (session, "session")):
                if candidate.items:
                    allowed = _Allowed.of(mask)
                    scored = _Opinions.of(
                        self._personal(space, config, candidate, allowed), allowed
                    )
                    if scored is not None:
                        source = candidate
                        strategy = name
                        if name == "personal" and person.anonymous_only:
                            strategy = "session"
                        personalized = True
                        break

        chosen: list[tuple[int, float, str, str | None]] = []  # row, score, reason, item
        if scored is not None:
            chosen = self._rank(space, config, scored, k, filters, basket, source, history)
            for slot_name in scored.slots:
                used[slot_name] = space.models[slot_name].loaded.version
        if len(chosen) < k:
            # Cold start, or too few candidates: fall back down the chain.
            taken = {c[0] for c in chosen}
            fill_mask = mask.copy()
            if taken:
                fill_mask[np.fromiter(taken, dtype=np.int64)] = False
            extra, fallback_strategy, fallback_models, fell_personal = self._fallback(
                ws,
                space,
                config,
                person,
                personalized_ok,
                item,
                basket,
                fill_mask,
                k - len(chosen),
                config.mmr_lambda,
            )
            if not chosen:
                strategy = fallback_strategy
                personalized = fell_personal
            chosen.extend(extra)
            used.update(fallback_models)
        return {
            "strategy": strategy,
            "personalized": personalized,
            "models": dict(sorted(used.items())),
            "items": [
                self._item(space, row, score, reason, about) for row, score, reason, about in chosen
            ],
        }

    def _item(
        self, space: _Space, row: int, score: float, reason: str, about: str | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": space.vocab.id(row),
            "score": round(float(score), 6),
            "reason": reason,
        }
        if about is not None:
            out["reasonItem"] = about
        out.update(self._shown(space, row))
        return out

    @staticmethod
    def _shown(space: _Space, row: int) -> dict[str, Any]:
        """The catalog fields a list shows for an item, built once per catalog document
        (a patched or rebuilt view holds a new document object, so nothing stale stays)."""
        doc = space.view.items[row]
        found = space.shown.get(row)
        if found is not None and found[0] is doc:
            return found[1]
        fields = doc or {}
        shown = {
            "title": fields.get("title"),
            "category": fields.get("category"),
            "brand": fields.get("brand"),
            "price": fields.get("price"),
            "currency": fields.get("currency"),
            "inStock": fields.get("inStock"),
        }
        attrs = fields.get("attributes") or {}
        for key, name in (("url", "url"), ("image_url", "imageUrl")):
            if attrs.get(key):
                shown[name] = attrs[key]
        space.shown[row] = (doc, shown)
        return shown

    # -- candidates -----------------------------------------------------------------------

    def _model_rows(
        self, space: _Space, model: _Model, ids: Sequence[str], weights: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray]:
        rows, kept, _ = self._known_rows(model, ids, weights)
        return rows, kept

    @staticmethod
    def _known_rows(
        model: _Model, ids: Sequence[str], weights: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The model's rows of the ids it knows, their weights, and those ids."""
        row_of = model.loaded.items.row
        rows, kept, known = [], [], []
        for item_id, w in zip(ids, weights, strict=True):
            row = row_of(item_id)
            if row is not None:
                rows.append(row)
                kept.append(w)
                known.append(item_id)
        return np.asarray(rows, dtype=np.int64), np.asarray(kept, dtype=np.float64), known

    def _to_space(self, space: _Space, model: _Model, scores: np.ndarray) -> np.ndarray:
        if model.to_space is None:
            return np.asarray(scores)
        out = np.zeros(len(space), dtype=np.float64)
        ok = model.to_space >= 0
        out[model.to_space[ok]] = np.asarray(scores, dtype=np.float64)[ok]
        return out

    def _use_ann(self, space: _Space) -> bool:
        return len(space) >= self.settings.rec_ann_threshold

    def _ann_index(
        self, space: _Space, model: _Model, kind: str, vectors: Callable[[], np.ndarray]
    ) -> VectorIndex | None:
        key = (space.ws_id, model.slot, model.loaded.version, id(model.loaded), kind)
        return self.ann.get(key, vectors, family=(space.ws_id, model.slot, kind))

    def _candidates_ann(
        self,
        space: _Space,
        model: _Model,
        index: VectorIndex,
        query: np.ndarray,
        allowed: _Allowed,
        c: int,
    ) -> np.ndarray:
        """Search, then filter; widen the search while filters leave too few. The ``c``
        best, as scores over the space (0 elsewhere)."""
        want = min(index.n, 2 * c + 32)
        while True:
            rows, sc = index.search(query, want)
            if model.to_space is not None:
                mapped = model.to_space[rows]
                ok = mapped >= 0
                rows, sc = mapped[ok], sc[ok]
            keep = allowed.mask[rows] & (sc > 0)
            rows, sc = rows[keep], sc[keep]
            if len(rows) >= c or want >= index.n:
                break
            want = min(index.n, want * 4)
        dense = np.zeros(len(space))
        dense[rows[:c]] = sc[:c]
        return dense

    def _ann_query(
        self, space: _Space, model: _Model, rows: np.ndarray, weights: np.ndarray
    ) -> tuple[VectorIndex, np.ndarray] | None:
        """The index and query vector for a history, when the catalog is large enough and
        the model has dense item vectors: ALS (the folded-in user vector; its inner
        products are the ALS scores) or dense content embeddings (the weighted mean of the
        history's unit vectors; inner products rank as cosine)."""
        if not self._use_ann(space):
            return None
        m: Any = model.loaded.model
        if hasattr(m, "user_vector") and hasattr(m, "item_factors_"):
            index = self._ann_index(space, model, "ip", lambda: np.asarray(m.item_factors_))
            return None if index is None else (index, m.user_vector(rows, weights))
        vectors = getattr(m, "item_vectors_", None)
        if isinstance(vectors, np.ndarray):
            index = self._ann_index(space, model, "ip", lambda: normalized(vectors))
            if index is None:
                return None
            return index, (weights[:, None] * normalized(vectors[rows])).sum(axis=0)
        return None

    def _personal(
        self, space: _Space, config: SlotConfig, history: History, allowed: _Allowed
    ) -> list[tuple[str, np.ndarray, float]]:
        """Each model's scores of the history over the space, with its weight."""
        out: list[tuple[str, np.ndarray, float]] = []
        rows_by_group: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for name, weight in config.models.items():
            model = space.models.get(name)
            if model is None or weight <= 0:
                continue
            if model.group not in rows_by_group:
                rows_by_group[model.group] = self._model_rows(
                    space, model, history.items, history.weights
                )
            rows, weights = rows_by_group[model.group]
            if len(rows) == 0:
                continue
            m = model.loaded.model
            try:
                query = self._ann_query(space, model, rows, weights)
                if query is not None:
                    index, vector = query
                    found = self._candidates_ann(
                        space, model, index, vector, allowed, config.candidates
                    )
                    out.append((name, found, weight))
                    continue
                scores = self._history_scores(m, rows, weights)
            except Exception:  # one broken model must not take the slot down
                log.exception("model %s could not score a history", name)
                continue
            out.append((name, self._to_space(space, model, scores), weight))
        return out

    def _similar(
        self, space: _Space, config: SlotConfig, basket: Sequence[str], allowed: _Allowed
    ) -> list[tuple[str, np.ndarray, float]]:
        """Each model's similarity of every item to the basket, with its weight."""
        out: list[tuple[str, np.ndarray, float]] = []
        for name, weight in config.models.items():
            model = space.models.get(name)
            if model is None or weight <= 0:
                continue
            rows, _ = self._model_rows(space, model, basket, [1.0] * len(basket))
            if len(rows) == 0:
                continue
            m = model.loaded.model
            try:
                if self._use_ann(space) and hasattr(m, "item_factors_"):
                    factors = lambda m=m: normalized(np.asarray(m.item_factors_))  # noqa: E731
                    index = self._ann_index(space, model, "cosine", factors)
                    if index is not None:
                        unit = normalized(np.asarray(m.item_factors_)[rows])
                        query = unit.sum(axis=0)
                        found = self._candidates_ann(
                            space, model, index, query, allowed, config.candidates
                        )
                        out.append((name, found, weight))
                        continue
                scores = self._similar_sum(m, rows)
            except Exception:
                log.exception("model %s could not find similar items", name)
                continue
            out.append((name, self._to_space(space, model, scores), weight))
        return out

    @staticmethod
    def _history_scores(m: Any, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``m.score_history(rows, weights)``, with ALS and EASE scored directly (the tests
        hold them equal to the models' own): ALS's item factors times the folded-in user
        vector, EASE's history rows of its weights times the history's weights, each one
        BLAS matrix-vector product, which ``sartor serve`` runs on one thread, where this
        is the fastest form (the models themselves avoid BLAS for one vector, as a library
        caller's BLAS may be multi-threaded)."""
        factors = getattr(m, "item_factors_", None)
        if isinstance(factors, np.ndarray) and hasattr(m, "user_vector"):
            return np.asarray(factors @ m.user_vector(rows, weights))
        dense = getattr(m, "weights_", None)
        if isinstance(dense, np.ndarray) and dense.ndim == 2 and len(rows):
            # EASE-like: the weighted sum of the history's rows of the item-item weights.
            return np.asarray(weights.astype(dense.dtype) @ dense[rows])
        return np.asarray(m.score_history(rows, weights))

    def _similar_sum(self, m: Any, rows: np.ndarray) -> np.ndarray:
        """``m.similar_scores(rows).sum(axis=0)``: how similar each item is to the basket.

        Item-item models (ItemKNN, EASE) score a history as exactly that sum, so their
        ``score_history`` with unit weights is used (it gathers the rows without scipy's
        slicing). For unit item vectors the sum of cosines is the dot product with the sum
        of the unit vectors: one matrix-vector product instead of a ``(rows x items)``
        matrix, for ALS factors here (BLAS, as in :meth:`_history_scores`) and by the
        model itself where it offers ``similar_sum`` (content).
        """
        if getattr(m, "similarity_", None) is not None or isinstance(
            getattr(m, "weights_", None), np.ndarray
        ):
            return np.asarray(m.score_history(rows, np.ones(len(rows))))
        factors = getattr(m, "item_factors_", None)
        if isinstance(factors, np.ndarray) and factors.ndim == 2:
            norms = self._norms.get(m)
            if norms is None:
                norms = self._norms[m] = np.linalg.norm(factors.astype(np.float64), axis=1)
            picked = factors[rows].astype(np.float64)
            unit = np.divide(
                picked, norms[rows, None], out=np.zeros_like(picked), where=norms[rows, None] > 0
            )
            dots = factors @ unit.sum(axis=0).astype(factors.dtype)
            return np.divide(dots, norms, out=np.zeros(len(norms)), where=norms > 0)
        own = getattr(m, "similar_sum", None)
        if callable(own):
            return np.asarray(own(rows))
        sims = np.asarray(m.similar_scores(rows), dtype=np.float64)
        return sims.sum(axis=0) if sims.ndim == 2 else sims

    # -- blending, boosts, diversity, reasons -------------------------------------------

    def _rank(
        self,
        space: _Space,
        config: SlotConfig,
        scored: _Opinions,
        k: int,
        filters: Filters,
        basket: Sequence[str],
        source: History | None,
        history: History,
    ) -> list[tuple[int, float, str, str | None]]:
        # Dense over the space: every item any model scored is a candidate.
        n = len(space)
        if config.combine == "cascade":
            # Each model's items rank below every item of the models before it.
            tiers = len(scored)
            total = np.zeros(n)
            taken = np.zeros(n, dtype=bool)
            for i, (row, scale) in enumerate(zip(scored.scores, scored.scales, strict=True)):
                free = ~taken & (row > 0)
                total[free] = (tiers - i - 1) + row[free] * scale
                taken |= free
        else:
            # The blend of all the models at once: one matrix-vector product.
            total = (scored.weights * scored.scales).astype(np.float32) @ scored.scores
        if filters.boosts:
            total *= boost_factors(space.view, filters.boosts, np.arange(n))
        # The best few go on to MMR.
        candidates = _best_rows(total, max(5 * k, 50))
        picked = candidates[
            mmr(
                total[candidates],
                space.view.category_code[candidates],
                *space.view.category_levels(),
                k,
                config.mmr_lambda,
                space.view.category_similarity(),
            )
        ]
        # The model that contributed most to each item explains it (in a cascade: its tier).
        contributions = scored.normalized(picked) * scored.weights[:, None]
        if config.combine == "cascade":
            owner = np.argmax(contributions > 0, axis=0)
        else:
            owner = np.argmax(contributions, axis=0)
        reasons = self._reasons(
            space,
            config,
            [scored.slots[o] for o in owner.tolist()],
            picked,
            basket,
            source,
            history,
        )
        return [
            (int(r), float(total[r]), text, about)
            for r, (text, about) in zip(picked, reasons, strict=True)
        ]

    def _reasons(
        self,
        space: _Space,
        config: SlotConfig,
        owners: list[str],
        final_rows: np.ndarray,
        basket: Sequence[str],
        source: History | None,
        history: History,
    ) -> list[tuple[str, str | None]]:
        """Per item: its reason and the item it names, from the model that scored it most."""
        if config.kind != "personal" and basket:
            context_ids = list(basket)
            context_w = [1.0] * len(basket)
        elif source is not None:
            context_ids = source.items[:EXPLAIN_ITEMS]
            context_w = source.weights[:EXPLAIN_ITEMS]
        else:
            return [("recommended for you", None)] * len(final_rows)
        titles: dict[str, str] = {}

        def title(about: str) -> str:
            if about not in titles:
                row = space.vocab.row(about)
                titles[about] = _title(space.view.items[row] if row is not None else None, about)
            return titles[about]

        if len(context_ids) == 1:  # one item in the basket: it is what every item is about
            about = context_ids[0]
            return [
                (self._reason_text(config, owner, about, title(about), history), about)
                for owner in owners
            ]
        out: list[tuple[str, str | None]] = [("recommended for you", None)] * len(final_rows)
        context: dict[int, tuple[np.ndarray, np.ndarray, list[str]]] = {}  # by vocabulary

        def explain(source: str, positions: list[int]) -> list[int]:
            """Name, for these items, the context item that contributes most to them in the
            ``source`` model; returns the positions it could not explain."""
            model = space.models[source]
            if model.group not in context:
                context[model.group] = self._known_rows(model, context_ids, context_w)
            hist_rows, w, hist_ids = context[model.group]
            targets = final_rows[positions]
            if model.from_space is not None:
                targets = model.from_space[targets]  # this model's rows
            if len(hist_rows) == 0 or (targets < 0).any():
                return positions
            try:
                sim = _pair_similarity(model.loaded.model, hist_rows, targets)
            except Exception:  # an explanation is never worth failing a request
                log.exception("no explanation from %s", source)
                return positions
            contribution = sim * w[:, None]
            best = np.argmax(contribution, axis=0)
            strength = contribution[best, np.arange(len(positions))].tolist()
            left = []
            for pos, b, value in zip(positions, best.tolist(), strength, strict=True):
                if value <= 0:
                    left.append(pos)
                    continue
                about = hist_ids[b]
                text = self._reason_text(config, owners[pos], about, title(about), history)
                out[pos] = (text, about)
            return left

        # One item-item model explains the whole list when it can (one small product
        # instead of one per model); what it cannot relate, the model that scored it does.
        every = list(range(len(final_rows)))
        explainer = next((m for m in EXPLAINERS if m in owners), owners[0] if owners else None)
        left = explain(explainer, every) if explainer is not None else every
        by_owner: dict[str, list[int]] = {}
        for pos in left:
            if owners[pos] != explainer:
                by_owner.setdefault(owners[pos], []).append(pos)
        for owner, positions in by_owner.items():
            explain(owner, positions)
        return out

    @staticmethod
    def _reason_text(
        config: SlotConfig, owner: str, about: str, title: str, history: History
    ) -> str:
        if config.kind == "cart":
            if owner == "fbt":
                return f"bought together with {title}"
            return f"goes with {title}"
        if config.kind == "similar":
            return f"similar to {title}"
        if about in history.purchased:
            return f"because you bought {title}"
        return f"because you viewed {title}"

    # -- cold start ------------------------------------------------------------------------

    def _fallback(
        self,
        ws: Workspace,
        space: _Space,
        config: SlotConfig,
        person: Person,
        personalized_ok: bool,
        item: str | None,
        basket: Sequence[str],
        mask: np.ndarray,
        k: int,
        lam: float,
    ) -> tuple[list[tuple[int, float, str, str | None]], str, dict[str, int], bool]:
        """Up to ``k`` items from the first step of the chain that has any: the item's
        category (an item the models do not know), the person's segment, trending, popular.
        Returns the items, the strategy, the models used and whether it was personal."""
        out: list[tuple[int, float, str, str | None]] = []
        used: dict[str, int] = {}
        strategy = "none"
        personal = False
        mask = mask.copy()

        def take(rows: np.ndarray, scores: np.ndarray, reason: str) -> None:
            keep = mask[rows] & (scores > 0)
            rows, scores = rows[keep], scores[keep]
            if not len(rows):
                return
            order = mmr(
                scores,
                space.view.category_code[rows],
                *space.view.category_levels(),
                k - len(out),
                lam,
            )
            for p in order:
                out.append((int(rows[p]), float(scores[p]), reason, None))
                mask[rows[p]] = False

        popular = space.models.get("popularity")
        steps: list[str] = []
        if basket and item is not None:
            steps.append("category")
        steps += [s for s in config.fallback if s != "session"]
        for step in steps:
            if len(out) >= k:
                break
            before = len(out)
            name = step
            if step == "category" and popular is not None and item is not None:
                row = space.vocab.row(item)
                doc = (
                    space.view.items[row]
                    if row is not None
                    else self.engine.catalog.get(ws.id, item)
                )
                category = (doc or {}).get("category")
                if category:
                    in_category = np.flatnonzero(space.view.under_category(category) & mask)
                    rows, scores = self._popular_rows(space, popular, in_category)
                    take(rows, scores, f"popular in {category}")
            elif step == "segment" and popular is not None and personalized_ok:
                found = self._segment_popular(ws.id, space, popular, person.pid)
                if found is not None:
                    seg_name, rows, scores = found
                    take(rows, scores, f"popular in your segment {seg_name}")
                    personal = personal or len(out) > before
            elif step in ("trending", "popularity"):
                model = space.models.get(step)
                if model is not None:
                    scores = self._to_space(
                        space,
                        model,
                        model.loaded.model.score_history(np.zeros(0, dtype=np.int64), np.zeros(0)),
                    )
                    rows, sc = _top(np.where(mask, scores, 0.0), max(5 * k, 50))
                    take(rows, sc, "trending" if step == "trending" else "popular")
            else:
                continue
            if len(out) > before:
                if strategy == "none":
                    strategy = name
                model_slot = "popularity" if name in ("category", "segment") else name
                if model_slot in space.models:
                    used[model_slot] = space.models[model_slot].loaded.version
        return out, strategy, used, personal

    def _popular_rows(
        self, space: _Space, popular: _Model, subset: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = self._to_space(
            space,
            popular,
            popular.loaded.model.score_history(np.zeros(0, dtype=np.int64), np.zeros(0)),
        )
        local = np.zeros(len(space))
        local[subset] = scores[subset]
        return _top(local, 200)

    def _segment_popular(
        self, ws_id: str, space: _Space, popular: _Model, pid: str | None
    ) -> tuple[str, np.ndarray, np.ndarray] | None:
        """What the members of the person's most specific segment (the smallest with at
        least :data:`MIN_SEGMENT_MEMBERS` members) interacted with most."""
        if pid is None:
            return None
        with self.db.connect() as conn:
            mine = conn.execute(
                select(segments.c.key, segments.c.name, segments.c.size)
                .select_from(
                    memberships.join(
                        segments,
                        (segments.c.workspace_id == memberships.c.workspace_id)
                        & (segments.c.key == memberships.c.segment_key),
                    )
                )
                .where(memberships.c.workspace_id == ws_id, memberships.c.profile_id == pid)
            ).all()
        # The stored sizes order them (they may lag); the member count itself decides.
        for seg in sorted(mine, key=lambda r: (r.size, r.key)):
            key = (ws_id, seg.key, popular.slot, popular.loaded.version)
            cached = self._segment_lists.get(key)
            if cached is None or cached[0] < time.monotonic():
                rows, scores = self._segment_list(ws_id, seg.key, popular)
                cached = (time.monotonic() + SEGMENT_CACHE_SECONDS, rows, scores)
                if len(self._segment_lists) > 1000:
                    self._segment_lists.clear()
                self._segment_lists[key] = cached
            if len(cached[1]):
                return seg.name, cached[1], cached[2]
        return None

    def _segment_list(
        self, ws_id: str, segment_key: str, popular: _Model
    ) -> tuple[np.ndarray, np.ndarray]:
        with self.db.connect() as conn:
            members = (
                conn.execute(
                    select(memberships.c.profile_id).where(
                        memberships.c.workspace_id == ws_id,
                        memberships.c.segment_key == segment_key,
                    )
                )
                .scalars()
                .all()
            )
        users = popular.loaded.users
        rows = users.rows(members)
        if len(rows) < MIN_SEGMENT_MEMBERS:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        model = popular.loaded.model
        ids, scores = model.popular_among(rows, 200)  # type: ignore[attr-defined]
        keep = ids >= 0
        ids, scores = ids[keep], scores[keep]
        if popular.to_space is not None:
            ids = popular.to_space[ids]
            ok = ids >= 0
            ids, scores = ids[ok], scores[ok]
        return ids.astype(np.int64), scores.astype(np.float64)

    # -- the list cache --------------------------------------------------------------------

    def _cached(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        if self.settings.rec_cache_seconds <= 0:
            return None
        with self._cache_lock:
            found = self._cache.get(key)
            if found is None:
                return None
            if found[0] < time.monotonic():
                self._cache.pop(key, None)
                return None
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return found[1]

    def _remember(
        self,
        key: tuple[Any, ...],
        pid: str | None,
        body: dict[str, Any],
        valid_seconds: float | None = None,
    ) -> None:
        seconds = self.settings.rec_cache_seconds
        if valid_seconds is not None:
            seconds = min(seconds, valid_seconds)
        if seconds <= 0:
            return
        with self._cache_lock:
            self._cache[key] = (time.monotonic() + seconds, body)
            if pid is not None:
                self._cache_by_profile.setdefault((key[0], pid), set()).add(key)
            while len(self._cache) > CACHE_ENTRIES:
                old, _ = self._cache.popitem(last=False)
                if old[1] is not None and old[1] != "-":
                    keys = self._cache_by_profile.get((old[0], old[1]))
                    if keys is not None:
                        keys.discard(old)
                        if not keys:
                            self._cache_by_profile.pop((old[0], old[1]), None)
