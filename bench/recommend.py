"""Recommendation models: ALS training against the implicit library, in-process latency.

    .venv/bin/python bench/recommend.py [--sections als-train,latency] [--runs 5]
        [--ml100k PATH] [--items 10000] [--users 30000] [--interactions 1000000]
        [--requests 2000] [--k 10] [--json out.json]

Sections (``--sections``, comma-separated, run in this order):

* **als-train**: :class:`sartor.recommend.ALS` ``fit`` vs ``implicit.cpu.als``'s
  ``AlternatingLeastSquares.fit`` called directly, with the same matrix, factors,
  iterations, regularization, alpha, seed and dtype (float32), both inside
  ``threadpool_limits(1, "blas")`` as implicit recommends. The matrices: MovieLens 100K
  (``u.data.gz``, the ratings as confidence; skipped with a note when the file is missing)
  and a synthetic ``--users`` x ``--items`` matrix of ``--interactions`` pairs (power-law
  item popularity, log-normal user activity, weights 1-5, seed 0). After one untimed fit of
  each, every run times Sartor and implicit back to back, alternating which goes first; the
  medians of ``--runs`` runs of each and their ratio are reported, for wall time (the
  target: ratio <= 1.2) and for this process's CPU time (steadier on a shared machine).
* **latency**: ALS, EASE and ItemKNN fitted on the synthetic matrix, then ``--requests``
  in-process ``recommend([user], k)`` calls for random users (one at a time, as a server
  does), with and without excluding the user's own history (a 1-row CSR built beforehand).
  p50 / p99 in milliseconds. Target: p50 < 1 ms.

Sections are functions of ``(args, data) -> dict`` registered in ``SECTIONS``; another one
(e.g. ``http``) plugs in by adding an entry. The machine's load average is printed with the
results: this box has 2 cores and may be shared, which shows mostly in the p99.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from sartor.recommend import ALS, EASE, ItemKNN, Recommender  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "ml-100k" / "u.data.gz"
ALS_PARAMS: dict[str, Any] = {
    "factors": 64,
    "iterations": 15,
    "regularization": 0.05,
    "alpha": 1.0,
    "random_state": 0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


# -- data ---------------------------------------------------------------------------------------


def synthetic_matrix(users: int, items: int, interactions: int, seed: int = 0) -> sp.csr_matrix:
    """Users x items with a power-law item popularity and log-normal user activity."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.9
    pop = pop[rng.permutation(items)]
    pop /= pop.sum()
    act = rng.lognormal(0.0, 1.0, users)
    act /= act.sum()
    # Draw more pairs than wanted: duplicates collapse into one pair.
    n = int(interactions * 1.1)
    rows = rng.choice(users, size=n, p=act)
    cols = rng.choice(items, size=n, p=pop)
    m = sp.csr_matrix((np.ones(n, dtype=np.float32), (rows, cols)), shape=(users, items))
    m.sum_duplicates()
    m.data = rng.integers(1, 6, m.nnz).astype(np.float32)
    return m


def ml100k_matrix(path: Path) -> sp.csr_matrix | None:
    if not path.exists():
        return None
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, dtype=np.int64)
    users, items, ratings = data[:, 0] - 1, data[:, 1] - 1, data[:, 2].astype(np.float32)
    return sp.csr_matrix((ratings, (users, items)), shape=(users.max() + 1, items.max() + 1))


