"""Offline evaluation: load an interactions file, filter it, split it, tune, rank, score.

The default protocol, ``random-811``, is RecBole's (the setup of its published MovieLens-1M
table):

1. keep ratings ``>= min_rating`` (RecBole: ``val_interval: {rating: "[3,inf)"}``);
2. drop users and items with fewer than ``kcore`` interactions, again and again until none
   is left (RecBole: ``user_inter_num_interval`` / ``item_inter_num_interval`` ``[10,inf)``);
3. shuffle each user's interactions with the seed and cut them 80/10/10 with RecBole's
   rounding: validation and test get ``floor(n / 10)`` each and train the rest; a user with
   fewer than 10 interactions gives one to test, then one to validation, as long as train
   keeps at least one (so ``n = 1`` is all train, ``n = 2`` is one train and one test);
4. tune each model on the validation part (fit on train, rank against all items except the
   user's train items) over the small grid in :data:`GRIDS`, choosing the best NDCG@k;
5. the model fitted on train with the best parameters ranks every item except the user's
   train and validation items, and is scored on the test part.

``temporal-loo`` holds out each user's last interaction (by timestamp) for test and the one
before it for validation. Pure functions throughout; :func:`evaluate` ties them together and
reports progress through a callback, so the CLI can draw a bar and a notebook can ignore it.
"""

from __future__ import annotations

import gzip
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sartor.recommend.base import Recommender
from sartor.recommend.metrics import METRICS, hits_matrix, ranking_metrics, top_k_rows

PROTOCOLS = ("random-811", "temporal-loo")
# RecBole's MovieLens-1M benchmark setup: ratings >= 3, 10-core on users and items, seed 2020.
DEFAULT_MIN_RATING = 3.0
DEFAULT_KCORE = 10
DEFAULT_SEED = 2020
DEFAULT_K = 10

# Normalized header names (lower case, no "_", "-", " " or "."; RecBole's ":token" type
# suffix removed) accepted for each column.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user": (
        "user",
        "userid",
        "uid",
        "users",
        "customer",
        "customerid",
        "visitor",
        "visitorid",
        "member",
        "memberid",
        "reviewerid",
        "profileid",
        "person",
        "personid",
    ),
    "item": (
        "item",
        "itemid",
        "iid",
        "items",
        "movie",
        "movieid",
        "product",
        "productid",
        "sku",
        "stockcode",
        "track",
        "trackid",
        "book",
        "bookid",
        "isbn",
        "asin",
        "article",
        "articleid",
        "contentid",
        "song",
        "songid",
        "artist",
        "artistid",
        "businessid",
    ),
    "rating": ("rating", "ratings", "score", "stars", "preference", "weight", "value"),
    "timestamp": (
        "timestamp",
        "time",
        "ts",
        "unixts",
        "unixtime",
        "date",
        "datetime",
        "eventtime",
        "createdat",
        "time_stamp",
        "when",
    ),
}
SEPARATORS = ("::", "\t", ",", ";", "|")
SCORE_BATCH_CELLS = 20_000_000

ProgressFn = Callable[[str, int, int], None]


class EvaluationError(ValueError):
    """Bad input for an evaluation: the message says what and where."""


# ---- loading -----------------------------------------------------------------------------


def _normalize(name: str) -> str:
    base = str(name).split(":", 1)[0] if ":" in str(name) else str(name)
    return re.sub(r"[\s_\-.]", "", base.strip().strip('"').lower())


def _open_text(path: Path) -> Any:
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return path.open("rt", encoding="utf-8", errors="replace", newline="")


def _first_lines(path: Path, n: int = 20) -> list[str]:
    with _open_text(path) as fh:
        lines = []
        for line in fh:
            stripped = line.rstrip("\r\n")
            if stripped:
                lines.append(stripped)
            if len(lines) >= n:
                break
    return lines


