"""Segments benchmarks: clustering at scale, rule evaluation, back-fill, Online Retail.

    .venv/bin/python bench/segments.py [--only cluster,rules,backfill,retail]
        [--cluster-rows 1000000] [--runs 3] [--rule-profiles 100000]
        [--backfill-profiles 1000000] [--retail PATH] [--json out.json]

* **cluster**: ``--cluster-rows`` synthetic profiles' feature rows (the four planted
  behaviours of :mod:`sartor.testing.synthetic`, sampled directly, no events) clustered with
  :class:`sartor.segments.clustering.Clusterer` (MiniBatchKMeans, automatic ``k`` in 2..10 by
  silhouette on a sample). Target: under 60 s on a 2-core machine. Reports the median of
  ``--runs`` fits, the phases, the metrics and the ARI against the planted segments.
* **rules**: a 5-condition rule compiled by :func:`sartor.segments.rules.compile_rule`,
  evaluated on ``--rule-profiles`` profile view dicts (``folds.view`` of synthetic fold
  states) in a loop. Target: >= 50,000 profile evaluations/s. The cost of building the view
  from the stored fold state is reported separately.
* **backfill**: ``--backfill-profiles`` profile rows (fold state in ``profiles.computed``,
  plus a ``userId`` identity each) bulk-inserted into the ``profiles`` table of an SQLite
  database made by ``Engine.open``; then ``engine.segments.save(...)`` of a new segment,
  which back-fills it over every profile (and logs a ``Segment Entered`` per entrant).
* **retail**: when ``../shared/data/online-retail/...csv.gz`` exists, the UCI Online Retail
  data converted by :func:`sartor.demo.retail_messages` (invoices as ``Order Completed`` /
  ``Order Refunded``) is ingested into a fresh SQLite engine and folded; RFM is run with the
  reference date 2011-12-10, then clustering (identified customers, as RFM).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from sartor.clock import now_ms  # noqa: E402
from sartor.config import Settings  # noqa: E402
from sartor.engine import Engine  # noqa: E402
from sartor.profiles import folds  # noqa: E402
from sartor.segments import clustering as cl  # noqa: E402
from sartor.segments.rules import Context, compile_rule  # noqa: E402
from sartor.storage.db import write_tx  # noqa: E402
from sartor.storage.tables import identities, profiles  # noqa: E402
from sartor.testing import CATALOG_CATEGORIES, feature_frame, iter_profile_docs  # noqa: E402

SECRET = "bench-secret-key-0123456789"
RETAIL = (
    ROOT.parent / "shared" / "data" / "online-retail" / "online_retail_2010-12-01_2011-12-09.csv.gz"
)
# Synthetic profiles end now: back-fill evaluates time conditions against the clock.
NOW = now_ms()
RULE = {
    "and": [
        {"property": "computed.rfm.monetary", "op": "gte", "value": 300},
        {"property": "computed.orders", "op": "between", "value": [2, 100]},
        {"property": "computed.last_seen", "op": "within_days", "value": 90},
        {"property": "computed.category_affinity.Home Decor", "op": "gt", "value": 0.3},
        {"not": {"property": "traits.country", "op": "in", "value": ["FR", "DE"]}},
    ]
}


def _settings(home: Path) -> Settings:
    return Settings(
        env="test",
        home=home,
        secret_key=SECRET,
        rate_limit_events_per_second=0,
        log_json=False,
        log_level="WARNING",
    )


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


# -- (a) clustering 1M feature rows ------------------------------------------------------------


def bench_cluster(rows: int, runs: int) -> dict[str, Any]:
    t = time.perf_counter()
    X, planted = feature_frame(rows, random_state=0)
    generated = time.perf_counter() - t
    fits: list[dict[str, Any]] = []
    for run in range(runs):
        t = time.perf_counter()
        model = cl.Clusterer("minibatch_kmeans", random_state=run).fit(X)
        seconds = time.perf_counter() - t
        fits.append(
            {
                "seconds": round(seconds, 2),
                "k": model.n_clusters_,
                "pca_components": model.n_components_,
                "ari_vs_planted": round(float(adjusted_rand_score(planted, model.labels_)), 4),
                "timings": model.timings_,
                **{
                    m: model.metrics_[m]
                    for m in ("silhouette", "davies_bouldin", "calinski_harabasz")
                },
            }
        )
        print(
            f"  cluster run {run + 1}/{runs}: {seconds:.1f} s, k={model.n_clusters_}, "
            f"ARI {fits[-1]['ari_vs_planted']}, phases {model.timings_}",
            flush=True,
        )
    return {
        "rows": rows,
        "features": X.shape[1],
        "generate_seconds": round(generated, 2),
        "median_seconds": round(_median([f["seconds"] for f in fits]), 2),
        "target_seconds": 60,
        "runs": fits,
    }


# -- (b) rule evaluation -------------------------------------------------------------------------


def bench_rules(n: int, rounds: int) -> dict[str, Any]:
    config = folds.ProfileConfig()
    docs = [doc for chunk in iter_profile_docs(n, now=NOW, chunk=20_000) for _, _, doc in chunk]
    countries = ("US", "GB", "DE", "FR", "NL")
    t = time.perf_counter()
    views = [
        {
            "profileId": f"p{i}",
            "traits": {"country": countries[i % len(countries)]},
            "computed": folds.view({**doc, "traits": {}}, NOW, config, CATALOG_CATEGORIES),
            "consent": {},
        }
        for i, doc in enumerate(docs)
    ]
    view_seconds = time.perf_counter() - t
    rule = compile_rule(RULE)
    leaves = sum(1 for c in RULE["and"])
    ctx = Context(now=NOW)
    rates, matched = [], 0
    for _ in range(rounds):
        t = time.perf_counter()
        matched = sum(1 for v in views if rule(v, ctx))
        rates.append(len(views) / (time.perf_counter() - t))
    return {
        "profiles": len(views),
        "conditions": leaves,
        "rounds": rounds,
        "matched": matched,
        "evaluations_per_second": round(_median(rates)),
        "min_per_second": round(min(rates)),
        "view_build_per_second": round(len(views) / view_seconds),
        "target_per_second": 50_000,
    }


# -- (c) back-fill over stored profiles --------------------------------------------------------


def bench_backfill(n: int, tmp: Path) -> dict[str, Any]:
    home = tmp / "backfill"
    home.mkdir()
    engine = Engine.open(f"sqlite:///{home / 'sartor.db'}", settings=_settings(home))
    try:
        ws = engine.create_workspace("bench").workspace.id
        t = time.perf_counter()
        stored = 0
        for chunk in iter_profile_docs(n, now=NOW, chunk=20_000):
            with write_tx(engine.db) as conn:
                conn.execute(
                    profiles.insert(),
                    [
                        {
                            "workspace_id": ws,
                            "profile_id": pid,
                            "consent": {},
                            "traits": {},
                            "created_at": doc["first_seen"],
                            "updated_at": doc["last_seen"],
                            "version": 1,
                            "computed": doc,
                            "last_seq": 0,
                            "refreshed": None,
                        }
                        for pid, _, doc in chunk
                    ],
                )
                conn.execute(
                    identities.insert(),
                    [
                        {
                            "workspace_id": ws,
                            "kind": "user_id",
                            "value": f"u-{pid}",
                            "profile_id": pid,
                            "created_at": doc["first_seen"],
                        }
                        for pid, _, doc in chunk
                    ],
                )
            stored += len(chunk)
            if stored % 200_000 == 0:
                print(f"  back-fill: {stored:,} profiles stored", flush=True)
        insert_seconds = time.perf_counter() - t
        db_bytes = (home / "sartor.db").stat().st_size
        t = time.perf_counter()
        doc = engine.segments.save(ws, "bench-home-decor", "Home decor regulars", RULE)
        seconds = time.perf_counter() - t
        entered = engine.events(ws, newest=True, limit=1)
    finally:
        engine.close()
    return {
        "profiles": n,
        "insert_seconds": round(insert_seconds, 1),
        "insert_per_second": round(n / insert_seconds),
        "database_mb": round(db_bytes / 1e6),
        "backfill_seconds": round(seconds, 1),
        "profiles_per_second": round(n / seconds),
        "members": doc["size"],
        "logged_segment_entered": bool(entered and entered[0].get("event") == "Segment Entered"),
    }


# -- (d) Online Retail: RFM and clusters ------------------------------------------------------


def bench_retail(path: Path, tmp: Path) -> dict[str, Any] | None:
    if not path.exists():
        print(f"  retail: {path} not found, skipped", flush=True)
        return None
    from sartor.demo import IMPORT_EVENT_BYTES, retail_messages

    home = tmp / "retail"
    home.mkdir()
    csv_path = home / "online_retail.csv"
    with gzip.open(path, "rb") as src, csv_path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    t = time.perf_counter()
    messages = retail_messages(csv_path)
    convert = time.perf_counter() - t
    engine = Engine.open(f"sqlite:///{home / 'sartor.db'}", settings=_settings(home))
    try:
        ws = engine.create_workspace("retail", consent_mode="opt_out").workspace.id
        t = time.perf_counter()
        stored = 0
        refused: list[dict[str, Any]] = []
        for start in range(0, len(messages), 1000):
            result = engine.ingest(
                ws, messages[start : start + 1000], max_event_bytes=IMPORT_EVENT_BYTES
            )
            refused += result.errors
            stored += result.stored
        ingest = time.perf_counter() - t
        t = time.perf_counter()
        engine.updater.replay()
        fold = time.perf_counter() - t
        reference = int(datetime(2011, 12, 10, tzinfo=UTC).timestamp() * 1000)
        t = time.perf_counter()
        rfm = engine.segments.run_rfm(ws, reference)
        rfm_seconds = time.perf_counter() - t
        t = time.perf_counter()
        run = cl.run_clustering(engine, ws, now=reference, identified_only=True)
        cluster_seconds = time.perf_counter() - t
        everyone = cl.profile_features(engine, ws, reference)
        all_model = cl.Clusterer(random_state=0).fit(everyone)
    finally:
        engine.close()
    assert run is not None
    return {
        "messages": len(messages),
        "stored": stored,
        "refused": len(refused),
        "refused_reasons": sorted({e["message"] for e in refused}),
        "convert_seconds": round(convert, 1),
        "ingest_seconds": round(ingest, 1),
        "fold_seconds": round(fold, 1),
        "rfm_seconds": round(rfm_seconds, 2),
        "rfm_groups": dict(sorted(rfm.items(), key=lambda kv: -kv[1])),
        "rfm_customers": sum(rfm.values()),
        "cluster_seconds": round(cluster_seconds, 2),
        "cluster_profiles": run["nProfiles"],
        "cluster_metrics": {
            k: run["metrics"][k]
            for k in ("n_clusters", "silhouette", "davies_bouldin", "calinski_harabasz")
        },
        "cluster_k_scores": run["metrics"]["k_scores"],
        "clusters": [
            {
                "key": c["key"],
                "size": c["size"],
                "median": {
                    k: c["centroid"]["median"][k]
                    for k in ("recency_days", "frequency", "monetary", "average_order_value")
                },
            }
            for c in sorted(run["clusters"], key=lambda c: -c["size"])
        ],
        "all_profiles": {
            "profiles": len(everyone),
            "n_clusters": all_model.n_clusters_,
            **{
                k: all_model.metrics_[k]
                for k in ("silhouette", "davies_bouldin", "calinski_harabasz")
            },
        },
    }


# -- report ------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def report(results: dict[str, Any]) -> None:
    lines: list[tuple[str, str, str]] = []
    c = results.get("cluster")
    if c:
        best = min(c["runs"], key=lambda r: abs(r["seconds"] - c["median_seconds"]))
        lines += [
            ("cluster", "rows x features", f"{c['rows']:,} x {c['features']}"),
            ("cluster", "MiniBatchKMeans auto-k, median s", f"{c['median_seconds']} (target < 60)"),
            ("cluster", "runs (s)", ", ".join(str(r["seconds"]) for r in c["runs"])),
            ("cluster", "phases (s)", json.dumps(best["timings"])),
            ("cluster", "k / PCA components", f"{best['k']} / {best['pca_components']}"),
            ("cluster", "silhouette (sample)", _fmt(best["silhouette"])),
            ("cluster", "Davies-Bouldin", _fmt(best["davies_bouldin"])),
            ("cluster", "Calinski-Harabasz", _fmt(best["calinski_harabasz"])),
            ("cluster", "ARI vs planted", _fmt(best["ari_vs_planted"])),
        ]
    r = results.get("rules")
    if r:
        lines += [
            ("rules", "profiles x rounds", f"{r['profiles']:,} x {r['rounds']}"),
            (
                "rules",
                f"{r['conditions']}-condition rule, evals/s",
                f"{r['evaluations_per_second']:,} (min {r['min_per_second']:,}; target >= 50,000)",
            ),
            ("rules", "matched", f"{r['matched']:,}"),
            ("rules", "folds.view build, profiles/s", f"{r['view_build_per_second']:,}"),
        ]
    b = results.get("backfill")
    if b:
        lines += [
            ("backfill", "profiles stored (SQLite)", f"{b['profiles']:,} ({b['database_mb']} MB)"),
            (
                "backfill",
                "bulk insert s (rows/s)",
                f"{b['insert_seconds']} ({b['insert_per_second']:,})",
            ),
            ("backfill", "segments.save back-fill s", str(b["backfill_seconds"])),
            ("backfill", "profiles/s", f"{b['profiles_per_second']:,}"),
            (
                "backfill",
                "members (Segment Entered logged)",
                f"{b['members']:,} ({b['logged_segment_entered']})",
            ),
        ]
    d = results.get("retail")
    if d:
        lines += [
            (
                "retail",
                "messages / stored / refused",
                f"{d['messages']:,} / {d['stored']:,} / {d['refused']}"
                + (f" ({'; '.join(d['refused_reasons'])})" if d["refused"] else ""),
            ),
            (
                "retail",
                "ingest / fold / RFM s",
                f"{d['ingest_seconds']} / {d['fold_seconds']} / {d['rfm_seconds']}",
            ),
            ("retail", "RFM customers", f"{d['rfm_customers']:,}"),
        ]
        lines += [("retail", f"  rfm:{g}", f"{n:,}") for g, n in d["rfm_groups"].items()]
        m = d["cluster_metrics"]
        lines += [
            (
                "retail",
                "clustered customers / s",
                f"{d['cluster_profiles']:,} / {d['cluster_seconds']}",
            ),
            (
                "retail",
                "k, silhouette, DB, CH",
                f"{m['n_clusters']}, {_fmt(m['silhouette'])}, {_fmt(m['davies_bouldin'])}, "
                f"{_fmt(m['calinski_harabasz'])}",
            ),
        ]
        lines += [
            ("retail", f"  {c['key']}", f"{c['size']:,}  median {json.dumps(c['median'])}")
            for c in d["clusters"]
        ]
        a = d["all_profiles"]
        lines.append(
            (
                "retail",
                "all profiles (incl. guests): n, k, sil, DB, CH",
                f"{a['profiles']:,}, {a['n_clusters']}, {_fmt(a['silhouette'])}, "
                f"{_fmt(a['davies_bouldin'])}, {_fmt(a['calinski_harabasz'])}",
            )
        )
    w0 = max(len(x[0]) for x in lines) if lines else 0
    w1 = max(len(x[1]) for x in lines) if lines else 0
    print()
    print(f"{'bench':<{w0}}  {'measure':<{w1}}  value")
    print(f"{'-' * w0}  {'-' * w1}  {'-' * 20}")
    for a_, b_, c_ in lines:
        print(f"{a_:<{w0}}  {b_:<{w1}}  {c_}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="cluster,rules,backfill,retail")
    ap.add_argument("--cluster-rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="clustering fits (median reported)")
    ap.add_argument("--rule-profiles", type=int, default=100_000)
    ap.add_argument("--rule-rounds", type=int, default=5)
    ap.add_argument("--backfill-profiles", type=int, default=1_000_000)
    ap.add_argument("--retail", type=Path, default=RETAIL)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary databases")
    args = ap.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "numpy": np.__version__,
        }
    }
    tmp = Path(tempfile.mkdtemp(prefix="sartor-bench-segments-"))
    try:
        if "cluster" in only:
            print(f"cluster: {args.cluster_rows:,} rows, {args.runs} run(s)", flush=True)
            results["cluster"] = bench_cluster(args.cluster_rows, args.runs)
        if "rules" in only:
            print(f"rules: {args.rule_profiles:,} profiles", flush=True)
            results["rules"] = bench_rules(args.rule_profiles, args.rule_rounds)
        if "backfill" in only:
            print(f"backfill: {args.backfill_profiles:,} profiles", flush=True)
            results["backfill"] = bench_backfill(args.backfill_profiles, tmp)
        if "retail" in only:
            print("retail: Online Retail (UCI)", flush=True)
            retail = bench_retail(args.retail, tmp)
            if retail is not None:
                results["retail"] = retail
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_average_after"] = (
        os.getloadavg() if hasattr(os, "getloadavg") else None
    )
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
