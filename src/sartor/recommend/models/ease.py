"""EASE: a closed-form linear item-item model (Steck, WWW 2019)."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.linalg.lapack as lapack
import scipy.sparse as sp

from sartor.recommend.base import (
    Recommender,
    as_interactions,
    check_rows,
    csr_from_parts,
    csr_parts,
    row_entries,
)
from sartor.recommend.models._linalg import gram_blocks

# Above this many items the Gram matrix is inverted in float32: half the memory, and the
# L2 term keeps the system well enough conditioned for ranking.
FLOAT64_MAX_ITEMS = 8192
# A batch of users is densified for one BLAS product when it has this many stored entries
# per row on average; sparser batches go through scipy's sparse x dense product.
DENSE_BATCH_NNZ = 16


class EASE(Recommender):
    """``B = argmin |X - XB|^2 + l2 |B|^2`` with ``diag(B) = 0``, solved in closed form:
    ``P = (X^T X + l2 I)^-1``, ``B = I - P / diag(P)`` (column-wise), zero diagonal.

    ``B`` is a dense ``n_items x n_items`` float32 matrix, so the model refuses catalogs
    larger than ``max_items`` (training needs about ``n_items^2 x 8`` bytes at its peak).
    """

    name = "ease"

    def __init__(self, l2: float = 500.0, max_items: int = 30_000) -> None:
        self.l2 = l2
        self.max_items = max_items
        self.params_ = {"l2": l2, "max_items": max_items}

    def fit(self, interactions: sp.csr_matrix, **context: Any) -> Self:
        if not float(self.l2) > 0:
            raise ValueError(f"l2 must be > 0, got {self.l2!r}")
        x = as_interactions(interactions)
        n = x.shape[1]
        if n > int(self.max_items):
            need = n * n * (8 if n <= FLOAT64_MAX_ITEMS else 4) * 2 / 1e9
            raise ValueError(
                f"EASE needs a dense {n:,} x {n:,} matrix (about {need:.1f} GB to train) for "
                f"{n:,} items, above max_items={int(self.max_items):,}; use ALS or ItemKNN, or "
                "raise max_items if the machine has the memory"
            )
        dtype = np.float64 if n <= FLOAT64_MAX_ITEMS else np.float32
        g = np.empty((n, n), dtype=dtype)
        for start, stop, block in gram_blocks(x.T.tocsr()):
            g[start:stop] = block
        g[np.diag_indices(n)] += float(self.l2)
        p = _spd_inverse(g)
        diag = np.diag(p).copy()
        p /= -diag[None, :]
        p[np.diag_indices(n)] = 0.0
        self.weights_ = np.ascontiguousarray(p, dtype=np.float32)
        self.user_items_ = x
        self.n_users_, self.n_items_ = x.shape
        return self

    def score_users(self, user_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(user_rows, self.n_users_, "user")
        if len(rows) == 1:
            items, w = row_entries(self.user_items_, int(rows[0]))
            return self._history_scores(items, w)[None, :]
        part = self.user_items_[rows]
        if part.nnz >= DENSE_BATCH_NNZ * len(rows):
            return part.toarray() @ self.weights_
        return np.asarray(part @ self.weights_)

    def _history_scores(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if len(items) == 0:
            return np.zeros(self.n_items_, dtype=np.float32)
        # einsum, not BLAS: one user's scores should not wake BLAS threads (see ALS._matvec).
        return np.einsum("i,ij->j", np.asarray(weights, dtype=np.float32), self.weights_[items])

    def score_history(self, item_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        items = check_rows(item_rows, self.n_items_, "item")
        return self._history_scores(items, weights)

    def similar_scores(self, item_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(item_rows, self.n_items_, "item")
        return self.weights_[rows]

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_, **csr_parts("user_items", self.user_items_)}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights_ = np.ascontiguousarray(arrays["weights"], dtype=np.float32)
        self.user_items_ = csr_from_parts("user_items", arrays)


def _spd_inverse(g: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix by Cholesky, in place where LAPACK
    allows (about half the work of a general inverse, and no second n x n buffer)."""
    n = g.shape[0]
    # g is symmetric, so its transpose (a Fortran-ordered view) is the same matrix and
    # LAPACK can work on it without a copy.
    a = g.T
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    c, info = potrf(a, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise ValueError(f"EASE: X^T X + l2 I is not positive definite (LAPACK info {info})")
    inv, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE: inverting the Gram matrix failed (LAPACK info {info})")
    # potri fills the upper triangle only; mirror it block by block.
    step = 1024
    for start in range(0, n, step):
        stop = min(n, start + step)
        inv[start:stop, :start] = inv[:start, start:stop].T
        block = inv[start:stop, start:stop]
        inv[start:stop, start:stop] = np.triu(block) + np.triu(block, 1).T
    return inv
