"""Training: read the interactions from the log, fit each model slot, publish the versions.

All slots of one run share one item vocabulary, the union of the catalog and the items seen
in interactions, so content-based and popularity slots can serve catalog items nobody has
touched yet. The default slots:

=========== ================================================================
popularity  global popularity (weighted, decayed interactions)
trending    popularity over the last 7 days
itemknn     item-item cosine neighbours
als         implicit ALS matrix factorization (fold-in at serving time)
ease        EASE closed form; skipped when the catalog is too large for it
content     TF-IDF over title, description, category and brand
fbt         item-item neighbours over purchases only (frequently bought together)
=========== ================================================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from sartor.clock import now_ms
from sartor.recommend.base import Recommender
from sartor.recommend.interactions import Interactions, load_interactions
from sartor.recommend.vocab import Vocabulary

if TYPE_CHECKING:
    from sartor.engine import Engine

log = logging.getLogger("sartor.recommend")

PURCHASE_EVENTS = ("Order Completed",)


@dataclass(frozen=True)
class SlotSpec:
    model: str  # a key of sartor.recommend.models.MODELS
    params: dict[str, Any] = field(default_factory=dict)
    purchases_only: bool = False


DEFAULT_SLOTS: dict[str, SlotSpec] = {
    "popularity": SlotSpec("popularity"),
    "trending": SlotSpec("popularity", {"window_days": 7.0}),
    "itemknn": SlotSpec("itemknn", {"k_neighbors": 100, "similarity": "cosine"}),
    "als": SlotSpec("als", {"factors": 64, "iterations": 15, "regularization": 0.05}),
    "ease": SlotSpec("ease", {"l2": 250.0}),
    "content": SlotSpec("content"),
    "fbt": SlotSpec("itemknn", {"k_neighbors": 50, "similarity": "cosine"}, purchases_only=True),
}

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class TrainedSlot:
    slot: str
    model: str
    version: int | None
    seconds: float
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "slot": self.slot,
            "model": self.model,
            "version": self.version,
            "seconds": round(self.seconds, 3),
        }
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def item_text(item: dict[str, Any]) -> str:
    """The text a content model reads for one catalog item."""
    parts = [
        item.get("title"),
        item.get("description"),
        item.get("category"),
        item.get("brand"),
        " ".join(item.get("tags") or []),
    ]
    return " ".join(str(p) for p in parts if p)


def _widen(matrix: sp.csr_matrix, n_items: int) -> sp.csr_matrix:
    """The same rows with zero columns appended up to ``n_items``."""
    m = matrix.tocsr()
    if m.shape[1] == n_items:
        return m
    return sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], n_items))


def _align(
    part: Interactions, users: Vocabulary, items: Vocabulary
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Re-index a second interaction set (purchases) onto the shared vocabularies."""
    coo = part.matrix.tocoo()
    user_map = np.asarray([users.add(u) for u in part.users.ids()], dtype=np.int64)
    item_map = np.asarray([items.add(i) for i in part.items.ids()], dtype=np.int64)
    shape = (len(users), len(items))
    rows, cols = user_map[coo.row], item_map[coo.col]
    weights = sp.csr_matrix((coo.data, (rows, cols)), shape=shape)
    last = part.last_at.tocoo()
    last_at = sp.csr_matrix((last.data, (user_map[last.row], item_map[last.col])), shape=shape)
    return weights, last_at


