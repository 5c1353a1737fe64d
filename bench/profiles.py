"""Profile folding: throughput, and event-to-profile latency under a sustained load.

    .venv/bin/python bench/profiles.py [--runs 3] [--events 40000] [--users 3000]
        [--workers 2] [--rate 1000] [--seconds 20] [--latency-runs 2] [--history 10000]
        [--only fold,pg-fold,lat-sqlite,lat-serve,lat-pg] [--folds-only] [--json out.json]

Throughput (events folded per second, and CPU microseconds per event), each run on an
identical fresh copy of one log of ``--events`` realistic e-commerce events (views, cart
adds, orders, refunds, pages, identifies with ``$set``/``$set_once``/``$unset``, visitors who
sign in later, some on a second device, which merges profiles):

* **in memory**: ``folds.fold`` over the same events, grouped by profile, no I/O (the ceiling);
* **SQLite, in-process**: events ingested with the background bus off, then
  ``engine.updater.replay()`` timed, as shipped (segment evaluation on every fold batch) and
  with the batch listeners detached (folds only); then ``engine.rebuild()`` on the first copy;
* **PostgreSQL + Redis Streams**: the events are ingested with the notifications parked in a
  side stream and the replay checkpoint at the log head; ``--workers`` ``sartor worker``
  processes are started; the clock starts when the parked notifications are released into
  their stream (the moment the last ingest would have notified them) and stops when a
  ``profile.updated`` (Redis pub/sub) has been seen at every profile's newest event.

Latency: ``--history`` events are stored and folded first (profiles with a past, as in
production; the run starts once their segment transitions are logged and folded too), then
a paced sender offers ``--rate`` events/s (10 events every 10 ms, drawn beforehand and
stamped when sent) for ``--seconds`` (after a 2 s warm-up that is not counted); for each
event, the time from just before it is sent to the first ``profile.updated`` of its profile
whose ``lastSeq`` covers it. The ingest acknowledgement time is shown too (it is part of the
latency), and the CPU time of the benchmark's processes per event offered (on a shared
machine the latency depends on what the others leave; the CPU cost does much less).

* **SQLite, in-process**: ``Engine.ingest`` from a small thread pool, the embedded bus
  folding, observed by a listener on ``engine.updater`` (target p99 < 50 ms); the garbage
  collector is tuned as ``sartor serve`` tunes it; ``--folds-only`` detaches the segment
  evaluation, for diagnosis;
* **SQLite, served** (``lat-serve``): ``POST /v1/batch`` to a ``sartor serve`` subprocess on
  SQLite as it ships (folding in its child process), observed on the WebSocket
  ``/v1/stream`` (target p99 < 50 ms, as in-process); the CPU is shown per process;
* **PostgreSQL + Redis**: ``POST /v1/batch`` to a ``sartor serve`` subprocess, ``--workers``
  ``sartor worker`` processes, observed on the WebSocket ``/v1/stream`` of the API process
  (target p99 < 200 ms); the CPU is shown per process kind (API, workers, the rest).

Medians (min .. max) over the runs. The machine's other load is measured during each phase
and shown: this box has 2 cores and may be shared. When the PostgreSQL server runs with
``autovacuum = off`` (as here), ``ANALYZE`` is run every 10 s, as auto-analyze would.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import http.client
import itertools
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from sartor.config import Settings  # noqa: E402
from sartor.engine import Engine  # noqa: E402
from sartor.profiles import folds  # noqa: E402
from sartor.profiles import store as profile_store  # noqa: E402
from sartor.runtime import tune_gc  # noqa: E402
from sartor.storage.db import write_tx  # noqa: E402
from sartor.testing.traffic import Traffic, iso  # noqa: E402

PG_ADMIN_URL = os.environ.get(
    "SARTOR_BENCH_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432"
)
REDIS_URL = os.environ.get("SARTOR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "bench-secret-key-0123456789"
WARMUP_S = 2.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- machine load -------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        out[int(d)] = (cmd, (int(stat[11]) + int(stat[12])) / CLK_TCK)
    return out


class Load:
    """Cores used during a phase by this benchmark (with its subprocesses, its PostgreSQL
    backends, Redis) and by everything else on the machine."""

    mine_pids: set[int] = set()
    mine_dbs: set[str] = set()

    def __enter__(self) -> Load:
        self.t0 = time.monotonic()
        self.before = _proc_table()
        return self

    def _ours(self, pid: int, cmd: str) -> bool:
        if pid == os.getpid() or pid in Load.mine_pids or cmd.startswith("redis-server"):
            return True
        return cmd.startswith("postgres:") and (
            any(db in cmd for db in Load.mine_dbs) or cmd.count(" ") < 4  # shared background
        )

    def __exit__(self, *exc: object) -> None:
        after = _proc_table()
        wall = time.monotonic() - self.t0
        ours = other = 0.0
        for pid, (cmd, cpu) in after.items():
            used = cpu - self.before.get(pid, (cmd, 0.0))[1]
            if self._ours(pid, cmd):
                ours += used
            else:
                other += used
        self.ours_seconds = ours
        self.ours = ours / wall
        self.other = other / wall


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """``python -m sartor.cli <args>`` in a subprocess, ready when ``ready()`` says so."""

    def __init__(self, args: list[str], database_url: str, home: Path, env: dict[str, str]):
        home.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.log = home / f"{args[0]}-{secrets.token_hex(3)}.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "src"),
            "SARTOR_DATABASE_URL": database_url,
            "SARTOR_HOME": str(home),
            "SARTOR_ENV": "test",
            "SARTOR_SECRET_KEY": SECRET,
            "SARTOR_RATE_LIMIT_EVENTS_PER_SECOND": "0",
            "SARTOR_LOG_LEVEL": "WARNING",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout: float = 30.0) -> Proc:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sartor.cli", *self.args],
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        Load.mine_pids.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited: {self.log.read_text()[-2000:]}")
            if ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.args[0]} did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def pid_cpu(pid: int) -> float:
    """CPU seconds used so far by a process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / CLK_TCK


