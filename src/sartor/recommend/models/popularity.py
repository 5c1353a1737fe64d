"""Popularity: global, trending in a time window, among a set of users, within a category."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from sartor.recommend.base import (
    Recommender,
    as_interactions,
    check_rows,
    csr_from_parts,
    csr_parts,
)

DAY_MS = 86_400_000.0
MEASURES = ("users", "weight")


class Popularity(Recommender):
    """Items ranked by how many users interacted with them (``measure="users"``) or by the
    sum of their interaction weights (``measure="weight"``).

    With ``window_days`` only interactions whose last time is within that many days before
    ``now_ms`` count (trending); with ``half_life_days`` each one counts
    ``0.5 ** (age_days / half_life_days)``. Both need ``fit(..., timestamps=...)``: a CSR
    matrix of the same shape holding each pair's last interaction time in epoch ms; a pair
    without a time counts as infinitely old. ``now_ms`` defaults to the newest timestamp.

    The non-personalized scores are the same for everyone: :meth:`score_users` and
    :meth:`score_history` return the global scores. ``user_items_`` keeps each user's
    (windowed, decayed) contributions so that :meth:`popular_among` can rank items for a
    segment's members and erasure can take a user's contribution out of the counts.
    """

    name = "popularity"

    def __init__(
        self,
        window_days: float | None = None,
        half_life_days: float | None = None,
        measure: str = "users",
    ) -> None:
        self.window_days = window_days
        self.half_life_days = half_life_days
        self.measure = measure
        self.params_ = {
            "window_days": window_days,
            "half_life_days": half_life_days,
            "measure": measure,
        }

    def _validate(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {self.measure!r}")
        for field in ("window_days", "half_life_days"):
            value = getattr(self, field)
            if value is not None and not (float(value) > 0):
                raise ValueError(f"{field} must be > 0 (or None), got {value!r}")

    def fit(
        self,
        interactions: sp.csr_matrix,
        timestamps: sp.spmatrix | None = None,
        now_ms: float | None = None,
        **context: Any,
    ) -> Self:
        self._validate()
        x = as_interactions(interactions)
        contrib = x.copy()
        if self.measure == "users":
            contrib.data[:] = 1.0
        if self.window_days is not None or self.half_life_days is not None:
            if timestamps is None:
                raise ValueError(
                    "Popularity with window_days or half_life_days needs "
                    "fit(..., timestamps=<csr of last interaction times in epoch ms>)"
                )
            times = _pair_times(x, timestamps)
            now = float(now_ms) if now_ms is not None else float(times.max(initial=0.0))
            age_days = (now - times) / DAY_MS
            factor = np.ones_like(times)
            if self.window_days is not None:
                factor[age_days > float(self.window_days)] = 0.0
            if self.half_life_days is not None:
                factor *= 0.5 ** (np.maximum(age_days, 0.0) / float(self.half_life_days))
            contrib.data = (contrib.data * factor).astype(np.float32)
            contrib.eliminate_zeros()
        self.user_items_ = contrib
        self.n_users_, self.n_items_ = x.shape
        self._recount()
        return self

    def _recount(self) -> None:
        self.item_scores_ = np.asarray(self.user_items_.sum(axis=0, dtype=np.float64)).reshape(-1)

    # ---- scores -------------------------------------------------------------------
    def score_users(self, user_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(user_rows, self.n_users_, "user")
        return np.broadcast_to(self.item_scores_, (len(rows), self.n_items_))

    def score_history(self, item_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        check_rows(item_rows, self.n_items_, "item")
        return self.item_scores_

    def similar_scores(self, item_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(item_rows, self.n_items_, "item")
        return np.broadcast_to(self.item_scores_, (len(rows), self.n_items_))

    # An item nobody interacted with (in the window) is not popular: it never qualifies,
    # so lists end early (padding) rather than filling up with arbitrary zero-score items.
    def recommend(
        self,
        user_rows: np.ndarray | list[int],
        k: int = 10,
        exclude: sp.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return _only_positive(*super().recommend(user_rows, k, exclude))

    def recommend_history(
        self,
        item_rows: np.ndarray | list[int],
        weights: np.ndarray | list[float] | None = None,
        k: int = 10,
        exclude: np.ndarray | list[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return _only_positive(*super().recommend_history(item_rows, weights, k, exclude))

    def similar_items(
        self, item_rows: np.ndarray | list[int], k: int = 10
    ) -> tuple[np.ndarray, np.ndarray]:
        return _only_positive(*super().similar_items(item_rows, k))

    def popular_among(
        self,
        user_rows: np.ndarray | list[int],
        k: int = 10,
        exclude_items: np.ndarray | list[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most popular among these users (e.g. a segment's members), by the
        same measure, window and decay as the global scores. Only items at least one of
        them interacted with qualify; the rest is padding (``-1`` / ``-inf``)."""
        self._check_fitted()
        rows = check_rows(user_rows, self.n_users_, "user")
        scores = np.asarray(self.user_items_[rows].sum(axis=0, dtype=np.float64)).reshape(-1)
        return self._top(scores, k, exclude_items)

    def popular_in(
        self,
        item_rows: np.ndarray | list[int],
        k: int = 10,
        exclude_items: np.ndarray | list[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most popular items among ``item_rows`` (e.g. a category's items), as
        global item rows. Items nobody interacted with do not qualify."""
        self._check_fitted()
        rows = check_rows(item_rows, self.n_items_, "item")
        scores = np.zeros(self.n_items_, dtype=np.float64)
        scores[rows] = self.item_scores_[rows]
        return self._top(scores, k, exclude_items)

    def _top(
        self, scores: np.ndarray, k: int, exclude_items: np.ndarray | list[int] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        scores[scores <= 0] = -np.inf
        return self._top_items(scores, k, exclude_items)

    # ---- erasure and persistence --------------------------------------------------
    def _forget(self, user_rows: np.ndarray) -> None:
        super()._forget(user_rows)
        self._recount()  # their contribution leaves the counts too

    def _arrays(self) -> dict[str, np.ndarray]:
        return {**csr_parts("user_items", self.user_items_), "item_scores": self.item_scores_}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.user_items_ = csr_from_parts("user_items", arrays)
        self.item_scores_ = arrays["item_scores"].astype(np.float64)


def _only_positive(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    drop = ~(scores > 0)
    ids[drop] = -1
    scores[drop] = -np.inf
    return ids, scores


def _pair_times(x: sp.csr_matrix, timestamps: sp.spmatrix) -> np.ndarray:
    """Each stored pair of ``x``'s time (ms, float64), 0 where ``timestamps`` has none."""
    if not sp.issparse(timestamps):
        raise ValueError("timestamps must be a scipy.sparse matrix shaped like interactions")
    if timestamps.shape != x.shape:
        raise ValueError(
            f"timestamps has shape {timestamps.shape}, interactions {x.shape}: they must match"
        )
    ts = timestamps.tocsr()
    if (
        ts.has_canonical_format
        and np.array_equal(ts.indptr, x.indptr)
        and np.array_equal(ts.indices, x.indices)
    ):
        return np.asarray(ts.data, dtype=np.float64)
    # General case: the newest time per (user, item) pair, looked up for each pair of x.
    coo = ts.tocoo()
    n_cols = np.int64(x.shape[1])
    keys = coo.row.astype(np.int64) * n_cols + coo.col.astype(np.int64)
    order = np.lexsort((coo.data, keys))
    keys, data = keys[order], np.asarray(coo.data, dtype=np.float64)[order]
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = keys[1:] != keys[:-1]
    keys, data = keys[last], data[last]
    rows = np.repeat(np.arange(x.shape[0], dtype=np.int64), np.diff(x.indptr))
    wanted = rows * n_cols + x.indices.astype(np.int64)
    pos = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    out = np.zeros(len(wanted), dtype=np.float64)
    if len(keys):
        found = keys[pos] == wanted
        out[found] = data[pos[found]]
    return out
