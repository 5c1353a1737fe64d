"""Offline evaluation (`sartor evaluate`): loading, filters, the RecBole split, the metrics
against a plain-Python reference, the CLI, and the EDLAE model's contract and maths."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sartor.cli import app
from sartor.recommend.base import ARRAYS_FILE, META_FILE, Recommender
from sartor.recommend.evaluation import (
    GRIDS,
    EvaluationError,
    evaluate,
    kcore,
    load_interactions,
    prepare,
    score_model,
    split_counts,
    split_interactions,
    tune_and_test,
)
from sartor.recommend.metrics import hits_matrix, ranking_metrics, top_k_rows
from sartor.recommend.models import MODELS, make_model
from sartor.recommend.models.edlae import EDLAE
from tests.conftest import shared_data

runner = CliRunner(env={"COLUMNS": "220"})


# ---- a plain-Python reference for every metric -------------------------------------------


def reference_metrics(ranked: list[int], relevant: set[int], k: int) -> dict[str, float]:
    hits = [1.0 if item in relevant else 0.0 for item in ranked[:k]]
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    first = next((i for i, h in enumerate(hits) if h), None)
    return {
        "ndcg": dcg / idcg,
        "recall": sum(hits) / len(relevant),
        "mrr": 0.0 if first is None else 1.0 / (first + 1),
        "hit": 1.0 if first is not None else 0.0,
        "precision": sum(hits) / k,
    }


@settings(max_examples=150, deadline=None)
@given(
    n_items=st.integers(1, 30),
    k=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    n_users=st.integers(1, 6),
)
def test_metrics_match_the_reference(n_items: int, k: int, seed: int, n_users: int) -> None:
    rng = np.random.default_rng(seed)
    # Coarse scores give ties; -inf entries are excluded items (never ranked).
    scores = rng.integers(0, 5, (n_users, n_items)).astype(np.float64)
    scores[rng.random((n_users, n_items)) < 0.2] = -np.inf
    relevant = rng.random((n_users, n_items)) < 0.3
    relevant[:, 0] = True  # everyone has at least one held-out item
    top = top_k_rows(scores.copy(), k)
    per_user = ranking_metrics(hits_matrix(top, sp.csr_matrix(relevant)), relevant.sum(axis=1), k)
    for u in range(n_users):
        # Reference ranking: finite scores, best first, ties to the lower item.
        order = sorted(
            (j for j in range(n_items) if np.isfinite(scores[u, j])),
            key=lambda j: (-scores[u, j], j),
        )
        assert top[u][top[u] >= 0].tolist() == order[:k]
        assert (top[u][len(order[:k]) :] == -1).all()
        expected = reference_metrics(order, set(np.flatnonzero(relevant[u]).tolist()), k)
        for name, value in expected.items():
            assert per_user[name][u] == pytest.approx(value, abs=1e-12), name


class FixedScores(Recommender):
    """A test model whose scores are given: isolates the evaluation from any learning."""

    name = "fixed-scores"

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def fit(self, interactions: sp.csr_matrix, **context: Any) -> Self:
        self.n_users_, self.n_items_ = self.scores.shape
        return self

    def score_users(self, user_rows: np.ndarray) -> np.ndarray:
        return self.scores[np.asarray(user_rows)]

    def score_history(self, item_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self.scores.mean(axis=0)

    def similar_scores(self, item_rows: np.ndarray) -> np.ndarray:
        return np.zeros((len(item_rows), self.n_items_))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.scores = arrays["scores"]


def test_score_model_averages_over_users_with_held_out_items_and_excludes_seen() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items, k = 50, 40, 5
    scores = rng.normal(size=(n_users, n_items))
    dense = rng.random((n_users, n_items)) < 0.1
    dense[:5] = False  # users without held-out items do not count
    relevant = sp.csr_matrix(dense)
    exclude = sp.csr_matrix(rng.random((n_users, n_items)) < 0.3)
    model = FixedScores(scores).fit(relevant)
    result = score_model(model, relevant, exclude, k, batch_size=7)  # batches cross users
    expected: dict[str, list[float]] = {}
    recommended: set[int] = set()
    for u in range(n_users):
        rel = set(relevant[u].indices.tolist())
        if not rel:
            continue
        banned = set(exclude[u].indices.tolist())
        order = sorted((j for j in range(n_items) if j not in banned), key=lambda j: -scores[u, j])
        recommended.update(order[:k])
        for name, value in reference_metrics(order, rel, k).items():
            expected.setdefault(name, []).append(value)
    assert result.users == len(expected["ndcg"]) == int((relevant.getnnz(axis=1) > 0).sum())
    for name, values in expected.items():
        assert result.values[name] == pytest.approx(np.mean(values), abs=1e-12), name
    assert result.coverage == pytest.approx(len(recommended) / n_items)


def test_score_model_checks_the_shape_a_model_returns() -> None:
    model = FixedScores(np.zeros((4, 3))).fit(sp.csr_matrix((4, 3)))
    relevant = sp.csr_matrix(np.eye(4, 5))
    with pytest.raises(ValueError, match="expected"):
        score_model(model, relevant, sp.csr_matrix((4, 5)), 2)


# ---- filters and splits --------------------------------------------------------------------


def recbole_counts(total: int) -> tuple[int, int, int]:
    """RecBole's ``_calcu_split_ids`` for ratios [0.8, 0.1, 0.1], written out as its docs
    describe it: floor each later part, train takes the rest, then give a part of a short
    history one interaction while train keeps more than one."""
    ratios = [0.8, 0.1, 0.1]
    cnt = [int(r * total) for r in ratios]
    cnt[0] = total - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt[0], cnt[1], cnt[2]


def test_split_counts_follow_recboles_rounding() -> None:
    totals = np.arange(0, 400)
    train, valid, test = split_counts(totals)
    for n, a, b, c in zip(totals.tolist(), train, valid, test, strict=True):
        assert (int(a), int(b), int(c)) == recbole_counts(n), n
    assert recbole_counts(10) == (8, 1, 1) and recbole_counts(2) == (1, 0, 1)


def _frame(n_users: int = 30, n_items: int = 25, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        count = int(rng.integers(1, n_items))
        for j in rng.choice(n_items, count, replace=False):
            rows.append((f"u{u}", f"i{j}", float(rng.integers(1, 6)), int(rng.integers(0, 10**6))))
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_random_811_sizes_disjoint_parts_and_seeds() -> None:
    frame = _frame()
    split = split_interactions(frame, "random-811", seed=5)
    train, valid, test = split.train, split.valid, split.test
    per_user = frame.groupby("user").size()
    users = list(split.user_ids)
    for u, user in enumerate(users):
        expected = recbole_counts(int(per_user[user]))
        assert (train[u].nnz, valid[u].nnz, test[u].nnz) == expected
    # No leakage: the three parts are disjoint and together give back every interaction.
    assert (train.multiply(valid)).nnz == 0 and (train.multiply(test)).nnz == 0
    assert (valid.multiply(test)).nnz == 0
    assert (train + valid + test).nnz == len(frame)
    again = split_interactions(frame, "random-811", seed=5)
    assert (again.test != test).nnz == 0
    other = split_interactions(frame, "random-811", seed=6)
    assert (other.test != test).nnz > 0


def test_temporal_leave_one_out_holds_out_the_last_two() -> None:
    frame = _frame(seed=1)
    split = split_interactions(frame, "temporal-loo")
    for u, user in enumerate(split.user_ids):
        mine = frame[frame["user"] == user].sort_values("timestamp", kind="stable")
        items = [list(split.item_ids).index(i) for i in mine["item"]]
        if len(items) >= 3:
            assert split.test[u].indices.tolist() == [items[-1]]
            assert split.valid[u].indices.tolist() == [items[-2]]
            assert sorted(split.train[u].indices.tolist()) == sorted(items[:-2])
        elif len(items) == 2:
            assert split.test[u].indices.tolist() == [items[-1]] and split.valid[u].nnz == 0
    with pytest.raises(EvaluationError, match="timestamp"):
        split_interactions(frame.drop(columns="timestamp"), "temporal-loo")


def _naive_kcore(users: list[int], items: list[int], k: int) -> set[int]:
    alive = set(range(len(users)))
    while True:
        ucount: dict[int, int] = {}
        icount: dict[int, int] = {}
        for i in alive:
            ucount[users[i]] = ucount.get(users[i], 0) + 1
            icount[items[i]] = icount.get(items[i], 0) + 1
        drop = {i for i in alive if ucount[users[i]] < k or icount[items[i]] < k}
        if not drop:
            return alive
        alive -= drop


@settings(max_examples=80, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=120),
    k=st.integers(0, 5),
)
def test_kcore_matches_a_naive_loop_and_is_stable(pairs: list[tuple[int, int]], k: int) -> None:
    users = np.asarray([p[0] for p in pairs], dtype=np.int64)
    items = np.asarray([p[1] for p in pairs], dtype=np.int64)
    keep = kcore(users, items, k)
    assert set(np.flatnonzero(keep).tolist()) == _naive_kcore(users.tolist(), items.tolist(), k)
    if keep.any() and k > 1:
        assert np.bincount(users[keep])[np.unique(users[keep])].min() >= k
        assert np.bincount(items[keep])[np.unique(items[keep])].min() >= k
        # Stable: filtering what is left removes nothing more.
        assert kcore(users[keep], items[keep], k).all()


def test_prepare_dedupes_then_filters_ratings_then_applies_the_kcore() -> None:
    frame = pd.DataFrame(
        [
            ("a", "x", 2.0, 0),  # re-rated later: the 5 replaces it
            ("a", "x", 5.0, 1),
            ("a", "y", 4.0, 2),
            ("b", "x", 3.0, 4),
            ("b", "y", 5.0, 5),
            ("b", "z", 5.0, 6),  # re-rated lower later: gone with the rating filter
            ("b", "z", 1.0, 9),
            ("c", "x", 5.0, 7),  # c keeps one interaction: out of the 2-core
        ],
        columns=["user", "item", "rating", "timestamp"],
    )
    out, notes = prepare(frame, min_rating=3.0, kcore_k=2)
    assert sorted(zip(out["user"], out["item"], out["rating"], strict=True)) == [
        ("a", "x", 5.0), ("a", "y", 4.0), ("b", "x", 3.0), ("b", "y", 5.0)
    ]  # fmt: skip
    assert "dropped 2 repeated user-item pairs (kept the latest)" in notes
    assert "kept ratings >= 3" in notes and "2-core on users and items" in notes
    loose, _ = prepare(frame, min_rating=None, kcore_k=0)
    assert len(loose) == 6
    no_rating, notes = prepare(frame.drop(columns="rating"), min_rating=3.0, kcore_k=0)
    assert len(no_rating) == 6 and any("no rating column" in n for n in notes)


# ---- loading ---------------------------------------------------------------------------------


def test_loading_headers_aliases_separators_and_gzip(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text("userId,movieId,rating,timestamp\n1,10,4.5,100\n2,10,3,200\n")
    frame = load_interactions(csv)
    assert list(frame.columns) == ["user", "item", "rating", "timestamp"]
    assert frame["user"].tolist() == ["1", "2"] and frame["rating"].tolist() == [4.5, 3.0]

    recbole = tmp_path / "ml.inter"
    recbole.write_text("user_id:token\titem_id:token\trating:float\n7\t3\t5\n")
    assert load_interactions(recbole)["item"].tolist() == ["3"]

    dat = tmp_path / "ratings.dat"
    dat.write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    frame = load_interactions(dat)  # no header: user, item, rating, timestamp
    assert frame["item"].tolist() == ["1193", "661"] and frame["timestamp"].iloc[0] == 978300760

    gz = tmp_path / "u.data.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert load_interactions(gz)["user"].tolist() == ["196", "186"]

    dates = tmp_path / "d.csv"
    dates.write_text("customer_id;product_id;time\nc1;p1;2011-01-02 10:00:00\n")
    frame = load_interactions(dates)
    assert "rating" not in frame and frame["timestamp"].iloc[0] == 1293962400

    semi = tmp_path / "s.txt"
    semi.write_text("user|item\na|b\n")
    assert load_interactions(semi, sep="|")["item"].tolist() == ["b"]


def test_loading_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="not found"):
        load_interactions(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("customer,thing,when\na,b,1\n")
    with pytest.raises(EvaluationError, match=r"no 'item' column.*'customer', 'thing', 'when'"):
        load_interactions(bad)
    rating = tmp_path / "rating.csv"
    rating.write_text("user,item,rating\na,b,5\na,c,great\n")
    with pytest.raises(EvaluationError, match="'rating' must be numeric: row 2 has 'great'"):
        load_interactions(rating)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(EvaluationError, match="empty"):
        load_interactions(empty)
    with pytest.raises(EvaluationError, match="is a folder"):
        load_interactions(tmp_path)


# ---- tuning ----------------------------------------------------------------------------------


def _block_data(n_users: int = 60, n_items: int = 40, seed: int = 0) -> pd.DataFrame:
    """Two taste groups, each liking its half of the catalog, plus some noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        half = u % 2
        liked = [j for j in range(n_items) if j % 2 == half]
        picks = rng.choice(liked, 14, replace=False).tolist()
        picks += rng.choice(n_items, 2, replace=False).tolist()
        for j in dict.fromkeys(picks):
            rows.append((f"user-{u}", f"item-{j}", float(rng.integers(3, 6)), u * 100 + j))
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_tuning_picks_the_best_validation_point_and_reports_the_final_fit() -> None:
    split = split_interactions(_block_data(), "random-811", seed=1)
    stages = GRIDS["ease"](split, {})
    result = tune_and_test("ease", MODELS["ease"], stages, split, 5)
    assert result.test is not None and result.tried
    best_valid = max(t["valid_ndcg@5"] for t in result.tried)
    assert result.valid_ndcg == pytest.approx(best_valid, abs=5e-5)
    chosen = next(t for t in result.tried if t["params"] == result.params)
    assert chosen["valid_ndcg@5"] == pytest.approx(best_valid, abs=5e-5)
    assert result.train_seconds == pytest.approx(chosen["seconds"], abs=1e-3)
    # The refinement stage ran around the best l2 of the first.
    assert len({t["params"]["l2"] for t in result.tried}) >= 7
    refit = make_model("ease", **result.params).fit(split.train)
    again = score_model(refit, split.test, split.train + split.valid, 5)
    assert again.values == result.test.values