def sniff_separator(lines: Sequence[str]) -> str:
    """The first of ``::``, TAB, ``,``, ``;``, ``|`` (then runs of spaces) that splits every
    sampled line into the same number (at least 2) of fields."""
    for sep in SEPARATORS:
        counts = {len(line.split(sep)) for line in lines}
        if len(counts) == 1 and counts.pop() >= 2:
            return sep
    counts = {len(line.split()) for line in lines}
    if len(counts) == 1 and counts.pop() >= 2:
        return r"\s+"
    raise EvaluationError(
        "cannot tell the column separator from the first lines; pass --sep "
        "(e.g. --sep TAB, --sep ',', --sep '::')"
    )


def _is_number(text: str) -> bool:
    try:
        float(text.strip().strip('"'))
    except ValueError:
        return False
    return True


def parse_separator(value: str | None) -> str | None:
    """CLI spelling to a pandas separator: ``TAB``/``\\t``, ``SPACE``, ``COMMA`` or literal."""
    if value is None:
        return None
    named = {"tab": "\t", "\\t": "\t", "space": r"\s+", "comma": ",", "semicolon": ";", "pipe": "|"}
    return named.get(value.lower(), value)


def resolve_columns(header: Sequence[str]) -> dict[str, str]:
    """Map ``user``/``item``/``rating``/``timestamp`` to the header's column names."""
    found: dict[str, str] = {}
    normalized = {_normalize(h): h for h in header}
    for role, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if _normalize(alias) in normalized:
                found[role] = normalized[_normalize(alias)]
                break
    missing = [role for role in ("user", "item") if role not in found]
    if missing:
        raise EvaluationError(
            f"no {' or '.join(repr(m) for m in missing)} column: the header has "
            f"{', '.join(repr(h) for h in header)}; name the columns user, item and optionally "
            "rating and timestamp (aliases such as userId, user_id, movieId, item_id, "
            "product_id are accepted)"
        )
    return found