def proc_cpu(proc: Proc) -> float:
    """CPU seconds used so far by a subprocess."""
    return pid_cpu(proc.proc.pid) if proc.proc is not None else 0.0


def start_server(url: str, home: Path, env: dict[str, str]) -> tuple[Proc, int]:
    port = free_port()

    def ready() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    return Proc(["serve", "--port", str(port)], url, home, env).start(ready), port


def start_worker(url: str, home: Path, env: dict[str, str], name: str) -> Proc:
    proc = Proc(["worker", "--name", name], url, home, env)
    return proc.start(lambda: b"consuming profile changes" in proc.log.read_bytes())


# -- databases ----------------------------------------------------------------------------------


def pg_admin() -> Any:
    return create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")


def create_pg(template: str | None = None) -> tuple[str, str]:
    name = f"sartor_bench_{secrets.token_hex(4)}"
    admin = pg_admin()
    with admin.connect() as conn:
        conn.execute(
            text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        )
    admin.dispose()
    Load.mine_dbs.add(name)
    return name, make_url(f"{PG_ADMIN_URL}/{name}").render_as_string(hide_password=False)


def drop_pg(name: str) -> None:
    admin = pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class AutoAnalyze:
    """Planner statistics as autovacuum keeps them. Some servers (this one) run with
    ``autovacuum = off``: a fresh database then never gets statistics, the planner guesses
    that a workspace has a handful of events, and the ingest dedupe and the fold queries
    scan every event of the workspace. Then this runs ``ANALYZE`` at once and every
    ``every`` seconds, as autovacuum's auto-analyze would; with autovacuum on it does
    nothing."""

    active = False

    def __init__(self, url: str, every: float = 10.0) -> None:
        self.db = create_engine(url, isolation_level="AUTOCOMMIT")
        self.every = every
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def analyze(self) -> None:
        with self.db.connect() as conn:
            conn.execute(text("ANALYZE"))

    def __enter__(self) -> AutoAnalyze:
        with self.db.connect() as conn:
            off = conn.execute(text("SHOW autovacuum")).scalar() == "off"
        if off:
            AutoAnalyze.active = True
            self.analyze()
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.analyze()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        self.db.dispose()


def bench_settings(home: Path, **kw: Any) -> Settings:
    return Settings(
        env="test",
        home=home,
        secret_key=SECRET,
        rate_limit_events_per_second=0,
        log_json=False,
        log_level="WARNING",
        **kw,
    )


def ingest_all(engine: Engine, ws: str, events: list[dict[str, Any]], batch: int = 500) -> None:
    """Store every event (several threads, so group commit shares transactions)."""
    parts = [events[i : i + batch] for i in range(0, len(events), batch)]
    with ThreadPoolExecutor(4) as pool:
        for result in pool.map(lambda p: engine.ingest(ws, p), parts):
            if result.errors or result.stored != len(result.items):
                raise RuntimeError(f"ingest failed: {result.errors[:3]} {result.dropped}")


def count_events(db: Any) -> int:
    with db.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM events")).scalar_one())


def tops(db: Any) -> dict[str, int]:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT profile_id, max(seq) FROM events GROUP BY profile_id"))
        return {pid: int(top) for pid, top in rows}