def test_evaluate_ranks_models_sensibly_on_structured_data() -> None:
    report = evaluate(_block_data(), ["popularity", "ease", "edlae"], k=5, kcore_k=5)
    rows = {row["model"]: row for row in report.rows()}
    assert set(rows["ease"]) == {
        "model", "ndcg@5", "recall@5", "mrr@5", "hit@5", "precision@5", "coverage@5",
        "train_seconds", "params",
    }  # fmt: skip
    # Both taste groups like half the catalog equally: popularity cannot tell them apart,
    # a collaborative model can.
    assert rows["ease"]["ndcg@5"] > rows["popularity"]["ndcg@5"] + 0.1
    assert rows["edlae"]["ndcg@5"] > rows["popularity"]["ndcg@5"] + 0.1
    assert report.stats["users"] == 60 and report.stats["test"] > 0


def test_rp3beta_is_tuned_over_its_grid_and_beats_popularity() -> None:
    report = evaluate(_block_data(), ["popularity", "rp3beta"], k=5, kcore_k=5)
    rows = {row["model"]: row for row in report.rows()}
    assert rows["rp3beta"]["ndcg@5"] > rows["popularity"]["ndcg@5"] + 0.1
    (result,) = [r for r in report.results if r.model == "rp3beta"]
    # 3 alphas x 3 betas, then two more neighbour counts around the best.
    assert len(result.tried) == 11
    assert {"alpha", "beta", "k_neighbors"} <= set(result.params)


