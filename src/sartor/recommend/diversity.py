"""Maximal marginal relevance (Carbonell & Goldstein, 1998) over category paths.

Two items are as similar as the share of their category paths they have in common:
"Home > Kitchen > Mugs" and "Home > Kitchen > Pans" share 2 of 3 levels (0.67), the same
path is 1, different top levels 0, and an item without a category is similar to nothing.
Each step picks the candidate maximizing ``λ·relevance − (1−λ)·max similarity to the items
already picked``; λ = 1 keeps the relevance order.

Paths are compared as rows of level codes (:func:`level_table`), so one step is a few
vectorised operations over the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sartor.recommend.filters import PATH_SEP


def path_similarity(a: str | None, b: str | None) -> float:
    if a is None or b is None:
        return 0.0
    pa, pb = a.split(PATH_SEP), b.split(PATH_SEP)
    shared = 0
    for x, y in zip(pa, pb, strict=False):
        if x != y:
            break
        shared += 1
    return shared / max(len(pa), len(pb))


def level_table(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """For each path, its levels as codes of the prefix up to that level (so equal codes at
    level ``l`` mean equal paths down to ``l``), padded with -1; and each path's depth. One
    extra last row stands for "no category" (depth 0)."""
    split = [p.split(PATH_SEP) for p in paths]
    width = max((len(s) for s in split), default=1)
    levels = np.full((len(paths) + 1, width), -1, dtype=np.int64)
    depth = np.zeros(len(paths) + 1, dtype=np.int64)
    prefixes: dict[tuple[str, ...], int] = {}
    for i, parts in enumerate(split):
        depth[i] = len(parts)
        for level in range(len(parts)):
            key = tuple(parts[: level + 1])
            levels[i, level] = prefixes.setdefault(key, len(prefixes))
    return levels, depth


def mmr(
    scores: np.ndarray,
    codes: np.ndarray,
    levels: np.ndarray,
    depth: np.ndarray,
    k: int,
    lam: float,
) -> np.ndarray:
    """Positions (into ``scores``) of ``k`` candidates in MMR order.

    ``scores`` are the candidates' relevance (any scale: rescaled to [0, 1] here); ``codes``
    index each candidate's category into ``levels``/``depth`` from :func:`level_table`
    (-1: no category, the table's last row).
    """
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(n), -scores))
    if lam >= 1.0 or n == 1:
        return order[:k]
    lo, hi = float(scores.min()), float(scores.max())
    rel = (scores - lo) / (hi - lo) if hi > lo else np.ones(n)
    # In rank order from here on: argmax then breaks ties towards the better-ranked one.
    rel = rel[order]
    rows = np.where(codes[order] < 0, len(depth) - 1, codes[order])
    # Similarity between the distinct categories present, all at once; then per step one
    # lookup of the picked item's row.
    distinct, local = np.unique(rows, return_inverse=True)
    lv, dp = levels[distinct], depth[distinct]
    shared = np.logical_and.accumulate(lv[:, None, :] == lv[None, :, :], axis=2).sum(axis=2)
    # Padding equals padding: never count more levels than the shorter path has.
    shared = np.minimum(shared, np.minimum.outer(dp, dp))
    longest = np.maximum.outer(dp, dp)
    sim = np.divide(shared, longest, out=np.zeros(shared.shape), where=longest > 0)
    local = local.reshape(-1)
    penalty = np.zeros(n)
    value = lam * rel
    out = np.empty(k, dtype=np.int64)
    for step in range(k):
        best = int(np.argmax(value))
        out[step] = order[best]
        value[best] = -np.inf
        if step + 1 < k:
            grown = np.maximum(penalty, sim[local[best]][local])
            value += (1.0 - lam) * (penalty - grown)
            penalty = grown
    return out