def behind(db: Any) -> int:
    """Profiles whose watermark is not at their newest event."""
    with db.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT workspace_id, profile_id, max(seq) AS top "
                    "FROM events GROUP BY 1, 2) e LEFT JOIN profiles p "
                    "USING (workspace_id, profile_id) "
                    "WHERE p.last_seq IS NULL OR p.last_seq <> e.top"
                )
            ).scalar_one()
        )


# -- 1. fold throughput -------------------------------------------------------------------------


def pure_fold_rate(db: Any, config: folds.ProfileConfig) -> tuple[float, int]:
    """``folds.fold`` over every stored event, per profile in log order, in memory."""
    cols = "seq, message_id, type, event, timestamp, received_at, profile_id, payload"
    by_profile: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with db.connect() as conn:
        for row in conn.execute(text(f"SELECT {cols} FROM events ORDER BY seq")):
            ev = row._asdict()
            if isinstance(ev["payload"], str):  # SQLite JSON through text()
                ev["payload"] = orjson.loads(ev["payload"])
            by_profile[ev["profile_id"]].append(ev)
    n = sum(len(v) for v in by_profile.values())
    t0 = time.perf_counter()
    for evs in by_profile.values():
        doc = folds.empty()
        for ev in evs:
            doc = folds.fold(doc, ev, config)
    return n / (time.perf_counter() - t0), n


def bench_fold_sqlite(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    home = tmp / "fold-sqlite"
    home.mkdir()
    base = home / "base.db"
    settings = bench_settings(home)
    with Engine.open(f"sqlite:///{base}", settings=settings) as engine:
        ws = engine.create_workspace("bench").workspace.id
        events = Traffic(args.users, args.seed, prefix="bench").history(
            args.events, int(time.time() * 1000)
        )
        t0 = time.perf_counter()
        ingest_all(engine, ws, events)
        log(f"sqlite: {args.events:,} events ingested in {time.perf_counter() - t0:.1f}s")
    out: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)  # CPU microseconds per event (process)
    loads: list[float] = []
    for run in range(args.runs):
        copies = []
        for name in ("shipped", "folds"):
            dst = home / f"run{run}-{name}.db"
            shutil.copy(base, dst)
            copies.append(dst)
        with Load() as load:
            with Engine.open(f"sqlite:///{copies[0]}", settings=settings, migrate=False) as eng:
                n = count_events(eng.db)
                t0, c0 = time.perf_counter(), time.process_time()
                eng.updater.replay()
                out["replay_shipped"].append(n / (time.perf_counter() - t0))
                cpu["replay_shipped"].append((time.process_time() - c0) / n * 1e6)
                n = count_events(eng.db)
                t0, c0 = time.perf_counter(), time.process_time()
                eng.rebuild()
                out["rebuild_shipped"].append(n / (time.perf_counter() - t0))
                cpu["rebuild_shipped"].append((time.process_time() - c0) / n * 1e6)
                rate, _ = pure_fold_rate(eng.db, settings.profile_config)
                out["memory"].append(rate)
            with Engine.open(f"sqlite:///{copies[1]}", settings=settings, migrate=False) as eng:
                eng.updater.batch_listeners.clear()
                n = count_events(eng.db)
                t0, c0 = time.perf_counter(), time.process_time()
                eng.updater.replay()
                out["replay_folds"].append(n / (time.perf_counter() - t0))
                cpu["replay_folds"].append((time.process_time() - c0) / n * 1e6)
                assert behind(eng.db) == 0
        loads.append(load.other)
        log(
            f"sqlite run {run + 1}/{args.runs}: "
            + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in out.items())
            + f" (other load {load.other:.2f} cores)"
        )
        for c in copies:
            c.unlink()
    return {"events": args.events, **out, "cpu_us_per_event": cpu, "other_load": loads}