def train(
    engine: Engine,
    ws_id: str,
    slots: Iterable[str] | None = None,
    *,
    progress: Progress | None = None,
    now: int | None = None,
) -> list[TrainedSlot]:
    """Fit the chosen slots (default: all of :data:`DEFAULT_SLOTS`) from the workspace's log
    and catalog, and publish each as the new active version in ``engine.models``."""
    from sartor.recommend.models import make_model

    wanted = list(slots) if slots is not None else list(DEFAULT_SLOTS)
    unknown = [s for s in wanted if s not in DEFAULT_SLOTS]
    if unknown:
        raise ValueError(f"unknown model slot(s) {unknown}; known: {sorted(DEFAULT_SLOTS)}")
    settings = engine.settings
    total = len(wanted) + 1
    report = progress or (lambda what, done, total: None)

    report("reading interactions", 0, total)
    data = load_interactions(
        engine.db,
        ws_id,
        weights=settings.rec_event_weights,
        half_life_days=settings.rec_half_life_days,
        # None: ages count from the newest event, so an old data set (a 2011 import) does
        # not decay to nothing against today's clock.
        now_ms=now,
    )
    if now is None:
        newest = int(data.last_at.data.max()) if data.last_at.nnz else 0
        now = min(newest, now_ms()) if newest else now_ms()
    users = Vocabulary(data.users.ids())
    items = Vocabulary(data.items.ids())
    catalog: dict[str, dict[str, Any]] = {}
    for item in engine.catalog.iter_all(ws_id):
        catalog[item["id"]] = item
        items.add(item["id"])
    purchases: tuple[sp.csr_matrix, sp.csr_matrix] | None = None
    if any(DEFAULT_SLOTS[s].purchases_only for s in wanted):
        bought = load_interactions(
            engine.db,
            ws_id,
            weights={name: 1.0 for name in PURCHASE_EVENTS},
            half_life_days=settings.rec_half_life_days,
            now_ms=now,
        )
        purchases = _align(bought, users, items)
    n_users, n_items = len(users), len(items)
    matrix = sp.csr_matrix(
        (data.matrix.data, data.matrix.indices, data.matrix.indptr),
        shape=(data.matrix.shape[0], n_items),
    )
    matrix = sp.vstack(
        [matrix, sp.csr_matrix((n_users - matrix.shape[0], n_items), dtype=matrix.dtype)]
    ).tocsr()
    last_at = _widen(data.last_at, n_items)
    last_at = sp.vstack(
        [last_at, sp.csr_matrix((n_users - last_at.shape[0], n_items), dtype=last_at.dtype)]
    ).tocsr()
    texts = [item_text(catalog.get(i) or {"title": i}) for i in items.ids()]
    report("reading interactions", 1, total)

    results: list[TrainedSlot] = []
    for done, slot in enumerate(wanted, start=2):
        spec = DEFAULT_SLOTS[slot]
        started = time.perf_counter()
        x, stamps = (
            purchases if spec.purchases_only and purchases is not None else (matrix, last_at)
        )
        skipped = _skip_reason(slot, spec, x, n_items)
        if skipped:
            results.append(TrainedSlot(slot, spec.model, None, 0.0, skipped))
            report(f"{slot}: skipped", done, total)
            continue
        model: Recommender = make_model(spec.model, **spec.params)
        try:
            model.fit(x.astype(np.float32), timestamps=stamps, now_ms=now, item_text=texts)
        except (ValueError, MemoryError) as exc:
            results.append(TrainedSlot(slot, spec.model, None, 0.0, f"failed: {exc}"))
            log.warning("training %s failed: %s", slot, exc, extra={"workspace": ws_id})
            report(f"{slot}: failed", done, total)
            continue
        seconds = time.perf_counter() - started
        version = engine.models.publish(
            ws_id,
            slot,
            model,
            users,
            items,
            metrics={"n_users": n_users, "n_items": n_items},
            n_interactions=int(x.nnz),
            train_seconds=seconds,
        )
        results.append(TrainedSlot(slot, spec.model, version, seconds))
        report(f"{slot}: v{version}", done, total)
    return results


def _skip_reason(slot: str, spec: SlotSpec, x: sp.csr_matrix, n_items: int) -> str | None:
    if n_items == 0:
        return "no items yet (empty catalog and no product events)"
    if spec.model != "content" and x.nnz == 0:
        return "no interactions yet"
    if spec.model == "ease" and n_items > 20_000:
        return f"EASE needs a dense {n_items}x{n_items} matrix; too large, use als/itemknn"
    if spec.model == "als" and (x.shape[0] < 2 or n_items < 2):
        return "ALS needs at least 2 users and 2 items"
    return None


def last_trained_at(engine: Engine, ws_id: str) -> int | None:
    """When the newest version of any slot was trained (the retrain schedule reads it)."""
    versions = engine.models.versions(ws_id)
    return max((v["trainedAt"] for v in versions), default=None)
