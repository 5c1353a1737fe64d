"""Behavioural clusters of profiles: features, a scikit-learn pipeline, automatic model
selection, stable names across runs, and the ``cluster:<name>`` segments.

The features of a profile (:func:`profile_features`) come from its fold state
(:func:`sartor.profiles.folds.view`): RFM recency/frequency/monetary, average order value,
session depth, the shares of the workspace's top categories in its affinity, and its price
sensitivity. The model (:func:`make_pipeline`) is ``log1p`` on the skewed counts and
amounts -> ``StandardScaler`` -> ``PCA`` keeping 90% of the variance -> the algorithm.

:class:`Clusterer` picks the model's size automatically: ``k`` of (MiniBatch)KMeans by the
silhouette on a sample (Davies-Bouldin reported alongside), the components of a Gaussian
mixture by BIC, DBSCAN's ``eps`` at the knee of the sorted k-distance curve; HDBSCAN needs
no size. Each weekly run (:func:`run_clustering`) is matched to the previous one: the
adjusted Rand index on the profiles both runs saw measures stability, and the Hungarian
algorithm on the contingency table pairs new clusters with old ones, so a cluster keeps its
name (and segment key) while it keeps most of its members.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.cluster import DBSCAN, HDBSCAN, KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils import check_random_state
from sqlalchemy import Connection, delete, func, select, update
from threadpoolctl import threadpool_limits

from sartor.clock import now_ms
from sartor.profiles import folds
from sartor.profiles import store as profile_store
from sartor.storage.db import write_tx
from sartor.storage.sql import chunks, execute_many
from sartor.storage.tables import (
    cluster_assignments,
    identities,
    memberships,
    profiles,
    segments,
)
from sartor.storage.tables import cluster_runs as runs_table

if TYPE_CHECKING:
    from sartor.engine import Engine

log = logging.getLogger("sartor.segments.clustering")

ALGORITHMS = ("kmeans", "minibatch_kmeans", "dbscan", "hdbscan", "gmm")
BASE_COLUMNS = ("recency_days", "frequency", "monetary", "average_order_value", "session_depth")
# Counts and amounts: non-negative and long-tailed, so log1p before scaling.
LOG_COLUMNS = BASE_COLUMNS
CATEGORY_PREFIX = "cat:"
KEY_PREFIX = "cluster:"
NOISE = -1
# Below this many rows a fit runs on one thread: on small data OpenMP/BLAS start-up and
# spin-waiting cost more than they save (much more on a busy machine).
SINGLE_THREAD_ROWS = 50_000


# -- features ------------------------------------------------------------------------------


def fill_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing values made meaningful: no order means the worst recency seen (as lapsed as
    the most lapsed buyer) and an order value of 0; no priced product seen means the
    population's median price sensitivity (1.0, "pays the category median", if none)."""
    out = frame.copy()
    recency = out["recency_days"].astype(float)
    horizon = float(recency.max()) if recency.notna().any() else 0.0
    out["recency_days"] = recency.fillna(horizon).clip(lower=0.0)
    for column in out.columns:
        if column not in ("recency_days", "price_sensitivity"):
            out[column] = out[column].astype(float).fillna(0.0)
    if "price_sensitivity" in out:
        ps = out["price_sensitivity"].astype(float)
        out["price_sensitivity"] = ps.fillna(float(ps.median()) if ps.notna().any() else 1.0)
    return out.astype(float)


def _source(source: Any) -> tuple[Any, folds.ProfileConfig]:
    """(something to ``connect()``-or-use, fold config) of an Engine or a Connection."""
    if isinstance(source, Connection):
        return source, folds.ProfileConfig()
    return source.db, source.settings.profile_config