class Observer:
    """``profile.updated`` messages as they arrive: per profile, (time, running max lastSeq)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.lock = threading.Lock()
        self.count = 0
        self.changed = threading.Event()

    def saw(self, t: float, pid: str, last_seq: int) -> None:
        with self.lock:
            seqs = self.seqs[pid]
            seqs.append(max(last_seq, seqs[-1]) if seqs else last_seq)
            self.times[pid].append(t)
            self.count += 1
        self.changed.set()

    def first_covering(self, pid: str, seq: int) -> float | None:
        """When the profile was first seen folded at or past ``seq``."""
        with self.lock:
            seqs = self.seqs.get(pid)
            if not seqs:
                return None
            i = bisect.bisect_left(seqs, seq)
            return self.times[pid][i] if i < len(seqs) else None


def bench_fold_pg(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import redis

    home = tmp / "fold-pg"
    home.mkdir()
    r = redis.Redis.from_url(REDIS_URL)
    park = f"bench-park-{secrets.token_hex(4)}"
    base_name, base_url = create_pg()
    out: dict[str, list[float]] = defaultdict(list)
    loads: list[float] = []
    try:
        settings = bench_settings(home, redis_url=REDIS_URL, redis_namespace=park)
        with Engine.open(base_url, settings=settings) as engine:
            ws = engine.create_workspace("bench").workspace.id
            events = Traffic(args.users, args.seed, prefix="bench").history(
                args.events, int(time.time() * 1000)
            )
            t0 = time.perf_counter()
            with AutoAnalyze(base_url) as analyzer:
                ingest_all(engine, ws, events)
                if analyzer.thread is not None:
                    analyzer.analyze()  # the copies start with up-to-date statistics
            log(f"pg: {args.events:,} events ingested in {time.perf_counter() - t0:.1f}s")
            with write_tx(engine.db) as conn:  # replays find nothing: notifications drive it
                profile_store.set_checkpoint(conn, "profiles", profile_store.head(conn))
        parked = [fields for _, fields in r.xrange(f"{park}:profile-changes")]
        for run in range(args.runs):
            name, url = create_pg(template=base_name)
            ns = f"bench-{secrets.token_hex(4)}"
            env = {"SARTOR_REDIS_URL": REDIS_URL, "SARTOR_REDIS_NAMESPACE": ns}
            workers: list[Proc] = []
            db = create_engine(url)
            pubsub = r.pubsub(ignore_subscribe_messages=True)
            try:
                workers = [
                    start_worker(url, home / f"run{run}", env, f"w{i}") for i in range(args.workers)
                ]
                need = tops(db)
                seen = Observer()
                pubsub.psubscribe(f"{ns}:stream:*")
                stop = threading.Event()

                def listen(ps: Any = pubsub, seen: Observer = seen, stop: threading.Event = stop):
                    while not stop.is_set():
                        msg = ps.get_message(timeout=0.2)
                        if msg and msg["type"] == "pmessage":
                            t = time.perf_counter()
                            data = orjson.loads(msg["data"])  # an array of stream messages
                            for doc in data if isinstance(data, list) else [data]:
                                if doc.get("type") == "profile.updated":
                                    seen.saw(t, doc["profileId"], doc["lastSeq"])

                listener = threading.Thread(target=listen, daemon=True)
                listener.start()
                time.sleep(0.3)
                with Load() as load:
                    t0 = time.perf_counter()
                    cpu0 = sum(proc_cpu(w) for w in workers)
                    pipe = r.pipeline(transaction=False)
                    for fields in parked:
                        pipe.xadd(f"{ns}:profile-changes", fields)
                    pipe.execute()
                    deadline = time.monotonic() + 600
                    missing = dict(need)
                    while missing and time.monotonic() < deadline:
                        seen.changed.wait(0.5)
                        seen.changed.clear()
                        missing = {
                            p: s for p, s in missing.items() if seen.first_covering(p, s) is None
                        }
                    if missing:
                        raise RuntimeError(f"{len(missing)} profiles never caught up")
                    done = max(seen.first_covering(p, s) or 0.0 for p, s in need.items())
                    worker_cpu = sum(proc_cpu(w) for w in workers) - cpu0
                stop.set()
                listener.join()
                rate = len(events) / (done - t0)
                out["rate"].append(rate)
                out["worker_cpu_us_per_event"].append(worker_cpu / len(events) * 1e6)
                loads.append(load.other)
                # Quiescence (segment transitions the workers logged folded too), checked.
                t_q = time.monotonic()
                while behind(db) and time.monotonic() - t_q < 120:
                    time.sleep(0.2)
                extra = count_events(db) - len(events)
                log(
                    f"pg run {run + 1}/{args.runs}: {rate:,.0f} events/s with {args.workers} "
                    f"workers ({done - t0:.1f}s, workers' CPU {worker_cpu / len(events) * 1e6:.0f} "
                    f"us/event; {extra} segment transitions logged; behind "
                    f"after: {behind(db)}; other load {load.other:.2f} cores)"
                )
            finally:
                pubsub.close()
                for w in workers:
                    w.stop()
                db.dispose()
                drop_pg(name)
                for key in r.scan_iter(f"{ns}:*", count=1000):
                    r.delete(key)
    finally:
        for key in r.scan_iter(f"{park}:*", count=1000):
            r.delete(key)
        r.close()
        drop_pg(base_name)
    return {"events": args.events, "workers": args.workers, **out, "other_load": loads}


# -- 2. latency ---------------------------------------------------------------------------------


@dataclass
class Paced:
    sent: dict[str, float] = field(default_factory=dict)  # messageId -> just before sending
    lag: list[float] = field(default_factory=list)  # how late each send started
    acks: list[float] = field(default_factory=list)  # send -> ingest acknowledged (s)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def pace(
    send: Callable[[list[dict[str, Any]], Paced], None],
    traffic: Traffic,
    rate: int,
    seconds: float,
    per_tick: int = 10,
    threads: int = 8,
) -> Paced:
    """Offer ``rate`` events/s in ticks of ``per_tick`` events for ``seconds``.

    The messages are drawn beforehand and only stamped with the time when sent: drawing
    them costs CPU (and the GIL) that the engine under test must not share."""
    out = Paced()
    interval = per_tick / rate
    ticks = int(seconds / interval) + 1
    drawn = [[traffic.event(0) for _ in range(per_tick)] for _ in range(ticks)]
    futures: list[Future[None]] = []
    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        for k in itertools.count():
            target = t0 + k * interval
            if target - t0 >= seconds:
                break
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            stamp = iso(time.time_ns() // 1_000_000)
            batch = drawn[k]
            for m in batch:
                m["timestamp"] = stamp
            out.lag.append(time.perf_counter() - target)
            futures.append(pool.submit(send, batch, out))
        for f in futures:
            f.result()
        out.seconds = time.perf_counter() - t0
    return out


def latencies(
    paced: Paced, seen: Observer, where: dict[str, tuple[int, str]], start: float
) -> tuple[list[float], int, list[float]]:
    """Per event sent after ``start``: observed - sent (ms); how many were never seen; and
    the worst latency of each second of the run (ms), to see stalls in time."""
    out: list[float] = []
    unseen = 0
    worst: dict[int, float] = {}
    for mid, t_sent in paced.sent.items():
        if t_sent < start or mid not in where:
            continue
        seq, pid = where[mid]
        t_obs = seen.first_covering(pid, seq)
        if t_obs is None:
            unseen += 1
        else:
            ms = (t_obs - t_sent) * 1000
            out.append(ms)
            second = int(t_sent - start)
            worst[second] = max(worst.get(second, 0.0), ms)
    return out, unseen, [round(worst.get(i, 0.0), 1) for i in range(max(worst, default=-1) + 1)]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def message_places(db: Any, mids: set[str]) -> dict[str, tuple[int, str]]:
    with db.connect() as conn:
        return {
            m: (int(s), p)
            for m, s, p in conn.execute(text("SELECT message_id, seq, profile_id FROM events"))
            if m in mids
        }


def wait_caught_up(db: Any, timeout: float = 300.0, steady: float = 1.0) -> None:
    """Until every profile is folded up to its newest event and the log has not grown for
    ``steady`` seconds."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        n = count_events(db)
        if n == last and not behind(db):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("profiles did not catch up with the log")
        last = n
        time.sleep(steady)


