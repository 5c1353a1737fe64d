"""Recommendation quality: `sartor evaluate` on MovieLens, every model against Popularity.

    .venv/bin/python bench/quality.py [--datasets ml-100k,ml-latest-small-2016]
        [--models popularity,itemknn,userknn,als,ease,edlae,rp3beta] [--runs 1] [--seed 2020]
        [--k 10] [--data ../shared/data] [--json out.json]

For each dataset this runs the real command line, ``python -m sartor.cli evaluate
--interactions FILE --protocol random-811 --json``, in a subprocess, with the defaults that
reproduce RecBole's MovieLens-1M setup (ratings >= 3, 10-core on users and items, 80/10/10
per user, hyper-parameters tuned on validation, full ranking of the test part). With
``--runs N`` the split seeds are ``seed, seed + 1, ...`` and every metric is the median over
the runs (the per-run values are in the JSON).

Printed per model: NDCG@k, Recall@k, MRR@k, Hit@k, Precision@k, coverage, the final fit's
seconds, NDCG relative to Popularity and to EASE, and the parameters chosen on validation.
For scale, RecBole's published NDCG@10 on MovieLens-1M under the same protocol: Pop 0.1006,
ItemKNN 0.2389, BPR 0.2407, LightGCN 0.2476, MultiVAE 0.2523, EASE 0.2865, ADMMSLIM 0.2904.
The data sets (``../shared/data``) are MovieLens 100K (``u.data.gz``, no header: user, item,
rating, timestamp) and MovieLens latest-small of 2016 (``ratings.csv.gz``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FILES = {
    "ml-100k": "u.data.gz",
    "ml-latest-small-2016": "ratings.csv.gz",
}
RECBOLE_ML1M_NDCG10 = {
    "Pop": 0.1006,
    "ItemKNN": 0.2389,
    "BPR": 0.2407,
    "LightGCN": 0.2476,
    "MultiVAE": 0.2523,
    "EASE": 0.2865,
    "ADMMSLIM": 0.2904,
}
METRICS = ("ndcg", "recall", "mrr", "hit", "precision", "coverage")


def run_evaluate(path: Path, models: str, seed: int, k: int) -> tuple[list[dict[str, Any]], str]:
    """One ``sartor evaluate --json`` run: the rows and the dataset summary (stderr)."""
    cmd = [
        sys.executable,
        "-m",
        "sartor.cli",
        "evaluate",
        "--interactions",
        str(path),
        "--protocol",
        "random-811",
        "--models",
        models,
        "--seed",
        str(seed),
        "--k",
        str(k),
        "--json",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"sartor evaluate failed ({done.returncode}): {done.stderr.strip()}")
    summary = " ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
    return json.loads(done.stdout), summary


def bench_dataset(name: str, path: Path, models: str, seeds: list[int], k: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        started = time.perf_counter()
        rows, summary = run_evaluate(path, models, seed, k)
        seconds = time.perf_counter() - started
        print(f"  seed {seed}: {seconds:.0f} s  ({summary})", flush=True)
        runs.append({"seed": seed, "seconds": round(seconds, 1), "summary": summary, "rows": rows})
    by_model: dict[str, dict[str, Any]] = {}
    for run in runs:
        for row in run["rows"]:
            entry = by_model.setdefault(row["model"], {"values": {}, "params": [], "errors": []})
            if "error" in row:
                entry["errors"].append(row["error"])
                continue
            for metric in (*METRICS, "train"):
                key = "train_seconds" if metric == "train" else f"{metric}@{k}"
                entry["values"].setdefault(metric, []).append(row[key])
            entry["params"].append(row["params"])
    medians: dict[str, dict[str, Any]] = {}
    for model, entry in by_model.items():
        if not entry["values"]:
            medians[model] = {"error": entry["errors"][0]}
            continue
        medians[model] = {m: statistics.median(v) for m, v in entry["values"].items()}
        medians[model]["params"] = entry["params"]
    pop = medians.get("popularity", {}).get("ndcg")
    ease = medians.get("ease", {}).get("ndcg")
    for values in medians.values():
        if "ndcg" in values:
            values["vs_popularity"] = round(values["ndcg"] / pop, 3) if pop else None
            values["vs_ease"] = round(values["ndcg"] / ease, 4) if ease else None
    return {"file": str(path), "seeds": seeds, "median": medians, "runs": runs}


def report(results: dict[str, Any], k: int) -> None:
    for name, res in results["datasets"].items():
        print(f"\n{name}  (median of {len(res['seeds'])} run(s); random-811, k={k})")
        header = (
            f"  {'model':<11}"
            + "".join(f"{m + '@' + str(k):>13}" for m in METRICS)
            + f"{'train s':>9}{'/pop':>7}{'/ease':>8}  params (first run)"
        )
        print(header)
        for model, v in res["median"].items():
            if "error" in v:
                print(f"  {model:<11}  error: {v['error']}")
                continue
            cells = "".join(f"{v[m]:>13.4f}" for m in METRICS)
            ratio_pop = f"{v['vs_popularity']:.2f}" if v["vs_popularity"] else "-"
            ratio_ease = f"{v['vs_ease']:.3f}" if v["vs_ease"] else "-"
            params = json.dumps(v["params"][0], separators=(",", ":"))
            if len(params) > 90:
                params = params[:87] + "..."
            print(f"  {model:<11}{cells}{v['train']:>9.2f}{ratio_pop:>7}{ratio_ease:>8}  {params}")
    print("\nRecBole, MovieLens-1M, same protocol (published NDCG@10):")
    print("  " + ", ".join(f"{m} {v}" for m, v in RECBOLE_ML1M_NDCG10.items()))
    machine = results["machine"]
    print(f"\nmachine: {machine['cpus']} cpus, load {machine['load_average']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--datasets", default=",".join(FILES))
    ap.add_argument("--models", default="popularity,itemknn,userknn,als,ease,edlae,rp3beta")
    ap.add_argument("--runs", type=int, default=1, help="split seeds per dataset (median)")
    ap.add_argument("--seed", type=int, default=2020, help="first split seed (RecBole's)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    seeds = [args.seed + i for i in range(max(1, args.runs))]
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "models": args.models,
        "k": args.k,
        "recbole_ml1m_ndcg10": RECBOLE_ML1M_NDCG10,
        "datasets": {},
    }
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if name not in FILES:
            print(f"unknown dataset {name!r}; known: {', '.join(FILES)}", file=sys.stderr)
            return 2
        path = args.data / name / FILES[name]
        if not path.exists():
            print(f"{name}: {path} is missing, skipped", flush=True)
            continue
        print(f"{name}: {path}", flush=True)
        results["datasets"][name] = bench_dataset(name, path, args.models, seeds, args.k)
    report(results, args.k)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
