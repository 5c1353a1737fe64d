"""Ingestion throughput: HTTP ``POST /v1/batch`` of a real ``sartor serve`` vs raw SQLite.

    .venv/bin/python bench/ingest.py [--backend sqlite|postgresql|both] [--runs 5]
                                     [--events 100000] [--clients 8] [--json out.json]

In one process run, for each backend:

* **HTTP**: a ``sartor serve`` subprocess (SQLite file in a temp dir, or a fresh PostgreSQL
  database that is dropped afterwards) receives pre-serialized Segment batches of
  ``--batch`` (100) realistic e-commerce events from ``--clients`` threads of this process,
  each on its own keep-alive connection. After a warm-up, ``--events`` events are timed in
  all, split evenly over the ``--runs`` runs;
  every response must be a 200 that stored its whole batch, and the stored row count must
  equal what was sent.
* **Raw SQLite reference** (SQLite only): the rows the server just stored (read back from its
  file, so they are exactly the tuples it wrote) are inserted with the ``sqlite3`` module into
  a fresh file with the same schema (made by ``make_engine`` + ``migrate``) and pragmas (WAL,
  the server's ``synchronous``), committed every ``--batch`` rows (one request's worth, the
  durability unit of the API), and, as an upper bound, in one single transaction.

Each run is HTTP then raw, so the ratio HTTP / raw is computed on the same machine state.
The median (min, max) of the runs is reported.

The server folds profiles after each commit in a child process, as ``sartor serve`` ships
(``--profiles process``; its CPU counts as the server's); ``--profiles thread`` folds on a
thread of the server process (``SARTOR_FOLD_PROCESS=false``); ``--profiles redis`` hands
that to Redis Streams instead (no worker runs; the stream is deleted afterwards), which
measures ingestion alone. Before each timed run and before the raw inserts the bench waits
for the server's background work to finish, so neither overlaps the other.

The machine may be shared: for each run the bench reports the cores used by the server, by
PostgreSQL's backends, by itself and by every other process, and the server's CPU time per
event, which other processes' load disturbs much less than the rate: during the run, and
with the background work the events cause (profile folding) that finishes after it.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import platform
import random
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sartor.config import Settings  # noqa: E402
from sartor.engine import Engine  # noqa: E402
from sartor.storage.db import make_engine, migrate  # noqa: E402

PG_ADMIN_URL = os.environ.get(
    "SARTOR_BENCH_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432"
)
SECRET = "bench-secret-key-0123456789"
# The server also writes events of its own (Segment Entered/Exited): count only ours.
MESSAGE_ID_PREFIX = "bench-"
ROW_COLUMNS = (
    "workspace_id, message_id, type, event, category, user_id, anonymous_id, profile_id, "
    "timestamp, received_at, payload"
)
RAW_INSERT = (
    f"INSERT INTO events ({ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)


# -- payloads -------------------------------------------------------------------------------

CATEGORIES = ("Shoes", "Shirts", "Jackets", "Bags", "Hats", "Socks", "Watches", "Belts")
BRANDS = ("Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella")
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
)


@dataclass(frozen=True)
class User:
    user_id: str | None
    anonymous_id: str
    ip: str
    agent: str


def make_users(n: int, rng: random.Random) -> list[User]:
    users = []
    for i in range(n):
        identified = rng.random() < 0.6
        users.append(
            User(
                user_id=f"user-{i:05d}" if identified else None,
                anonymous_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                # documentation ranges (RFC 5737): payload data, never contacted
                ip=f"{rng.choice(('192.0.2', '198.51.100', '203.0.113'))}.{rng.randrange(1, 255)}",
                agent=rng.choice(AGENTS),
            )
        )
    return users


def _product(rng: random.Random) -> dict[str, Any]:
    n = rng.randrange(1, 2000)
    cat = CATEGORIES[n % len(CATEGORIES)]
    return {
        "product_id": f"prod-{n:05d}",
        "sku": f"SKU-{n:05d}-{rng.choice('SMLX')}",
        "name": f"{BRANDS[n % len(BRANDS)]} {cat[:-1]} {n}",
        "brand": BRANDS[n % len(BRANDS)],
        "category": cat,
        "price": round(5 + (n % 200) * 0.75, 2),
        "currency": "EUR",
    }


def make_event(rng: random.Random, user: User, when: datetime) -> dict[str, Any]:
    r = rng.random()
    props: dict[str, Any]
    if r < 0.65:
        name = "Product Viewed"
        props = _product(rng)
        props["url"] = f"https://shop.example/p/{props['product_id']}"
        props["image_url"] = f"https://cdn.shop.example/img/{props['product_id']}.jpg"
    elif r < 0.9:
        name = "Product Added"
        props = _product(rng)
        props["quantity"] = rng.randrange(1, 4)
        props["cart_id"] = f"cart-{user.anonymous_id[:8]}"
    else:
        name = "Order Completed"
        products = []
        for _ in range(rng.randrange(1, 5)):
            p = _product(rng)
            p["quantity"] = rng.randrange(1, 3)
            products.append(p)
        subtotal = round(sum(p["price"] * p["quantity"] for p in products), 2)
        props = {
            "order_id": f"order-{rng.getrandbits(48):012x}",
            "affiliation": "web",
            "subtotal": subtotal,
            "shipping": 4.9,
            "tax": round(subtotal * 0.2, 2),
            "discount": 0,
            "total": round(subtotal * 1.2 + 4.9, 2),
            "revenue": subtotal,
            "currency": "EUR",
            "products": products,
        }
    path = f"/p/{props.get('product_id', 'checkout')}"
    msg: dict[str, Any] = {
        "type": "track",
        "event": name,
        "messageId": f"{MESSAGE_ID_PREFIX}{uuid.UUID(int=rng.getrandbits(128), version=4)}",
        "anonymousId": user.anonymous_id,
        "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "properties": props,
        "context": {
            "ip": user.ip,
            "userAgent": user.agent,
            "locale": "en-US",
            "library": {"name": "analytics.js", "version": "5.2.1"},
            "page": {
                "path": path,
                "url": f"https://shop.example{path}",
                "referrer": "https://www.google.com/",
                "title": name,
            },
        },
    }
    if user.user_id is not None:
        msg["userId"] = user.user_id
    return msg


class Payloads:
    """Batches of events, pre-serialized to bytes before any timing."""

    def __init__(self, users: int, batch: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.users = make_users(users, self.rng)
        self.batch = batch
        self.clock = datetime(2026, 11, 1, tzinfo=UTC)

    def bodies(self, events: int) -> list[bytes]:
        out = []
        for _ in range(events // self.batch):
            items = []
            for _ in range(self.batch):
                self.clock += timedelta(milliseconds=self.rng.randrange(1, 50))
                items.append(make_event(self.rng, self.rng.choice(self.users), self.clock))
            sent = self.clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            out.append(orjson.dumps({"batch": items, "sentAt": sent}))
        return out


# -- server ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``python -m sartor.cli serve`` in a subprocess, as tests/server.py runs it."""

    def __init__(
        self, database_url: str, home: Path, env: dict[str, str], src: Path = ROOT / "src"
    ) -> None:
        self.src = src
        self.database_url = database_url
        self.home = home
        self.port = free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "server.log"

    def start(self, timeout: float = 30.0) -> Server:
        env = {
            **os.environ,
            "PYTHONPATH": str(self.src),
            "SARTOR_DATABASE_URL": self.database_url,
            "SARTOR_HOME": str(self.home),
            "SARTOR_ENV": "test",
            "SARTOR_SECRET_KEY": SECRET,
            "SARTOR_RATE_LIMIT_EVENTS_PER_SECOND": "0",
            "SARTOR_LOG_LEVEL": "WARNING",
            **self.env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sartor.cli", "serve", "--port", str(self.port)],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_cpu_seconds() -> float:
    """CPU seconds spent by the whole machine (all cores, not idle or iowait)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user/nice
    return (sum(values[:8]) - idle) / CLK_TCK


def process_cpu_seconds(pid: int) -> float:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started (its profile folding process), and theirs."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *descendants(kid)]
    return found


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds of the server process and of the processes it started."""
    return sum(process_cpu_seconds(p) for p in (pid, *descendants(pid)))


def wait_idle(pid: int, limit: float = 120.0) -> float:
    """Wait until the server's background work (profile folding) is done; seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        before = server_cpu_seconds(pid)
        time.sleep(0.5)
        if server_cpu_seconds(pid) - before < 0.05:
            break
    return time.monotonic() - t0


class CpuMeter:
    """Cores used by the server, by the database server's backends (PostgreSQL), by this load
    generator, and by everything else meanwhile: the machine is shared, and other processes'
    load makes a run slower than it would be."""

    def __init__(self, server_pid: int, db_pids: list[int]) -> None:
        self.pid = server_pid
        self.db_pids = db_pids

    def _db(self) -> float:
        return sum(process_cpu_seconds(p) for p in self.db_pids)

    def __enter__(self) -> CpuMeter:
        self.t0 = time.perf_counter()
        self.busy0 = busy_cpu_seconds()
        self.server0 = server_cpu_seconds(self.pid)
        self.api0 = process_cpu_seconds(self.pid)
        self.db0 = self._db()
        self.self0 = sum(os.times()[:2])
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        busy = busy_cpu_seconds() - self.busy0
        self.server = (server_cpu_seconds(self.pid) - self.server0) / wall
        # the server process itself; the rest of ``server`` is its folding process
        self.api = (process_cpu_seconds(self.pid) - self.api0) / wall
        self.db = (self._db() - self.db0) / wall
        self.client = (sum(os.times()[:2]) - self.self0) / wall
        self.other = max(0.0, busy / wall - self.server - self.db - self.client)


@dataclass
class LoadResult:
    requests: int = 0
    events: int = 0
    seconds: float = 0.0
    non_200: list[tuple[int, bytes]] = field(default_factory=list)
    not_stored: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def send_all(port: int, auth: str, bodies: list[bytes], clients: int, batch: int) -> LoadResult:
    """Send every body from ``clients`` threads, each on one keep-alive connection."""
    headers = {
        "Content-Type": "application/json",
        "Authorization": auth,
        "User-Agent": "sartor-bench/1",
    }
    counter = itertools.count()
    result = LoadResult()
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bad: list[tuple[int, bytes]] = []
        short = 0
        done = 0
        start_gate.wait()
        while True:
            i = next(counter)
            if i >= len(bodies):
                break
            conn.request("POST", "/v1/batch", bodies[i], headers)
            resp = conn.getresponse()
            data = resp.read()
            done += 1
            if resp.status != 200:
                bad.append((resp.status, data[:500]))
            elif orjson.loads(data).get("stored") != batch:
                short += 1
        conn.close()
        with lock:
            result.requests += done
            result.non_200.extend(bad)
            result.not_stored += short

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t0
    result.events = result.requests * batch
    return result


# -- databases --------------------------------------------------------------------------------


def create_pg_database() -> tuple[str, str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"sartor_bench_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(f"{PG_ADMIN_URL}/{name}").render_as_string(hide_password=False)
    return name, url


def pg_backend_pids(name: str) -> list[int]:
    """The PostgreSQL backends serving database ``name`` (the server's pooled connections)."""
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{PG_ADMIN_URL}/postgres")
    with admin.connect() as conn:
        rows = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": name}
        ).all()
    admin.dispose()
    return [int(r[0]) for r in rows]


def drop_pg_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def drop_redis_namespace(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def count_rows(url: str) -> int:
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    with eng.connect() as conn:
        query = f"SELECT count(*) FROM events WHERE message_id LIKE '{MESSAGE_ID_PREFIX}%'"
        n = int(conn.execute(text(query)).scalar_one())
    eng.dispose()
    return n


def stored_rows(path: Path, after_seq: int) -> tuple[list[tuple[Any, ...]], int]:
    """The event rows the server stored after ``after_seq``, as it stored them."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            f"SELECT seq, {ROW_COLUMNS} FROM events WHERE seq > ? AND message_id LIKE ? "
            "ORDER BY seq",
            (after_seq, f"{MESSAGE_ID_PREFIX}%"),
        ).fetchall()
    finally:
        conn.close()
    last = rows[-1][0] if rows else after_seq
    return [r[1:] for r in rows], last


class RawSQLite:
    """The events table in a file of its own, written with the bare sqlite3 module."""

    def __init__(self, path: Path, synchronous: str) -> None:
        eng = make_engine(f"sqlite:///{path}", sqlite_synchronous=synchronous)
        migrate(eng)  # the same schema and indexes as the server's
        eng.dispose()
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            "journal_mode=WAL",
            f"synchronous={synchronous}",
            "busy_timeout=30000",
            "foreign_keys=ON",
        ):
            self.conn.execute(f"PRAGMA {pragma}")

    def insert(self, rows: list[tuple[Any, ...]], per_tx: int) -> float:
        """Insert ``rows``, committing every ``per_tx`` rows; the rows per second."""
        cur = self.conn.cursor()
        t0 = time.perf_counter()
        for i in range(0, len(rows), per_tx):
            cur.execute("BEGIN IMMEDIATE")
            cur.executemany(RAW_INSERT, rows[i : i + per_tx])
            cur.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        return len(rows) / elapsed

    def close(self) -> None:
        self.conn.close()


# -- the benchmark ----------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def uvicorn_stack() -> dict[str, str]:
    """What ``uvicorn.run`` picks with ``http="auto"`` and ``loop="auto"`` here."""
    out = {}
    try:
        import httptools  # noqa: F401

        out["http"] = "httptools"
    except ImportError:
        out["http"] = "h11"
    try:
        import uvloop  # noqa: F401

        out["loop"] = "uvloop"
    except ImportError:
        out["loop"] = "asyncio"
    return out


def bench_backend(backend: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    log = lambda msg: print(f"[{backend}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    home = tmp / backend
    home.mkdir()
    pg_name = None
    redis_ns: str | None = None
    if backend == "sqlite":
        db_path = home / "sartor.db"
        url = f"sqlite:///{db_path}"
    else:
        pg_name, url = create_pg_database()
    settings = Settings(
        env="test",
        home=home,
        secret_key=SECRET,
        rate_limit_events_per_second=0,
        sqlite_synchronous=args.synchronous,
    )
    server: Server | None = None
    raw100: RawSQLite | None = None
    raw1: RawSQLite | None = None
    try:
        with Engine.open(url, settings=settings) as engine:
            key = engine.create_workspace("bench").keys["write"]
        auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        env = {"SARTOR_SQLITE_SYNCHRONOUS": args.synchronous}
        if args.profiles == "thread":
            env["SARTOR_FOLD_PROCESS"] = "false"
        if args.profiles == "redis":
            # Profile folding leaves the server for `sartor worker` processes (none run
            # here): the server only publishes notifications to a stream of its own.
            redis_ns = f"sartor-bench-{secrets.token_hex(4)}"
            env.update(SARTOR_REDIS_URL=args.redis_url, SARTOR_REDIS_NAMESPACE=redis_ns)
        if args.server_env:
            env.update(dict(kv.split("=", 1) for kv in args.server_env))
        server = Server(url, home, env, args.src).start()
        log(f"server on port {server.port}, pid {server.proc.pid if server.proc else '?'}")
        payloads = Payloads(args.users, args.batch, seed=args.seed)
        raw = backend == "sqlite" and not args.no_raw
        if raw:
            raw100 = RawSQLite(home / "raw100.db", args.synchronous)
            raw1 = RawSQLite(home / "raw1.db", args.synchronous)

        sent = 0
        last_seq = 0
        warm = payloads.bodies(args.warmup)
        res = send_all(server.port, auth, warm, args.clients, args.batch)
        if res.non_200 or res.not_stored:
            raise RuntimeError(f"warm-up failed: {res.non_200[:3]} not stored: {res.not_stored}")
        sent += res.events
        log(f"warm-up: {res.events} events, {res.rate:,.0f} events/s")
        if server.proc:
            wait_idle(server.proc.pid)
        if raw and raw100 and raw1:
            rows, last_seq = stored_rows(db_path, last_seq)
            raw100.insert(rows, args.batch)
            raw1.insert(rows, args.batch)

        http_rates: list[float] = []
        raw100_rates: list[float] = []
        raw1_rates: list[float] = []
        ratios: list[float] = []
        problems: list[str] = []
        cpu_use: list[dict[str, float]] = []
        for run in range(args.runs):
            bodies = payloads.bodies(args.per_run)
            if server.proc:
                wait_idle(server.proc.pid)
            db_pids = pg_backend_pids(pg_name) if pg_name else []
            with CpuMeter(server.proc.pid if server.proc else 0, db_pids) as cpu:
                res = send_all(server.port, auth, bodies, args.clients, args.batch)
            # The events' background work (profile folding) goes on after the last answer:
            # wait for it, and count its CPU time too.
            lag = wait_idle(server.proc.pid) if server.proc else 0.0
            with_background = (server_cpu_seconds(cpu.pid) - cpu.server0) / res.events * 1e6
            cpu_use.append(
                {
                    "server": cpu.server,
                    "server_api_process": cpu.api,
                    "database": cpu.db,
                    "client": cpu.client,
                    "other": cpu.other,
                    # CPU time the server spent per event: what optimizations change, and
                    # much less sensitive to other processes than the rate
                    "server_cpu_us_per_event": cpu.server * res.seconds / res.events * 1e6,
                    "server_cpu_us_per_event_with_background": with_background,
                    "background_seconds_after": lag,
                }
            )
            sent += res.events
            if res.requests != len(bodies):
                problems.append(f"run {run}: {res.requests} of {len(bodies)} requests answered")
            if res.non_200:
                problems.append(f"run {run}: {len(res.non_200)} non-200, e.g. {res.non_200[0]}")
            if res.not_stored:
                problems.append(f"run {run}: {res.not_stored} responses did not store all")
            http_rates.append(res.rate)
            line = (
                f"run {run + 1}/{args.runs}: HTTP {res.rate:,.0f} events/s, server CPU "
                f"{cpu.server * res.seconds / res.events * 1e6:.0f} us/event, "
                f"{with_background:.0f} with background work (cores: server "
                f"{cpu.server:.2f} of which API process {cpu.api:.2f}, "
                + (f"database {cpu.db:.2f}, " if pg_name else "")
                + f"client {cpu.client:.2f}, "
                f"other processes {cpu.other:.2f}) (server busy {lag:.1f} s after)"
            )
            if raw and raw100 and raw1:
                rows, last_seq = stored_rows(db_path, last_seq)
                if len(rows) != res.events:
                    problems.append(f"run {run}: {len(rows)} rows stored, {res.events} sent")
                r100 = raw100.insert(rows, args.batch)
                r1 = raw1.insert(rows, len(rows))
                raw100_rates.append(r100)
                raw1_rates.append(r1)
                ratios.append(res.rate / r100)
                line += (
                    f" | raw per-{args.batch} {r100:,.0f} rows/s | raw 1 tx {r1:,.0f} rows/s"
                    f" | ratio {res.rate / r100:.2f}"
                )
            log(line)
        server.stop()
        stored = count_rows(url)
        if stored != sent:
            problems.append(f"stored {stored} rows, sent {sent} events")
        out: dict[str, Any] = {
            "backend": backend,
            "events_sent": sent,
            "rows_stored": stored,
            "ok": not problems,
            "problems": problems,
            "http": summary(http_rates),
            "cpu_cores_during_http": cpu_use,
        }
        if raw:
            out["raw_per_batch"] = summary(raw100_rates)
            out["raw_single_tx"] = summary(raw1_rates)
            out["ratio_of_medians"] = statistics.median(http_rates) / statistics.median(
                raw100_rates
            )
            out["ratio"] = summary(ratios)
        return out
    finally:
        if server:
            server.stop()
        for r in (raw100, raw1):
            if r:
                r.close()
        if pg_name:
            drop_pg_database(pg_name)
        if redis_ns:
            drop_redis_namespace(args.redis_url, redis_ns)


def fmt(s: dict[str, Any], unit: str = "") -> str:
    return f"{s['median']:>10,.0f}{unit}  ({s['min']:,.0f} .. {s['max']:,.0f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--events", type=int, default=100_000, help="timed events per backend, over all runs"
    )
    ap.add_argument("--warmup", type=int, default=10_000, help="events sent before timing")
    ap.add_argument("--clients", type=int, default=8, help="concurrent keep-alive clients")
    ap.add_argument("--batch", type=int, default=100, help="events per request")
    ap.add_argument("--users", type=int, default=4_000, help="distinct visitors")
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    ap.add_argument(
        "--profiles",
        choices=("process", "thread", "redis"),
        default="process",
        help="process: the server folds profiles in a child process, as `sartor serve` "
        "ships; thread: on a thread of its own process; redis: it hands them to Redis "
        "Streams (no worker runs), measuring ingestion alone",
    )
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-raw", action="store_true", help="skip the raw SQLite reference")
    ap.add_argument("--server-env", action="append", help="extra KEY=VALUE for the server")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--src",
        type=Path,
        default=ROOT / "src",
        help="source tree the server runs from (to compare two versions of the code)",
    )
    args = ap.parse_args()
    args.per_run = args.events // args.runs // args.batch * args.batch
    if args.per_run < args.batch or args.warmup % args.batch:
        ap.error("--events must give each run a batch; --warmup must be a multiple of --batch")

    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="sartor-bench-") as tmp:
        for backend in backends:
            results.append(bench_backend(backend, args, Path(tmp)))
    elapsed = time.monotonic() - started

    print()
    print(
        f"Sartor ingestion, {args.runs} runs x {args.per_run:,} events, {args.batch} per request, "
        f"{args.clients} clients, synchronous={args.synchronous}, profiles {args.profiles}, "
        f"{os.cpu_count()} CPUs, "
        f"SQLite {sqlite3.sqlite_version}, uvicorn {uvicorn_stack()}"
    )
    print(f"{'measure':<42} {'median':>10}  (min .. max)")
    ok = True
    for r in results:
        b = r["backend"]
        print(f"{'HTTP /v1/batch ' + b + ' (events/s)':<42} {fmt(r['http'])}")
        if "raw_per_batch" in r:
            label = f"raw sqlite3, commit per {args.batch} rows (rows/s)"
            print(f"{label:<42} {fmt(r['raw_per_batch'])}")
            print(f"{'raw sqlite3, one transaction (rows/s)':<42} {fmt(r['raw_single_tx'])}")
            rt = r["ratio"]
            print(
                f"{'ratio HTTP / raw per-' + str(args.batch):<42} {r['ratio_of_medians']:>10.2f}"
                f"  (per run {rt['min']:.2f} .. {rt['max']:.2f}, median {rt['median']:.2f})"
            )
        other = statistics.mean(c["other"] for c in r["cpu_cores_during_http"])
        server_cores = statistics.mean(c["server"] for c in r["cpu_cores_during_http"])
        api_cores = statistics.mean(c["server_api_process"] for c in r["cpu_cores_during_http"])
        client_cores = statistics.mean(c["client"] for c in r["cpu_cores_during_http"])
        db_cores = statistics.mean(c["database"] for c in r["cpu_cores_during_http"])
        cost = statistics.median(c["server_cpu_us_per_event"] for c in r["cpu_cores_during_http"])
        r["server_cpu_us_per_event"] = cost
        total = statistics.median(
            c["server_cpu_us_per_event_with_background"] for c in r["cpu_cores_during_http"]
        )
        r["server_cpu_us_per_event_with_background"] = total
        print(
            f"  {b}: server CPU {cost:.0f} us/event during the runs, {total:.0f} with the "
            f"background work after them; cores used during HTTP runs: server "
            f"{server_cores:.2f} (API process {api_cores:.2f}, "
            f"folding {server_cores - api_cores:.2f}), "
            + (f"PostgreSQL {db_cores:.2f}, " if b == "postgresql" else "")
            + f"load generator {client_cores:.2f}, other processes {other:.2f}"
            + ("  (machine shared: rates are depressed)" if other > 0.2 else "")
        )
        status = "OK" if r["ok"] else "FAILED: " + "; ".join(r["problems"])
        sent, stored = r["events_sent"], r["rows_stored"]
        print(f"  {b}: {sent:,} events sent, {stored:,} rows stored: {status}")
        ok = ok and r["ok"]
    for r in results:
        if r["backend"] == "sqlite":
            http_rate = r["http"]["median"]
            goals = [f"HTTP >= 20,000 events/s: {'met' if http_rate >= 20_000 else 'NOT met'}"]
            if "ratio_of_medians" in r:
                met = r["ratio_of_medians"] >= 0.5
                goals.append(f"HTTP >= 0.5 x raw: {'met' if met else 'NOT met'}")
            print("targets (SQLite): " + "; ".join(goals))
    print(f"total time {elapsed:.0f} s")
    if args.json:
        doc = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
                "uvicorn": uvicorn_stack(),
            },
            "seconds": elapsed,
            "results": results,
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
