"""Behavioural clustering: planted segments recovered from raw events, every algorithm,
the scikit-learn pipeline, stability and names across runs, ``cluster:<name>`` segments,
the weekly job and erasure.

The planted acceptance: a synthetic shop of 2,000 people in four behaviours (high-value
home-decor regulars, bargain hunters, lapsed one-time buyers, new anonymous browsers) is
ingested as Segment events through ``engine.ingest``, folded, and clustered with automatic
``k``; the clusters must match the planted labels (adjusted Rand index >= 0.9).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.validation import check_is_fitted
from sqlalchemy import func, select

from sartor.config import Settings
from sartor.engine import Engine
from sartor.segments import clustering as cl
from sartor.storage.tables import cluster_assignments, identities, memberships
from sartor.testing import SEGMENTS, feature_frame, generate

DAY = 86_400_000
N_PLANTED = 2000


def _settings(home: Path) -> Settings:
    return Settings(
        env="test",
        home=home,
        secret_key="test-secret-key-0123456789",
        rate_limit_events_per_second=0,
        log_json=False,
    )


def _load(engine: Engine, ws: str, messages: list[dict[str, Any]], batch: int = 2000) -> None:
    for start in range(0, len(messages), batch):
        result = engine.ingest(ws, messages[start : start + batch])
        assert not result.errors, result.errors[:3]
    engine.updater.replay()


def _truth(engine: Engine, ws: str, labels: dict[str, str]) -> pd.Series:
    """Planted segment by profile id (labels are keyed by the id each person sends)."""
    with engine.db.connect() as conn:
        pid_of = dict(
            conn.execute(
                select(identities.c.value, identities.c.profile_id).where(
                    identities.c.workspace_id == ws
                )
            ).all()
        )
    return pd.Series({pid_of[key]: label for key, label in labels.items()})


@dataclass
class Planted:
    db: Path
    workspace: str
    now: int
    truth: pd.Series
    features: pd.DataFrame
    user_of: dict[str, str]  # profile id -> the id the person sends


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    """A folded SQLite database of the planted shop, built once for the module."""
    home = tmp_path_factory.mktemp("planted")
    shop = generate(N_PLANTED, random_state=0)
    engine = Engine.open(f"sqlite:///{home / 'planted.db'}", settings=_settings(home))
    try:
        ws = engine.create_workspace("shop").workspace.id
        _load(engine, ws, shop.messages)
        truth = _truth(engine, ws, shop.labels)
        features = cl.profile_features(engine, ws, shop.now)
        with engine.db.connect() as conn:
            user_of = {
                p: v
                for v, p in conn.execute(
                    select(identities.c.value, identities.c.profile_id).where(
                        identities.c.workspace_id == ws
                    )
                )
                if v in shop.labels
            }
    finally:
        engine.close()
    return Planted(home / "planted.db", ws, shop.now, truth, features, user_of)


@pytest.fixture(scope="module")
def clustered(
    planted: Planted, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Engine, dict[str, Any]]]:
    """An engine on a copy of the planted database, clustered once (automatic k)."""
    home = tmp_path_factory.mktemp("clustered")
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(planted.db) + suffix)
        if source.exists():
            shutil.copy(source, home / f"copy.db{suffix}")
    engine = Engine.open(f"sqlite:///{home / 'copy.db'}", settings=_settings(home))
    run = cl.run_clustering(engine, planted.workspace, random_state=0, now=planted.now)
    assert run is not None
    yield engine, run
    engine.close()


# -- the planted acceptance -------------------------------------------------------------------


@pytest.mark.slow
def test_planted_segments_are_recovered_with_automatic_k(
    planted: Planted, clustered: tuple[Engine, dict[str, Any]]
) -> None:
    engine, run = clustered
    assert len(planted.features) == N_PLANTED
    assert run["nProfiles"] == N_PLANTED
    labels = cl.assignments(engine, run["id"])
    ari = adjusted_rand_score(planted.truth.loc[labels.index], labels.to_numpy())
    assert ari >= 0.9, ari
    metrics = run["metrics"]
    assert metrics["n_clusters"] == len(SEGMENTS) == len(run["clusters"])
    assert metrics["silhouette"] > 0.5
    assert metrics["davies_bouldin"] > 0 and metrics["calinski_harabasz"] > 0
    # k was chosen over the range by silhouette on a sample, Davies-Bouldin reported too.
    scores = metrics["k_scores"]
    assert set(scores) == {str(k) for k in range(2, 11)}
    best = max(scores, key=lambda k: scores[k]["silhouette"])
    assert int(best) == run["params"]["n_clusters"] == len(SEGMENTS)
    assert all(s["davies_bouldin"] > 0 for s in scores.values())
    assert run["params"]["features"][:5] == list(cl.BASE_COLUMNS)
    assert run["params"]["features"][-1] == "price_sensitivity"
    # Each cluster is one planted behaviour, with a readable name and a unique key.
    names = {}
    for cluster in run["clusters"]:
        members = labels[labels == cluster["label"]].index
        planted_as = planted.truth.loc[members].value_counts()
        assert planted_as.iloc[0] / len(members) >= 0.95
        names[planted_as.index[0]] = cluster["name"]
        assert cluster["key"] == "cluster:" + cl.slugify(cluster["name"])
        assert cluster["size"] == len(members)
        assert set(cluster["centroid"]["median"]) == set(planted.features.columns)
    assert names["vip-home-decor"] == "High-value frequent buyers of home decor"
    assert names["lapsed-one-time"].startswith("Lapsed ")
    assert "one-time" in names["lapsed-one-time"]
    assert names["new-browsers"].lower().startswith(("browsers", "engaged browsers"))
    assert len({c["key"] for c in run["clusters"]}) == len(run["clusters"])


@pytest.mark.slow
def test_cluster_memberships_are_segments(
    planted: Planted, clustered: tuple[Engine, dict[str, Any]]
) -> None:
    engine, run = clustered
    ws = planted.workspace
    found = {s["key"]: s for s in engine.segments.all(ws) if s["kind"] == "cluster"}
    assert set(found) == {c["key"] for c in run["clusters"]}
    assert sum(s["size"] for s in found.values()) == N_PLANTED
    vip = next(c for c in run["clusters"] if c["name"].startswith("High-value"))
    members, _ = engine.segments.members(ws, vip["key"], limit=1000)
    assert len(members) == vip["size"]
    assert {planted.truth[m["profileId"]] for m in members} == {"vip-home-decor"}
    assert vip["key"] in engine.segments.of_profile(ws, members[0]["profileId"])
    assert engine.segments.sizes(ws, vip["key"])[-1]["size"] == vip["size"]
    # A rule segment can build on a cluster.
    slug = vip["key"].removeprefix("cluster:")
    definition = {
        "and": [{"cluster": slug}, {"property": "computed.orders", "op": "gte", "value": 1}]
    }
    rule = engine.segments.save(ws, "vip-buyers", "VIP buyers", definition)
    assert rule["size"] == vip["size"]


@pytest.mark.slow
def test_a_second_run_is_stable_and_keeps_the_names(
    planted: Planted, clustered: tuple[Engine, dict[str, Any]]
) -> None:
    engine, first = clustered
    # Another seed permutes the labels; the Hungarian matching restores the names.
    second = cl.run_clustering(engine, planted.workspace, random_state=7, now=planted.now + DAY)
    assert second is not None
    assert second["metrics"]["stability_ari"] == pytest.approx(1.0)
    assert second["metrics"]["previous_run"] == first["id"]
    assert second["metrics"]["common_profiles"] == N_PLANTED
    by_key = {c["key"]: c for c in second["clusters"]}
    assert set(by_key) == {c["key"] for c in first["clusters"]}
    assert second["metrics"]["kept_names"] == len(first["clusters"])
    for c in first["clusters"]:
        assert by_key[c["key"]]["size"] == c["size"]
        assert by_key[c["key"]]["overlap"] == pytest.approx(1.0)
    history = cl.cluster_runs(engine, planted.workspace)
    assert [r["id"] for r in history[:2]] == [second["id"], first["id"]]
    # Staying in a cluster keeps the time one entered it.
    ws = planted.workspace
    with engine.db.connect() as conn:
        since = set(
            conn.execute(
                select(memberships.c.since).where(
                    memberships.c.workspace_id == ws, memberships.c.segment_key.like("cluster:%")
                )
            ).scalars()
        )
    assert since == {planted.now}


@pytest.mark.slow
def test_erasure_removes_cluster_assignments_and_memberships(
    planted: Planted, clustered: tuple[Engine, dict[str, Any]]
) -> None:
    engine, run = clustered
    ws = planted.workspace
    pid = next(p for p, label in planted.truth.items() if label == "vip-home-decor")

    def held() -> tuple[int, int]:
        with engine.db.connect() as conn:
            a = conn.execute(
                select(func.count()).where(cluster_assignments.c.profile_id == pid)
            ).scalar()
            m = conn.execute(
                select(func.count()).where(
                    memberships.c.workspace_id == ws, memberships.c.profile_id == pid
                )
            ).scalar()
        return int(a or 0), int(m or 0)

    assignments, member_of = held()
    assert assignments >= 1 and member_of >= 1
    counts = engine.erase_user(ws, planted.user_of[pid])
    assert counts["cluster_assignments"] == assignments
    assert held() == (0, 0)
    assert pid not in cl.assignments(engine, cl.cluster_runs(engine, ws)[0]["id"]).index


# -- every algorithm, on the planted features ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", cl.ALGORITHMS)
def test_each_algorithm_runs_and_reports_the_metrics(planted: Planted, algorithm: str) -> None:
    model = cl.Clusterer(algorithm=algorithm, random_state=0).fit(planted.features)
    assert model.labels_.shape == (N_PLANTED,)
    assert model.n_clusters_ >= 2
    for name in ("silhouette", "davies_bouldin", "calinski_harabasz"):
        assert isinstance(model.metrics_[name], float), (name, model.metrics_)
    assert -1 <= model.metrics_["silhouette"] <= 1
    assert model.metrics_["noise"] == int((model.labels_ == -1).sum())
    ari = adjusted_rand_score(planted.truth.loc[planted.features.index], model.labels_)
    assert ari >= 0.8, (algorithm, ari, model.params_)
    if algorithm in ("kmeans", "minibatch_kmeans"):
        assert set(model.k_scores_) == set(range(2, 11))
        assert model.params_["n_clusters"] == max(
            model.k_scores_, key=lambda k: model.k_scores_[k]["silhouette"] or -1
        )
    elif algorithm == "gmm":
        assert model.params_["n_clusters"] == min(
            model.k_scores_, key=lambda k: model.k_scores_[k]["bic"] or 0
        )
    elif algorithm == "dbscan":
        assert model.params_["eps"] > 0 and model.params_["min_samples"] >= 5


# -- the estimator and its pieces ---------------------------------------------------------------


def test_the_pipeline_is_log1p_scaler_pca_then_the_algorithm() -> None:
    pipe = cl.make_pipeline("minibatch_kmeans", n_clusters=3, random_state=0)
    assert isinstance(pipe, Pipeline)
    assert [name for name, _ in pipe.steps] == ["log1p", "scale", "pca", "cluster"]
    log1p, scale, pca, algo = (step for _, step in pipe.steps)
    assert isinstance(log1p, FunctionTransformer) and log1p.func is cl.log1p_columns
    assert set(log1p.kw_args["columns"]) == {
        "recency_days",
        "frequency",
        "monetary",
        "average_order_value",
        "session_depth",
    }
    assert isinstance(scale, StandardScaler)
    assert isinstance(pca, PCA) and pca.n_components == 0.9 and pca.svd_solver == "full"
    assert isinstance(algo, MiniBatchKMeans) and algo.random_state == 0

    X, y = feature_frame(3000, random_state=1)
    model = cl.Clusterer(random_state=0)
    assert model.fit(X) is model  # fit returns self
    assert (clone(model).fit_predict(X) == model.labels_).all()  # ClusterMixin, same seed
    check_is_fitted(model.pipeline_)
    fitted_pca = model.pipeline_.named_steps["pca"]
    assert fitted_pca.explained_variance_ratio_.sum() >= 0.9
    assert model.n_components_ == fitted_pca.n_components_ < X.shape[1]
    assert list(model.feature_names_in_) == list(X.columns)
    # The fitted pipeline labels new rows as the run did.
    assert (model.pipeline_.predict(X) == model.labels_).all()
    assert adjusted_rand_score(y, model.labels_) >= 0.9
    # log1p is applied to the skewed columns only, negatives (net refunds) as 0.
    raw = X.iloc[:5].copy()
    raw.iloc[0, raw.columns.get_loc("monetary")] = -50.0
    logged = cl.log1p_columns(raw)
    assert logged["monetary"].iloc[0] == 0.0
    assert np.allclose(logged["frequency"], np.log1p(raw["frequency"]))
    assert (logged["price_sensitivity"] == raw["price_sensitivity"]).all()
    # scikit-learn conventions: parameters round-trip, nothing learned in __init__.
    params = model.get_params()
    assert clone(model).get_params() == params
    assert not hasattr(cl.Clusterer(), "labels_")
    with pytest.raises(ValueError, match="algorithm"):
        cl.Clusterer(algorithm="spectral").fit(X)


def test_same_seed_same_result_and_sampled_silhouette() -> None:
    X, _ = feature_frame(30_000, random_state=2)
    a = cl.Clusterer(random_state=3, sample_size=2000, search_size=8000).fit(X)
    b = cl.Clusterer(random_state=3, sample_size=2000, search_size=8000).fit(X)
    assert (a.labels_ == b.labels_).all()
    assert a.metrics_ == b.metrics_
    assert a.metrics_["n"] == 30_000


def test_dbscan_eps_is_at_the_knee_of_the_k_distance_curve() -> None:
    rng = np.random.default_rng(0)
    blobs = np.vstack([rng.normal(c, 0.1, size=(300, 2)) for c in ((0, 0), (5, 5), (0, 5))])
    noise = rng.uniform(-3, 8, size=(20, 2))
    eps, knee = cl.knee_eps(np.vstack([blobs, noise]), min_samples=5)
    # Above the typical within-blob 5-NN distance, well below the distance between blobs.
    assert 0.05 < eps < 1.5
    assert 600 < knee < 920


def test_hungarian_matching_pairs_permuted_and_split_clusters() -> None:
    pids = [f"p{i}" for i in range(90)]
    prev = pd.Series([0] * 30 + [1] * 30 + [2] * 30, index=pids)
    cur = pd.Series([2] * 30 + [0] * 30 + [1] * 30, index=pids)
    m = cl.match_clusters(prev, cur)
    assert m.ari == pytest.approx(1.0) and m.common == 90
    assert m.pairs == {2: 0, 0: 1, 1: 2}
    # Cluster 1 splits in two: the bigger part keeps the pairing, the other is new.
    split = pd.Series([0] * 30 + [1] * 20 + [3] * 10 + [2] * 30, index=pids)
    m = cl.match_clusters(prev, split)
    assert m.pairs == {0: 0, 1: 1, 2: 2}
    assert 0.7 < (m.ari or 0) < 1.0
    # Only profiles both runs saw count; noise (-1) is never paired.
    newcomers = pd.Series([0] * 10 + [-1] * 5, index=[f"n{i}" for i in range(15)])
    m = cl.match_clusters(prev, pd.concat([cur, newcomers]))
    assert m.common == 90 and -1 not in m.pairs
    assert cl.match_clusters(prev, newcomers).ari is None


def test_names_are_kept_for_paired_clusters_and_unique_otherwise() -> None:
    X, y = feature_frame(4000, random_state=4)
    described = cl.describe_clusters(X, y)
    assert [c["label"] for c in described] == [0, 1, 2, 3]
    assert sum(c["size"] for c in described) == 4000
    cl.name_clusters(described)
    keys = [c["key"] for c in described]
    assert len(set(keys)) == 4 and all(k.startswith("cluster:") for k in keys)
    assert described[0]["name"] == "High-value frequent buyers of home decor"
    assert described[0]["top_categories"][0]["category"] == "Home Decor"
    assert described[0]["top_categories"][0]["lift"] > 2
    # Two clusters that would get the same name: the second gets a suffix.
    twins = cl.describe_clusters(X, np.where(y == 0, 0, 1))
    twins.append({**twins[1], "label": 9})
    cl.name_clusters(twins)
    assert len({c["key"] for c in twins}) == 3
    # Paired with a previous cluster: its key and name carry over.
    previous = {5: {"key": "cluster:our-best", "name": "Our best"}}
    matching = cl.Matching(ari=1.0, common=10, pairs={0: 5}, overlap={0: 1.0})
    again = cl.describe_clusters(X, y)
    cl.name_clusters(again, matching, previous)
    assert (again[0]["key"], again[0]["name"]) == ("cluster:our-best", "Our best")
    assert again[0]["previous_label"] == 5


def test_profile_features_fill_missing_values() -> None:
    frame = pd.DataFrame(
        {
            "recency_days": [3.0, None, 40.0],
            "frequency": [2.0, 0.0, 1.0],
            "monetary": [80.0, 0.0, -5.0],
            "average_order_value": [40.0, None, 10.0],
            "session_depth": [3.0, 1.0, None],
            "cat:Books": [1.0, None, 0.5],
            "price_sensitivity": [0.8, None, 1.2],
        }
    )
    out = cl.fill_features(frame)
    assert not out.isna().any().any()
    assert out["recency_days"].tolist() == [3.0, 40.0, 40.0]  # never ordered: the worst
    assert out["average_order_value"].tolist() == [40.0, 0.0, 10.0]
    assert out["price_sensitivity"].tolist() == [0.8, 1.0, 1.2]  # the median


# -- storage, on SQLite and PostgreSQL -----------------------------------------------------------


def test_runs_history_weekly_job_and_erasure(engine: Engine) -> None:
    ws = engine.create_workspace("shop").workspace.id
    shop = generate(240, random_state=3)
    _load(engine, ws, shop.messages, batch=1000)
    truth = _truth(engine, ws, shop.labels)

    assert cl.run_clustering(engine, ws, now=shop.now, min_profiles=1000) is None
    assert cl.cluster_runs(engine, ws) == [] and cl.last_run_at(engine, ws) is None

    X = cl.profile_features(engine, ws, shop.now)
    assert list(X.columns[:5]) == list(cl.BASE_COLUMNS)
    assert X.columns[-1] == "price_sensitivity"
    cats = [c for c in X.columns if c.startswith("cat:")]
    assert 1 <= len(cats) <= 8 and (X[cats].sum(axis=1) <= 1 + 1e-4).all()
    assert not X.isna().any().any() and len(X) == 240

    first = cl.run_clustering(engine, ws, now=shop.now, k_range=(2, 6))
    assert first is not None and first["nProfiles"] == 240
    labels = cl.assignments(engine, first["id"])
    assert adjusted_rand_score(truth.loc[labels.index], labels.to_numpy()) >= 0.9
    keys = {c["key"] for c in first["clusters"]}
    found = {s["key"]: s for s in engine.segments.all(ws) if s["kind"] == "cluster"}
    assert set(found) == keys
    assert sum(s["size"] for s in found.values()) == 240

    second = cl.run_clustering(engine, ws, random_state=5, now=shop.now + DAY, k_range=(2, 6))
    assert second is not None
    assert second["metrics"]["stability_ari"] == pytest.approx(1.0)
    assert {c["key"] for c in second["clusters"]} == keys
    assert [r["id"] for r in cl.cluster_runs(engine, ws)] == [second["id"], first["id"]]

    # The weekly job: forced it runs; when the newest run is fresh, it leaves it.
    assert "clusters" in engine.scheduler.tick(now=shop.now + 2 * DAY, force=True)
    assert len(cl.cluster_runs(engine, ws)) == 3
    engine.scheduler._run("clusters", shop.now + 2 * DAY)
    assert len(cl.cluster_runs(engine, ws)) == 3
    assert "clusters" not in engine.scheduler.tick(now=shop.now + 2 * DAY)
    # Only the newest two runs keep their assignments.
    with engine.db.connect() as conn:
        kept = set(conn.execute(select(cluster_assignments.c.run_id).distinct()).scalars())
    assert kept == {r["id"] for r in cl.cluster_runs(engine, ws)[:2]}

    user = next(k for k, v in shop.labels.items() if v == "bargain-hunters")
    pid = _truth(engine, ws, {user: "x"}).index[0]
    counts = engine.erase_user(ws, user)
    assert counts["cluster_assignments"] == 2
    with engine.db.connect() as conn:
        left = conn.execute(
            select(func.count()).where(cluster_assignments.c.profile_id == pid)
        ).scalar()
    assert left == 0
    assert not [k for k in engine.segments.of_profile(ws, pid) if k.startswith("cluster:")]


def test_clusters_on_demand_through_the_api_and_the_cli(
    client, engine: Engine, workspace, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from sartor.cli import app

    ws, keys = workspace.workspace, workspace.keys
    shop = generate(120, random_state=5)
    _load(engine, ws.id, shop.messages, batch=1000)
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    r = client.post("/v1/clusters/run", headers=admin, json={"algorithm": "nope"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "algorithm"
    r = client.post("/v1/clusters/run", headers={"Authorization": f"Bearer {keys['read']}"})
    assert r.status_code == 403
    r = client.post("/v1/clusters/run", headers=admin, json={"algorithm": "kmeans"})
    assert r.status_code == 200, r.text
    run = r.json()
    assert {"silhouette", "davies_bouldin", "calinski_harabasz"} <= set(run["metrics"])
    runs = client.get("/v1/clusters/runs", headers=admin).json()["runs"]
    assert [x["id"] for x in runs] == [run["id"]]
    segs = {s["key"] for s in client.get("/v1/segments", headers=admin).json()["segments"]}
    assert {c["key"] for c in run["clusters"]} <= segs
    if engine.db.dialect.name == "sqlite":  # the CLI opens the same file
        url = engine.db.url.render_as_string(hide_password=False)
        out = CliRunner().invoke(app, ["--database-url", url, "segment", "cluster", "shop"])
        assert out.exit_code == 0, out.output
        assert len(client.get("/v1/clusters/runs", headers=admin).json()["runs"]) == 2
