"""Implicit-feedback matrix factorization (ALS), trained with the ``implicit`` library."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.linalg.lapack as lapack
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from sartor.recommend.base import (
    Recommender,
    as_interactions,
    check_rows,
    csr_from_parts,
    csr_parts,
    row_entries,
)


class ALS(Recommender):
    """Hu, Koren & Volinsky's implicit ALS, as implemented by ``implicit.cpu.als`` (conjugate
    gradient, float32). Confidence is ``c_ui = alpha * x_ui`` for stored pairs and 1
    elsewhere, preference 1 for stored pairs, exactly as in ``implicit``.

    A user the model has not seen, or a known user with new interactions, is folded in by
    solving the same least-squares problem for their vector against the fixed item factors:
    ``x_u = (Y^T Y + Y^T (C_u - I) Y + regularization I)^-1 Y^T C_u p_u`` (numpy, exact).
    """

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        random_state: int | None = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.params_ = {
            "factors": factors,
            "regularization": regularization,
            "alpha": alpha,
            "iterations": iterations,
            "random_state": random_state,
        }

    def _validate(self) -> None:
        if int(self.factors) < 1:
            raise ValueError(f"factors must be >= 1, got {self.factors!r}")
        if int(self.iterations) < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations!r}")
        if float(self.regularization) < 0:
            raise ValueError(f"regularization must be >= 0, got {self.regularization!r}")
        if not float(self.alpha) > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")

    def fit(self, interactions: sp.csr_matrix, **context: Any) -> Self:
        self._validate()
        from implicit.cpu.als import AlternatingLeastSquares

        x = as_interactions(interactions)
        # implicit's own threads do the work; a multi-threaded BLAS underneath them
        # oversubscribes the cores (implicit warns about it and recommends exactly this).
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=int(self.factors),
                regularization=float(self.regularization),
                alpha=float(self.alpha),
                dtype=np.float32,
                iterations=int(self.iterations),
                calculate_training_loss=False,
                random_state=self.random_state,
            )
            model.fit(x, show_progress=False)
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.user_items_ = x
        self.n_users_, self.n_items_ = x.shape
        self._cache: dict[str, np.ndarray] = {}
        return self

    def _derived(self) -> dict[str, np.ndarray]:
        cache: dict[str, np.ndarray] | None = getattr(self, "_cache", None)
        if cache is None:
            cache = self._cache = {}
        if not cache:
            y = self.item_factors_.astype(np.float64)
            cache["yty"] = y.T @ y
            # Y^T Y + regularization I: the part of every fold-in's system that is the same.
            cache["yty_reg"] = cache["yty"] + float(self.regularization) * np.eye(y.shape[1])
            cache["item_norms"] = np.linalg.norm(y, axis=1)
        return cache

    # ---- scores -------------------------------------------------------------------
    def score_users(self, user_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(user_rows, self.n_users_, "user")
        if len(rows) == 1:
            return _matvec(self.item_factors_, self.user_factors_[rows[0]])[None, :]
        return self.user_factors_[rows] @ self.item_factors_.T

    def user_vector(self, item_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The factors of a user whose interactions are ``item_rows`` with ``weights``
        (duplicates add up), solved against the fixed item factors."""
        items = check_rows(item_rows, self.n_items_, "item")
        w = self._history_weights(items, weights)
        k = self.item_factors_.shape[1]
        keep = w > 0
        if not keep.all():
            items, w = items[keep], w[keep]
        if len(items) == 0:
            return np.zeros(k, dtype=np.float32)
        # A served request folds in one short history: np.unique's sort is only worth it
        # when an item really repeats.
        if len(items) > 1 and len(set(items.tolist())) < len(items):
            items, inverse = np.unique(items, return_inverse=True)
            w = np.bincount(inverse, weights=w)
        conf = float(self.alpha) * w
        y = self.item_factors_[items].astype(np.float64)
        a = (y.T * (conf - 1.0)) @ y
        a += self._derived()["yty_reg"]
        return _solve_spd(a, y.T @ conf).astype(np.float32)

    def score_history(self, item_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return _matvec(self.item_factors_, self.user_vector(item_rows, weights))

    def similar_scores(self, item_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(item_rows, self.n_items_, "item")
        norms = self._derived()["item_norms"]
        if len(rows) == 1:  # one item: a matrix-vector product, not a 1-row matrix product
            dots = _matvec(self.item_factors_, self.item_factors_[rows[0]])[None, :]
        else:
            dots = self.item_factors_[rows] @ self.item_factors_.T
        dots = dots.astype(np.float64)
        denom = np.outer(norms[rows], norms)
        return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)

    # ---- real time ----------------------------------------------------------------
    def fold_in(
        self,
        user_row: int,
        item_rows: np.ndarray | list[int],
        weights: np.ndarray | list[float] | None = None,
    ) -> Self:
        """Add a known user's newest interactions to their history and re-solve their
        factors in place, without retraining (item factors stay as they are)."""
        self._check_fitted()
        row = int(check_rows([user_row], self.n_users_, "user")[0])
        if self.erased_ is not None and self.erased_[row]:
            raise ValueError(f"user row {row} was erased; it cannot be folded in again")
        items = check_rows(item_rows, self.n_items_, "item")
        w = self._history_weights(items, weights)
        old_items, old_w = row_entries(self.user_items_, row)
        all_items = np.concatenate([old_items.astype(np.int64), items])
        all_w = np.concatenate([old_w.astype(np.float64), w])
        merged, inverse = np.unique(all_items, return_inverse=True)
        merged_w = np.bincount(inverse, weights=all_w)
        self.user_factors_[row] = self.user_vector(merged, merged_w)
        self.user_items_ = _replace_row(self.user_items_, row, merged, merged_w)
        return self

    # ---- persistence --------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "user_factors": self.user_factors_,
            "item_factors": self.item_factors_,
            **csr_parts("user_items", self.user_items_),
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.user_factors_ = np.ascontiguousarray(arrays["user_factors"], dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(arrays["item_factors"], dtype=np.float32)
        self.user_items_ = csr_from_parts("user_items", arrays)
        self._cache = {}


def _matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` on the calling thread only. A served request scores one user: a
    multi-threaded BLAS gemv must wake its worker threads, which on a busy 2-core server
    turned a 0.2 ms request into 8-20 ms at the 90th percentile (measured); einsum's own
    loop is ~0.15 ms for 10,000 x 64 and never waits for another thread."""
    return np.einsum("ij,j->i", matrix, vector.astype(matrix.dtype, copy=False))


def _solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^-1 b`` for the symmetric positive definite system of a fold-in, by Cholesky
    straight through LAPACK (numpy's general solver costs more in call overhead than in
    arithmetic at this size). Without regularization the system may be singular: then
    numpy's solver decides, as before."""
    # ``a`` is symmetric: its transpose is the Fortran-ordered array LAPACK wants.
    _, x, info = lapack.dposv(a.T, b, lower=False)
    if info != 0:
        return np.asarray(np.linalg.solve(a, b))
    return np.asarray(x)


def _replace_row(m: sp.csr_matrix, row: int, cols: np.ndarray, values: np.ndarray) -> sp.csr_matrix:
    """A new CSR matrix equal to ``m`` with one row's entries replaced (sorted ``cols``).
    Built from slices of the old arrays, so readers of the old matrix are never disturbed."""
    lo, hi = int(m.indptr[row]), int(m.indptr[row + 1])
    data = np.concatenate([m.data[:lo], values.astype(m.data.dtype), m.data[hi:]])
    indices = np.concatenate([m.indices[:lo], cols.astype(m.indices.dtype), m.indices[hi:]])
    indptr = m.indptr.astype(np.int64, copy=True)
    indptr[row + 1 :] += len(cols) - (hi - lo)
    return sp.csr_matrix((data, indices, indptr), shape=m.shape)
