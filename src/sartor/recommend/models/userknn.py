"""User-based collaborative filtering: what similar users interacted with."""

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
    top_k,
)
from sartor.recommend.models._linalg import knn_matrix, row_norms, weighted_row_sum


class UserKNN(Recommender):
    """User-user cosine neighbours, ``s(u, v) = <x_u, x_v> / (|x_u| |x_v| + shrinkage)``,
    the ``k_neighbors`` most similar (positive) users kept per user; a user's score for an
    item is ``sum_v s(u, v) x_vi`` over their neighbours.

    A visitor known only by a history gets neighbours computed on the fly. ``similar_items``
    uses the item-item cosine over the same matrix, computed on demand.
    """

    name = "userknn"

    def __init__(self, k_neighbors: int = 50, shrinkage: float = 0.0) -> None:
        self.k_neighbors = k_neighbors
        self.shrinkage = shrinkage
        self.params_ = {"k_neighbors": k_neighbors, "shrinkage": shrinkage}

    def fit(self, interactions: sp.csr_matrix, **context: Any) -> Self:
        if int(self.k_neighbors) < 1:
            raise ValueError(f"k_neighbors must be >= 1, got {self.k_neighbors!r}")
        if float(self.shrinkage) < 0:
            raise ValueError(f"shrinkage must be >= 0, got {self.shrinkage!r}")
        x = as_interactions(interactions)
        self.user_items_ = x
        self.similarity_ = knn_matrix(
            x, int(self.k_neighbors), norms=row_norms(x), shrinkage=float(self.shrinkage)
        )
        self.n_users_, self.n_items_ = x.shape
        self._cache: dict[str, Any] = {}
        return self

    # Derived arrays, rebuilt lazily after load or erasure (never saved).
    def _derived(self) -> dict[str, Any]:
        cache: dict[str, Any] | None = getattr(self, "_cache", None)
        if cache is None:
            cache = self._cache = {}
        if not cache:
            x = self.user_items_
            cache["csc"] = x.tocsc()
            cache["user_norms"] = row_norms(x)
            cache["item_norms"] = row_norms(x.T.tocsr())
        return cache

    def score_users(self, user_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(user_rows, self.n_users_, "user")
        if len(rows) == 1:
            lo, hi = self.similarity_.indptr[rows[0]], self.similarity_.indptr[rows[0] + 1]
            return weighted_row_sum(
                self.user_items_,
                self.similarity_.indices[lo:hi],
                self.similarity_.data[lo:hi].astype(np.float64),
            )[None, :]
        return np.asarray((self.similarity_[rows] @ self.user_items_).toarray(), dtype=np.float64)

    def _neighbours_of_history(
        self, items: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        d = self._derived()
        q = np.bincount(items, weights=weights, minlength=self.n_items_)
        nz = np.flatnonzero(q)
        dots = np.asarray(d["csc"][:, nz] @ q[nz]).reshape(-1)
        denom = d["user_norms"] * float(np.sqrt((q[nz] ** 2).sum())) + float(self.shrinkage)
        sims = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
        sims[sims <= 0] = -np.inf
        ids, sc = top_k(sims[None, :], int(self.k_neighbors))
        keep = ids[0] >= 0
        return ids[0][keep], sc[0][keep]

    def score_history(self, item_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        items = check_rows(item_rows, self.n_items_, "item")
        users, sims = self._neighbours_of_history(items, np.asarray(weights, dtype=np.float64))
        return weighted_row_sum(self.user_items_, users, sims)

    def similar_scores(self, item_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(item_rows, self.n_items_, "item")
        d = self._derived()
        dots = np.asarray((d["csc"][:, rows].T @ self.user_items_).toarray(), dtype=np.float64)
        denom = np.outer(d["item_norms"][rows], d["item_norms"])
        return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)

    def similar_users(
        self, user_rows: np.ndarray | list[int], k: int = 10
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar users of each user row (never the user; never an erased
        user), padded with ``-1`` / ``-inf``."""
        self._check_fitted()
        rows = check_rows(user_rows, self.n_users_, "user")
        scores = np.asarray(self.similarity_[rows].toarray(), dtype=np.float64)
        scores[scores <= 0] = -np.inf
        scores[np.arange(len(rows)), rows] = -np.inf
        return top_k(scores, k)

    def _forget(self, user_rows: np.ndarray) -> None:
        super()._forget(user_rows)
        keep = np.ones(self.n_users_, dtype=np.float32)
        keep[user_rows] = 0.0
        d = sp.diags(keep)
        sim = (d @ self.similarity_ @ d).tocsr()
        sim.eliminate_zeros()
        sim.sort_indices()
        self.similarity_ = sim
        self._cache = {}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            **csr_parts("similarity", self.similarity_),
            **csr_parts("user_items", self.user_items_),
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.similarity_ = csr_from_parts("similarity", arrays)
        self.user_items_ = csr_from_parts("user_items", arrays)
        self._cache = {}
