"""What the item-item models share once trained (not public API): scoring from the learned
item-item matrix and saving it. Subclasses only learn the matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sartor.recommend.base import (
    HistoryRecommender,
    Recommender,
    check_rows,
    csr_from_parts,
    csr_parts,
)
from sartor.recommend.models._linalg import sparse_rows_times, weighted_row_sum

# A batch of users is densified for one BLAS product when it has this many stored entries
# per row on average; sparser batches go through scipy's sparse x dense product.
DENSE_BATCH_NNZ = 16


class DenseItemItem(HistoryRecommender):
    """A dense ``n_items x n_items`` float32 matrix ``weights_`` (EASE, EDLAE): a user's
    scores are their history's weights times its rows. Saved as ``weights`` plus
    ``user_items``."""

    weights_: np.ndarray

    def _batch_scores(self, user_rows: np.ndarray) -> np.ndarray:
        part = self.user_items_[user_rows]
        if part.nnz >= DENSE_BATCH_NNZ * len(user_rows):
            return part.toarray() @ self.weights_
        return np.asarray(part @ self.weights_)

    def _history_scores(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if len(items) == 0:
            return np.zeros(self.n_items_, dtype=np.float32)
        # One user's scores: einsum rather than BLAS, which would wake its threads for a
        # product this small (see ALS._matvec).
        return np.einsum("i,ij->j", np.asarray(weights, dtype=np.float32), self.weights_[items])

    def similar_scores(self, item_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(item_rows, self.n_items_, "item")
        return self.weights_[rows]

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_, **csr_parts("user_items", self.user_items_)}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights_ = np.ascontiguousarray(arrays["weights"], dtype=np.float32)
        self.user_items_ = csr_from_parts("user_items", arrays)


class SparseItemItem(Recommender):
    """A sparse item-item matrix ``similarity_`` (ItemKNN, RP3beta): a user's scores are
    their history's weights times its rows. Saved as ``similarity`` plus ``user_items``."""

    similarity_: sp.csr_matrix
    user_items_: sp.csr_matrix

    def score_users(self, user_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(user_rows, self.n_users_, "user")
        return sparse_rows_times(self.user_items_, rows, self.similarity_)

    def score_history(self, item_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        items = check_rows(item_rows, self.n_items_, "item")
        return weighted_row_sum(self.similarity_, items, np.asarray(weights, dtype=np.float64))

    def similar_scores(self, item_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(item_rows, self.n_items_, "item")
        return np.asarray(self.similarity_[rows].toarray(), dtype=np.float64)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            **csr_parts("similarity", self.similarity_),
            **csr_parts("user_items", self.user_items_),
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.similarity_ = csr_from_parts("similarity", arrays)
        self.user_items_ = csr_from_parts("user_items", arrays)
