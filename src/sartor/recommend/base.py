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
  pickle anywhere;
* ``forget_users(user_rows)`` for erasure: those users' rows and factors are zeroed and
  they get no personal recommendations any more.

Rows are checked: an unknown (or negative) user or item row raises ``IndexError``, rows that
are not integers ``ValueError``.

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

    Entries set to ``-inf`` (or NaN) never qualify; short rows are padded with ``-1`` /
    ``-inf``. Ties break on the lower item row, also at the cut-off, so results are
    deterministic and do not depend on how ``argpartition`` happened to split equal scores.
    """
    scores = np.atleast_2d(scores)
    n, m = scores.shape
    k = max(0, min(k, m))
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float64)
    if k == 0 or m == 0:
        return out_ids, out_scores
    for i in range(n):
        ids, sc = _top_row(scores[i], k)
        out_ids[i, : len(ids)] = ids
        out_scores[i, : len(ids)] = sc
    return out_ids, out_scores


def _top_row(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    m = row.shape[0]
    if k < m:
        # Negated so that NaN (sorted last by argpartition) never lands in the top k.
        part = np.argpartition(-row, k - 1)[:k]
        part_scores = row[part]
        kth = part_scores.min()
        if np.isfinite(kth):
            # Scores equal to the k-th one may exist outside the partition: take the
            # lowest rows among all of them so ties resolve the same way every time.
            above = part_scores > kth
            n_ties = int(np.count_nonzero(row == kth))
            if n_ties > k - int(np.count_nonzero(above)):
                ties = np.flatnonzero(row == kth)[: k - int(np.count_nonzero(above))]
                part = np.concatenate([part[above], ties])
                part_scores = row[part]
    else:
        part = np.arange(m)
        part_scores = row
    order = np.lexsort((part, -part_scores))
    ids = part[order]
    sc = part_scores[order].astype(np.float64, copy=False)
    keep = sc > -np.inf  # also drops NaN
    if not keep.all():
        ids, sc = ids[keep], sc[keep]
    return ids.astype(np.int64, copy=False), sc


def check_rows(rows: Any, n: int, what: str) -> np.ndarray:
    """``rows`` as a 1-D int64 array, each in ``[0, n)``; a clear error otherwise.

    Negative rows are refused rather than wrapped around: ``-1`` is the padding value of
    every result, and numpy would silently read the last row for it.
    """
    arr = np.asarray(rows)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{what} rows must be a 1-D list of integers, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    # dtype.kind, not np.issubdtype: this runs for every model call of a served request.
    if arr.dtype.kind not in "iu":
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{what} rows must be integers, got {arr.dtype}")
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{what} rows must be integers, got {arr[:5].tolist()}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise IndexError(
            f"{what} row {bad} is out of range: the model knows {n} {what}s (rows 0..{n - 1})"
        )
    return arr


def as_interactions(interactions: Any) -> sp.csr_matrix:
    """The users x items matrix as canonical CSR (float32, sorted indices, no duplicates).

    Refuses what no model can learn from, naming the problem: not 2-D, NaN/inf, negative
    weights (the contract is non-negative confidence; there is no "dislike" here).
    """
    if sp.issparse(interactions):
        m = sp.csr_matrix(interactions, dtype=np.float32, copy=True)
    else:
        arr = np.asarray(interactions)
        if arr.ndim != 2:
            raise ValueError(
                f"interactions must be a 2-D users x items matrix, got shape {arr.shape}"
            )
        m = sp.csr_matrix(arr.astype(np.float32))
    if m.ndim != 2:
        raise ValueError(f"interactions must be a 2-D users x items matrix, got {m.shape}")
    m.sum_duplicates()
    m.sort_indices()
    if m.nnz:
        if not np.all(np.isfinite(m.data)):
            raise ValueError("interactions contain NaN or infinite weights")
        if float(m.data.min()) < 0:
            coo = m.tocoo()
            at = int(np.argmin(coo.data))
            raise ValueError(
                "interactions must be non-negative: found "
                f"{float(coo.data[at])} at user row {int(coo.row[at])}, "
                f"item row {int(coo.col[at])}"
            )
    m.eliminate_zeros()
    return m


def mask_rows(scores: np.ndarray, exclude: sp.csr_matrix | None) -> np.ndarray:
    """Set ``scores[i, j] = -inf`` wherever ``exclude[i, j]`` is stored."""
    if exclude is None:
        return scores
    if not sp.issparse(exclude):
        raise ValueError("exclude must be a scipy.sparse matrix (one row per requested user)")
    if exclude.shape != scores.shape:
        raise ValueError(
            f"exclude has shape {exclude.shape}; it needs one row per requested user and one "
            f"column per item: {scores.shape}"
        )
    coo = exclude.tocoo()
    scores[coo.row, coo.col] = -np.inf
    return scores


ERASED_KEY = "_erased_users"


class Recommender(ABC):
    """Base class of every model. Subclasses implement the ``_``-prefixed hooks."""

    name: ClassVar[str]

    n_users_: int
    n_items_: int
    erased_: np.ndarray | None = None  # bool per user row, set by forget_users

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
        """Top ``k`` items for each user row. ``exclude`` has one row per requested user.

        An erased user (see :meth:`forget_users`) gets no items at all, only padding, so the
        caller falls back to non-personalized lists exactly as for an unknown user.
        """
        self._check_fitted()
        rows = check_rows(user_rows, self.n_users_, "user")
        # np.array copies: score_users may hand back a model's own (cached) array.
        scores = np.array(self.score_users(rows), dtype=np.float64)
        erased = getattr(self, "erased_", None)
        if erased is not None:
            scores[erased[rows]] = -np.inf
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
        items = check_rows(item_rows, self.n_items_, "item")
        w = self._history_weights(items, weights)
        scores = np.asarray(self.score_history(items, w), dtype=np.float64).copy()
        return self._top_items(scores, k, exclude)

    def similar_items(
        self, item_rows: np.ndarray | list[int], k: int = 10
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most similar to each item row (never the item itself)."""
        self._check_fitted()
        rows = check_rows(item_rows, self.n_items_, "item")
        scores = np.asarray(self.similar_scores(rows), dtype=np.float64).copy()
        scores[np.arange(len(rows)), rows] = -np.inf
        return top_k(scores, k)

    # ---- erasure ------------------------------------------------------------------
    def forget_users(self, user_rows: np.ndarray | list[int]) -> Self:
        """Erase these users: their rows of ``user_items_`` and their factors are zeroed
        (per model, see ``_forget``) and from now on they get no personal scores.

        Models learned from these users keep only what they aggregated over everyone
        (item factors, item-item similarities); retraining removes even that.
        """
        self._check_fitted()
        rows = check_rows(user_rows, self.n_users_, "user")
        self._forget(rows)
        erased = getattr(self, "erased_", None)
        if erased is None:
            erased = np.zeros(self.n_users_, dtype=bool)
        erased[rows] = True
        self.erased_ = erased
        return self

    def _forget(self, user_rows: np.ndarray) -> None:
        """Zero the erased users' learned rows. The default covers models that keep a
        ``user_items_`` matrix and/or a ``user_factors_`` array; override for more."""
        items = getattr(self, "user_items_", None)
        if items is not None:
            self.user_items_ = zero_rows(items, user_rows)
        factors = getattr(self, "user_factors_", None)
        if factors is not None:
            factors[user_rows] = 0.0

    # ---- helpers for subclasses ---------------------------------------------------
    def _top_items(
        self, scores: np.ndarray, k: int, exclude: np.ndarray | list[int] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of one row of ``scores`` over all items (modified in place),
        ``exclude`` (item rows) never among them."""
        if exclude is not None:
            scores[check_rows(exclude, self.n_items_, "item")] = -np.inf
        ids, sc = top_k(scores[None, :], k)
        return ids[0], sc[0]

    def _history_weights(
        self, items: np.ndarray, weights: np.ndarray | list[float] | None
    ) -> np.ndarray:
        if weights is None:
            return np.ones(len(items), dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != items.shape[0]:
            raise ValueError(
                f"weights has {w.shape[0]} values for {items.shape[0]} item rows; "
                "give one weight per item"
            )
        if not np.all(np.isfinite(w)) or (w.size and float(w.min()) < 0):
            raise ValueError("weights must be finite and non-negative")
        return w

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
        arrays = dict(self._arrays())
        erased = getattr(self, "erased_", None)
        if erased is not None:
            arrays[ERASED_KEY] = np.flatnonzero(erased).astype(np.int64)
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
        meta = cls._read_meta(path)
        model = cls(**meta["params"])
        with np.load(path / ARRAYS_FILE, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        model.n_users_ = int(meta["n_users"])
        model.n_items_ = int(meta["n_items"])
        erased = arrays.pop(ERASED_KEY, None)
        model._restore(arrays)
        if erased is not None:
            model._restore_erased(erased)
        return model

    @classmethod
    def _read_meta(cls, path: Path) -> dict[str, Any]:
        """The saved ``model.json`` in ``path``; refuses another kind of model's."""
        meta: dict[str, Any] = json.loads((path / META_FILE).read_text())
        if meta.get("model") != cls.name:
            raise ValueError(f"{path} holds a {meta.get('model')!r} model, not {cls.name!r}")
        return meta

    def _restore_erased(self, user_rows: np.ndarray) -> None:
        """Mark the saved erased user rows (:data:`ERASED_KEY`) as erased again."""
        self.erased_ = np.zeros(self.n_users_, dtype=bool)
        self.erased_[user_rows] = True

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_items_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit() first")


class HistoryRecommender(Recommender):
    """A model that scores a known user from their stored history ``user_items_`` exactly
    as an ad-hoc user with that history: one user (a served request) goes straight to
    :meth:`_history_scores` with their CSR row, a batch to :meth:`_batch_scores`."""

    user_items_: sp.csr_matrix

    def score_users(self, user_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(user_rows, self.n_users_, "user")
        if len(rows) == 1:
            items, w = row_entries(self.user_items_, int(rows[0]))
            return self._history_scores(items, w)[None, :]
        return self._batch_scores(rows)

    def score_history(self, item_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        items = check_rows(item_rows, self.n_items_, "item")
        return self._history_scores(items, weights)

    @abstractmethod
    def _history_scores(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Scores over all items, shape ``(n_items_,)``, for checked item rows."""

    @abstractmethod
    def _batch_scores(self, user_rows: np.ndarray) -> np.ndarray:
        """Scores of several checked user rows, shape ``(len(user_rows), n_items_)``."""


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


def zero_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """A copy of ``matrix`` with the stored entries of ``rows`` removed."""
    m = matrix.tocsr()
    lengths = np.diff(m.indptr)
    drop = np.zeros(m.shape[0], dtype=bool)
    drop[rows] = True
    keep = np.repeat(~drop, lengths)
    new_lengths = np.where(drop, 0, lengths)
    indptr = np.concatenate([[0], np.cumsum(new_lengths)]).astype(m.indptr.dtype)
    return sp.csr_matrix((m.data[keep], m.indices[keep], indptr), shape=m.shape)


def row_entries(matrix: sp.csr_matrix, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of one CSR row, without scipy's slicing overhead."""
    lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
    return matrix.indices[lo:hi], matrix.data[lo:hi]