def test_progress_reports_every_fit_and_ends_complete() -> None:
    calls: list[tuple[str, int, int]] = []
    evaluate(
        _block_data(),
        ["popularity", "ease"],
        k=5,
        kcore_k=5,
        protocol="temporal-loo",
        progress=lambda model, done, total: calls.append((model, done, total)),
    )
    ease = [(done, total) for model, done, total in calls if model == "ease"]
    assert all(0 <= done <= total for done, total in ease)
    assert [done for done, _ in ease] == sorted(done for done, _ in ease)
    assert ease[-1][0] == ease[-1][1] == 9  # six l2 values, two refinements, the test
    assert calls[0][0] == "popularity" and calls[-1][0] == "ease"


def test_evaluate_refuses_bad_requests() -> None:
    frame = _block_data()
    with pytest.raises(EvaluationError, match="unknown model 'bogus'; known: .*ease"):
        evaluate(frame, ["ease", "bogus"])
    with pytest.raises(EvaluationError, match="needs item text"):
        evaluate(frame, ["content"])
    with pytest.raises(EvaluationError, match="unknown protocol"):
        evaluate(frame, ["ease"], protocol="leave-some-out")
    with pytest.raises(EvaluationError, match="no interactions left after filtering"):
        evaluate(frame, ["ease"], kcore_k=100)
    with pytest.raises(EvaluationError, match="k must be"):
        evaluate(frame, ["ease"], k=0)


