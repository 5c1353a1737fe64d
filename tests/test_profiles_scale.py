"""Profiles at scale, on the production topology: PostgreSQL, Redis Streams, two ``sartor
serve`` processes and two ``sartor worker`` processes, one of which is killed with SIGKILL
halfway through.

200,000 realistic e-commerce events (a few thousand people, views, cart adds, orders,
refunds, pages, identifies with ``$set``/``$set_once``/``$unset``, visitors who browse
anonymously and sign in later, on one device or on a second one, which merges profiles) are
sent through ``/v1/batch`` (100 per request) by several threads, split across the two API
processes; a few batches are sent twice. Once the consumer group has nothing pending and no
lag and every profile's watermark is at its newest event, every stored profile must equal
what a full ``Engine.rebuild()`` from the log produces, and nothing may be counted twice.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import math
import os
import random
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from sartor.config import Settings
from sartor.engine import Engine
from sartor.profiles.folds import SYSTEM_EVENTS
from sartor.storage.db import make_engine
from sartor.testing.traffic import Traffic
from tests.conftest import drop_pg_database, new_pg_database, require_redis
from tests.server import ServerProcess, WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EVENTS = int(os.environ.get("SARTOR_SCALE_EVENTS", "200000"))
PEOPLE = 3_000
BATCH = 100
SENDERS_PER_SERVER = int(os.environ.get("SARTOR_SCALE_SENDERS", "3"))
RESENT_BATCHES = 20
GROUP = "profile-updaters"

# -- the traffic ---------------------------------------------------------------------------------


def make_traffic(n: int, people: int, seed: int, end_ms: int) -> list[dict[str, Any]]:
    """``n`` events of ``people`` people (a long-tailed share each, and everyone at least
    once), timestamps over the hour before ``end_ms`` with some late arrivals."""
    traffic = Traffic(people, seed, prefix="scale", revenue_share=0.7, email_share=0.3)
    step = 3_600_000 / n
    clock = end_ms - 3_600_000
    out: list[dict[str, Any]] = []
    for i in range(n):
        ts = int(clock + i * step)
        if traffic.rng.random() < 0.03:
            ts -= traffic.rng.randrange(1, 7_200_000)  # late: arrives long after it happened
        person = None if i % 64 else traffic.crowd[i // 64 % people]
        out.append(traffic.event(ts, person))
    return out


# -- helpers ----------------------------------------------------------------------------------


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Senders:
    """Threads that post batches to their server, each on one keep-alive connection."""

    def __init__(self, servers: list[ServerProcess], auth: str, bodies: list[bytes]) -> None:
        self.servers = servers
        self.headers = {"Content-Type": "application/json", "Authorization": auth}
        self.bodies = bodies
        self.next = [i for i in range(len(servers))]  # body i goes to server i % len(servers)
        self.lock = threading.Lock()
        self.acked = 0
        self.stored = 0
        self.duplicates = 0
        self.failures: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(s,), daemon=True)
            for s in range(len(servers))
            for _ in range(SENDERS_PER_SERVER)
        ]

    def start(self) -> Senders:
        for t in self.threads:
            t.start()
        return self

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def _take(self, server: int) -> int | None:
        with self.lock:
            i = self.next[server]
            if i >= len(self.bodies):
                return None
            self.next[server] = i + len(self.servers)
            return i

    def _run(self, server: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.servers[server].port, timeout=120)
        while (i := self._take(server)) is not None:
            for attempt in range(5):
                try:
                    conn.request("POST", "/v1/batch", self.bodies[i], self.headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    self._fail(f"batch {i} attempt {attempt}: {exc!r}")
                    time.sleep(0.5)
                    continue
                if resp.status != 200:
                    self._fail(f"batch {i} attempt {attempt}: {resp.status} {data[:300]!r}")
                    time.sleep(0.5)
                    continue
                doc = orjson.loads(data)
                with self.lock:
                    self.acked += 1
                    self.stored += doc["stored"]
                    self.duplicates += doc["duplicates"]
                break
        conn.close()

    def _fail(self, why: str) -> None:
        with self.lock:
            self.failures.append(why)


def post(server: ServerProcess, auth: str, body: bytes) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(
            "POST", "/v1/batch", body, {"Content-Type": "application/json", "Authorization": auth}
        )
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:300]
        doc: dict[str, Any] = orjson.loads(resp.read())
        return doc
    finally:
        conn.close()


def group_state(r: Any, stream: str) -> tuple[int, int | None]:
    """The consumer group's pending entries and lag (None while Redis cannot tell)."""
    for g in r.xinfo_groups(stream):
        if g["name"] in (GROUP, GROUP.encode()):
            return int(g["pending"]), g.get("lag")
    return 0, None