def wait_seen(paced: Paced, seen: Observer, db: Any, timeout: float = 15.0) -> None:
    """Until every sent event's profile has been seen folded past it (or the timeout)."""
    deadline = time.monotonic() + timeout
    where = message_places(db, set(paced.sent))
    while time.monotonic() < deadline:
        if all(seen.first_covering(p, s) is not None for s, p in where.values()):
            return
        time.sleep(0.2)


def summarize_latency(
    label: str, paced: Paced, seen: Observer, db: Any, rate: int, load: Load
) -> dict[str, Any]:
    where = message_places(db, set(paced.sent))
    start = min(paced.sent.values()) + WARMUP_S
    ms, unseen, worst = latencies(paced, seen, where, start)
    result = {
        "events": len(ms),
        "unseen": unseen,
        "not_stored": len(paced.sent) - len(where),
        "offered_rate": len(paced.sent) / paced.seconds,
        "send_lag_p99_ms": pct(paced.lag, 0.99) * 1000,
        "ack_p50_ms": pct(paced.acks, 0.50) * 1000,
        "ack_p99_ms": pct(paced.acks, 0.99) * 1000,
        "cores_used": load.ours,
        # CPU of this benchmark's processes (the engine, or the API and the workers, with
        # PostgreSQL and Redis) per event offered, warm-up included: the cost behind the
        # latency, which on a shared machine says more than the latency itself.
        "cpu_us_per_event": load.ours_seconds / max(1, len(paced.sent)) * 1e6,
        "p50": pct(ms, 0.50),
        "p90": pct(ms, 0.90),
        "p99": pct(ms, 0.99),
        "max": max(ms) if ms else float("nan"),
        "errors": paced.errors[:5],
        "worst_per_second_ms": worst,
        "other_load": load.other,
    }
    log(
        f"{label}: p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms, max "
        f"{result['max']:.0f} ms over {len(ms):,} events at {result['offered_rate']:,.0f}/s "
        f"(ingest ack p50 {result['ack_p50_ms']:.1f} ms p99 {result['ack_p99_ms']:.1f} ms; "
        f"unseen {unseen}, errors {len(paced.errors)}, sender lag p99 "
        f"{result['send_lag_p99_ms']:.1f} ms; cores: this benchmark {load.ours:.2f} "
        f"({result['cpu_us_per_event']:.0f} us CPU per event), others {load.other:.2f})"
    )
    return result


