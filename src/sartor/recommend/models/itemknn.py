"""Item-based collaborative filtering: a sparse item-item similarity, top-k per item."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from sartor.recommend.base import as_interactions
from sartor.recommend.models._itemitem import SparseItemItem
from sartor.recommend.models._linalg import knn_matrix, row_norms

SIMILARITIES = ("cosine", "bm25")


class ItemKNN(SparseItemItem):
    """Item-item nearest neighbours over the users x items matrix.

    ``similarity="cosine"``: ``s(i, j) = <x_i, x_j> / (|x_i| |x_j| + shrinkage)`` over the
    item columns (shrinkage pulls similarities that rest on few co-occurrences towards 0).

    ``similarity="bm25"``: items are documents and users their terms. Each weight becomes
    ``w (k1 + 1) / (w + k1 (1 - b + b L_i / L_avg)) * idf_u`` with ``L_i`` the item's total
    weight and ``idf_u = log(1 + (N - n_u + 0.5) / (n_u + 0.5))`` (``N`` items, ``n_u`` of
    them touched by user ``u``): heavy users and very popular items count less. The
    similarity is the dot product of two weighted item vectors; ``shrinkage`` does not apply.

    Only the ``k_neighbors`` most similar items of each item are kept (positive ones, never
    the item itself). A user's score for item ``j`` is ``sum_i x_ui s(i, j)``.
    """

    name = "itemknn"

    def __init__(
        self,
        k_neighbors: int = 100,
        similarity: str = "cosine",
        shrinkage: float = 0.0,
        k1: float = 1.2,
        b: float = 0.75,
    ) -> None:
        self.k_neighbors = k_neighbors
        self.similarity = similarity
        self.shrinkage = shrinkage
        self.k1 = k1
        self.b = b
        self.params_ = {
            "k_neighbors": k_neighbors,
            "similarity": similarity,
            "shrinkage": shrinkage,
            "k1": k1,
            "b": b,
        }

    def _validate(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if int(self.k_neighbors) < 1:
            raise ValueError(f"k_neighbors must be >= 1, got {self.k_neighbors!r}")
        if float(self.shrinkage) < 0:
            raise ValueError(f"shrinkage must be >= 0, got {self.shrinkage!r}")
        if float(self.k1) < 0 or not 0 <= float(self.b) <= 1:
            raise ValueError(f"bm25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")

    def fit(self, interactions: sp.csr_matrix, **context: Any) -> Self:
        self._validate()
        x = as_interactions(interactions)
        items = x.T.tocsr()  # items x users: the vectors being compared
        if self.similarity == "cosine":
            sim = knn_matrix(
                items, int(self.k_neighbors), norms=row_norms(items), shrinkage=self.shrinkage
            )
        else:
            weighted = bm25_weight(items, float(self.k1), float(self.b))
            sim = knn_matrix(weighted, int(self.k_neighbors))
        self.similarity_ = sim
        self.user_items_ = x
        self.n_users_, self.n_items_ = x.shape
        return self


def bm25_weight(docs: sp.csr_matrix, k1: float, b: float) -> sp.csr_matrix:
    """BM25-weighted copy of ``docs`` (rows are documents, columns terms)."""
    m = docs.tocsr().astype(np.float64)
    n_docs = m.shape[0]
    df = np.bincount(m.indices, minlength=m.shape[1]).astype(np.float64)
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    lengths = np.asarray(m.sum(axis=1)).reshape(-1)
    avg = lengths.mean() if n_docs and lengths.mean() > 0 else 1.0
    norm = (1.0 - b) + b * lengths / avg
    row_of = np.repeat(np.arange(n_docs), np.diff(m.indptr))
    w = m.data
    m.data = w * (k1 + 1.0) / (w + k1 * norm[row_of]) * idf[m.indices]
    return m.astype(np.float32)
