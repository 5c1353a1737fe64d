"""File import throughput: ``sartor import events`` on UCI Online Retail vs a raw SQLite insert.

    .venv/bin/python bench/import.py [--runs 3] [--file PATH] [--fold] [--json out.json]

Each run, on the same machine state:

* **sartor import events**: the ``sartor`` command as a user runs it, in a subprocess, on a
  fresh SQLite file (``sartor --home TMP import events FILE -w retail --preset
  online-retail --json --no-fold``; the workspace is created first, outside the timing).
  The gzipped file is read, grouped into one order event per invoice (plus an ``identify``
  per customer), validated, deduplicated, identity-resolved and stored, and the catalog
  learns the products. Reported: source lines per second of the import as its own summary
  measures it, and of the whole command (process start, schema migration, import).
  ``--fold`` also brings the profiles up to date at the end (reported apart, not in the
  rates). Without ``--fold``, lines per CPU-second of the whole command are shown too: on a
  shared machine, CPU time is disturbed much less than the wall clock.
* **in-process**: the same import through ``sartor.importers.run_import`` in the benchmark's
  own process, with its CPU time (no interpreter start-up or migration).
* **raw SQLite**: the same lines read from the same gzipped CSV with the ``csv`` module and
  inserted with ``executemany`` into a plain 8-column table of a fresh SQLite file (WAL,
  ``synchronous=FULL`` as Sartor ships), in batches of 10,000, one transaction: the floor
  of what reading and storing these lines costs, with no mapping, validation or indexes.

Target: >= 50,000 lines/s for the import. Medians (min .. max) over ``--runs``. The cores
used by other processes during each phase are shown: this box has 2 cores and may be shared.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RETAIL = (
    ROOT.parent / "shared" / "data" / "online-retail" / "online_retail_2010-12-01_2011-12-09.csv.gz"
)
SARTOR = [sys.executable, "-c", "from sartor.cli import main; main()"]
TARGET = 50_000.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Load:
    """Cores used by everything but this benchmark (and its subprocesses) during a phase."""

    def __enter__(self) -> Load:
        self.t0 = time.monotonic()
        self.busy0 = _busy_seconds()
        self.mine0 = _own_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.t0
        busy = _busy_seconds() - self.busy0
        mine = _own_seconds() - self.mine0
        self.other = max(0.0, (busy - mine) / wall) if wall > 0 else 0.0


def _busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def sartor_import(path: Path, tmp: Path, fold: bool) -> dict[str, Any]:
    home = tmp / f"sartor-{time.monotonic_ns()}"
    env = {**os.environ, "SARTOR_ENV": "dev", "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(
        [*SARTOR, "--home", str(home), "workspace", "create", "retail"],
        check=True,
        env=env,
        capture_output=True,
    )
    cmd = [
        *SARTOR,
        "--home",
        str(home),
        "import",
        "events",
        str(path),
        "-w",
        "retail",
        "--preset",
        "online-retail",
        "--json",
        "--rejects",
        str(home / "rejects.jsonl"),
        "--fold" if fold else "--no-fold",
    ]
    with Load() as load:
        cpu0 = _children_cpu()
        started = time.perf_counter()
        done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        cpu = _children_cpu() - cpu0
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    fold_seconds = summary.get("fold_seconds", 0.0)
    return {
        "lines": summary["read"],
        "events": summary["imported"],
        "rejected": summary["rejected"],
        "import_seconds": summary["seconds"],
        "import_rate": summary["read"] / summary["seconds"],
        "command_seconds": wall - fold_seconds,
        "command_rate": summary["read"] / (wall - fold_seconds),
        "command_cpu_seconds": cpu,
        "lines_per_cpu_second": summary["read"] / cpu if not fold else None,
        "fold_seconds": fold_seconds,
        "profiles_folded": summary.get("profiles_folded"),
        "db_bytes": sum(f.stat().st_size for f in home.glob("*.db*")),
        "other_load": load.other,
    }


def inprocess_import(path: Path, tmp: Path) -> dict[str, Any]:
    """The same import through ``run_import`` in this process: no interpreter start-up or
    migration in the timing, and the CPU time of the import alone."""
    sys.path.insert(0, str(ROOT / "src"))
    from sartor.config import Settings
    from sartor.engine import Engine
    from sartor.importers import run_import

    home = tmp / f"inproc-{time.monotonic_ns()}"
    settings = Settings(env="dev", home=home)
    with Engine.open(settings=settings) as engine:
        ws = engine.create_workspace("retail").workspace
        with Load() as load:
            cpu0 = time.process_time()
            summary = run_import(
                engine, ws, path, "events", preset="online-retail", rejects_path=None
            )
            cpu = time.process_time() - cpu0
    return {
        "lines": summary.read,
        "seconds": summary.seconds,
        "rate": summary.read / summary.seconds,
        "cpu_seconds": cpu,
        "lines_per_cpu_second": summary.read / cpu,
        "other_load": load.other,
    }


def raw_insert(path: Path, tmp: Path) -> dict[str, Any]:
    db = tmp / f"raw-{time.monotonic_ns()}.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE lines (invoice TEXT, stock_code TEXT, description TEXT, quantity TEXT,"
        " invoice_date TEXT, unit_price TEXT, customer TEXT, country TEXT)"
    )
    with Load() as load:
        cpu0 = os.times()
        started = time.perf_counter()
        n = 0
        with gzip.open(path, "rb") as raw:
            reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            next(reader)
            conn.execute("BEGIN")
            batch: list[list[str]] = []
            for row in reader:
                batch.append(row)
                if len(batch) >= 10_000:
                    conn.executemany("INSERT INTO lines VALUES (?,?,?,?,?,?,?,?)", batch)
                    n += len(batch)
                    batch = []
            conn.executemany("INSERT INTO lines VALUES (?,?,?,?,?,?,?,?)", batch)
            n += len(batch)
            conn.execute("COMMIT")
        seconds = time.perf_counter() - started
        cpu1 = os.times()
    conn.close()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {
        "lines": n,
        "seconds": seconds,
        "rate": n / seconds,
        "lines_per_cpu_second": n / cpu,
        "other_load": load.other,
    }


def med(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--file", type=Path, default=RETAIL, help="the Online Retail CSV (gzipped)")
    ap.add_argument("--fold", action="store_true", help="also fold the profiles (timed apart)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if not args.file.exists():
        print(f"{args.file} not found: this benchmark needs the UCI Online Retail file")
        return 2

    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sartor-bench-import-") as tmp_name:
        tmp = Path(tmp_name)
        for i in range(args.runs):
            sartor = sartor_import(args.file, tmp, args.fold)
            inproc = inprocess_import(args.file, tmp)
            raw = raw_insert(args.file, tmp)
            runs.append(
                {
                    "sartor": sartor,
                    "inprocess": inproc,
                    "raw": raw,
                    "ratio": sartor["import_rate"] / raw["rate"],
                }
            )
            print(
                f"run {i + 1}: import {sartor['import_rate']:,.0f} lines/s "
                f"({sartor['import_seconds']:.2f} s, {sartor['events']:,} events), command "
                f"{sartor['command_rate']:,.0f} lines/s, in-process {inproc['rate']:,.0f} "
                f"lines/s, raw {raw['rate']:,.0f} lines/s, other load "
                f"{sartor['other_load']:.2f} / {inproc['other_load']:.2f} / "
                f"{raw['other_load']:.2f} cores",
                flush=True,
            )
    elapsed = time.monotonic() - started

    first = runs[0]["sartor"]
    print()
    print(
        f"Sartor import: UCI Online Retail, {first['lines']:,} lines -> {first['events']:,} "
        f"events ({first['rejected']} refused), {args.runs} runs, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(f"{'measure':<46} {'median':>10} {'(min .. max)':>24}  {'unit':<8} target")
    table = [
        ("sartor import events (summary)", [r["sartor"]["import_rate"] for r in runs], "lines/s"),
        (
            "sartor import events (whole command)",
            [r["sartor"]["command_rate"] for r in runs],
            "lines/s",
        ),
        ("run_import in-process", [r["inprocess"]["rate"] for r in runs], "lines/s"),
        (
            "run_import in-process, lines per CPU-second",
            [r["inprocess"]["lines_per_cpu_second"] for r in runs],
            "lines/s",
        ),
        ("raw SQLite: csv -> executemany", [r["raw"]["rate"] for r in runs], "lines/s"),
        (
            "raw SQLite, lines per CPU-second",
            [r["raw"]["lines_per_cpu_second"] for r in runs],
            "lines/s",
        ),
        ("import / raw", [r["ratio"] for r in runs], "x"),
    ]
    if not args.fold:
        # CPU time is what the other processes on a shared machine disturb least.
        table.insert(
            2,
            (
                "sartor import events, lines per CPU-second",
                [r["sartor"]["lines_per_cpu_second"] for r in runs],
                "lines/s",
            ),
        )
    for label, values, unit in table:
        m, lo, hi = med(values)
        spec = ".2f" if unit == "x" else ",.0f"
        target = ""
        if label.endswith("(summary)"):
            target = f">= {TARGET:,.0f} " + ("met" if m >= TARGET else "NOT met")
        rng = f"({lo:{spec}} .. {hi:{spec}})"
        print(f"{label:<46} {m:>10{spec}} {rng:>24}  {unit:<8} {target}")
    if args.fold:
        m, lo, hi = med([r["sartor"]["fold_seconds"] for r in runs])
        print(
            f"{'profile fold after the import':<46} {m:>10.2f} {f'({lo:.2f} .. {hi:.2f})':>24}"
            f"  s        ({first['profiles_folded']:,} profiles)"
        )
    other = [r[k]["other_load"] for r in runs for k in ("sartor", "inprocess", "raw")]
    print(
        f"load from other processes during the runs: {min(other):.2f} .. {max(other):.2f} cores"
        + ("  (shared machine: numbers are depressed)" if max(other) > 0.2 else "")
    )
    print(f"total time {elapsed:.0f} s")
    if args.json:
        doc = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "seconds": elapsed,
            "runs": runs,
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