def bench_latency_sqlite(args: argparse.Namespace, tmp: Path, run: int) -> dict[str, Any]:
    home = tmp / f"lat-sqlite-{run}"
    home.mkdir()
    settings = bench_settings(home)
    with Engine.open(f"sqlite:///{home / 'sartor.db'}", settings=settings) as engine:
        ws = engine.create_workspace("bench").workspace
        seen = Observer()
        engine.updater.listeners.append(
            lambda c: (
                seen.saw(time.perf_counter(), c.profile_id, c.last_seq)
                if c.kind == "profile.updated"
                else None
            )
        )
        if args.folds_only:  # diagnosis: no segment evaluation on each fold batch
            engine.updater.batch_listeners.clear()
        traffic = Traffic(args.users, args.seed + run, second_devices=False, prefix="bench")
        ingest_all(engine, ws.id, traffic.history(args.history, int(time.time() * 1000) - 1000))
        engine.start()  # its replay folds the history
        # Folding the history makes everyone enter "active": those transitions are logged
        # once the whole replay has been evaluated, then folded by the bus. That burst must
        # be over before the run starts (the bus is idle once it has folded them).
        engine.bus.idle.wait(120)
        wait_caught_up(engine.db)
        tune_gc()  # as `sartor serve` does before it takes traffic

        def send(batch: list[dict[str, Any]], out: Paced) -> None:
            t = time.perf_counter()
            for m in batch:
                out.sent[m["messageId"]] = t
            result = engine.ingest(ws, batch)
            out.acks.append(time.perf_counter() - t)
            if result.errors:
                out.errors.append(str(result.errors[:1]))

        with Load() as load:
            paced = pace(send, traffic, args.rate, args.seconds + WARMUP_S)
            wait_seen(paced, seen, engine.db)
        return summarize_latency(
            f"latency sqlite in-process run {run + 1}", paced, seen, engine.db, args.rate, load
        )


def bench_latency_pg(args: argparse.Namespace, tmp: Path, run: int) -> dict[str, Any]:
    return bench_latency_served(args, tmp, run, "pg")


def bench_latency_serve_sqlite(args: argparse.Namespace, tmp: Path, run: int) -> dict[str, Any]:
    return bench_latency_served(args, tmp, run, "sqlite")


def children_cpu(proc: Proc) -> float:
    """CPU seconds of the processes ``proc`` started (`sartor serve`'s folding process)."""
    if proc.proc is None:
        return 0.0
    total = 0.0
    for task in Path(f"/proc/{proc.proc.pid}/task").glob("*"):
        try:
            total += sum(pid_cpu(int(k)) for k in (task / "children").read_text().split())
        except OSError:
            continue
    return total