def load_interactions(path: str | Path, sep: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV (optionally gzipped) into columns ``user``, ``item`` (strings) and,
    when present, ``rating`` (float) and ``timestamp`` (int64).

    The separator is sniffed unless given. A file whose first line is all numbers has no
    header: its columns are taken as user, item, rating, timestamp in that order (the layout
    of MovieLens' ``u.data`` and ``ratings.dat``).
    """
    p = Path(path)
    if not p.exists():
        raise EvaluationError(f"interactions file not found: {p}")
    if p.is_dir():
        raise EvaluationError(f"{p} is a folder; pass the interactions file inside it")
    lines = _first_lines(p)
    if not lines:
        raise EvaluationError(f"{p} is empty")
    separator = parse_separator(sep) or sniff_separator(lines)
    splitter = re.compile(separator) if separator == r"\s+" else None
    first = splitter.split(lines[0].strip()) if splitter else lines[0].split(separator)
    headerless = all(_is_number(f) for f in first)
    if headerless:
        if not 2 <= len(first) <= 4:
            raise EvaluationError(
                f"{p} has no header and {len(first)} columns; without a header the columns "
                "must be user, item[, rating[, timestamp]]"
            )
        names = ["user", "item", "rating", "timestamp"][: len(first)]
        mapping = {n: n for n in names}
        header_arg: Any = None
    else:
        names = [f.strip().strip('"') for f in first]
        mapping = resolve_columns(names)
        header_arg = 0
    engine = "python" if len(separator) > 1 and separator != r"\s+" else "c"
    dtypes = {mapping["user"]: str, mapping["item"]: str}
    try:
        frame = pd.read_csv(
            p,
            sep=separator,
            header=header_arg,
            names=names if headerless else None,
            usecols=list(mapping.values()),
            dtype=dtypes,
            engine=engine,
            compression="gzip" if _is_gzip(p) else None,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise EvaluationError(f"cannot read {p}: {str(exc).splitlines()[0]}") from None
    frame = frame.rename(columns={v: k for k, v in mapping.items()})[list(mapping)]
    frame = frame.dropna(subset=["user", "item"])
    if "rating" in frame:
        ratings = pd.to_numeric(frame["rating"], errors="coerce")
        bad = ratings.isna() & frame["rating"].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise EvaluationError(
                f"column {mapping['rating']!r} must be numeric: row {row + 1} has "
                f"{frame['rating'].iloc[row]!r}"
            )
        frame["rating"] = ratings.astype(np.float64)
    if "timestamp" in frame:
        frame["timestamp"] = _timestamps(frame["timestamp"], mapping["timestamp"])
    return frame.reset_index(drop=True)


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _timestamps(column: pd.Series, name: str) -> pd.Series:
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all():
        return numeric.astype(np.int64)
    parsed = pd.to_datetime(column, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise EvaluationError(
            f"column {name!r} must be a number or a date: row {row + 1} has {column.iloc[row]!r}"
        )
    # Dates become Unix seconds, the unit of numeric timestamps in MovieLens-style files.
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return pd.Series(seconds.to_numpy(dtype=np.int64), index=column.index)


# ---- filtering -----------------------------------------------------------------------------


def kcore(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the interactions kept by the ``k``-core filter: users and items with
    fewer than ``k`` interactions are dropped, repeatedly, until every remaining user and item
    has at least ``k``."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    while True:
        u, i = users[keep], items[keep]
        ucount = np.bincount(u, minlength=int(users.max(initial=-1)) + 1)
        icount = np.bincount(i, minlength=int(items.max(initial=-1)) + 1)
        ok = (ucount[u] >= k) & (icount[i] >= k)
        if ok.all():
            return keep
        idx = np.flatnonzero(keep)
        keep[idx[~ok]] = False


def prepare(
    frame: pd.DataFrame, *, min_rating: float | None = DEFAULT_MIN_RATING, kcore_k: int = 0
) -> tuple[pd.DataFrame, list[str]]:
    """Keep one row per (user, item), the latest (by timestamp, then file order: a re-rating
    replaces the old one), then filter by rating, then apply the k-core. Returns the frame
    and notes on what was applied."""
    notes: list[str] = []
    out = frame
    if "timestamp" in out:
        out = out.sort_values("timestamp", kind="stable")
    before = len(out)
    out = out.drop_duplicates(subset=["user", "item"], keep="last").sort_index(kind="stable")
    if len(out) < before:
        notes.append(f"dropped {before - len(out):,} repeated user-item pairs (kept the latest)")
    if min_rating is not None:
        if "rating" in out:
            out = out[out["rating"] >= min_rating]
            notes.append(f"kept ratings >= {min_rating:g}")
        else:
            notes.append("no rating column: --min-rating not applied")
    if kcore_k > 1 and len(out):
        u = pd.factorize(out["user"])[0]
        i = pd.factorize(out["item"])[0]
        out = out[kcore(u, i, kcore_k)]
        notes.append(f"{kcore_k}-core on users and items")
    return out.reset_index(drop=True), notes


# ---- splitting -----------------------------------------------------------------------------


@dataclass
class Split:
    """Three disjoint users x items matrices over the same rows and columns, values 1.0
    (RecBole drops the rating column once it has filtered on it; so do we: graded inputs
    ranked worse than binary ones on both MovieLens sets we tried)."""

    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.train.shape[1])


def split_counts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RecBole's 8:1:1 sizes per user: ``(train, valid, test)`` for ``n`` interactions."""
    n = np.asarray(n, dtype=np.int64)
    valid = n // 10
    test = n // 10
    train = n - valid - test
    small = (n >= 1) & (n < 10)
    # Short histories: test first, then validation, each only while train keeps >= 2.
    give_test = small & (train > 1)
    test = test + give_test
    train = train - give_test
    give_valid = small & (train > 1)
    valid = valid + give_valid
    train = train - give_valid
    return train, valid, test


def _matrices(
    users: np.ndarray, items: np.ndarray, part: np.ndarray, shape: tuple[int, int]
) -> list[sp.csr_matrix]:
    out = []
    for code in range(3):
        sel = part == code
        m = sp.csr_matrix(
            (np.ones(int(sel.sum()), dtype=np.float32), (users[sel], items[sel])), shape=shape
        )
        m.sort_indices()
        out.append(m)
    return out


def split_interactions(frame: pd.DataFrame, protocol: str, seed: int = DEFAULT_SEED) -> Split:
    """Split a prepared frame with ``random-811`` or ``temporal-loo``."""
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if frame.empty:
        raise EvaluationError("no interactions left to split")
    users, user_ids = pd.factorize(frame["user"], sort=True)
    items, item_ids = pd.factorize(frame["item"], sort=True)
    users = users.astype(np.int64)
    items = items.astype(np.int64)
    n = len(users)
    if protocol == "random-811":
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.permutation(n), users))
    else:
        if "timestamp" not in frame:
            raise EvaluationError("temporal-loo needs a timestamp column; the file has none")
        ts = frame["timestamp"].to_numpy()
        order = np.lexsort((np.arange(n), ts, users))
    sorted_users = users[order]
    counts = np.bincount(sorted_users, minlength=len(user_ids))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(n) - starts[sorted_users]
    if protocol == "random-811":
        n_train, n_valid, _ = split_counts(counts)
    else:
        n_valid = (counts >= 3).astype(np.int64)
        n_test = (counts >= 2).astype(np.int64)
        n_train = counts - n_valid - n_test
    part_sorted = np.where(
        pos < n_train[sorted_users], 0, np.where(pos < (n_train + n_valid)[sorted_users], 1, 2)
    )
    part = np.empty(n, dtype=np.int64)
    part[order] = part_sorted
    shape = (len(user_ids), len(item_ids))
    train, valid, test = _matrices(users, items, part, shape)
    stats = {
        "users": shape[0],
        "items": shape[1],
        "interactions": n,
        "train": int(train.nnz),
        "valid": int(valid.nnz),
        "test": int(test.nnz),
    }
    return Split(train, valid, test, np.asarray(user_ids), np.asarray(item_ids), stats)


