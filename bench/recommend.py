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

* **http** (``--http`` runs only this one): a 10,000-item shop (``--items``) with
  ``--http-users`` shoppers and about 20 product events each, loaded and trained in a
  temporary ``SARTOR_HOME``; the whole serving path timed in-process; then ``sartor serve``
  as a subprocess, driven at a constant ``--http-rate`` (500) requests/s for
  ``--http-seconds`` (20) by an asyncio client in another process (80% a shopper's home
  page, 10% a product page, 10% a first-time visitor; k=10), once without and once with
  the list cache (``--http-cache``). p50/p90/p99 from the moment each request was due,
  the achieved rate, and the server's CPU time per request. Target: p99 < 15 ms.

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


# -- (3) over HTTP: `sartor serve` at a constant request rate ------------------------------------

HTTP_WORDS = (
    "classic soft bright compact deluxe eco smart vintage urban travel premium light heavy "
    "mini pro wireless wooden steel cotton leather glass ceramic organic silk"
).split()


def shop_catalog(items: int, seed: int = 0) -> list[dict[str, Any]]:
    """``items`` products in 10 departments x 10 categories, 50 brands, log-normal prices,
    3% out of stock."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(items):
        dept, cat = int(rng.integers(10)), int(rng.integers(10))
        words = " ".join(HTTP_WORDS[int(w)] for w in rng.integers(len(HTTP_WORDS), size=3))
        out.append(
            {
                "id": f"sku-{i}",
                "title": f"{words} item {i}",
                "category": f"Dept {dept} > Cat {dept}-{cat}",
                "brand": f"Brand {int(rng.integers(50))}",
                "price": round(float(rng.lognormal(3.5, 0.6)), 2),
                "currency": "EUR",
                "inStock": bool(rng.random() > 0.03),
                "tags": [HTTP_WORDS[int(rng.integers(len(HTTP_WORDS)))]],
            }
        )
    return out


def shop_events(
    catalog: list[dict[str, Any]], users: int, per_user: int, now: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Segment events of ``users`` shoppers with ``per_user`` product views on average (80%
    in one or two favourite categories, popular items more often), cart adds (15%) and
    orders, over the last 60 days."""
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[str]] = {}
    for item in catalog:
        by_cat.setdefault(item["category"], []).append(item["id"])
    cats = sorted(by_cat)
    all_ids = [item["id"] for item in catalog]
    day = 86_400_000
    out: list[dict[str, Any]] = []
    for u in range(users):
        favourites = [cats[int(c)] for c in rng.integers(len(cats), size=int(rng.integers(1, 3)))]
        start = now - int(rng.integers(1, 60)) * day
        for e in range(max(2, int(rng.poisson(per_user)))):
            if rng.random() < 0.8:
                pool = by_cat[favourites[int(rng.integers(len(favourites)))]]
                item = pool[min(int(rng.zipf(1.6)) - 1, len(pool) - 1)]
            else:
                item = all_ids[min(int(rng.zipf(1.3)) - 1, len(all_ids) - 1)]
            ts = start + e * 60_000
            event = "Product Added" if rng.random() < 0.15 else "Product Viewed"
            base = {"type": "track", "userId": f"user-{u}", "timestamp": ts}
            out.append(
                {
                    **base,
                    "event": event,
                    "properties": {"product_id": item},
                    "messageId": f"b{u}-{e}",
                }
            )
            if event == "Product Added" and rng.random() < 0.4:
                out.append(
                    {
                        **base,
                        "event": "Order Completed",
                        "properties": {"order_id": f"o{u}-{e}", "products": [{"product_id": item}]},
                        "timestamp": ts + 30_000,
                        "messageId": f"o{u}-{e}",
                    }
                )
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive_async(
    port: int, key: str, paths: list[tuple[str, str]], rate: float, seconds: float, conns: int
) -> dict[str, Any]:
    """Send ``rate`` requests per second for ``seconds`` (open loop: request ``i`` is due at
    ``i / rate`` whatever happened before) over ``conns`` keep-alive connections, with a
    minimal HTTP/1.1 client (a full client costs the 2-core box more CPU than the server).
    Latency runs from the moment a request was due, so a slow server is not hidden by the
    client waiting for it."""
    import asyncio

    loop = asyncio.get_running_loop()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    header = f"Host: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    latencies: dict[str, list[float]] = {}
    statuses: dict[int, int] = {}
    errors = 0

    async def one(kind: str, path: str, due: float) -> None:
        nonlocal errors
        reader, writer = await pool.get()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\n".encode() + header)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.setdefault(kind, []).append(loop.time() - due)
            statuses[status] = statuses.get(status, 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            writer.close()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                pass  # the server is gone: the next request on this slot fails fast too
        finally:
            pool.put_nowait((reader, writer))

    n = int(rate * seconds)
    start = loop.time() + 0.1
    tasks = []
    for i in range(n):
        due = start + i / rate
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        kind, path = paths[i % len(paths)]
        tasks.append(asyncio.ensure_future(one(kind, path, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    while not pool.empty():
        pool.get_nowait()[1].close()
    return {"latencies": latencies, "statuses": statuses, "errors": errors, "elapsed": elapsed}


def _drive(
    port: int, key: str, paths: list[tuple[str, str]], rate: float, seconds: float, conns: int
) -> dict[str, Any]:
    import asyncio

    return asyncio.run(_drive_async(port, key, paths, rate, seconds, conns))


def _request_mix(n: int, users: int, items: int, k: int, seed: int = 1) -> list[tuple[str, str]]:
    """80% a known shopper's home page, 10% a product page, 10% a first-time visitor."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.8:
            out.append(("home", f"/v1/recommendations?user=user-{int(rng.integers(users))}&k={k}"))
        elif r < 0.9:
            item = int(rng.integers(items))
            out.append(("product", f"/v1/recommendations?slot=product&item=sku-{item}&k={k}"))
        else:
            out.append(("new visitor", f"/v1/recommendations?user=visitor-{i}&k={k}"))
    return out


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 2) if values else 0.0


def _serve_and_drive(
    args: argparse.Namespace, home: Path, key: str, cache_seconds: float
) -> dict[str, Any]:
    import multiprocessing
    import subprocess
    import urllib.request

    port = _free_port()
    env = {
        **os.environ,
        "SARTOR_HOME": str(home),
        "SARTOR_ENV": "test",
        "SARTOR_SECRET_KEY": "bench-secret-key-0123456789",
        "SARTOR_LOG_LEVEL": "WARNING",
        "SARTOR_RATE_LIMIT_EVENTS_PER_SECOND": "0",
        "SARTOR_REC_RETRAIN_HOURS": "0",
        "SARTOR_REC_CACHE_SECONDS": str(cache_seconds),
    }
    log_file = (home / f"serve-cache-{cache_seconds:g}.log").open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "sartor.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"sartor serve did not start; see {log_file.name}") from None
                time.sleep(0.2)
        users, items = args.http_users, args.items
        mix = _request_mix(int(args.http_rate * args.http_seconds), users, items, args.k)
        warm = _request_mix(int(args.http_rate * 3), users, items, args.k, seed=2)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:  # the client: its own process, its own core time
            log(f"http: warm-up, cache {cache_seconds:g} s")
            pool.apply(_drive, (port, key, warm, args.http_rate, 3.0, args.http_connections))
            cpu = _cpu_seconds(server.pid)
            log(f"http: {args.http_rate:g} requests/s for {args.http_seconds:g} s")
            run = pool.apply(
                _drive,
                (port, key, mix, args.http_rate, args.http_seconds, args.http_connections),
            )
            server_cpu = _cpu_seconds(server.pid) - cpu
    finally:
        server.terminate()
        server.wait(timeout=30)
        log_file.close()
    every = [v for values in run["latencies"].values() for v in values]
    done = len(every)
    out: dict[str, Any] = {
        "cache_seconds": cache_seconds,
        "requests": len(mix),
        "completed": done,
        "errors": run["errors"],
        "statuses": {str(s): n for s, n in sorted(run["statuses"].items())},
        "achieved_rate": round(done / run["elapsed"], 1),
        "p50_ms": _ms(every, 50),
        "p90_ms": _ms(every, 90),
        "p99_ms": _ms(every, 99),
        "max_ms": _ms(every, 100),
        "server_cpu_ms_per_request": round(server_cpu / max(done, 1) * 1000, 3),
        "by_kind": {
            kind: {"n": len(v), "p50_ms": _ms(v, 50), "p99_ms": _ms(v, 99)}
            for kind, v in sorted(run["latencies"].items())
        },
    }
    log(
        f"http cache {cache_seconds:g}s: p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, "
        f"{out['achieved_rate']} requests/s, server CPU {out['server_cpu_ms_per_request']} ms "
        "per request"
    )
    return out


def _cpu_share(seconds: float = 2.0) -> float:
    """The share of one core a busy loop gets: 1.0 on an idle machine; less when other
    processes compete (on a shared 2-core box the server's capacity scales with it)."""
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        pass
    return round((time.process_time() - cpu) / (time.perf_counter() - wall), 2)


def _in_process(engine: Any, ws: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The whole serving path (``engine.recs.recommend``: lookups, history, models, filters,
    blend, MMR, reasons) without HTTP and without the list cache, as ``sartor serve`` runs
    it (BLAS on one thread), on the same request mix."""
    engine.settings.rec_cache_seconds = 0
    mix = _request_mix(1500, args.http_users, args.items, args.k, seed=3)
    times: dict[str, list[float]] = {}
    with threadpool_limits(1, "blas"):
        for _, path in mix[:100]:  # warm-up: models loaded, catalog aligned
            engine.recs.recommend(ws, **_query_kwargs(path))
        for kind, path in mix:
            kwargs = _query_kwargs(path)
            t = time.perf_counter()
            engine.recs.recommend(ws, **kwargs)
            times.setdefault(kind, []).append(time.perf_counter() - t)
    out = {
        kind: {"n": len(v), "p50_ms": _ms(v, 50), "p99_ms": _ms(v, 99)} for kind, v in times.items()
    }
    log(f"http: in-process {out}")
    return out


def _query_kwargs(path: str) -> dict[str, Any]:
    from urllib.parse import parse_qsl, urlsplit

    q = dict(parse_qsl(urlsplit(path).query))
    kwargs: dict[str, Any] = {"k": int(q.pop("k", "10"))}
    for name in ("user", "item", "slot"):
        if name in q:
            kwargs[name] = q[name]
    return kwargs


def bench_http(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    """A shop in a temporary SARTOR_HOME (``--items`` catalog, ``--http-users`` shoppers with
    about 20 product events each), trained with the default slots; then ``sartor serve``
    in a subprocess, driven at ``--http-rate`` requests/s for ``--http-seconds`` by a client
    in another process: once with the list cache, once without (``--http-cache``)."""
    import shutil
    import tempfile

    from sartor.config import Settings
    from sartor.engine import Engine

    home = Path(tempfile.mkdtemp(prefix="sartor-bench-http-"))
    settings = Settings(
        env="test",
        home=home,
        secret_key="bench-secret-key-0123456789",
        rate_limit_events_per_second=0,
        log_json=False,
    )
    out: dict[str, Any] = {
        "items": args.items,
        "users": args.http_users,
        "k": args.k,
        "rate": args.http_rate,
        "seconds": args.http_seconds,
        "connections": args.http_connections,
        "target_p99_ms": 15.0,
        "runs": [],
    }
    try:
        with Engine.open(settings=settings) as engine:
            created = engine.create_workspace("bench")
            ws = engine.update_workspace_settings(created.workspace, {"holdout_share": 0})
            catalog = shop_catalog(args.items)
            t = time.perf_counter()
            for i in range(0, len(catalog), 1000):
                engine.catalog.upsert(ws.id, catalog[i : i + 1000])
            events = shop_events(catalog, args.http_users, 20, int(time.time() * 1000))
            for i in range(0, len(events), 2500):
                engine.batch(ws, {"batch": events[i : i + 2500]})
            engine.updater.replay()  # profiles folded before the server starts
            out["events"] = len(events)
            out["load_seconds"] = round(time.perf_counter() - t, 1)
            log(f"http: {args.items:,} items, {len(events):,} events in {out['load_seconds']} s")
            t = time.perf_counter()
            out["trained"] = engine.train(ws)
            out["train_seconds"] = round(time.perf_counter() - t, 1)
            log(f"http: trained in {out['train_seconds']} s")
            key = created.keys["read"]
            out["in_process"] = _in_process(engine, ws, args)
        out["cpu_share"] = _cpu_share()
        log(f"http: a busy loop gets {out['cpu_share']:.0%} of a core on this machine now")
        modes = {"on": [300.0], "off": [0.0], "both": [0.0, 300.0]}[args.http_cache]
        for cache_seconds in modes:
            out["runs"].append(_serve_and_drive(args, home, key, cache_seconds))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return out


SECTIONS: dict[str, Callable[[argparse.Namespace, Data], dict[str, Any]]] = {
    "als-train": bench_als_train,
    "latency": bench_latency,
    "http": bench_http,
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


def report_http(results: dict[str, Any]) -> None:
    r = results.get("http")
    if not r:
        return
    print()
    print(
        f"Over HTTP: sartor serve, {r['items']:,} items, {r['users']:,} shoppers "
        f"({r.get('events', 0):,} events), k={r['k']}, {r['rate']:g} requests/s for "
        f"{r['seconds']:g} s over {r['connections']} connections (ms; target p99 < "
        f"{r['target_p99_ms']:g})"
    )
    print(
        f"{'list cache':<11} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8} {'req/s':>7} "
        f"{'errors':>6} {'server CPU ms/req':>18}  by kind (p50 / p99)"
    )
    if "cpu_share" in r:
        print(f"(a busy loop got {r['cpu_share']:.0%} of a core before the runs)")
    inproc = r.get("in_process") or {}
    if inproc:
        kinds = ", ".join(f"{k} {v['p50_ms']} / {v['p99_ms']}" for k, v in sorted(inproc.items()))
        print(f"in process, no cache (p50 / p99 ms): {kinds}")
    for run in r["runs"]:
        kinds = ", ".join(
            f"{kind} {v['p50_ms']} / {v['p99_ms']}" for kind, v in run["by_kind"].items()
        )
        cache = "off" if not run["cache_seconds"] else f"{run['cache_seconds']:g} s"
        print(
            f"{cache:<11} {run['p50_ms']:>7.2f} {run['p90_ms']:>7.2f} {run['p99_ms']:>7.2f} "
            f"{run['max_ms']:>8.2f} {run['achieved_rate']:>7.1f} {run['errors']:>6} "
            f"{run['server_cpu_ms_per_request']:>18.3f}  {kinds}"
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
    ap.add_argument("--http", action="store_true", help="only the http section")
    ap.add_argument("--http-rate", type=float, default=500.0, help="http: requests per second")
    ap.add_argument("--http-seconds", type=float, default=20.0, help="http: measured seconds")
    ap.add_argument("--http-users", type=int, default=5_000, help="http: shoppers")
    ap.add_argument("--http-connections", type=int, default=32, help="http: keep-alive conns")
    ap.add_argument(
        "--http-cache", choices=("on", "off", "both"), default="both", help="http: list cache"
    )
    args = ap.parse_args()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.http:
        wanted = ["http"]
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
    report_http(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