def bench_latency_served(
    args: argparse.Namespace, tmp: Path, run: int, backend: str
) -> dict[str, Any]:
    """Over HTTP and the WebSocket of a `sartor serve` subprocess: on PostgreSQL with Redis
    Streams and ``--workers`` workers (``pg``), or on SQLite as it ships, folding in its
    child process (``sqlite``)."""
    import redis
    from websockets.sync.client import connect

    pg = backend == "pg"
    home = tmp / f"lat-{backend}-serve-{run}"
    home.mkdir()
    name = None
    if pg:
        name, url = create_pg()
    else:
        url = f"sqlite:///{home / 'sartor.db'}"
    ns = f"bench-{secrets.token_hex(4)}"
    env = {"SARTOR_REDIS_URL": REDIS_URL, "SARTOR_REDIS_NAMESPACE": ns} if pg else {}
    procs: list[Proc] = []
    db = create_engine(url)
    r = redis.Redis.from_url(REDIS_URL) if pg else None
    stack = contextlib.ExitStack()
    traffic = Traffic(args.users, args.seed + run, second_devices=False, prefix="bench")
    try:
        if pg:
            stack.enter_context(AutoAnalyze(url))
            settings = bench_settings(home, redis_url=REDIS_URL, redis_namespace=ns)
        else:
            settings = bench_settings(home)
        with Engine.open(url, settings=settings) as setup:
            created = setup.create_workspace("bench")
            keys = created.keys
            history = traffic.history(args.history, int(time.time() * 1000) - 1000)
            ingest_all(setup, created.workspace.id, history)
        server, port = start_server(url, home / "api", env)
        procs.append(server)
        if pg:
            procs += [start_worker(url, home / f"w{i}", env, f"w{i}") for i in range(args.workers)]
        # The workers (or the server's folding process) fold the history, then log and fold
        # everyone's entry into "active".
        wait_caught_up(db, steady=3.0)
        before = count_events(db)
        seen = Observer()
        ws_conn = stack.enter_context(
            connect(f"ws://127.0.0.1:{port}/v1/stream?key={keys['read']}", max_size=None)
        )
        assert orjson.loads(ws_conn.recv())["type"] == "subscribed"
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                try:
                    raw = ws_conn.recv(timeout=0.2)
                except TimeoutError:
                    continue
                except Exception:
                    return
                t = time.perf_counter()
                doc = orjson.loads(raw)
                kinds[doc.get("type")] += 1
                if doc.get("type") == "profile.updated":
                    seen.saw(t, doc["profileId"], doc["lastSeq"])

        kinds: Counter[str | None] = Counter()
        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        auth = "Basic " + base64.b64encode(f"{keys['write']}:".encode()).decode()
        headers = {"Content-Type": "application/json", "Authorization": auth}
        local = threading.local()

        def send(batch: list[dict[str, Any]], out: Paced) -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            body = orjson.dumps({"batch": batch})
            t = time.perf_counter()
            for m in batch:
                out.sent[m["messageId"]] = t
            conn.request("POST", "/v1/batch", body, headers)
            resp = conn.getresponse()
            data = resp.read()
            out.acks.append(time.perf_counter() - t)
            if resp.status != 200:
                out.errors.append(f"{resp.status} {data[:200]!r}")

        workers = procs[1:]

        def folders_cpu() -> float:
            return sum(proc_cpu(w) for w in workers) if pg else children_cpu(server)

        with Load() as load:
            api0, workers0 = proc_cpu(server), folders_cpu()
            paced = pace(send, traffic, args.rate, args.seconds + WARMUP_S)
            wait_seen(paced, seen, db)
            api1, workers1 = proc_cpu(server), folders_cpu()
        stop.set()
        listener.join()
        label = "pg+redis" if pg else "sqlite serve"
        result = summarize_latency(
            f"latency {label} run {run + 1}", paced, seen, db, args.rate, load
        )
        # Where the CPU goes: the API process, the folders, and the rest (PostgreSQL, Redis).
        sent = max(1, len(paced.sent))
        api_us = result["cpu_us_per_event_api"] = (api1 - api0) / sent * 1e6
        workers_us = result["cpu_us_per_event_workers"] = (workers1 - workers0) / sent * 1e6
        folders = f"{len(workers)} workers" if pg else "folding process"
        log(
            f"  CPU per event: API process {api_us:.0f} us, {folders} "
            f"{workers_us:.0f} us, the rest "
            f"{result['cpu_us_per_event'] - api_us - workers_us:.0f} us"
        )
        # Fewer `event` messages than events stored: the stream dropped some (a subscriber
        # queue overflowed), so some profile.updated may have been lost too.
        result["stream_messages"] = dict(kinds)
        result["stream_event_messages_missing"] = count_events(db) - before - kinds["event"]
        return result
    finally:
        stack.close()
        for p in procs:
            p.stop()
        db.dispose()
        if name is not None:
            drop_pg(name)
        if r is not None:
            for key in r.scan_iter(f"{ns}:*", count=1000):
                r.delete(key)
            r.close()


# -- report -------------------------------------------------------------------------------------


