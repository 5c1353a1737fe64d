"""EDLAE: a closed-form linear autoencoder a little stronger than EASE, plus an optional
spectral low-pass term.

Four published ideas combined into one item-item matrix ``W``:

* **Emphasized denoising** (Steck, NeurIPS 2020, "Autoencoders that don't overfit towards
  the identity"): training with dropout probability ``p`` on the input is equivalent to an
  L2 penalty that grows with each item's popularity, ``Lambda = l2 + p / (1 - p) *
  diag(X^T X)``. ``dropout=0`` gives EASE's uniform ``l2``.
* **A relaxed diagonal** (Moon, Kim and Lee, SIGIR 2023, "It's Enough: Relaxing Diagonal
  Constraints in Linear Autoencoders"): EASE forces ``diag(B) = 0``; allowing
  ``diag(B) <= diag_max`` gives ``B = I - P diag(nu)`` with ``P = (X^T X + Lambda)^-1`` and
  ``nu = max(diag(Lambda), (1 - diag_max) / diag(P))``. ``diag_max=0`` is EASE's constraint.
* **An ideal low-pass filter** (Shen et al., CIKM 2021, "How Powerful is Graph Convolution
  for Recommendation?", GF-CF): the top ``lowpass_rank`` right singular vectors ``V`` of the
  normalized matrix ``D_u^-1/2 X D_i^-0.3`` give ``L = D_i^-0.3 V V^T D_i^0.3``, a smooth,
  low-rank view of item-item structure that the sparse, local ``B`` misses.
* **Non-negative weights** (Steck, ICDM 2020 workshop, "ADMM SLIM"): with
  ``nonnegative=True``, ``B`` minimizes the same penalized loss under ``B >= 0`` and
  ``diag(B) = 0``, by ``ADMM_ITERATIONS`` rounds of ADMM (each one ``n_items^3`` product;
  ``diag_max`` does not apply). Negative item-item weights mostly fit noise; RecBole's
  ADMMSLIM, the best model of its MovieLens-1M table, is this idea.

``W = B + lowpass_weight * c * L``, where ``c`` puts ``X L`` on the scale of ``X B`` (the
ratio of their mean per-user spreads), so ``lowpass_weight`` means the same on any data.
With the defaults (``dropout=0``, ``diag_max=0``, ``lowpass_rank=0``, ``nonnegative=False``)
this is exactly EASE.
On MovieLens 100K and latest-small under RecBole's protocol, the tuned model beats a tuned
EASE by 3-4% NDCG@10 (``bench/quality.py``).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

from sartor.recommend.base import as_interactions
from sartor.recommend.models._itemitem import DenseItemItem
from sartor.recommend.models._linalg import spd_inverse

# Up to this many items everything is solved in float64; above, in float32 (half the
# memory; the L2 term keeps the system well conditioned enough for ranking).
FLOAT64_MAX_ITEMS = 8192
# Exponent of the item-popularity normalization around the low-pass filter. GF-CF uses 0.5;
# 0.3 was as good or better on both MovieLens sets we measured.
LOWPASS_ITEM_EXPONENT = 0.3
# Users sampled to match the scales of X B and X L (enough for a stable mean spread).
SCALE_SAMPLE = 512
# ADMM rounds for the non-negative variant: ranking quality stops moving after about ten on
# MovieLens (10 and 30 rounds gave the same NDCG@10 on 100K).
ADMM_ITERATIONS = 10
# Power iterations of the randomized SVD: the top singular vectors of interaction data are
# well separated, and six passes over the sparse matrix pin them down (ARPACK took 2-5x
# longer on MovieLens-1M-sized data for the same ranking quality).
SVD_POWER_ITERATIONS = 6


class EDLAE(DenseItemItem):
    """Emphasized-denoising linear autoencoder with a relaxed diagonal and an optional
    low-pass term; see the module docstring for the maths and the references."""

    name = "edlae"

    def __init__(
        self,
        l2: float = 500.0,
        dropout: float = 0.0,
        diag_max: float = 0.0,
        lowpass_rank: int = 0,
        lowpass_weight: float = 0.0,
        nonnegative: bool = False,
        max_items: int = 20_000,
        random_state: int | None = 0,
    ) -> None:
        self.l2 = l2
        self.dropout = dropout
        self.diag_max = diag_max
        self.lowpass_rank = lowpass_rank
        self.lowpass_weight = lowpass_weight
        self.nonnegative = nonnegative
        self.max_items = max_items
        self.random_state = random_state
        self.params_ = {
            "l2": l2,
            "dropout": dropout,
            "diag_max": diag_max,
            "lowpass_rank": lowpass_rank,
            "lowpass_weight": lowpass_weight,
            "nonnegative": nonnegative,
            "max_items": max_items,
            "random_state": random_state,
        }

    def _validate(self, n_items: int) -> None:
        if not float(self.l2) > 0:
            raise ValueError(f"l2 must be > 0, got {self.l2!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= float(self.diag_max) <= 1.0:
            raise ValueError(f"diag_max must be in [0, 1], got {self.diag_max!r}")
        if int(self.lowpass_rank) < 0:
            raise ValueError(f"lowpass_rank must be >= 0, got {self.lowpass_rank!r}")
        if float(self.lowpass_weight) < 0:
            raise ValueError(f"lowpass_weight must be >= 0, got {self.lowpass_weight!r}")
        if n_items > int(self.max_items):
            raise ValueError(
                f"EDLAE needs dense {n_items:,} x {n_items:,} matrices for {n_items:,} items, "
                f"above max_items={int(self.max_items):,}; use ALS or ItemKNN, or raise "
                "max_items if the machine has the memory"
            )

    def fit(self, interactions: sp.csr_matrix, **context: Any) -> Self:
        x = as_interactions(interactions)
        n = x.shape[1]
        self._validate(n)
        dtype = np.float64 if n <= FLOAT64_MAX_ITEMS else np.float32
        weights = self._admm(x, dtype) if self.nonnegative else self._autoencoder(x, dtype)
        rank = min(int(self.lowpass_rank), min(x.shape) - 1)
        if rank > 0 and float(self.lowpass_weight) > 0 and x.nnz:
            low = _lowpass(x, rank, self.random_state, dtype)
            scale = _scale(x, weights, low)
            weights += (float(self.lowpass_weight) * scale) * low
            self.lowpass_scale_ = scale
        else:
            self.lowpass_scale_ = 0.0
        self.weights_ = np.ascontiguousarray(weights, dtype=np.float32)
        self.user_items_ = x
        self.n_users_, self.n_items_ = x.shape
        return self

    def _gram(
        self, x: sp.csr_matrix, dtype: type[np.floating[Any]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``X^T X`` (dense) and the per-item penalty ``Lambda``."""
        xt = x.T.tocsr().astype(dtype)
        g = np.asarray((xt @ xt.T).toarray(), dtype=dtype)
        p = float(self.dropout)
        penalty = float(self.l2) + (p / (1.0 - p)) * np.diag(g)
        return g, penalty

    def _autoencoder(self, x: sp.csr_matrix, dtype: type[np.floating[Any]]) -> np.ndarray:
        """``B = I - P diag(nu)`` (see the module docstring), built in place."""
        n = x.shape[1]
        g, penalty = self._gram(x, dtype)
        g[np.diag_indices(n)] += penalty
        inverse = spd_inverse(g, "EDLAE")
        diag = np.diag(inverse).copy()
        nu = np.maximum(penalty, (1.0 - float(self.diag_max)) / diag)
        inverse *= -nu[None, :]
        inverse[np.diag_indices(n)] += 1.0
        # Round-off can leave a diagonal a hair above the bound (or off zero for EASE).
        if float(self.diag_max) == 0.0:
            inverse[np.diag_indices(n)] = 0.0
        return inverse

    def _admm(self, x: sp.csr_matrix, dtype: type[np.floating[Any]]) -> np.ndarray:
        """Non-negative ``B`` with a zero diagonal: ADMM on the split ``B = C``, ``C >= 0``.

        ``B`` steps solve the penalized least squares (plus ``rho/2 |B - C + U|^2``) in
        closed form with the zero-diagonal constraint; ``C`` steps project on ``C >= 0``;
        ``U`` accumulates the disagreement. The penalty ``rho`` is ``l2``.
        """
        n = x.shape[1]
        g, penalty = self._gram(x, dtype)
        rho = float(self.l2)
        system = g.copy()
        system[np.diag_indices(n)] += penalty + rho
        # The rounds run in float32: twice the BLAS speed, and ten rounds of projections do
        # not need more precision than the ranking does.
        inverse = spd_inverse(system, "EDLAE").astype(np.float32)
        del system
        g = g.astype(np.float32)
        diag = np.diag(inverse).copy()
        c = np.zeros((n, n), dtype=np.float32)
        u = np.zeros((n, n), dtype=np.float32)
        for _ in range(ADMM_ITERATIONS):
            target = c - u
            target *= np.float32(rho)
            target += g
            b = inverse @ target
            del target
            b -= inverse * (np.diag(b) / diag)[None, :]
            u += b
            np.maximum(u, 0.0, out=c)  # C = max(B + U, 0)
            u -= c
            del b
        c[np.diag_indices(n)] = 0.0
        return c

    # ---- persistence --------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            **super()._arrays(),
            "lowpass_scale": np.asarray([self.lowpass_scale_], dtype=np.float64),
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        super()._restore(arrays)
        self.lowpass_scale_ = float(arrays["lowpass_scale"][0])


