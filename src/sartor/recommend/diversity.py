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
    table: np.ndarray | None = None,
) -> np.ndarray:
    """Positions (into ``scores``) of ``k`` candidates in MMR order.

    ``scores`` are the candidates' relevance (any scale: rescaled to [0, 1] here); ``codes``
    index each candidate's category into ``levels``/``depth`` from :func:`level_table`
    (-1: no category, the table's last row). ``table``, when given, is
    ``similarity_matrix(levels, depth)`` computed beforehand (a catalog's categories
    change rarely; its rows are looked up instead of compared per request).
    """
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)  # one type throughout: no casts per step
    order = np.lexsort((np.arange(n), -scores))
    if lam >= 1.0 or n == 1:
        return order[:k]
    lo, hi = float(scores.min()), float(scores.max())
    rel = (scores - lo) / (hi - lo) if hi > lo else np.ones(n)
    # In rank order from here on: argmax then breaks ties towards the better-ranked one.
    rel = rel[order]
    rows = codes[order]
    rows = np.where(rows < 0, len(depth) - 1, rows)
    # Similarity between every two candidates at once; then a step is a handful of
    # operations over the candidates.
    if table is not None:
        sim = table.take(rows, axis=0).take(rows, axis=1)
    else:
        sim = similarity_matrix(levels[rows], depth[rows])
    base = lam * rel
    # A candidate's value once ``p`` is picked is row ``p`` here; its value at a step is the
    # lowest over the items picked so far (the same as relevance minus the largest
    # similarity: subtraction is monotone), so a step is one minimum and one argmax.
    lowered = base - (1.0 - lam) * sim
    value = base.copy()
    out = np.empty(k, dtype=np.int64)
    for step in range(k):
        best = int(np.argmax(value))
        out[step] = order[best]
        if step + 1 < k:
            np.minimum(value, lowered[best], out=value)
        value[best] = -np.inf
    return out


def similarity_matrix(levels: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """:func:`path_similarity` between every pair of the paths given as rows of
    :func:`level_table` (with their depths)."""
    d = len(depth)
    shared = np.zeros((d, d), dtype=np.int64)
    same = np.ones((d, d), dtype=bool)
    # Level by level (paths are a few levels deep): the common prefix grows while the
    # codes agree; padding equals padding, so never count more than the shorter path has.
    for level in range(levels.shape[1]):
        column = levels[:, level]
        same &= column[:, None] == column[None, :]
        shared += same
    shared = np.minimum(shared, np.minimum.outer(depth, depth))
    longest = np.maximum.outer(depth, depth)
    return np.divide(shared, longest, out=np.zeros(shared.shape), where=longest > 0)
