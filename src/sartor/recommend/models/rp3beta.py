"""RP3beta: a three-step random walk on the user-item graph with a popularity penalty
(Paudel, Christoffel, Newell and Bernstein, ACM TIIS 2017; Christoffel et al., "P3alpha").
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from sartor.recommend.base import as_interactions
from sartor.recommend.models._itemitem import SparseItemItem
from sartor.recommend.models._linalg import top_k_gram


class RP3beta(SparseItemItem):
    """Item-item weights from a walk item -> user -> item, penalized by popularity.

    With ``P_iu = x_ui / d_i`` (item to user: the item's row of ``X^T`` over its degree) and
    ``P_uj = x_uj / d_u`` (user to item), each raised to the power ``alpha`` entry-wise,
    ``W[i, j] = sum_u P_iu^alpha P_uj^alpha / d_j^beta``: the chance of walking from ``i``
    to ``j`` in two steps, divided by ``j``'s degree to the power ``beta`` so that popular
    items stop dominating every list (``beta = 0`` is plain P3alpha). Degrees are the sums of
    the interaction weights. Only the ``k_neighbors`` largest weights of each row ``i`` are
    kept (never ``i`` itself). A user's score for ``j`` is ``sum_i x_ui W[i, j]``, like
    ItemKNN's; the matrix is sparse, so this scales to catalogs EASE cannot hold.
    """

    name = "rp3beta"

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, k_neighbors: int = 200) -> None:
        self.alpha = alpha
        self.beta = beta
        self.k_neighbors = k_neighbors
        self.params_ = {"alpha": alpha, "beta": beta, "k_neighbors": k_neighbors}

    def _validate(self) -> None:
        if not float(self.alpha) > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if not float(self.beta) >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}")
        if int(self.k_neighbors) < 1:
            raise ValueError(f"k_neighbors must be >= 1, got {self.k_neighbors!r}")

    def fit(self, interactions: sp.csr_matrix, **context: Any) -> Self:
        self._validate()
        x = as_interactions(interactions)
        self.similarity_ = rp3beta_matrix(
            x, float(self.alpha), float(self.beta), int(self.k_neighbors)
        )
        self.user_items_ = x
        self.n_users_, self.n_items_ = x.shape
        return self


def _inverse_power(degrees: np.ndarray, power: float) -> np.ndarray:
    out = np.zeros_like(degrees)
    positive = degrees > 0
    out[positive] = degrees[positive] ** -power
    return out


def rp3beta_matrix(x: sp.csr_matrix, alpha: float, beta: float, k: int) -> sp.csr_matrix:
    """The sparse ``n_items x n_items`` RP3beta matrix of ``x`` (see :class:`RP3beta`).

    ``P_iu^alpha P_uj^alpha = x_ui^alpha x_uj^alpha d_i^-alpha d_u^-alpha``, so
    ``W = D_i^-alpha (Y^T Y) D_i^-beta`` with ``Y = D_u^(-alpha/2) X^alpha``: one Gram
    product, computed in row blocks and cut to the top ``k`` of each row as it goes.
    """
    x = x.tocsr().astype(np.float64)
    user_degree = np.asarray(x.sum(axis=1)).ravel()
    item_degree = np.asarray(x.sum(axis=0)).ravel()
    y = x.copy()
    y.data = y.data**alpha
    y = sp.diags(_inverse_power(user_degree, alpha / 2.0)) @ y
    left = _inverse_power(item_degree, alpha).astype(np.float32)
    right = _inverse_power(item_degree, beta).astype(np.float32)

    def scale(start: int, stop: int, block: np.ndarray) -> None:
        block *= left[start:stop, None]
        block *= right[None, :]

    return top_k_gram(y.T.tocsr(), k, scale)