# ---- scoring -------------------------------------------------------------------------------


@dataclass
class Scores:
    """Mean metrics over the users with at least one held-out item."""

    k: int
    values: dict[str, float]
    coverage: float
    users: int


def score_model(
    model: Recommender,
    relevant: sp.csr_matrix,
    exclude: sp.csr_matrix,
    k: int = DEFAULT_K,
    *,
    batch_size: int | None = None,
) -> Scores:
    """Rank every item for each user with a held-out item, excluding ``exclude``'s items,
    and score the top ``k`` against ``relevant``. Users go through the model in batches of
    dense scores; the top ``k`` comes from ``np.argpartition``."""
    rel = relevant.tocsr()
    excl = exclude.tocsr()
    n_rel = np.diff(rel.indptr)
    users = np.flatnonzero(n_rel > 0)
    n_items = rel.shape[1]
    if batch_size is None:
        # About 160 MB of float64 scores per batch, whatever the catalog size.
        batch_size = max(1, min(1024, SCORE_BATCH_CELLS // max(1, n_items)))
    sums = dict.fromkeys(METRICS, 0.0)
    recommended = np.zeros(n_items, dtype=bool)
    for start in range(0, len(users), batch_size):
        rows = users[start : start + batch_size]
        scores = np.array(model.score_users(rows), dtype=np.float64, copy=True)
        if scores.shape != (len(rows), n_items):
            raise ValueError(
                f"{type(model).__name__}.score_users returned shape {scores.shape}, "
                f"expected {(len(rows), n_items)}"
            )
        scores[~np.isfinite(scores)] = -np.inf
        block = excl[rows].tocoo()
        scores[block.row, block.col] = -np.inf
        top = top_k_rows(scores, k)
        recommended[top[top >= 0]] = True
        per_user = ranking_metrics(hits_matrix(top, rel[rows]), n_rel[rows], k)
        for name in METRICS:
            sums[name] += float(per_user[name].sum())
    count = len(users)
    values = {name: (sums[name] / count if count else 0.0) for name in METRICS}
    coverage = float(recommended.sum()) / n_items if n_items else 0.0
    return Scores(k=k, values=values, coverage=coverage, users=count)


# ---- tuning and the whole run -------------------------------------------------------------

Params = dict[str, Any]
# A stage of a grid: parameter lists to cross (``{"a": [1, 2], "b": [3]}``), or a function of
# the best parameters so far that returns the candidates (to refine around them).
Stage = dict[str, Sequence[Any]] | Callable[[Params], list[Params]]
# Each model's grid is a function of the split (regularization scales with the data) and of
# the parameters already chosen for other models in the same run (a hybrid's components).
GridFn = Callable[[Split, dict[str, Params]], list[Stage]]


def expand_stage(stage: Stage, best: Params) -> list[Params]:
    """The candidates of one stage, each on top of the best parameters so far."""
    if callable(stage):
        return [{**best, **p} for p in stage(best)]
    keys = list(stage)
    return [
        {**best, **dict(zip(keys, values, strict=True))}
        for values in itertools.product(*(stage[k] for k in keys))
    ]


def mean_item_count(split: Split) -> float:
    """Mean number of train interactions per item: the scale of the diagonal of ``X^T X``,
    which an L2 penalty has to match (MovieLens-1M's is about 3x MovieLens 100K's)."""
    return max(1.0, float(split.train.nnz) / max(1, split.n_items))


def _refine_l2(best: Params) -> list[Params]:
    return [{"l2": round(float(best["l2"]) * f, 1)} for f in (0.7, 1.4)]


def _ease_grid(split: Split, tuned: dict[str, Params]) -> list[Stage]:
    scale = mean_item_count(split)
    return [{"l2": [round(f * scale, 1) for f in (1, 2, 4, 8, 16, 32)]}, _refine_l2]


def _edlae_grid(split: Split, tuned: dict[str, Params]) -> list[Stage]:
    scale = mean_item_count(split)

    def first(best: Params) -> list[Params]:
        # EASE itself (dropout 0, diag_max 0) and two denoising strengths, over the l2 scale.
        return [
            {"l2": round(f * scale, 1), "dropout": p, "diag_max": d}
            for f in (1, 2, 4, 8, 16)
            for p, d in ((0.0, 0.0), (0.2, 0.2), (0.3333, 0.3))
        ]

    def nonnegative(best: Params) -> list[Params]:
        # Non-negative weights fit best with a lighter l2 (the constraint regularizes too).
        return [
            {"nonnegative": True, "diag_max": 0.0, "l2": round(float(best["l2"]) * f, 1)}
            for f in (0.25, 0.5, 1.0)
        ]

    def reweigh(best: Params) -> list[Params]:
        if not best.get("nonnegative") or not best.get("lowpass_rank"):
            return []
        w = float(best["lowpass_weight"])
        return [{"lowpass_weight": round(w + d, 2)} for d in (-0.15, 0.15) if w + d > 0]

    return [
        first,
        _refine_l2,
        {"lowpass_rank": [16, 32, 64, 128], "lowpass_weight": [0.2, 0.35, 0.5]},
        nonnegative,
        reweigh,
    ]


def _hybrid_grid(split: Split, tuned: dict[str, Params]) -> list[Stage]:
    components = {
        name: {"model": name, "params": tuned.get(name, {})} for name in HYBRID_COMPONENTS
    }
    mixes = [
        {"ease": 0.6, "itemknn": 0.2, "als": 0.2},
        {"ease": 0.8, "itemknn": 0.0, "als": 0.2},
        {"ease": 0.8, "itemknn": 0.2, "als": 0.0},
        {"ease": 0.5, "itemknn": 0.0, "als": 0.5},
    ]
    return [
        lambda best: [
            {"components": components, "weights": mix, "normalize": "zscore"} for mix in mixes
        ]
    ]


def _fixed(stages: list[Stage]) -> GridFn:
    def grid(split: Split, tuned: dict[str, Params]) -> list[Stage]:
        return stages

    return grid


HYBRID_COMPONENTS = ("ease", "itemknn", "als")
# The tuning grids, per model (README "Offline evaluation" lists them). Stages run in order;
# each keeps the best parameters of the previous ones and varies a few more, so a model is
# fitted a couple of dozen times at most instead of once per point of a full cross product.
GRIDS: dict[str, GridFn] = {
    "popularity": _fixed([]),
    "itemknn": _fixed(
        [
            {"similarity": ["cosine", "bm25"], "k_neighbors": [50, 100, 200]},
            {"shrinkage": [10.0, 50.0]},
        ]
    ),
    "userknn": _fixed([{"k_neighbors": [50, 100, 200]}, {"shrinkage": [10.0, 50.0]}]),
    "als": _fixed(
        [
            {"factors": [64, 128], "regularization": [0.1, 1.0, 10.0]},
            {"alpha": [5.0, 20.0]},
        ]
    ),
    "ease": _ease_grid,
    "edlae": _edlae_grid,
    # The popularity penalty matters most; MovieLens 100K and latest-small both chose
    # beta 0.5 (alpha 0.5-1.0, 100-300 neighbours).
    "rp3beta": _fixed(
        [
            {"alpha": [0.5, 0.8, 1.0], "beta": [0.3, 0.5, 0.7], "k_neighbors": [200]},
            {"k_neighbors": [100, 400]},
        ]
    ),
    "hybrid": _hybrid_grid,
}
DEFAULT_MODELS = ("popularity", "itemknn", "userknn", "als", "ease", "edlae")
# Models that need more than an interactions file.
NEEDS_CONTEXT = {"content": "item text (titles, descriptions), which an interactions file lacks"}


@dataclass
class ModelResult:
    model: str
    params: Params
    test: Scores | None
    valid_ndcg: float
    train_seconds: float
    tried: list[dict[str, Any]]
    error: str | None = None

    def as_row(self, k: int) -> dict[str, Any]:
        row: dict[str, Any] = {"model": self.model}
        if self.test is None:
            row["error"] = self.error
            return row
        for name in METRICS:
            row[f"{name}@{k}"] = round(self.test.values[name], 4)
        row[f"coverage@{k}"] = round(self.test.coverage, 4)
        row["train_seconds"] = round(self.train_seconds, 3)
        row["params"] = self.params
        return row


Factory = Callable[..., Recommender]


def tune_and_test(
    name: str,
    factory: Factory,
    stages: Sequence[Stage],
    split: Split,
    k: int = DEFAULT_K,
    *,
    seed: int = DEFAULT_SEED,
    progress: ProgressFn | None = None,
) -> ModelResult:
    """Fit each candidate on train and keep the best validation NDCG@k, stage by stage;
    then score that model on test (excluding each user's train and validation items).

    The model fitted on train with the best parameters is the final model: fitting again
    on the same data with the same parameters and seed gives the same model, so its fit
    time is the reported ``train_seconds``.
    """
    x_train = split.train
    seen = split.train + split.valid
    best: tuple[float, Params, Recommender, float] | None = None
    tried: list[dict[str, Any]] = []
    done: set[str] = set()
    # Function stages only know their candidates once the previous ones ran: the progress
    # total counts them as three until then.
    estimates = [_stage_size(stage) for stage in stages]

    def report(left_in_stage: int, stage_index: int) -> None:
        if progress is not None:
            total = len(tried) + left_in_stage + sum(estimates[stage_index + 1 :]) + 1
            progress(name, len(tried), total)

    def attempt(params: Params) -> None:
        nonlocal best
        key = repr(sorted(params.items()))
        if key in done:
            return
        done.add(key)
        model = factory(**_with_seed(factory, params, seed))
        started = time.perf_counter()
        model.fit(x_train)
        seconds = time.perf_counter() - started
        value = score_model(model, split.valid, split.train, k).values["ndcg"]
        tried.append(
            {"params": params, f"valid_ndcg@{k}": round(value, 4), "seconds": round(seconds, 3)}
        )
        if best is None or value > best[0]:
            best = (value, params, model, seconds)

    if not stages:
        attempt({})
    for index, stage in enumerate(stages):
        candidates = expand_stage(stage, best[1] if best is not None else {})
        for position, params in enumerate(candidates):
            report(len(candidates) - position, index)
            attempt(params)
    if best is None:
        raise ValueError(f"the grid of {name!r} has no candidates")
    value, params, model, seconds = best
    report(0, len(stages))
    test = score_model(model, split.test, seen, k)
    if progress is not None:
        progress(name, len(tried) + 1, len(tried) + 1)
    return ModelResult(name, params, test, value, seconds, tried)


def _stage_size(stage: Stage) -> int:
    if callable(stage):
        return 3
    return int(np.prod([len(v) for v in stage.values()])) if stage else 0


def _with_seed(factory: Factory, params: Params, seed: int) -> Params:
    """Pass the run's seed as ``random_state`` to models that take one."""
    import inspect

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return dict(params)
    if "random_state" in signature.parameters and "random_state" not in params:
        return {**params, "random_state": seed}
    return dict(params)


@dataclass
class Report:
    """Everything ``sartor evaluate`` prints."""

    protocol: str
    k: int
    seed: int
    stats: dict[str, int]
    notes: list[str]
    results: list[ModelResult]

    def rows(self) -> list[dict[str, Any]]:
        return [r.as_row(self.k) for r in self.results]


def known_models() -> dict[str, Factory]:
    from sartor.recommend.models import MODELS

    return dict(MODELS)


def check_model_names(names: Sequence[str]) -> list[str]:
    """Lower-cased, de-duplicated names; unknown ones raise with the known list."""
    known = known_models()
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in known:
            raise EvaluationError(
                f"unknown model {raw.strip()!r}; known: {', '.join(sorted(known))}"
            )
        if name in NEEDS_CONTEXT:
            raise EvaluationError(f"model {name!r} needs {NEEDS_CONTEXT[name]}")
        if name not in out:
            out.append(name)
    if not out:
        raise EvaluationError("no models to evaluate")
    return out


def evaluate(
    interactions: str | Path | pd.DataFrame,
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    protocol: str = "random-811",
    k: int = DEFAULT_K,
    seed: int = DEFAULT_SEED,
    min_rating: float | None = DEFAULT_MIN_RATING,
    kcore_k: int = DEFAULT_KCORE,
    sep: str | None = None,
    progress: ProgressFn | None = None,
) -> Report:
    """Load, filter, split, then tune and test each model in turn (see the module doc)."""
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if k < 1:
        raise EvaluationError(f"k must be >= 1, got {k}")
    if kcore_k < 0:
        raise EvaluationError(f"kcore must be >= 0, got {kcore_k}")
    names = check_model_names(models)
    frame = (
        interactions
        if isinstance(interactions, pd.DataFrame)
        else load_interactions(interactions, sep)
    )
    loaded = len(frame)
    if loaded == 0:
        raise EvaluationError("the interactions file has a header but no rows")
    frame, notes = prepare(frame, min_rating=min_rating, kcore_k=kcore_k)
    if frame.empty:
        raise EvaluationError(
            f"no interactions left after filtering ({loaded:,} read; "
            f"{'; '.join(notes) or 'no filter'}): lower --min-rating or --kcore"
        )
    split = split_interactions(frame, protocol, seed)
    if split.test.nnz == 0:
        raise EvaluationError(
            "no user has a test interaction (every user has a single interaction); "
            "evaluation needs at least two per user"
        )
    split.stats["read"] = loaded
    factories = known_models()
    tuned: dict[str, Params] = {}
    results: list[ModelResult] = []
    for name in names:
        grid = GRIDS.get(name, _fixed([]))(split, tuned)
        try:
            result = tune_and_test(
                name, factories[name], grid, split, k, seed=seed, progress=progress
            )
        except (ValueError, MemoryError) as exc:
            results.append(
                ModelResult(name, {}, None, math.nan, math.nan, [], error=str(exc).splitlines()[0])
            )
            continue
        tuned[name] = result.params
        results.append(result)
    return Report(protocol, k, seed, dict(split.stats), notes, results)