def profile_features(
    source: Engine | Connection,
    workspace_id: str,
    now: int | None = None,
    *,
    top_categories: int = 8,
    identified_only: bool = False,
) -> pd.DataFrame:
    """One row per profile with behaviour (a track, page or screen event), indexed by
    ``profile_id``: ``recency_days``, ``frequency``, ``monetary``, ``average_order_value``,
    ``session_depth``, the share of each of the workspace's ``top_categories`` categories
    (by total affinity share) as ``cat:<name>``, and ``price_sensitivity``; missing values
    filled (:func:`fill_features`).

    ``source`` is an :class:`~sartor.engine.Engine` (its fold settings apply) or an open
    connection (default fold settings). ``identified_only`` keeps profiles with a
    ``userId`` (leaves out one-off guest checkouts and anonymous visitors)."""
    now = now if now is not None else now_ms()
    target, config = _source(source)
    base: list[tuple[Any, ...]] = []
    shares: list[Mapping[str, float]] = []
    pids: list[str] = []

    def read(conn: Connection) -> None:
        medians = profile_store.category_medians(conn, workspace_id)
        query = select(
            profiles.c.profile_id, profiles.c.computed, profiles.c.traits, profiles.c.last_seq
        ).where(profiles.c.workspace_id == workspace_id)
        if identified_only:
            query = query.where(
                profiles.c.profile_id.in_(
                    select(identities.c.profile_id).where(
                        identities.c.workspace_id == workspace_id,
                        identities.c.kind == "user_id",
                    )
                )
            )
        for row in conn.execute(query.execution_options(yield_per=5000)):
            doc, _ = profile_store.doc_of(row)
            if not doc["sessions"] and not doc["sessions_dropped"]:
                continue  # no track/page/screen (yet): traits alone are not behaviour
            v = folds.view(doc, now, config, medians)
            rfm = v["rfm"]
            pids.append(row.profile_id)
            base.append(
                (
                    rfm["recency_days"],
                    rfm["frequency"],
                    rfm["monetary"],
                    v["average_order_value"],
                    v["avg_session_depth"],
                    v["price_sensitivity"],
                )
            )
            shares.append(v["category_affinity"])

    if isinstance(target, Connection):
        read(target)
    else:
        with target.connect() as conn:
            read(conn)
    frame = pd.DataFrame(
        base,
        columns=[*BASE_COLUMNS, "price_sensitivity"],
        index=pd.Index(pids, name="profile_id"),
        dtype=float,
    )
    totals: dict[str, float] = {}
    for s in shares:
        for category, share in s.items():
            totals[category] = totals.get(category, 0.0) + share
    top = sorted(totals, key=lambda c: (-totals[c], c))[:top_categories]
    if top:
        matrix = np.array([[s.get(c, 0.0) for c in top] for s in shares], dtype=float)
        cats = pd.DataFrame(
            matrix.reshape(len(pids), len(top)),
            columns=[CATEGORY_PREFIX + c for c in top],
            index=frame.index,
        )
        frame = pd.concat([frame[list(BASE_COLUMNS)], cats, frame[["price_sensitivity"]]], axis=1)
    return fill_features(frame)


# -- the model ----------------------------------------------------------------------------


def log1p_columns(X: Any, columns: Sequence[str | int] = LOG_COLUMNS) -> Any:
    """``log1p`` of the named (DataFrame) or numbered (array) columns, negatives as 0."""
    if isinstance(X, pd.DataFrame):
        out = X.copy()
        for c in columns:
            if c in out.columns:
                out[c] = np.log1p(out[c].astype(float).clip(lower=0.0))
        return out
    arr = np.array(X, dtype=float, copy=True)
    index = [c for c in columns if isinstance(c, int | np.integer)]
    if len(index) != len(columns):
        raise ValueError("log1p_columns needs a DataFrame to find columns by name")
    arr[:, index] = np.log1p(np.clip(arr[:, index], 0.0, None))
    return arr