# ---- the CLI ---------------------------------------------------------------------------------


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "interactions.tsv"
    frame = _block_data().rename(columns={"user": "user_id", "item": "item_id"})
    frame.to_csv(path, sep="\t", index=False)
    return path


def test_cli_table_and_json(tmp_path: Path) -> None:
    path = _write(tmp_path)
    args = ["evaluate", "--interactions", str(path), "--kcore", "5", "--k", "5"]
    table = runner.invoke(app, [*args, "--models", "popularity,ease"])
    assert table.exit_code == 0, table.output
    assert "ndcg@5" in table.output and "popularity" in table.output and "l2=" in table.output
    assert "60 users, 40 items" in table.output
    result = runner.invoke(app, [*args, "--models", "popularity,ease,itemknn", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == ["popularity", "ease", "itemknn"]
    for row in rows:
        assert {"ndcg@5", "recall@5", "mrr@5", "hit@5", "precision@5", "coverage@5"} <= set(row)
        assert 0 <= row["ndcg@5"] <= 1 and row["train_seconds"] >= 0
        assert isinstance(row["params"], dict)
    assert rows[1]["ndcg@5"] > rows[0]["ndcg@5"]


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["evaluate", "--interactions", str(tmp_path / "no.csv")])
    assert missing.exit_code == 2 and "not found" in missing.output
    path = _write(tmp_path)
    unknown = runner.invoke(app, ["evaluate", "--interactions", str(path), "--models", "svd"])
    assert unknown.exit_code == 2 and "unknown model 'svd'" in unknown.output
    assert "popularity" in unknown.output
    bad = tmp_path / "bad.csv"
    bad.write_text("who,what\na,b\n")
    columns = runner.invoke(app, ["evaluate", "--interactions", str(bad)])
    assert columns.exit_code == 2 and "'who', 'what'" in columns.output
    empty = runner.invoke(app, ["evaluate", "--interactions", str(path), "--kcore", "50"])
    assert empty.exit_code == 2 and "no interactions left" in empty.output


# ---- EDLAE: the contract and the maths -----------------------------------------------------

N_USERS, N_ITEMS = 40, 30


def _x(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.3).astype(np.float32)
    dense[np.arange(N_USERS), rng.integers(0, N_ITEMS, N_USERS)] = 1.0
    return sp.csr_matrix(dense)


X = _x()
EDLAE_SPECS = {
    "ease-like": dict(l2=10.0),
    "denoising": dict(l2=5.0, dropout=0.25, diag_max=0.2),
    "lowpass": dict(l2=5.0, dropout=0.25, diag_max=0.2, lowpass_rank=4, lowpass_weight=0.5),
    "nonnegative": dict(l2=5.0, dropout=0.25, nonnegative=True, lowpass_rank=4, lowpass_weight=0.3),
}


def test_edlae_defaults_are_ease_in_closed_form() -> None:
    x = X.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 10.0 * np.eye(N_ITEMS))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    model = EDLAE(l2=10.0).fit(X)
    np.testing.assert_allclose(model.weights_, b, atol=1e-5)
    ease = make_model("ease", l2=10.0).fit(X)
    np.testing.assert_allclose(model.score_users(np.arange(5)), ease.score_users(np.arange(5)),
                               atol=1e-4)  # fmt: skip


