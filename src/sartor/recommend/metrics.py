"""Top-k ranking metrics, computed for a batch of users at once.

Relevance is binary: an item is relevant to a user when it is in that user's held-out part.
Every function works on whole arrays (no Python loop over users or items), so scoring all
users of MovieLens-1M takes well under a second. The definitions are RecBole's:

* ``recall@k``    hits in the top ``k`` / number of relevant items;
* ``precision@k`` hits in the top ``k`` / ``k``;
* ``hit@k``       1 when at least one relevant item is in the top ``k``;
* ``mrr@k``       1 / rank of the first relevant item in the top ``k`` (0 when none);
* ``ndcg@k``      DCG of the top ``k`` (gain 1 / log2(rank + 1)) divided by the ideal DCG of
  ``min(relevant, k)`` hits.

``tests/test_rec_evaluation.py`` checks each one against a plain-Python reference on random
inputs.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

METRICS = ("ndcg", "recall", "mrr", "hit", "precision")


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best columns of each row of ``scores``, best first; ``-1`` where fewer than
    ``k`` entries are finite (excluded items are ``-inf``).

    ``np.argpartition`` keeps the work linear in the number of items; only the ``k`` chosen
    columns are sorted. Ties sort on the lower column, so results are deterministic.
    """
    n, m = scores.shape
    k = max(0, min(k, m))
    if k == 0 or n == 0:
        return np.full((n, k), -1, dtype=np.int64)
    if k < m:
        # argpartition finds the k-th best value; among items tied with it, the lower
        # columns win (argpartition itself picks arbitrary ones).
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1)[:, None]
        greater = scores > kth
        equal = scores == kth
        need = k - greater.sum(axis=1, keepdims=True)
        chosen_mask = greater | (equal & (np.cumsum(equal, axis=1) <= need))
        part = np.nonzero(chosen_mask)[1].reshape(n, k)
    else:
        part = np.broadcast_to(np.arange(m), (n, m)).copy()
    chosen = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-chosen, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top[~np.isfinite(np.take_along_axis(chosen, order, axis=1))] = -1
    return top


def hits_matrix(top: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean ``(n, k)``: ``top[i, j]`` is relevant to row ``i`` of ``relevant``."""
    n, _ = top.shape
    if n == 0:
        return np.zeros(top.shape, dtype=bool)
    rel = relevant.tocsr()
    # A dense boolean block of the batch is cheap (n x items bits) and makes the lookup a
    # single gather instead of a search per user.
    dense = np.zeros(rel.shape, dtype=bool)
    coo = rel.tocoo()
    dense[coo.row, coo.col] = coo.data != 0
    valid = top >= 0
    return np.take_along_axis(dense, np.where(valid, top, 0), axis=1) & valid


def ranking_metrics(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user metrics from a hits matrix ``(n, k)`` and each user's number of relevant
    items. Rows with no relevant item must be left out by the caller."""
    hits = np.asarray(hits, dtype=bool)[:, :k]
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    n, width = hits.shape
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    n_hits = hits.sum(axis=1).astype(np.float64)
    dcg = (hits * discount[:width]).sum(axis=1)
    idcg = ideal[np.minimum(n_relevant, k).astype(np.int64)]
    any_hit = hits.any(axis=1)
    first = np.where(any_hit, hits.argmax(axis=1), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "ndcg": np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0),
            "recall": np.where(n_relevant > 0, n_hits / np.maximum(n_relevant, 1.0), 0.0),
            "mrr": np.where(any_hit, 1.0 / (first + 1.0), 0.0),
            "hit": np.asarray(any_hit, dtype=np.float64),
            "precision": n_hits / float(max(k, 1)),
        }