def make_estimator(
    algorithm: str,
    n_clusters: int = 8,
    random_state: Any = None,
    **params: Any,
) -> BaseEstimator:
    """The final step of the pipeline for ``algorithm`` (one of :data:`ALGORITHMS`)."""
    if algorithm == "kmeans":
        return KMeans(n_clusters=n_clusters, n_init=4, random_state=random_state, **params)
    if algorithm == "minibatch_kmeans":
        kw: dict[str, Any] = {"batch_size": 4096, "n_init": 3, "max_no_improvement": 10}
        return MiniBatchKMeans(n_clusters=n_clusters, random_state=random_state, **{**kw, **params})
    if algorithm == "dbscan":
        return DBSCAN(**params)
    if algorithm == "hdbscan":
        return HDBSCAN(**{"copy": True, **params})
    if algorithm == "gmm":
        # A variance floor of 0.1 (features are standardized): counts such as "one order"
        # are discrete, and without a floor BIC rewards components collapsed onto them.
        kw = {"covariance_type": "full", "n_init": 1, "reg_covar": 0.1}
        return GaussianMixture(
            n_components=n_clusters, random_state=random_state, **{**kw, **params}
        )
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def make_pipeline(
    algorithm: str = "minibatch_kmeans",
    *,
    n_clusters: int = 8,
    random_state: Any = None,
    variance: float = 0.9,
    log_columns: Sequence[str | int] = LOG_COLUMNS,
    **params: Any,
) -> Pipeline:
    """``log1p`` (skewed columns) -> ``StandardScaler`` -> ``PCA(variance)`` -> algorithm."""
    return Pipeline(
        [
            (
                "log1p",
                FunctionTransformer(
                    log1p_columns,
                    kw_args={"columns": tuple(log_columns)},
                    feature_names_out="one-to-one",
                ),
            ),
            ("scale", StandardScaler()),
            ("pca", PCA(n_components=variance, svd_solver="full", random_state=random_state)),
            (
                "cluster",
                make_estimator(algorithm, n_clusters, random_state=random_state, **params),
            ),
        ]
    )


def knee_eps(Z: np.ndarray, min_samples: int) -> tuple[float, int]:
    """DBSCAN's ``eps`` at the knee of the sorted k-distance curve (k = ``min_samples``):
    the point farthest from the chord between the curve's ends, both axes scaled to
    [0, 1]. Returns ``(eps, index of the knee)``."""
    k = min(min_samples, len(Z) - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)
    curve = np.sort(dist[:, -1])  # column 0 is the point itself
    n = len(curve)
    if n < 3 or curve[-1] <= curve[0]:
        return float(max(curve[-1], 1e-6)), n - 1
    x = np.linspace(0.0, 1.0, n)
    y = (curve - curve[0]) / (curve[-1] - curve[0])
    # Distance to the chord y = x (after scaling): |x - y| / sqrt(2).
    knee = int(np.argmax(np.abs(x - y)))
    return float(max(curve[knee], 1e-6)), knee


def cluster_metrics(
    Z: np.ndarray, labels: np.ndarray, sample_size: int = 5000, random_state: Any = None
) -> dict[str, Any]:
    """Silhouette (on a sample), Davies-Bouldin and Calinski-Harabasz of a labelling, with
    the noise label (-1) left out; None where undefined (fewer than two clusters)."""
    labels = np.asarray(labels)
    mask = labels != NOISE
    Zc, lc = Z[mask], labels[mask]
    k = len(np.unique(lc))
    out: dict[str, Any] = {
        "n": len(labels),
        "n_clusters": int(k),
        "noise": int((~mask).sum()),
        "noise_fraction": round(float((~mask).mean()), 6) if len(labels) else 0.0,
        "silhouette": None,
        "davies_bouldin": None,
        "calinski_harabasz": None,
    }
    if 2 <= k < len(lc):
        rs = check_random_state(random_state)
        try:
            out["silhouette"] = float(
                silhouette_score(
                    Zc,
                    lc,
                    sample_size=sample_size if len(lc) > sample_size else None,
                    random_state=rs,
                )
            )
        except ValueError:  # the sample held a single cluster
            out["silhouette"] = None
        out["davies_bouldin"] = float(davies_bouldin_score(Zc, lc))
        out["calinski_harabasz"] = float(calinski_harabasz_score(Zc, lc))
    return out