def test_edlae_denoising_and_relaxed_diagonal_solve_their_objectives() -> None:
    x = X.toarray().astype(np.float64)
    g = x.T @ x
    lam = 5.0 + (0.25 / 0.75) * np.diag(g)
    # Unconstrained (diag_max = 1): DLAE's B = (G + Lambda)^-1 G.
    dlae = EDLAE(l2=5.0, dropout=0.25, diag_max=1.0).fit(X)
    np.testing.assert_allclose(dlae.weights_, np.linalg.solve(g + np.diag(lam), g), atol=1e-5)
    # diag(B) <= 0.2, and B minimizes the penalized loss among matrices with that diagonal:
    # the gradient vanishes off the diagonal.
    model = EDLAE(l2=5.0, dropout=0.25, diag_max=0.2).fit(X)
    b = model.weights_.astype(np.float64)
    assert np.diag(b).max() <= 0.2 + 1e-6
    gradient = (g + np.diag(lam)) @ b - g
    off = ~np.eye(N_ITEMS, dtype=bool)
    assert np.abs(gradient[off]).max() < 1e-3


def test_edlae_nonnegative_weights_solve_the_constrained_problem() -> None:
    x = X.toarray().astype(np.float64)
    g = x.T @ x
    lam = 5.0 + (0.25 / 0.75) * np.diag(g)

    def loss(b: np.ndarray) -> float:
        return float(np.sum((x - x @ b) ** 2) + np.sum(lam[:, None] * b**2))

    model = EDLAE(l2=5.0, dropout=0.25, nonnegative=True).fit(X)
    c = model.weights_.astype(np.float64)
    assert c.min() >= 0 and not np.diag(c).any()
    # The obvious feasible guesses lose to ADMM: the unconstrained solution clipped at zero,
    # and that clip rescaled by the best single factor.
    p = np.linalg.inv(g + np.diag(lam))
    ease = -p / np.diag(p)
    np.fill_diagonal(ease, 0.0)
    clipped = np.maximum(ease, 0.0)
    best_scale = min(loss(clipped * s) for s in np.linspace(0.1, 2.0, 39))
    assert loss(c) < best_scale < loss(np.zeros_like(c))
    # Feasible directions cannot improve it much: a projected gradient step barely moves it.
    gradient = 2 * ((g + np.diag(lam)) @ c - g)
    step = np.maximum(c - 1e-4 * gradient, 0.0)
    np.fill_diagonal(step, 0.0)
    assert loss(step) > loss(c) - 1e-3 * loss(c)