def med(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def rows(results: dict[str, Any]) -> Iterator[tuple[str, list[float], str, str]]:
    """(measure, per-run values, unit, target) for the table."""
    f = results.get("fold")
    if f:
        n = f"{f['events'] // 1000}k events"
        yield f"fold in memory (folds.fold), {n}", f["memory"], "ev/s", ""
        yield f"SQLite replay(), as shipped, {n}", f["replay_shipped"], "ev/s", ""
        yield f"SQLite replay(), folds only, {n}", f["replay_folds"], "ev/s", ""
        yield f"SQLite rebuild(), as shipped, {n}", f["rebuild_shipped"], "ev/s", ""
        for key, label in (
            ("replay_shipped", "replay(), as shipped"),
            ("replay_folds", "replay(), folds only"),
            ("rebuild_shipped", "rebuild(), as shipped"),
        ):
            yield f"  CPU per event, SQLite {label}", f["cpu_us_per_event"][key], "us", ""
    p = results.get("pg_fold")
    if p:
        label = f"PG+Redis, {p['workers']} worker processes, {p['events'] // 1000}k events"
        yield label, p["rate"], "ev/s", ""
        yield "  CPU per event, the worker processes", p["worker_cpu_us_per_event"], "us", ""
    for key, label, target in (
        ("lat_sqlite", "latency SQLite in-process", 50),
        ("lat_serve", "latency SQLite served, HTTP+WebSocket", 50),
        ("lat_pg", "latency PG+Redis, HTTP+WebSocket", 200),
    ):
        runs = results.get(key)
        if runs:
            yield f"{label} p50", [x["p50"] for x in runs], "ms", ""
            yield f"{label} p99", [x["p99"] for x in runs], "ms", f"< {target} ms"
            yield f"{label} max", [x["max"] for x in runs], "ms", ""
            yield f"  CPU per event, {label[8:]}", [x["cpu_us_per_event"] for x in runs], "us", ""


def verdict(values: list[float], target: str) -> str:
    if not target:
        return ""
    limit = float(target.split()[1])
    return "met" if statistics.median(values) < limit else "NOT met"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--events", type=int, default=40_000, help="events folded per throughput run")
    ap.add_argument("--users", type=int, default=3_000, help="distinct people")
    ap.add_argument("--workers", type=int, default=2, help="sartor worker processes (PG)")
    ap.add_argument("--rate", type=int, default=1_000, help="events/s offered (latency)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per latency run")
    ap.add_argument("--latency-runs", type=int, default=2)
    ap.add_argument(
        "--history", type=int, default=10_000, help="events stored before a latency run"
    )
    ap.add_argument(
        "--only",
        default="fold,pg-fold,lat-sqlite,lat-serve,lat-pg",
        help="comma-separated: fold, pg-fold, lat-sqlite, lat-serve, lat-pg",
    )
    ap.add_argument(
        "--folds-only",
        action="store_true",
        help="in-process latency without the segment evaluation that runs on every fold batch",
    )
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    only = set(args.only.split(","))
    latency_runs = args.latency_runs

    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sartor-bench-profiles-") as tmp_name:
        tmp = Path(tmp_name)
        if "fold" in only:
            results["fold"] = bench_fold_sqlite(args, tmp)
        if "pg-fold" in only:
            results["pg_fold"] = bench_fold_pg(args, tmp)
        if "lat-sqlite" in only:
            results["lat_sqlite"] = [
                bench_latency_sqlite(args, tmp, i) for i in range(latency_runs)
            ]
        if "lat-serve" in only:
            results["lat_serve"] = [
                bench_latency_serve_sqlite(args, tmp, i) for i in range(latency_runs)
            ]
        if "lat-pg" in only:
            results["lat_pg"] = [bench_latency_pg(args, tmp, i) for i in range(latency_runs)]
    elapsed = time.monotonic() - started

    print()
    print(
        f"Sartor profiles: {args.runs} throughput runs, {latency_runs} latency runs of "
        f"{args.seconds:.0f} s at {args.rate:,} events/s, {args.users:,} people, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"{'measure':<52} {'median':>10} {'(min .. max)':>22}  {'unit':<5} target")
    for label, values, unit, target in rows(results):
        m, lo, hi = med(values)
        spec = ".1f" if unit == "ms" else ",.0f"
        rng = f"({lo:{spec}} .. {hi:{spec}})"
        print(f"{label:<52} {m:>10{spec}} {rng:>22}  {unit:<5} {target} {verdict(values, target)}")
    other = [
        x for key in ("fold", "pg_fold") for x in (results.get(key) or {}).get("other_load", [])
    ] + [
        r["other_load"]
        for key in ("lat_sqlite", "lat_serve", "lat_pg")
        for r in results.get(key, [])
    ]
    if other:
        print(
            f"load from other processes on the machine during the runs: "
            f"{min(other):.2f} .. {max(other):.2f} cores"
            + ("  (shared machine: numbers are depressed)" if max(other) > 0.2 else "")
        )
    if AutoAnalyze.active:
        print(
            "PostgreSQL runs with autovacuum = off here: the benchmark ran ANALYZE every 10 s "
            "(as auto-analyze would); without it a fresh database has no planner statistics"
        )
    problems = [
        f"{key} run {i + 1}: {r['unseen']} unseen, {r['not_stored']} not stored, "
        f"errors {r['errors']}"
        for key in ("lat_sqlite", "lat_serve", "lat_pg")
        for i, r in enumerate(results.get(key, []))
        if r["unseen"] or r["not_stored"] or r["errors"]
    ]
    for p in problems:
        print("PROBLEM: " + p)
    print(f"total time {elapsed:.0f} s")
    if args.json:
        doc = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "seconds": elapsed,
            "analyze_emulated": AutoAnalyze.active,
            "results": results,
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
