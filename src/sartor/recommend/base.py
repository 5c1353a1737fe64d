"""The one contract every recommendation model follows.

Models work on matrix rows: users x items, a ``scipy.sparse.csr_matrix`` of non-negative
interaction weights. A :class:`~sartor.recommend.vocab.Vocabulary` outside the model maps
external ids to rows. Every model can

* ``fit(interactions)`` and return itself; learned state ends in ``_``;
* ``recommend(user_rows, k, exclude=...)`` for a batch of known users, returning
  ``(item_rows, scores)``, two ``(len(users), k)`` arrays, padded with ``-1`` / ``-inf``
  when fewer than ``k`` items qualify;
* ``recommend_history(item_rows, weights, k, exclude=...)`` for a user the model has not
  seen, or a known user's newest interactions (fold-in without retraining);
* ``similar_items(item_rows, k)`` with the same return shape, never returning the item
  itself;
* ``save(folder)`` to ``model.npz`` plus ``model.json`` and ``load(folder)`` back, with no
  pickle anywhere.

The conformance suite in ``tests/test_rec_models.py`` runs every model through all of it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

ARRAYS_FILE = "model.npz"
META_FILE = "model.json"


class NotFittedError(RuntimeError):
    pass


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores of the ``k`` best finite entries of each row of ``scores``, best first.

    Entries set to ``-inf`` never qualify; short rows are padded with ``-1`` / ``-inf``.
    Ties break on the lower item row, so results are deterministic.
    """
    scores = np.atleast_2d(scores)
    n, m = scores.shape
    k = max(0, min(k, m))
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float64)
    if k == 0 or m == 0:
        return out_ids, out_scores
    if k < m:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(m), (n, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    # lexsort: last key is primary; sort by score desc, then by item row asc.
    for i in range(n):
        order = np.lexsort((part[i], -part_scores[i]))
        ids = part[i][order]
        sc = part_scores[i][order]
        keep = np.isfinite(sc)
        kept = int(keep.sum())
        out_ids[i, :kept] = ids[keep]
        out_scores[i, :kept] = sc[keep]
    return out_ids, out_scores


def mask_rows(scores: np.ndarray, exclude: sp.csr_matrix | None) -> np.ndarray:
    """Set ``scores[i, j] = -inf`` wherever ``exclude[i, j]`` is stored."""
    if exclude is None:
        return scores
    coo = exclude.tocoo()
    scores[coo.row, coo.col] = -np.inf
    return scores


class Recommender(ABC):
    """Base class of every model. Subclasses implement the ``_``-prefixed hooks."""

    name: ClassVar[str]

    n_users_: int
    n_items_: int

    # ---- the contract -------------------------------------------------------------
    @abstractmethod
    def fit(self, interactions: sp.csr_matrix, **context: Any) -> Self:
        """Learn from ``interactions`` (users x items). ``context`` may carry item features
        (``item_text``, ``item_category``) or ``timestamps`` for models that use them."""

    @abstractmethod
    def score_users(self, user_rows: np.ndarray) -> np.ndarray:
        """Dense scores, shape ``(len(user_rows), n_items_)``, for known users."""

    @abstractmethod
    def score_history(self, item_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Scores over all items, shape ``(n_items_,)``, for a user known only by a history."""

    @abstractmethod
    def similar_scores(self, item_rows: np.ndarray) -> np.ndarray:
        """Dense item-item scores, shape ``(len(item_rows), n_items_)``."""

    def recommend(
        self,
        user_rows: np.ndarray | list[int],
        k: int = 10,
        exclude: sp.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items for each user row. ``exclude`` has one row per requested user."""
        self._check_fitted()
        rows = np.asarray(user_rows, dtype=np.int64)
        scores = np.asarray(self.score_users(rows), dtype=np.float64).copy()
        return top_k(mask_rows(scores, exclude), k)

    def recommend_history(
        self,
        item_rows: np.ndarray | list[int],
        weights: np.ndarray | list[float] | None = None,
        k: int = 10,
        exclude: np.ndarray | list[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items for one ad-hoc user given item rows they interacted with."""
        self._check_fitted()
        items = np.asarray(item_rows, dtype=np.int64)
        w = np.ones(len(items)) if weights is None else np.asarray(weights, dtype=np.float64)
        scores = np.asarray(self.score_history(items, w), dtype=np.float64).copy()
        if exclude is not None:
            scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
        ids, sc = top_k(scores[None, :], k)
        return ids[0], sc[0]

    def similar_items(
        self, item_rows: np.ndarray | list[int], k: int = 10
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most similar to each item row (never the item itself)."""
        self._check_fitted()
        rows = np.asarray(item_rows, dtype=np.int64)
        scores = np.asarray(self.similar_scores(rows), dtype=np.float64).copy()
        scores[np.arange(len(rows)), rows] = -np.inf
        return top_k(scores, k)

    # ---- persistence --------------------------------------------------------------
    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """Learned arrays to save (sparse matrices as their CSR parts)."""

    @abstractmethod
    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Set learned state from what :meth:`_arrays` returned."""

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serializable)."""
        return dict(getattr(self, "params_", {}))

    def save(self, folder: str | Path) -> Path:
        self._check_fitted()
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        arrays = self._arrays()
        np.savez(path / ARRAYS_FILE, allow_pickle=False, **arrays)
        meta = {
            "model": self.name,
            "params": self.get_params(),
            "n_users": int(self.n_users_),
            "n_items": int(self.n_items_),
        }
        (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Self:
        path = Path(folder)
        meta = json.loads((path / META_FILE).read_text())
        if meta.get("model") != cls.name:
            raise ValueError(f"{path} holds a {meta.get('model')!r} model, not {cls.name!r}")
        model = cls(**meta["params"])
        with np.load(path / ARRAYS_FILE, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        model.n_users_ = int(meta["n_users"])
        model.n_items_ = int(meta["n_items"])
        model._restore(arrays)
        return model

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_items_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit() first")


def csr_parts(prefix: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    m = matrix.tocsr()
    return {
        f"{prefix}_data": m.data,
        f"{prefix}_indices": m.indices,
        f"{prefix}_indptr": m.indptr,
        f"{prefix}_shape": np.asarray(m.shape, dtype=np.int64),
    }


def csr_from_parts(prefix: str, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
    shape = tuple(int(x) for x in arrays[f"{prefix}_shape"])
    return sp.csr_matrix(
        (arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]),
        shape=shape,
    )