class Data:
    """Matrices built once and shared by the sections that need them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._synthetic: sp.csr_matrix | None = None

    @property
    def synthetic(self) -> sp.csr_matrix:
        if self._synthetic is None:
            a = self.args
            log(f"building a synthetic {a.users:,} x {a.items:,} matrix")
            self._synthetic = synthetic_matrix(a.users, a.items, a.interactions)
        return self._synthetic


# -- (1) ALS training: Sartor vs implicit --------------------------------------------------------


def _fit_sartor(x: sp.csr_matrix) -> tuple[float, float]:
    t, cpu = time.perf_counter(), time.process_time()
    ALS(**ALS_PARAMS).fit(x)
    return time.perf_counter() - t, time.process_time() - cpu


def _fit_implicit(x: sp.csr_matrix) -> tuple[float, float]:
    from implicit.cpu.als import AlternatingLeastSquares

    t, cpu = time.perf_counter(), time.process_time()
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=ALS_PARAMS["factors"],
            regularization=ALS_PARAMS["regularization"],
            alpha=ALS_PARAMS["alpha"],
            iterations=ALS_PARAMS["iterations"],
            random_state=ALS_PARAMS["random_state"],
            dtype=np.float32,
        )
        model.fit(x.astype(np.float32).tocsr(), show_progress=False)
    return time.perf_counter() - t, time.process_time() - cpu


def bench_als_train(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    matrices: list[tuple[str, sp.csr_matrix]] = []
    ml = ml100k_matrix(args.ml100k)
    if ml is None:
        log(f"MovieLens 100K not found at {args.ml100k}: skipped")
    else:
        matrices.append(("ml-100k", ml))
    matrices.append(("synthetic", data.synthetic))
    out: dict[str, Any] = {"params": ALS_PARAMS, "target_ratio": 1.2, "matrices": []}
    for name, x in matrices:
        _fit_implicit(x)  # warm-up of both: imports, thread pools, caches
        _fit_sartor(x)
        sartor: list[tuple[float, float]] = []
        implicit: list[tuple[float, float]] = []
        for run in range(args.runs):
            if run % 2 == 0:
                sartor.append(_fit_sartor(x))
                implicit.append(_fit_implicit(x))
            else:
                implicit.append(_fit_implicit(x))
                sartor.append(_fit_sartor(x))
            log(
                f"als-train {name} run {run + 1}: sartor {sartor[-1][0]:.2f} s, "
                f"implicit {implicit[-1][0]:.2f} s"
            )
        s_wall, s_cpu = _median([w for w, _ in sartor]), _median([c for _, c in sartor])
        i_wall, i_cpu = _median([w for w, _ in implicit]), _median([c for _, c in implicit])
        out["matrices"].append(
            {
                "matrix": name,
                "shape": list(x.shape),
                "nnz": int(x.nnz),
                "sartor_seconds": [round(w, 3) for w, _ in sartor],
                "implicit_seconds": [round(w, 3) for w, _ in implicit],
                "sartor_median": round(s_wall, 3),
                "implicit_median": round(i_wall, 3),
                "ratio": round(s_wall / i_wall, 3),
                # CPU seconds of this process (all threads): far less disturbed than wall
                # time by other processes on a shared machine.
                "sartor_cpu_median": round(s_cpu, 3),
                "implicit_cpu_median": round(i_cpu, 3),
                "cpu_ratio": round(s_cpu / i_cpu, 3),
            }
        )
    return out


# -- (2) in-process recommend latency ------------------------------------------------------------


def _latencies(
    model: Recommender, users: np.ndarray, k: int, history: list[sp.csr_matrix] | None
) -> np.ndarray:
    out = np.empty(len(users))
    for n, user in enumerate(users):
        exclude = None if history is None else history[n]
        t = time.perf_counter()
        model.recommend([int(user)], k=k, exclude=exclude)
        out[n] = time.perf_counter() - t
    return out * 1000.0


def bench_latency(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    x = data.synthetic
    rng = np.random.default_rng(1)
    users = rng.integers(0, x.shape[0], args.requests)
    history = [x[int(u)] for u in users]
    models: list[tuple[str, Callable[[], Recommender]]] = [
        ("als", lambda: ALS(**ALS_PARAMS)),
        ("ease", lambda: EASE(l2=500.0)),
        ("itemknn", lambda: ItemKNN(k_neighbors=100)),
    ]
    out: dict[str, Any] = {
        "items": x.shape[1],
        "users": x.shape[0],
        "k": args.k,
        "requests": args.requests,
        "target_p50_ms": 1.0,
        "models": [],
    }
    for name, make in models:
        t = time.perf_counter()
        model = make().fit(x)
        fit_seconds = time.perf_counter() - t
        _latencies(model, users[:200], args.k, None)  # warm-up
        plain = _latencies(model, users, args.k, None)
        excl = _latencies(model, users, args.k, history)
        row = {
            "model": name,
            "fit_seconds": round(fit_seconds, 2),
            "p50_ms": round(float(np.percentile(plain, 50)), 3),
            "p99_ms": round(float(np.percentile(plain, 99)), 3),
            "exclude_history_p50_ms": round(float(np.percentile(excl, 50)), 3),
            "exclude_history_p99_ms": round(float(np.percentile(excl, 99)), 3),
        }
        log(
            f"latency {name}: fit {fit_seconds:.1f} s, p50 {row['p50_ms']} ms, "
            f"p99 {row['p99_ms']} ms"
        )
        out["models"].append(row)
        del model
    return out


SECTIONS: dict[str, Callable[[argparse.Namespace, Data], dict[str, Any]]] = {
    "als-train": bench_als_train,
    "latency": bench_latency,
}


# -- report ----------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print()
    print(
        f"{m['cpus']} CPUs, Python {m['python']}, numpy {m['numpy']}, implicit "
        f"{m['implicit']}; load average before {m['load_average']}, after "
        f"{m.get('load_average_after')}"
    )
    if "als-train" in results:
        r = results["als-train"]
        p = r["params"]
        print()
        print(
            f"ALS training, factors={p['factors']} iterations={p['iterations']} "
            f"regularization={p['regularization']} (median of runs; target ratio <= "
            f"{r['target_ratio']})"
        )
        print(
            f"{'matrix':<12} {'shape':>16} {'nnz':>10} {'sartor s':>9} {'implicit s':>10} "
            f"{'ratio':>6} {'cpu s: sartor':>14} {'implicit':>9} {'ratio':>6}"
        )
        for row in r["matrices"]:
            shape = "x".join(f"{s:,}" for s in row["shape"])
            print(
                f"{row['matrix']:<12} {shape:>16} {row['nnz']:>10,} {row['sartor_median']:>9.2f} "
                f"{row['implicit_median']:>10.2f} {row['ratio']:>6.2f} "
                f"{row['sartor_cpu_median']:>14.2f} {row['implicit_cpu_median']:>9.2f} "
                f"{row['cpu_ratio']:>6.2f}"
            )
    if "latency" in results:
        r = results["latency"]
        print()
        print(
            f"In-process recommend, one user per call, k={r['k']}, {r['items']:,} items, "
            f"{r['requests']:,} calls (ms; target p50 < {r['target_p50_ms']})"
        )
        print(
            f"{'model':<9} {'fit s':>7} {'p50':>7} {'p99':>7} {'p50 excl. history':>18} "
            f"{'p99 excl. history':>18}"
        )
        for row in r["models"]:
            print(
                f"{row['model']:<9} {row['fit_seconds']:>7.1f} {row['p50_ms']:>7.3f} "
                f"{row['p99_ms']:>7.3f} {row['exclude_history_p50_ms']:>18.3f} "
                f"{row['exclude_history_p99_ms']:>18.3f}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, in order")
    ap.add_argument("--runs", type=int, default=5, help="timed fits of each side (median)")
    ap.add_argument("--ml100k", type=Path, default=ML100K)
    ap.add_argument("--items", type=int, default=10_000, help="synthetic matrix: items")
    ap.add_argument("--users", type=int, default=30_000, help="synthetic matrix: users")
    ap.add_argument("--interactions", type=int, default=1_000_000, help="synthetic pairs")
    ap.add_argument("--requests", type=int, default=2_000, help="latency: calls per model")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")

    import implicit

    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "implicit": getattr(implicit, "__version__", "?"),
            "load_average": [round(v, 2) for v in os.getloadavg()],
        }
    }
    data = Data(args)
    for name in wanted:
        log(f"section {name}")
        results[name] = SECTIONS[name](args, data)
    results["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
