"""RFM scoring: recency, frequency and monetary value in quantile scores, and the standard
named groups.

Scores follow the usual pandas recipe: rank each measure (ties broken by customer key, so
the result does not depend on row order), cut the ranks into ``n_quantiles`` equal-sized
bins, score 1 (worst) to ``n_quantiles`` (best); for recency fewer days is better.
Groups come from the R and F scores (on a 1-5 scale):

| R \\ F | 1 | 2 | 3 | 4 | 5 |
| --- | --- | --- | --- | --- | --- |
| 5 | New Customers | Potential Loyalists | Potential Loyalists | Champions | Champions |
| 4 | Promising | Potential Loyalists | Potential Loyalists | Loyal Customers | Loyal Customers |
| 3 | About to Sleep | About to Sleep | Need Attention | Loyal Customers | Loyal Customers |
| 2 | Hibernating | Hibernating | At Risk | At Risk | Can't Lose Them |
| 1 | Lost | Hibernating | At Risk | At Risk | Can't Lose Them |
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

GROUPS = (
    "Champions",
    "Loyal Customers",
    "Potential Loyalists",
    "New Customers",
    "Promising",
    "Need Attention",
    "About to Sleep",
    "At Risk",
    "Can't Lose Them",
    "Hibernating",
    "Lost",
)

_GRID = {
    5: ["New Customers", "Potential Loyalists", "Potential Loyalists", "Champions", "Champions"],
    4: [
        "Promising",
        "Potential Loyalists",
        "Potential Loyalists",
        "Loyal Customers",
        "Loyal Customers",
    ],
    3: ["About to Sleep", "About to Sleep", "Need Attention", "Loyal Customers", "Loyal Customers"],
    2: ["Hibernating", "Hibernating", "At Risk", "At Risk", "Can't Lose Them"],
    1: ["Lost", "Hibernating", "At Risk", "At Risk", "Can't Lose Them"],
}


def group_of(r: int, f: int) -> str:
    """The named group of an (R, F) pair of 1-5 scores."""
    return _GRID[r][f - 1]


def to_five(score: int, n: int) -> int:
    """A 1..n score on the 1-5 scale of the group grid (quantile boundaries kept)."""
    return min(5, max(1, int(np.ceil(score * 5 / n))))


def quantile_scores(values: pd.Series, n: int, higher_is_better: bool = True) -> pd.Series:
    """1..n scores from equal-sized rank bins (ties broken by order)."""
    ranks = values.rank(method="first", ascending=higher_is_better)
    bins = min(n, len(values))
    scores = pd.qcut(ranks, bins, labels=False) + 1
    if bins < n:  # fewer customers than bins: spread onto the 1..n scale
        scores = np.ceil(scores * n / bins)
    return scores.astype(int)


class RFM(BaseEstimator):
    """RFM scores and groups for customers. Scores run 1..``n_quantiles`` (2-10; 5 is the
    usual); the named groups read them on the 1-5 grid above.

    ``fit(X)`` takes a DataFrame indexed by customer with ``recency_days``, ``frequency``
    (orders) and ``monetary`` (net revenue). Customers without an order are left out.
    Learned: ``scores_`` (R, F, M and the ``RFM`` string), ``groups_``, ``n_customers_``.
    """

    def __init__(self, n_quantiles: int = 5) -> None:
        self.n_quantiles = n_quantiles

    def fit(self, X: pd.DataFrame, y: Any = None) -> RFM:
        missing = {"recency_days", "frequency", "monetary"} - set(X.columns)
        if missing:
            raise ValueError(f"RFM.fit needs columns {sorted(missing)}")
        n = self.n_quantiles
        if not isinstance(n, int) or not 2 <= n <= 10:
            raise ValueError("n_quantiles must be a whole number from 2 to 10")
        data = X[(X["frequency"] > 0) & X["recency_days"].notna()].sort_index()
        scores = pd.DataFrame(index=data.index)
        if len(data):
            scores["R"] = quantile_scores(data["recency_days"], n, higher_is_better=False)
            scores["F"] = quantile_scores(data["frequency"], n)
            scores["M"] = quantile_scores(data["monetary"], n)
            sep = "-" if n > 9 else ""
            scores["RFM"] = (
                scores["R"].astype(str)
                + sep
                + scores["F"].astype(str)
                + sep
                + scores["M"].astype(str)
            )
            groups = pd.Series(
                [
                    group_of(to_five(r, n), to_five(f, n))
                    for r, f in zip(scores["R"], scores["F"], strict=True)
                ],
                index=scores.index,
                name="group",
            )
        else:
            scores = pd.DataFrame(columns=["R", "F", "M", "RFM"])
            groups = pd.Series(dtype=object, name="group")
        self.scores_ = scores
        self.groups_ = groups
        self.n_customers_ = len(data)
        return self
