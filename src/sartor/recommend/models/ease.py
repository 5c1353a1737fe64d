"""EASE: a closed-form linear item-item model (Steck, WWW 2019)."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from sartor.recommend.base import as_interactions
from sartor.recommend.models._itemitem import DenseItemItem
from sartor.recommend.models._linalg import gram_blocks, spd_inverse

# Above this many items the Gram matrix is inverted in float32: half the memory, and the
# L2 term keeps the system well enough conditioned for ranking.
FLOAT64_MAX_ITEMS = 8192


class EASE(DenseItemItem):
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
        p = spd_inverse(g, "EASE")
        diag = np.diag(p).copy()
        p /= -diag[None, :]
        p[np.diag_indices(n)] = 0.0
        self.weights_ = np.ascontiguousarray(p, dtype=np.float32)
        self.user_items_ = x
        self.n_users_, self.n_items_ = x.shape
        return self