def test_edlae_lowpass_term_is_seeded_and_changes_the_ranking() -> None:
    a = EDLAE(**EDLAE_SPECS["lowpass"]).fit(X)  # type: ignore[arg-type]
    b = EDLAE(**EDLAE_SPECS["lowpass"]).fit(X)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.weights_, b.weights_)
    plain = EDLAE(**EDLAE_SPECS["denoising"]).fit(X)  # type: ignore[arg-type]
    assert a.lowpass_scale_ > 0
    assert not np.allclose(a.weights_, plain.weights_)


@pytest.mark.parametrize("bad", [dict(l2=0), dict(dropout=1.0), dict(diag_max=2.0),
                                 dict(lowpass_rank=-1), dict(max_items=5)])  # fmt: skip
def test_edlae_refuses_bad_parameters(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EDLAE(**bad).fit(X)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", sorted(EDLAE_SPECS))
def test_edlae_contract(spec: str, tmp_path: Path) -> None:
    params = EDLAE_SPECS[spec]
    assert MODELS["edlae"] is EDLAE and EDLAE(**params).get_params()["l2"] == params["l2"]  # type: ignore[arg-type]
    model = EDLAE(**params).fit(X)  # type: ignore[arg-type]
    assert json.loads(json.dumps(model.get_params())) == model.get_params()
    ids, scores = model.recommend(np.arange(N_USERS), k=5, exclude=X)
    assert ids.shape == scores.shape == (N_USERS, 5)
    for u in range(N_USERS):
        assert not set(ids[u].tolist()) & set(X[u].indices.tolist())
    all_scores = np.asarray(model.score_users(np.arange(N_USERS)))
    single = np.asarray(model.score_users(np.array([3])))
    np.testing.assert_allclose(single[0], all_scores[3], rtol=1e-5, atol=1e-5)
    hist = X[3].indices
    np.testing.assert_allclose(
        model.score_history(hist, np.ones(len(hist))), all_scores[3], rtol=1e-5, atol=1e-5
    )
    sim, _ = model.similar_items(np.arange(N_ITEMS), k=N_ITEMS)
    assert all(item not in sim[item].tolist() for item in range(N_ITEMS))
    folder = model.save(tmp_path / "m")
    assert {p.name for p in folder.iterdir()} == {ARRAYS_FILE, META_FILE}
    loaded = EDLAE.load(folder)
    np.testing.assert_array_equal(loaded.recommend(np.arange(N_USERS), k=5, exclude=X)[0], ids)
    loaded.forget_users([2])
    assert (loaded.recommend([2], k=3)[0] == -1).all() and loaded.user_items_[2].nnz == 0


@pytest.mark.parametrize("spec", sorted(EDLAE_SPECS))
def test_edlae_checkerboard_top_item_for_user_u_is_u(spec: str) -> None:
    n = 50
    parity = np.arange(n) % 2
    dense = (parity[:, None] == parity[None, :]).astype(np.float32)
    np.fill_diagonal(dense, 0.0)
    x = sp.csr_matrix(dense)
    model = EDLAE(**EDLAE_SPECS[spec]).fit(x)  # type: ignore[arg-type]
    ids, _ = model.recommend(np.arange(n), k=1, exclude=x)
    assert ids[:, 0].tolist() == list(range(n))


# ---- real data -------------------------------------------------------------------------------


@pytest.mark.slow
def test_movielens_100k_ease_beats_popularity_by_a_wide_margin() -> None:
    folder = shared_data("ml-100k")
    report = evaluate(folder / "u.data.gz", ["popularity", "ease"])
    rows = {row["model"]: row for row in report.rows()}
    # RecBole's filters: ratings >= 3 and a 10-core leave 939 users and 1,016 items.
    assert (report.stats["users"], report.stats["items"]) == (939, 1016)
    assert rows["popularity"]["ndcg@10"] > 0.08
    assert rows["ease"]["ndcg@10"] > 2.0 * rows["popularity"]["ndcg@10"]
    assert rows["ease"]["ndcg@10"] > 0.26