def _lowpass(
    x: sp.csr_matrix, rank: int, random_state: int | None, dtype: type[np.floating[Any]]
) -> np.ndarray:
    """``D_i^-a V V^T D_i^a`` from the top ``rank`` right singular vectors of the
    normalized interactions (GF-CF's ideal low-pass filter)."""
    xs = x.astype(np.float64)
    user_counts = np.maximum(np.asarray(xs.sum(axis=1)).ravel(), 1.0)
    item_counts = np.maximum(np.asarray(xs.sum(axis=0)).ravel(), 1.0)
    a = LOWPASS_ITEM_EXPONENT
    normalized = sp.diags(user_counts**-0.5) @ xs @ sp.diags(item_counts**-a)
    _, _, vt = randomized_svd(
        normalized.tocsr(),
        rank,
        n_oversamples=max(10, rank // 2),
        n_iter=SVD_POWER_ITERATIONS,
        random_state=random_state,
    )
    v = np.ascontiguousarray(vt.T, dtype=dtype)
    low = v @ v.T
    low *= (item_counts**-a).astype(dtype)[:, None]
    low *= (item_counts**a).astype(dtype)[None, :]
    return low


def _scale(x: sp.csr_matrix, weights: np.ndarray, low: np.ndarray) -> float:
    """Ratio of the mean per-user standard deviations of ``X B`` and ``X L``."""
    n_users = x.shape[0]
    rows = np.unique(np.linspace(0, n_users - 1, min(n_users, SCALE_SAMPLE)).astype(np.int64))
    part = x[rows].astype(weights.dtype)
    spread_b = float(np.mean(np.asarray(part @ weights).std(axis=1)))
    spread_l = float(np.mean(np.asarray(part @ low).std(axis=1)))
    if not np.isfinite(spread_b) or not np.isfinite(spread_l) or spread_l <= 0:
        return 0.0
    return spread_b / spread_l