class AutoAnalyze:
    """``ANALYZE`` every few seconds when the server runs with ``autovacuum = off`` (as the
    test server does), as auto-analyze would: without planner statistics a fresh database
    dedupes each ingest batch by scanning all the workspace's events."""

    def __init__(self, db: Any, every: float = 10.0) -> None:
        self.db = db
        self.every = every
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> AutoAnalyze:
        with self.db.connect() as conn:
            if conn.execute(text("SHOW autovacuum")).scalar() == "off":
                self.thread = threading.Thread(target=self._run, daemon=True)
                self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            with self.db.connect() as conn:
                conn.execute(text("ANALYZE"))
                conn.commit()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


BEHIND = text(
    """
    SELECT count(*) FROM (
        SELECT workspace_id, profile_id, max(seq) AS top FROM events GROUP BY 1, 2
    ) e LEFT JOIN profiles p USING (workspace_id, profile_id)
    WHERE p.last_seq IS NULL OR p.last_seq <> e.top
    """
)


def snapshot(db: Any) -> dict[str, tuple[Any, Any, int | None]]:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT profile_id, computed, traits, last_seq FROM profiles"))
        return {r.profile_id: (r.computed, r.traits, r.last_seq) for r in rows}


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON documents differ; numbers compare with a relative tolerance."""
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool | type(None)):
        ok = math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
        return [] if ok else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'stored' if k in a else 'rebuilt'}")
            else:
                out.extend(differences(a[k], b[k], f"{path}/{k}"))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)} items"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


# -- the test ---------------------------------------------------------------------------------


def test_profiles_at_scale_with_worker_crash(pg_template: str, tmp_path: Path) -> None:
    redis_url = require_redis()
    import redis

    started = time.monotonic()
    timings: dict[str, float] = {}
    name, url = new_pg_database(pg_template)
    namespace = f"sartor-scale-{secrets.token_hex(4)}"
    r = redis.Redis.from_url(redis_url)
    env = {"SARTOR_REDIS_URL": redis_url, "SARTOR_REDIS_NAMESPACE": namespace}
    settings = Settings(
        env="test",
        home=tmp_path,
        secret_key="test-secret-key-0123456789",
        rate_limit_events_per_second=0,
        log_json=False,
    )
    servers: list[ServerProcess] = []
    workers: list[WorkerProcess] = []
    db = make_engine(url)
    stack = contextlib.ExitStack()
    try:
        with Engine.open(url, settings=settings) as setup:
            key = setup.create_workspace("scale").keys["write"]
        auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()

        traffic = make_traffic(EVENTS, PEOPLE, seed=2024, end_ms=time.time_ns() // 1_000_000)
        bodies = [orjson.dumps({"batch": traffic[i : i + BATCH]}) for i in range(0, EVENTS, BATCH)]
        message_ids = {m["messageId"] for m in traffic}
        assert len(message_ids) == EVENTS
        del traffic
        timings["generate"] = time.monotonic() - started

        for i in range(2):
            home = tmp_path / f"api{i}"
            home.mkdir()
            servers.append(ServerProcess(url, home, SARTOR_LOG_LEVEL="WARNING", **env).start())
        for i in range(2):
            home = tmp_path / f"worker{i}"
            home.mkdir()
            workers.append(
                WorkerProcess(url, home, f"w{i}", SARTOR_LOG_LEVEL="WARNING", **env).start()
            )
        stream = f"{namespace}:profile-changes"

        stack.enter_context(AutoAnalyze(db))
        t0 = time.monotonic()
        senders = Senders(servers, auth, bodies).start()
        killed_at = None
        while senders.running:
            if killed_at is None and senders.acked >= len(bodies) // 2:
                workers[0].kill()
                killed_at = senders.acked
            time.sleep(0.05)
        timings["send"] = time.monotonic() - t0
        note(f"sent {EVENTS} events in {timings['send']:.1f}s")
        assert killed_at is not None and not workers[0].alive
        assert workers[1].alive, workers[1].log.read_text()[-2000:]
        assert senders.acked == len(bodies), senders.failures[:5]
        assert senders.stored == EVENTS and senders.duplicates == 0, senders.failures[:5]

        # Some batches again, to the other API process: all duplicates, nothing stored.
        rng = random.Random(7)
        for i in rng.sample(range(len(bodies)), RESENT_BATCHES):
            doc = post(servers[(i + 1) % 2], auth, bodies[i])
            assert (doc["stored"], doc["duplicates"]) == (0, BATCH), doc

        # Wait for the folding to drain: nothing pending or lagging in the group, and every
        # profile's watermark at its newest event.
        t1 = time.monotonic()
        deadline = t1 + 180
        behind = pending = -1
        lag: int | None = None
        while time.monotonic() < deadline:
            pending, lag = group_state(r, stream)
            if pending == 0 and lag == 0:
                with db.connect() as conn:
                    behind = int(conn.execute(BEHIND).scalar_one())
                if behind == 0:
                    break
            time.sleep(0.5)
        timings["drain"] = time.monotonic() - t1
        note(f"folding drained {timings['drain']:.1f}s after the last batch")
        assert (pending, lag, behind) == (0, 0, 0), (
            f"not caught up: pending {pending}, lag {lag}, profiles behind {behind}; "
            + workers[1].log.read_text()[-2000:]
        )
        assert workers[1].alive
        for w in workers:
            w.stop()
        for s in servers:
            s.stop()

        with db.connect() as conn:
            stored_events = int(conn.execute(text("SELECT count(*) FROM events")).scalar_one())
            stored = {
                m: (t, e)
                for m, t, e in conn.execute(text("SELECT message_id, type, event FROM events"))
            }
            with_events = {
                p for (p,) in conn.execute(text("SELECT DISTINCT profile_id FROM events"))
            }
            two_devices = int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM (SELECT profile_id FROM identities WHERE kind = "
                        "'anonymous_id' GROUP BY profile_id HAVING count(*) > 1) x"
                    )
                ).scalar_one()
            )
        # Every event sent is stored once; the only others are Sartor's own segment
        # transitions (`Segment Entered`/`Segment Exited`, logged by the workers).
        assert message_ids <= set(stored), f"{len(message_ids - set(stored))} events lost"
        own = {m: te for m, te in stored.items() if m not in message_ids}
        assert all(t == "track" and e in SYSTEM_EVENTS for t, e in own.values()), (
            f"unexpected events in the log: {list(own.items())[:5]}"
        )
        assert stored_events == len(stored) == EVENTS + len(own)

        incremental = snapshot(db)
        assert set(incremental) == with_events, "a profile without events, or events without one"
        # Every behavioural event is counted once (Sartor's own transitions are not behaviour).
        counted = sum(c["events"] for c, _, _ in incremental.values() if c is not None)
        assert counted == EVENTS, f"{counted} events folded, {EVENTS} stored"

        t2 = time.monotonic()
        with Engine.open(url, settings=settings) as rebuilder:
            # Only the folds are under test: no segment re-evaluation (it may log events).
            getattr(rebuilder.updater, "batch_listeners", []).clear()
            assert rebuilder.rebuild() == len(incremental)
        with db.connect() as conn:
            assert int(conn.execute(text("SELECT count(*) FROM events")).scalar_one()) == (
                stored_events
            ), "the rebuild added events to the log"
        timings["rebuild"] = time.monotonic() - t2
        rebuilt = snapshot(db)
        assert set(rebuilt) == set(incremental)
        bad: list[str] = []
        for pid, (computed, traits, last_seq) in incremental.items():
            again = rebuilt[pid]
            diffs = differences(computed, again[0], "computed") + differences(
                traits, again[1], "traits"
            )
            if last_seq != again[2]:
                diffs.append(f"last_seq {last_seq} != {again[2]}")
            if diffs:
                bad.append(f"{pid}: {diffs[:5]}")
        assert not bad, f"{len(bad)} of {len(incremental)} profiles differ: {bad[:5]}"
        timings["total"] = time.monotonic() - started
        print(
            f"\n{EVENTS} events (+{len(own)} segment transitions), {len(incremental)} profiles, "
            f"{two_devices} with two devices, "
            f"worker killed after {killed_at} of {len(bodies)} batches; "
            + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        )
    finally:
        stack.close()
        for w in workers:
            w.kill()
        for s in servers:
            s.kill()
        db.dispose()
        for k in r.scan_iter(f"{namespace}:*", count=1000):
            r.delete(k)
        r.close()
        drop_pg_database(name)