class Clusterer(ClusterMixin, BaseEstimator):
    """Cluster profile features with automatic model size.

    ``X`` is a feature frame (:func:`profile_features`). ``algorithm`` is one of
    :data:`ALGORITHMS`. For ``kmeans`` / ``minibatch_kmeans``, every ``k`` in ``k_range``
    (inclusive) is fitted on a sample of ``search_size`` rows and the one with the best
    silhouette (on ``sample_size`` of them) wins; for ``gmm``, the number of components
    with the lowest BIC; ``dbscan`` takes ``eps`` at the k-distance knee of a sample;
    ``hdbscan`` uses ``min_cluster_size`` (default 1% of the rows, at least 10). The winner
    is then fitted on all rows. DBSCAN and HDBSCAN are quadratic in the worst case: use
    them up to some hundred thousand profiles.

    Learned: ``pipeline_`` (the fitted :class:`~sklearn.pipeline.Pipeline`), ``labels_``
    (-1 = noise), ``n_clusters_``, ``metrics_`` (:func:`cluster_metrics`), ``k_scores_``
    (per candidate size: silhouette and Davies-Bouldin, or BIC), ``params_`` (the chosen
    size: ``n_clusters``, or ``eps`` and ``min_samples``, or ``min_cluster_size``),
    ``n_components_`` (kept by PCA), ``feature_names_in_``, ``timings_`` (seconds spent
    preprocessing, searching the size, fitting, scoring).
    """

    def __init__(
        self,
        algorithm: str = "minibatch_kmeans",
        k_range: tuple[int, int] = (2, 10),
        sample_size: int = 5000,
        search_size: int = 20_000,
        variance: float = 0.9,
        min_samples: int | None = None,
        min_cluster_size: int | None = None,
        random_state: Any = None,
    ) -> None:
        self.algorithm = algorithm
        self.k_range = k_range
        self.sample_size = sample_size
        self.search_size = search_size
        self.variance = variance
        self.min_samples = min_samples
        self.min_cluster_size = min_cluster_size
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> Clusterer:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        lo, hi = (int(v) for v in self.k_range)
        if not 1 <= lo <= hi:
            raise ValueError("k_range must be (low, high) with 1 <= low <= high")
        n = len(X)
        if n < max(lo + 1, 3):
            raise ValueError(f"need at least {max(lo + 1, 3)} rows to cluster, got {n}")
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        clock = [time.perf_counter()]

        def lap() -> float:
            clock.append(time.perf_counter())
            return round(clock[-1] - clock[-2], 4)

        pipe = make_pipeline(self.algorithm, random_state=seed, variance=self.variance)
        Z = np.ascontiguousarray(pipe[:-1].fit_transform(X), dtype=float)
        timings = {"preprocess": lap()}
        search = (
            np.sort(rng.choice(n, self.search_size, replace=False))
            if n > self.search_size
            else np.arange(n)
        )
        final = pipe.steps[-1][1]
        with threadpool_limits(limits=1):
            params, scores = self._choose(final, Z, Z[search], lo, hi, seed)
        timings["search"] = lap()
        few = threadpool_limits(limits=1) if n < SINGLE_THREAD_ROWS else nullcontext()
        with few:
            final.fit(Z)
            labels = final.predict(Z) if self.algorithm == "gmm" else final.labels_
            self.labels_ = np.asarray(labels, dtype=int)
            timings["fit"] = lap()
            self.metrics_ = cluster_metrics(Z, self.labels_, self.sample_size, seed)
            timings["metrics"] = lap()
        self.timings_ = timings
        self.n_clusters_ = int(len(np.unique(self.labels_[self.labels_ != NOISE])))
        self.k_scores_ = scores
        self.params_ = params
        self.pipeline_ = pipe
        self.n_components_ = int(pipe.named_steps["pca"].n_components_)
        self.n_features_in_ = int(np.shape(X)[1])
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def _choose(
        self, final: Any, Z: np.ndarray, Zs: np.ndarray, lo: int, hi: int, seed: int
    ) -> tuple[dict[str, Any], dict[int, dict[str, float | None]]]:
        """Set the model size on ``final`` (see the class doc); returns the chosen
        parameters and the score of each candidate."""
        scores: dict[int, dict[str, float | None]] = {}
        hi = min(hi, len(Zs) - 1)
        if self.algorithm in ("kmeans", "minibatch_kmeans"):
            chosen = self._search_k(final, Zs, lo, hi, scores, seed)
            final.set_params(n_clusters=chosen)
            return {"n_clusters": chosen}, scores
        if self.algorithm == "gmm":
            best: tuple[float, int] | None = None
            for k in range(lo, hi + 1):
                bic = float(clone(final).set_params(n_components=k).fit(Zs).bic(Zs))
                scores[k] = {"bic": bic}
                if best is None or bic < best[0]:
                    best = (bic, k)
            chosen = best[1] if best is not None else lo
            final.set_params(n_components=chosen)
            return {"n_clusters": chosen}, scores
        if self.algorithm == "dbscan":
            min_samples = self.min_samples or max(5, 2 * Z.shape[1])
            sample = Zs[: self.sample_size] if len(Zs) > self.sample_size else Zs
            eps, knee = knee_eps(sample, min_samples)
            final.set_params(eps=eps, min_samples=min_samples)
            return {"eps": eps, "min_samples": min_samples, "knee_index": knee}, scores
        size = self.min_cluster_size or max(10, len(Z) // 100)  # hdbscan
        final.set_params(min_cluster_size=size, min_samples=self.min_samples)
        return {"min_cluster_size": size, "min_samples": self.min_samples}, scores

    def _search_k(
        self,
        estimator: Any,
        Zs: np.ndarray,
        lo: int,
        hi: int,
        scores: dict[int, dict[str, float | None]],
        seed: int,
    ) -> int:
        best: tuple[float, int] | None = None
        rs = np.random.RandomState(seed)
        sil_idx = (
            np.sort(rs.choice(len(Zs), self.sample_size, replace=False))
            if len(Zs) > self.sample_size
            else np.arange(len(Zs))
        )
        for k in range(lo, hi + 1):
            labels = clone(estimator).set_params(n_clusters=k).fit(Zs).labels_
            if k < 2 or len(np.unique(labels)) < 2:
                scores[k] = {"silhouette": None, "davies_bouldin": None}
                continue
            sub = labels[sil_idx]
            sil = float(silhouette_score(Zs[sil_idx], sub)) if len(np.unique(sub)) > 1 else -1.0
            scores[k] = {
                "silhouette": sil,
                "davies_bouldin": float(davies_bouldin_score(Zs, labels)),
            }
            if best is None or sil > best[0] + 1e-9:
                best = (sil, k)
        return best[1] if best is not None else lo


# -- stability and names --------------------------------------------------------------------


@dataclass
class Matching:
    """How a run's clusters relate to the previous run's, over the profiles both saw."""

    ari: float | None
    common: int
    # current label -> previous label, for the pairs the Hungarian algorithm made where
    # most of the current cluster's members were in the previous one.
    pairs: dict[int, int]
    overlap: dict[int, float]


def match_clusters(previous: pd.Series, current: pd.Series, min_overlap: float = 0.5) -> Matching:
    """ARI between two labellings (Series indexed by profile id) on common profiles, and a
    one-to-one pairing of clusters maximizing the shared members (Hungarian algorithm on the
    contingency table); a pair counts when more than ``min_overlap`` of the current
    cluster's common members were in the previous cluster. Noise (-1) is never paired."""
    common = previous.index.intersection(current.index)
    if len(common) == 0:
        return Matching(None, 0, {}, {})
    p = previous.loc[common].to_numpy()
    c = current.loc[common].to_numpy()
    ari = float(adjusted_rand_score(p, c))
    table = pd.crosstab(pd.Series(c, name="current"), pd.Series(p, name="previous"))
    table = table.drop(index=NOISE, errors="ignore").drop(columns=NOISE, errors="ignore")
    pairs: dict[int, int] = {}
    overlap: dict[int, float] = {}
    if table.size:
        values = table.to_numpy()
        rows, cols = linear_sum_assignment(values, maximize=True)
        for r, col in zip(rows, cols, strict=True):
            size = values[r].sum()
            share = float(values[r, col] / size) if size else 0.0
            if share > min_overlap:
                pairs[int(table.index[r])] = int(table.columns[col])
                overlap[int(table.index[r])] = round(share, 6)
    return Matching(ari, int(len(common)), pairs, overlap)


def slugify(text: str, limit: int = 80) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "cluster"


def _tier(value: float, low: float, high: float) -> str:
    return "high" if value >= high else "low" if value <= low else "mid"


def cluster_name(centroid: Mapping[str, float], population: pd.DataFrame, top: str | None) -> str:
    """A readable name from a cluster's medians against the population's: value (monetary),
    frequency, recency and price standing of its buyers, and its top category, e.g.
    "High-value frequent buyers of home decor"."""
    buyers = population[population["frequency"] > 0]
    where = f" of {top.lower()}" if top else ""
    if centroid["frequency"] < 1 or buyers.empty:
        deep = centroid["session_depth"] >= population["session_depth"].quantile(0.75)
        return f"{'Engaged browsers' if deep else 'Browsers'}{where}"
    q = buyers.quantile([0.25, 0.75])
    value = _tier(centroid["monetary"], q.loc[0.25, "monetary"], q.loc[0.75, "monetary"])
    freq = centroid["frequency"]
    frequency = (
        "one-time"
        if freq <= 1
        else "frequent"
        if freq >= max(3.0, q.loc[0.75, "frequency"])
        else "occasional"
    )
    lapsed = centroid["recency_days"] >= max(90.0, float(q.loc[0.75, "recency_days"]))
    bargain = centroid.get("price_sensitivity", 1.0) <= 0.8
    noun = "bargain hunters" if bargain else "buyers"
    where = f" in {top.lower()}" if top and bargain else where
    words = f"{value}-value {frequency} {noun}{where}"
    return ("Lapsed " + words) if lapsed else words[0].upper() + words[1:]


def describe_clusters(
    features: pd.DataFrame, labels: np.ndarray, top_n: int = 3
) -> list[dict[str, Any]]:
    """Per cluster (noise left out): size, share, centroid in original units (medians and
    means of the raw features), top categories with their lift over the population, and a
    generated name."""
    cats = [c for c in features.columns if c.startswith(CATEGORY_PREFIX)]
    overall = features[cats].mean() if cats else pd.Series(dtype=float)
    grouped = features.groupby(np.asarray(labels))
    medians, means, sizes = grouped.median(), grouped.mean(), grouped.size()
    out: list[dict[str, Any]] = []
    for label in sorted(int(x) for x in sizes.index):
        if label == NOISE:
            continue
        med, mean = medians.loc[label], means.loc[label]
        top_cats = []
        if cats:
            for c in mean[cats].sort_values(ascending=False).index[:top_n]:
                share = float(mean[c])
                if share <= 0:
                    continue
                base = float(overall[c])
                top_cats.append(
                    {
                        "category": c[len(CATEGORY_PREFIX) :],
                        "share": round(share, 4),
                        "lift": round(share / base, 3) if base > 0 else None,
                    }
                )
        leading = top_cats[0]["category"] if top_cats and top_cats[0]["share"] >= 0.3 else None
        out.append(
            {
                "label": label,
                "size": int(sizes.loc[label]),
                "share": round(float(sizes.loc[label] / len(features)), 6),
                "centroid": {
                    "median": {k: round(float(v), 4) for k, v in med.items()},
                    "mean": {k: round(float(v), 4) for k, v in mean.items()},
                },
                "top_categories": top_cats,
                "generated_name": cluster_name(med.to_dict(), features, leading),
            }
        )
    return out


def name_clusters(
    described: list[dict[str, Any]],
    matching: Matching | None = None,
    previous: Mapping[int, Mapping[str, Any]] | None = None,
) -> None:
    """Give every described cluster a ``key`` (``cluster:<slug>``, unique in the run) and a
    ``name``: kept from the paired previous cluster, else generated."""
    taken: set[str] = set()
    pending = []
    for c in described:
        prev_label = matching.pairs.get(c["label"]) if matching else None
        prev = (previous or {}).get(prev_label) if prev_label is not None else None
        if prev is not None and prev["key"] not in taken:
            c.update(
                key=prev["key"],
                name=prev["name"],
                previous_label=prev_label,
                overlap=matching.overlap.get(c["label"]) if matching else None,
            )
            taken.add(prev["key"])
        else:
            pending.append(c)
    for c in sorted(pending, key=lambda c: -c["size"]):
        slug = slugify(c["generated_name"])
        key, i = KEY_PREFIX + slug, 2
        while key in taken:
            key, i = f"{KEY_PREFIX}{slug}-{i}", i + 1
        taken.add(key)
        name = c["generated_name"] if i == 2 else f"{c['generated_name']} ({i - 1})"
        c.update(key=key, name=name, previous_label=None, overlap=None)


# -- runs: storage ----------------------------------------------------------------------------


def _run_doc(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "workspaceId": row.workspace_id,
        "algorithm": row.algorithm,
        "params": row.params,
        "metrics": row.metrics,
        "clusters": row.clusters,
        "nProfiles": row.n_profiles,
        "createdAt": row.created_at,
    }


def cluster_runs(engine: Engine, workspace_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The workspace's clustering runs, newest first (without assignments)."""
    with engine.db.connect() as conn:
        rows = conn.execute(
            select(runs_table)
            .where(runs_table.c.workspace_id == workspace_id)
            .order_by(runs_table.c.created_at.desc(), runs_table.c.id.desc())
            .limit(limit)
        ).all()
    return [_run_doc(r) for r in rows]


def assignments(engine: Engine, run_id: str) -> pd.Series:
    """``profile_id -> label`` of a run (kept for the newest runs only)."""
    with engine.db.connect() as conn:
        rows = conn.execute(
            select(cluster_assignments.c.profile_id, cluster_assignments.c.label).where(
                cluster_assignments.c.run_id == run_id
            )
        ).all()
    return pd.Series(
        [r.label for r in rows],
        index=pd.Index([r.profile_id for r in rows], name="profile_id"),
        dtype=int,
    )


def last_run_at(engine: Engine, workspace_id: str) -> int | None:
    """When the workspace was last clustered (epoch ms), or None."""
    with engine.db.connect() as conn:
        value = conn.execute(
            select(func.max(runs_table.c.created_at)).where(
                runs_table.c.workspace_id == workspace_id
            )
        ).scalar()
    return int(value) if value is not None else None


def _previous(engine: Engine, ws: str) -> tuple[dict[str, Any] | None, pd.Series | None]:
    runs = cluster_runs(engine, ws, limit=1)
    if not runs:
        return None, None
    labels = assignments(engine, runs[0]["id"])
    return runs[0], (labels if len(labels) else None)


def _json_scores(scores: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    return {str(k): dict(v) for k, v in scores.items()}


def run_clustering(
    engine: Engine,
    workspace_id: str,
    algorithm: str = "minibatch_kmeans",
    random_state: Any = 0,
    now: int | None = None,
    *,
    k_range: tuple[int, int] = (2, 10),
    sample_size: int = 5000,
    search_size: int = 20_000,
    min_profiles: int = 20,
    keep_assignments: int = 2,
    identified_only: bool = False,
    features: pd.DataFrame | None = None,
    **params: Any,
) -> dict[str, Any] | None:
    """Cluster the workspace's profiles and publish the clusters as segments.

    Folds what the log holds, builds the features, fits a :class:`Clusterer`, matches the
    clusters to the previous run (stability ARI, Hungarian pairing that keeps names), then
    in one transaction stores the ``cluster_runs`` row, the ``cluster_assignments`` (those
    of runs older than the newest ``keep_assignments`` are dropped), replaces the
    ``cluster:*`` memberships (a person who stays in a cluster keeps their ``since``) and
    the ``segments`` rows of kind ``cluster``. Rule segments that refer to clusters are
    re-evaluated. Returns the run document, or None when the workspace has fewer than
    ``min_profiles`` profiles with behaviour."""
    started = time.perf_counter()
    now = now if now is not None else now_ms()
    engine.updater.replay()
    X = (
        features
        if features is not None
        else profile_features(engine, workspace_id, now, identified_only=identified_only)
    )
    if len(X) < max(min_profiles, k_range[0] + 1, 3):
        log.info(
            "clustering skipped: %d profiles with behaviour",
            len(X),
            extra={"workspace": workspace_id},
        )
        return None
    model = Clusterer(
        algorithm=algorithm,
        k_range=k_range,
        sample_size=sample_size,
        search_size=search_size,
        random_state=random_state,
        **params,
    ).fit(X)
    fitted = time.perf_counter()
    current = pd.Series(model.labels_, index=X.index)
    prev_run, prev_labels = _previous(engine, workspace_id)
    matching = match_clusters(prev_labels, current) if prev_labels is not None else None
    prev_clusters = {int(c["label"]): c for c in (prev_run or {}).get("clusters", [])}
    described = describe_clusters(X, model.labels_)
    name_clusters(described, matching, prev_clusters)
    key_of = {c["label"]: c["key"] for c in described}

    run_id = f"cr_{time.time_ns():x}{secrets.token_hex(3)}"
    created = now_ms()
    metrics = {
        **model.metrics_,
        "stability_ari": matching.ari if matching else None,
        "common_profiles": matching.common if matching else 0,
        "previous_run": prev_run["id"] if prev_run else None,
        "kept_names": sum(1 for c in described if c.get("previous_label") is not None),
        "k_scores": _json_scores(model.k_scores_),
        "seconds": round(fitted - started, 3),
        "timings": model.timings_,
    }
    run_params = {
        "algorithm": algorithm,
        "k_range": list(k_range),
        "sample_size": sample_size,
        "search_size": search_size,
        "random_state": random_state if isinstance(random_state, int | None) else None,
        "reference": now,
        "identified_only": identified_only,
        "features": list(X.columns),
        "pca_components": model.n_components_,
        **{k: (float(v) if isinstance(v, np.floating) else v) for k, v in model.params_.items()},
        **{k: v for k, v in params.items() if isinstance(v, int | float | str | None)},
    }
    ws = workspace_id
    with write_tx(engine.db) as conn:
        since = {
            (k, p): s
            for k, p, s in conn.execute(
                select(memberships.c.segment_key, memberships.c.profile_id, memberships.c.since)
                .where(
                    memberships.c.workspace_id == ws, memberships.c.segment_key.like("cluster:%")
                )
                .execution_options(yield_per=20_000)
            )
        }
        conn.execute(
            runs_table.insert().values(
                id=run_id,
                workspace_id=ws,
                algorithm=algorithm,
                params=run_params,
                metrics=metrics,
                clusters=described,
                n_profiles=len(X),
                created_at=created,
            )
        )
        labels = model.labels_.tolist()
        pids = X.index.tolist()
        for idx in chunks(range(len(pids)), 5000):
            execute_many(
                conn,
                cluster_assignments.insert(),
                [{"run_id": run_id, "profile_id": pids[i], "label": labels[i]} for i in idx],
            )
        conn.execute(
            delete(memberships).where(
                memberships.c.workspace_id == ws, memberships.c.segment_key.like("cluster:%")
            )
        )
        rows = []
        for pid, label in zip(pids, labels, strict=True):
            key = key_of.get(label)
            if key is not None:
                rows.append(
                    {
                        "workspace_id": ws,
                        "segment_key": key,
                        "profile_id": pid,
                        "since": since.get((key, pid), now),
                        "data": {"run": run_id, "label": label},
                    }
                )
        for part in chunks(rows, 5000):
            execute_many(conn, memberships.insert(), part)
        _replace_segments(conn, ws, described, run_id, now)
        old = conn.execute(
            select(runs_table.c.id)
            .where(runs_table.c.workspace_id == ws)
            .order_by(runs_table.c.created_at.desc(), runs_table.c.id.desc())
            .offset(max(keep_assignments, 1))
        ).scalars()
        for part in chunks(list(old)):
            conn.execute(delete(cluster_assignments).where(cluster_assignments.c.run_id.in_(part)))
    seg = engine.segments
    seg.record_sizes(ws, now)
    seg._rules.pop(ws, None)
    for key, rule in seg._rule_set(ws):
        if any(ref.startswith(KEY_PREFIX) for ref in rule.references):
            seg.backfill(ws, key, now=now)
    log.info(
        "clustered %d profiles into %d clusters",
        len(X),
        model.n_clusters_,
        extra={"workspace": ws},
    )
    with engine.db.connect() as conn:
        row = conn.execute(select(runs_table).where(runs_table.c.id == run_id)).one()
    return _run_doc(row)


def _replace_segments(
    conn: Connection, ws: str, described: list[dict[str, Any]], run_id: str, now: int
) -> None:
    keys = {c["key"] for c in described}
    existing = set(
        conn.execute(
            select(segments.c.key).where(
                segments.c.workspace_id == ws, segments.c.kind == "cluster"
            )
        ).scalars()
    )
    gone = sorted(existing - keys)
    for part in chunks(gone):
        conn.execute(
            delete(segments).where(segments.c.workspace_id == ws, segments.c.key.in_(part))
        )
    for c in described:
        med = c["centroid"]["median"]
        cats = ", ".join(f"{t['category']} {t['share']:.0%}" for t in c["top_categories"])
        description = (
            f"{c['size']} profiles (run {run_id}); median {med['frequency']:g} orders, "
            f"{med['monetary']:g} net revenue, {med['recency_days']:g} days since the last order"
            + (f"; categories: {cats}" if cats else "")
        )
        values = {
            "name": c["name"][:200],
            "description": description,
            "definition": {"run": run_id, "label": c["label"]},
            "time_based": 1,
            "size": c["size"],
            "updated_at": now,
            "evaluated_at": now,
        }
        if c["key"] in existing:
            conn.execute(
                update(segments)
                .where(segments.c.workspace_id == ws, segments.c.key == c["key"])
                .values(**values)
            )
        else:
            conn.execute(
                segments.insert().values(
                    workspace_id=ws, key=c["key"], kind="cluster", created_at=now, **values
                )
            )
