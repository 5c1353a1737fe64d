"""Profiles end to end, on SQLite and PostgreSQL: the incremental fold (in-process bus, and
Redis Streams with two workers) against a full rebuild and a naive reference, the hot-user
refresh rule, the live WebSocket stream, the profile API, and erasure reaching Redis.

The acceptance property: whatever the duplicates, the arrival order and the identity
merges, the profile the bus folded event by event, the profile ``rebuild`` recomputes, and
a fold of the person's logged events sorted by time are the same document.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select
from starlette.websockets import WebSocketDisconnect

from sartor.bus import redis_streams
from sartor.bus.redis_streams import GROUP, RedisStreamWorker, stream_key
from sartor.clock import iso, now_ms
from sartor.config import Settings
from sartor.engine import CreatedWorkspace, Engine, NotFound
from sartor.profiles import folds
from sartor.profiles.hot import RedisHotState
from sartor.profiles.updater import ProfileChange
from sartor.storage.tables import events, profiles
from tests.conftest import require_redis
from tests.test_profile_folds import close, identify_traits, products

T0 = 1_700_000_000_000
MINUTE = 60_000

ENGINE_PROPERTY = hsettings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
_names = itertools.count(1)


def _settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "home": home,
        "secret_key": "test-secret-key-0123456789",
        "rate_limit_events_per_second": 0,
        "log_json": False,
        # No periodic replay: only the notifications fold, so the incremental path is what
        # these tests see (the replay at start finds an empty log).
        "reconcile_seconds": 3600,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:  # overrides conftest's: no periodic replay
    return _settings(tmp_path)


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A namespace of this test's own; every key under it is deleted afterwards."""
    url = require_redis()
    ns = f"t{uuid4().hex}"
    yield ns
    client = redis_streams.connect(url)
    keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def new_workspace(engine: Engine) -> CreatedWorkspace:
    return engine.create_workspace(f"ws-{next(_names)}-{uuid4().hex[:6]}")


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


# -- reading the stored state, and the naive reference ----------------------------------------


def stored_docs(engine: Engine, ws_id: str) -> dict[str, dict[str, Any] | None]:
    """Each profile's fold state as stored (``computed`` plus ``traits``), read straight
    from the table: no catch-up happens on this path."""
    with engine.db.connect() as conn:
        rows = conn.execute(
            select(profiles.c.profile_id, profiles.c.computed, profiles.c.traits).where(
                profiles.c.workspace_id == ws_id
            )
        ).all()
    return {
        r.profile_id: None if r.computed is None else {**r.computed, "traits": r.traits}
        for r in rows
    }


def folded_up_to_the_log(engine: Engine, ws_id: str) -> bool:
    """Every profile's watermark is the newest seq of its events (and no event is orphan)."""
    with engine.db.connect() as conn:
        tops = dict(
            conn.execute(
                select(events.c.profile_id, func.max(events.c.seq))
                .where(events.c.workspace_id == ws_id)
                .group_by(events.c.profile_id)
            ).all()
        )
        marks = dict(
            conn.execute(
                select(profiles.c.profile_id, profiles.c.last_seq).where(
                    profiles.c.workspace_id == ws_id
                )
            ).all()
        )
    assert set(tops) <= set(marks), f"events of unknown profiles {set(tops) - set(marks)}"
    return all(tops.get(pid) == mark for pid, mark in marks.items())


def logged_ids(engine: Engine, ws_id: str) -> set[str]:
    with engine.db.connect() as conn:
        return set(
            conn.execute(
                select(events.c.message_id).where(events.c.workspace_id == ws_id)
            ).scalars()
        )


def reference_docs(engine: Engine, ws_id: str) -> dict[str, dict[str, Any] | None]:
    """The naive reference: each profile's logged events, sorted by timestamp, folded."""
    with engine.db.connect() as conn:
        pids = (
            conn.execute(select(profiles.c.profile_id).where(profiles.c.workspace_id == ws_id))
            .scalars()
            .all()
        )
        rows = conn.execute(
            select(
                events.c.seq,
                events.c.message_id,
                events.c.type,
                events.c.event,
                events.c.timestamp,
                events.c.payload,
                events.c.profile_id,
            ).where(events.c.workspace_id == ws_id)
        ).all()
    by_pid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_pid[r.profile_id].append(dict(r._mapping))
    config = engine.settings.profile_config
    out: dict[str, dict[str, Any] | None] = {}
    for pid in pids:
        evs = sorted(by_pid.get(pid, []), key=lambda e: (e["timestamp"], e["message_id"]))
        if not evs:
            out[pid] = None
            continue
        doc = folds.empty()
        for e in evs:
            doc = folds.fold(doc, e, config)
        out[pid] = doc
    return out


def assert_same_profiles(
    incremental: dict[str, Any], rebuilt: dict[str, Any], reference: dict[str, Any]
) -> None:
    assert set(incremental) == set(reference) == set(rebuilt)
    for pid, ref in reference.items():
        if ref is None:
            assert incremental[pid] is None and rebuilt[pid] is None, pid
            continue
        close(incremental[pid], ref, path=f"incremental[{pid}]")
        close(rebuilt[pid], ref, path=f"rebuilt[{pid}]")


# -- random scenarios: people, sessions out of order, duplicates, identity merges ----------------


@st.composite
def track_body(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(
        st.sampled_from(
            [
                "Product Viewed",
                "Product Viewed",
                "Product Added",
                "Checkout Started",
                "Order Completed",
                "Order Refunded",
                "Products Searched",
            ]
        )
    )
    props: dict[str, Any] = {}
    if name in ("Product Viewed", "Product Added"):
        props = draw(products())
    elif name != "Products Searched":
        props["products"] = draw(st.lists(products(), min_size=1, max_size=3))
        if name in ("Order Completed", "Order Refunded") and draw(st.booleans()):
            props[draw(st.sampled_from(["revenue", "total"]))] = draw(st.integers(1, 900))
    return {"type": "track", "event": name, "properties": props}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int]]:
    """Messages of 1-3 people, in arrival order, and the batch sizes to send them in."""
    messages: list[dict[str, Any]] = []
    for k in range(draw(st.integers(1, 3))):
        user = f"user-{k}"
        anons = [f"anon-{k}-{j}" for j in range(draw(st.integers(1, 2)))]
        for _ in range(draw(st.integers(1, 3))):  # sessions
            start = T0 + draw(st.integers(0, 3 * 24 * 60)) * MINUTE
            session: list[dict[str, Any]] = []
            for _ in range(draw(st.integers(1, 6))):
                ts = start + draw(st.integers(0, 25 * MINUTE))
                anon = draw(st.sampled_from(anons))
                how = draw(
                    st.sampled_from(
                        [
                            "anon",
                            "anon",
                            "anon",
                            "user",
                            "both",
                            "identify",
                            "identify-anon",
                            "alias",
                            "page",
                        ]
                    )
                )
                if how in ("identify", "identify-anon"):
                    body: dict[str, Any] = {"type": "identify", "traits": draw(identify_traits())}
                    body["anonymousId"] = anon
                    if how == "identify":
                        body["userId"] = user
                        if draw(st.booleans()):
                            del body["anonymousId"]
                elif how == "alias":
                    body = {"type": "alias", "previousId": anon, "userId": user}
                elif how == "page":
                    body = {"type": "page", "name": "Home", "anonymousId": anon}
                else:
                    body = draw(track_body())
                    if how in ("anon", "both"):
                        body["anonymousId"] = anon
                    if how in ("user", "both"):
                        body["userId"] = user
                body["timestamp"] = iso(ts)
                session.append(body)
            # Within a session, arrival order is not time order.
            messages.extend(draw(st.permutations(session)))
    # People interleave; then some messages are sent again, later, with the same messageId.
    messages = list(draw(st.permutations(messages)))
    for i, m in enumerate(messages):
        m["messageId"] = f"msg-{i}"
    for _ in range(draw(st.integers(0, 4))):
        if messages:
            dup = dict(draw(st.sampled_from(messages)))
            messages.insert(draw(st.integers(0, len(messages))), dup)
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=len(messages) or 1))
    return messages, sizes


def send(engine: Engine, ws: Any, messages: list[dict[str, Any]], sizes: list[int]) -> int:
    """Ingest in batches of the given sizes (cycled); returns the number stored."""
    stored, i = 0, 0
    for size in itertools.cycle(sizes):
        if i >= len(messages):
            break
        result = engine.ingest(ws, messages[i : i + size])
        assert not result.errors, result.errors
        stored += result.stored
        i += size
    return stored


def distinct(messages: list[dict[str, Any]]) -> int:
    return len({m["messageId"] for m in messages})


# -- the acceptance property: in-process bus ----------------------------------------------------


def test_incremental_profiles_equal_rebuild_and_reference(engine: Engine) -> None:
    engine.start()

    @ENGINE_PROPERTY
    @given(scenarios())
    def check(scenario: tuple[list[dict[str, Any]], list[int]]) -> None:
        messages, sizes = scenario
        ws = new_workspace(engine).workspace
        assert send(engine, ws, messages, sizes) == distinct(messages)
        wait_for(
            lambda: (
                engine.bus.idle.is_set()
                and folded_up_to_the_log(engine, ws.id)
                and engine.bus.idle.is_set()
            ),
            what="the in-process bus to fold everything",
        )
        incremental = stored_docs(engine, ws.id)
        reference = reference_docs(engine, ws.id)
        assert logged_ids(engine, ws.id) >= {m["messageId"] for m in messages}
        engine.rebuild(ws)
        assert_same_profiles(incremental, stored_docs(engine, ws.id), reference)

    check()


# -- the same with Redis Streams and two workers -------------------------------------------------


class Workers:
    """``sartor worker`` processes, as threads: each its own engine (database pool, Redis
    client, updater with the segment listener) as the CLI builds it, all in one group."""

    def __init__(self, database_url: str, settings: Settings) -> None:
        assert settings.redis_url is not None
        self.database_url = database_url
        self.settings = settings
        self.runners: list[RedisStreamWorker] = []
        self.threads: list[threading.Thread] = []
        self.engines: list[Engine] = []

    def worker(self, name: str, **kw: Any) -> RedisStreamWorker:
        engine = Engine.open(self.database_url, settings=self.settings, migrate=False)
        self.engines.append(engine)
        assert engine.redis is not None
        options: dict[str, Any] = {"block_ms": 50, "claim_idle_ms": 300, "reconcile_seconds": 3600}
        options.update(kw)
        return RedisStreamWorker(
            engine.updater,
            engine.redis,
            namespace=self.settings.redis_namespace,
            name=name,
            **options,
        )

    def start(self, runner: RedisStreamWorker) -> None:
        thread = threading.Thread(target=runner.run, name=runner.name, daemon=True)
        thread.start()
        self.runners.append(runner)
        self.threads.append(thread)

    def stop(self) -> None:
        for r in self.runners:
            r.stop.set()
        for t in self.threads:
            t.join(10)
        for engine in self.engines:
            engine.close()
            if engine.redis is not None:
                engine.redis.close()


def group_drained(client: Any, namespace: str) -> bool:
    """Nothing pending in the group and every entry delivered."""
    stream = stream_key(namespace)
    if not client.exists(stream):
        return True
    info = client.xinfo_stream(stream)
    for g in client.xinfo_groups(stream):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name != GROUP:
            continue
        delivered = g["last-delivered-id"]
        return g["pending"] == 0 and delivered == info["last-generated-id"]
    return False


@pytest.fixture
def redis_settings(tmp_path: Path, redis_namespace: str) -> Settings:
    return _settings(tmp_path, redis_url=require_redis(), redis_namespace=redis_namespace)


@pytest.fixture
def redis_engine(database_url: str, redis_settings: Settings) -> Iterator[Engine]:
    eng = Engine.open(database_url, settings=redis_settings)
    yield eng
    eng.close()
    if eng.redis is not None:
        eng.redis.close()


@pytest.mark.integration
def test_two_redis_workers_fold_what_rebuild_and_the_reference_compute(
    database_url: str, redis_engine: Engine, redis_settings: Settings
) -> None:
    engine = redis_engine
    ns = redis_settings.redis_namespace
    workers = Workers(database_url, redis_settings)
    try:
        for name in ("worker-a", "worker-b"):
            workers.start(workers.worker(name))

        @hsettings(ENGINE_PROPERTY, max_examples=10)
        @given(scenarios())
        def check(scenario: tuple[list[dict[str, Any]], list[int]]) -> None:
            messages, sizes = scenario
            ws = new_workspace(engine).workspace
            assert send(engine, ws, messages, sizes) == distinct(messages)
            wait_for(
                lambda: folded_up_to_the_log(engine, ws.id) and group_drained(engine.redis, ns),
                what="the workers to fold everything",
            )
            incremental = stored_docs(engine, ws.id)
            reference = reference_docs(engine, ws.id)
            engine.rebuild(ws)
            assert_same_profiles(incremental, stored_docs(engine, ws.id), reference)

        check()
        # Both consumers took part, and every notification was acknowledged.
        assert all(r.processed > 0 for r in workers.runners), [r.processed for r in workers.runners]
        wait_for(lambda: group_drained(engine.redis, ns), what="the last notifications")
        assert engine.redis is not None
        assert engine.redis.xpending(stream_key(ns), GROUP)["pending"] == 0
    finally:
        workers.stop()


@pytest.mark.integration
def test_a_dead_workers_entries_are_reclaimed(
    database_url: str, redis_engine: Engine, redis_settings: Settings
) -> None:
    engine = redis_engine
    client = engine.redis
    assert client is not None
    ns = redis_settings.redis_namespace
    stream = stream_key(ns)
    workers = Workers(database_url, redis_settings)
    try:
        survivor = workers.worker("survivor", claim_idle_ms=200)
        survivor.ensure_group()
        ws = new_workspace(engine).workspace
        users = [f"dead-{i}" for i in range(6)]
        commits = 0
        for i, user in enumerate(users):
            result = engine.ingest(
                ws,
                [
                    {
                        "type": "track",
                        "event": "Product Viewed",
                        "userId": user,
                        "messageId": f"d{i}-{j}",
                        "timestamp": iso(T0 + j * MINUTE),
                        "properties": {"product_id": f"sku-{j}", "price": 10 + j},
                    }
                    for j in range(3)
                ],
            )
            assert result.stored == 3
            commits += 1
        wait_for(lambda: client.xlen(stream) == commits, what="the notifications")

        # A worker reads every notification, then dies before acknowledging any.
        read = client.xreadgroup(GROUP, "dead", {stream: ">"}, count=1000)
        assert sum(len(entries) for _, entries in read) == commits
        assert client.xpending(stream, GROUP)["pending"] == commits
        assert set(stored_docs(engine, ws.id).values()) == {None}  # nothing folded yet

        # The survivor may not replay the log (another process holds the replay lock), so
        # only XAUTOCLAIM can give it the dead worker's entries.
        client.set(survivor.replay_lock, "someone-else", px=60_000)
        workers.start(survivor)
        wait_for(
            lambda: folded_up_to_the_log(engine, ws.id) and group_drained(client, ns),
            what="the survivor to reclaim and fold",
        )
        # (It counts after acknowledging: wait for the count, not only the empty group.)
        wait_for(lambda: survivor.processed == commits, timeout=5, what="the survivor's count")
        consumers = {
            (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): c["pending"]
            for c in client.xinfo_consumers(stream, GROUP)
        }
        assert consumers.get("dead", 0) == 0
        incremental = stored_docs(engine, ws.id)
        reference = reference_docs(engine, ws.id)
        engine.rebuild(ws)
        assert_same_profiles(incremental, stored_docs(engine, ws.id), reference)
        assert all(doc and doc["events"] == 3 for doc in incremental.values())
    finally:
        workers.stop()


@pytest.mark.integration
def test_a_backlog_of_pending_entries_is_reclaimed_step_after_step(
    redis_engine: Engine, redis_settings: Settings
) -> None:
    """Pending entries are looked for every half idle time, but a full claim looks again at
    the next step: a dead worker's backlog larger than one claim is taken without waiting."""
    client = redis_engine.redis
    assert client is not None
    stream = stream_key(redis_settings.redis_namespace)
    worker = RedisStreamWorker(
        redis_engine.updater,
        client,
        namespace=redis_settings.redis_namespace,
        name="survivor",
        block_ms=10,
        claim_idle_ms=100,
        count=2,
    )
    worker.ensure_group()
    for _ in range(6):
        client.xadd(stream, {"pairs": orjson.dumps([]), "seq": 0})
    client.xreadgroup(GROUP, "dead", {stream: ">"}, count=100)
    time.sleep(0.15)
    for _ in range(3):
        worker.run_once()
    assert worker.processed == 6 and client.xpending(stream, GROUP)["pending"] == 0

    client.xadd(stream, {"pairs": orjson.dumps([]), "seq": 0})
    client.xreadgroup(GROUP, "dead", {stream: ">"}, count=100)
    worker.run_once()  # claimed nothing a moment ago: does not look again yet
    time.sleep(0.15)
    worker.run_once()
    assert worker.processed == 7 and client.xpending(stream, GROUP)["pending"] == 0


# -- the fold states kept in memory ------------------------------------------------------------


def test_a_state_kept_in_memory_is_not_used_once_another_process_folded(
    database_url: str, settings: Settings
) -> None:
    """Each updater keeps the states it saved; a profile another process folded since (or
    a merge marked for refolding) must be read again, or events would be lost or doubled."""
    first = Engine.open(database_url, settings=settings)
    second = Engine.open(database_url, settings=settings, migrate=False)
    try:
        ws = new_workspace(first).workspace

        def view(engine: Engine, i: int, **ids: str) -> None:
            result = engine.track(
                ws,
                "Product Viewed",
                message_id=f"view-{i}",
                timestamp=iso(T0 + i * MINUTE),
                properties={"product_id": f"sku-{i}", "category": "shoes", "price": 10 + i},
                **ids,
            )
            assert result.stored == 1

        def events_of(engine: Engine, any_id: str) -> int:
            return int(engine.profile(ws, any_id)["computed"]["events"])

        view(first, 1, user_id="u")
        assert events_of(first, "u") == 1  # folded by the first, which keeps the state
        view(second, 2, user_id="u")
        assert events_of(second, "u") == 2  # folded by the second
        view(first, 3, user_id="u")
        assert events_of(first, "u") == 3  # the first's state is stale: read again
        # A merge: the anonymous visitor's profile folds into the user's, from scratch.
        view(first, 4, anonymous_id="a")
        assert events_of(first, "a") == 1
        first.identify(ws, user_id="u", anonymous_id="a", message_id="link", timestamp=iso(T0))
        view(first, 5, user_id="u")
        assert events_of(first, "u") == 6  # five views and the identify
        incremental = stored_docs(first, ws.id)
        reference = reference_docs(first, ws.id)
        first.rebuild(ws)
        assert_same_profiles(incremental, stored_docs(first, ws.id), reference)
    finally:
        second.close()
        first.close()


def test_a_merge_between_folding_and_saving_is_not_lost(sqlite_engine: Engine) -> None:
    """On SQLite the updater folds before it takes the write lock; a merge landing in
    between (the survivor marked for refolding, the other's events moved to it) must make
    it fold again under the lock, or the merged events would never reach the profile. (On
    PostgreSQL the rows are locked before they are folded: the merge waits.)"""
    engine = sqlite_engine
    ws = new_workspace(engine).workspace
    engine.track(ws, "Product Viewed", anonymous_id="a", message_id="a1", timestamp=iso(T0))
    engine.track(ws, "Product Viewed", user_id="u", message_id="u1", timestamp=iso(T0 + 1))
    engine.profile(ws, "a")
    engine.profile(ws, "u")
    engine.track(ws, "Product Viewed", user_id="u", message_id="u2", timestamp=iso(T0 + 2))
    engine.profile(ws, "u")
    engine.track(ws, "Product Viewed", user_id="u", message_id="u3", timestamp=iso(T0 + 3))
    updater = engine.updater
    fold_once = updater._fold
    raced: list[bool] = []

    def fold_then_merge(*args: Any) -> Any:
        work = fold_once(*args)
        if not raced:  # after the first fold, before the lock: the person signs in
            raced.append(True)
            result = engine.identify(ws, user_id="u", anonymous_id="a", message_id="link")
            assert result.stored == 1
        return work

    updater._fold = fold_then_merge  # type: ignore[method-assign]
    try:
        with engine.db.connect() as conn:
            pids = [p for (p,) in conn.execute(select(profiles.c.profile_id))]
        updater.catch_up((ws.id, p) for p in pids)
    finally:
        del updater._fold
    assert raced
    engine.updater.replay()  # whatever the merge left for later
    merged = engine.profile(ws, "u")
    assert merged["profileId"] == engine.profile(ws, "a")["profileId"]
    assert merged["computed"]["events"] == 5  # four views and the identify
    incremental = stored_docs(engine, ws.id)
    reference = reference_docs(engine, ws.id)
    engine.rebuild(ws)
    assert_same_profiles(incremental, stored_docs(engine, ws.id), reference)


def test_a_bounded_replay_stops_at_its_position(engine: Engine) -> None:
    """A worker's periodic replay goes up to the head it saw one period ago (newer events
    are still on their way through the stream); the next replay takes the rest."""
    from sartor.profiles import store

    ws = new_workspace(engine).workspace  # the bus is not started: nothing folds by itself
    for i, user in enumerate(["early", "early", "late"]):
        engine.track(ws, "Product Viewed", user_id=user, message_id=f"m{i}")
    with engine.db.connect() as conn:
        head = store.head(conn)
        start = store.get_checkpoint(conn, "profiles")

    def folded() -> dict[str, int]:
        return {
            user: int(doc["events"]) if doc else 0
            for user in ("early", "late")
            for doc in [stored_docs(engine, ws.id).get(_pid(engine, ws, user))]
        }

    assert engine.updater.replay(upto=head - 1) == 1
    assert folded() == {"early": 2, "late": 0}
    with engine.db.connect() as conn:
        assert store.get_checkpoint(conn, "profiles") == max(start, head - 1)
    engine.updater.replay()  # the rest (and early's entry into "active", logged meanwhile)
    assert folded() == {"early": 2, "late": 1}


def _pid(engine: Engine, ws: Any, user: str) -> str:
    """The profile of a user's events, read from the log (no catch-up on this path)."""
    with engine.db.connect() as conn:
        query = select(events.c.profile_id).where(
            events.c.workspace_id == ws.id, events.c.user_id == user
        )
        return str(conn.execute(query.limit(1)).scalar_one())


# -- the hot-user refresh rule ---------------------------------------------------------------


def _refresh_rule(engine: Engine) -> None:
    ws = new_workspace(engine).workspace
    changes: list[ProfileChange] = []
    engine.updater.listeners.append(changes.append)
    window = 15 * MINUTE
    now = now_ms()

    def refreshes() -> list[ProfileChange]:
        return [c for c in changes if c.kind == "profile.refreshed"]

    def view(user: str, i: int, at: int) -> None:
        result = engine.track(
            ws,
            "Product Viewed",
            user_id=user,
            message_id=f"{user}-{i}",
            timestamp=iso(at),
            properties={"product_id": f"sku-{i}", "category": "shoes"},
        )
        assert result.stored == 1
        engine.profile(ws, user)  # the read catches up: this fold records the interaction

    # Nine interactions within the window (and identifies, which are not interactions).
    for i in range(9):
        view("hot", i, now - (9 - i) * MINUTE)
        engine.identify(ws, user_id="hot", message_id=f"hot-id-{i}", traits={"n": i})
        engine.profile(ws, "hot")
    assert refreshes() == []
    assert engine.profile(ws, "hot")["refreshed"] is None
    # The tenth triggers exactly one refresh, kept on the profile.
    view("hot", 9, now)
    assert len(refreshes()) == 1
    change = refreshes()[0]
    assert change.data["preferences"]["interactions"] == 10
    stored = engine.profile(ws, "hot")["refreshed"]
    assert stored is not None and stored["interactions"] == 10
    assert stored["categories"] == {"shoes": 1.0}
    assert stored["recent_items"][0] == "sku-9"
    # More interactions within the same window do not refresh again.
    for i in range(10, 14):
        view("hot", i, now)
    assert len(refreshes()) == 1

    # Interactions older than the window do not count.
    for i in range(20):
        view("cold", i, now - window - (i + 1) * MINUTE)
    for i in range(20, 29):
        view("cold", i, now - MINUTE)
    assert [c.profile_id for c in refreshes()] == [change.profile_id]
    assert engine.profile(ws, "cold")["refreshed"] is None
    view("cold", 29, now)
    assert len(refreshes()) == 2
    assert engine.profile(ws, "cold")["refreshed"]["interactions"] == 10

    # Ten interactions folded at once (one batch, one catch-up) refresh once too.
    engine.ingest(
        ws,
        [
            {
                "type": "track",
                "event": "Product Viewed",
                "userId": "burst",
                "messageId": f"burst-{i}",
                "timestamp": iso(now - i * 1000),
                "properties": {"product_id": "sku-1"},
            }
            for i in range(10)
        ],
    )
    engine.profile(ws, "burst")
    assert len(refreshes()) == 3
    assert refreshes()[-1].data["preferences"]["interactions"] == 10


def test_hot_user_refresh_in_process(engine: Engine) -> None:
    _refresh_rule(engine)


@pytest.mark.integration
def test_hot_user_refresh_with_redis_hot_state(redis_engine: Engine) -> None:
    assert isinstance(redis_engine.hot, RedisHotState)
    _refresh_rule(redis_engine)


@pytest.mark.integration
def test_redis_hot_state_batch_matches_one_by_one(redis_namespace: str) -> None:
    """``update_many`` (one script call a batch) does what ``push_recent`` + ``record`` do
    one profile at a time: the same counts, windows and recent items; ``None`` items leave
    the recent items alone; thousands of interactions at once; older recent lists read."""
    import redis

    client = redis.Redis.from_url(require_redis())
    batch, single = (
        RedisHotState(client, f"{redis_namespace}-b"),
        RedisHotState(client, f"{redis_namespace}-s"),
    )
    try:
        now, window = 10_000_000, 60_000
        items = [
            {"product_id": f"p{i}", "action": "viewed", "at": now - i, "mid": f"m{i}"}
            for i in range(60)
        ]
        stamps = {
            "a": [("a1", now), ("a2", now - window - 1), ("a3", now + window + 1), ("a1", now - 5)],
            "b": [(f"b{i}", now - i) for i in range(2_500)],  # several ZADD calls in the script
            "c": [],
        }
        updates = [
            ("ws", pid, items[:n], stamps[pid]) for pid, n in (("a", 60), ("b", 3), ("c", 0))
        ]
        counts = batch.update_many(updates, 50, now, window)
        expected = []
        for ws, pid, recent, st_ in updates:
            single.push_recent(ws, pid, recent, 50)
            expected.append(single.record(ws, pid, st_, now, window))
        assert counts == expected == [1, 2_500, 0]
        for pid in ("a", "b", "c"):
            assert batch.recent("ws", pid) == single.recent("ws", pid)
        assert batch.recent("ws", "a") == items[:50]
        assert client.zscore(f"{redis_namespace}-b:window:ws:a", "a1") == now - 5  # the last wins
        assert 0 < client.pttl(f"{redis_namespace}-b:window:ws:b") <= 2 * window

        # Unchanged recent items are not sent: what is stored stays.
        assert batch.update_many([("ws", "a", None, [("a4", now)])], 50, now, window) == [2]
        assert batch.recent("ws", "a") == items[:50]

        # Recent items an older version kept as a list are still read, then replaced.
        old = f"{redis_namespace}-b:recent:ws:d"
        client.rpush(old, *[orjson.dumps(i) for i in items[:2]])
        assert batch.recent("ws", "d") == items[:2]
        batch.push_recent("ws", "d", items[2:4], 50)
        assert batch.recent("ws", "d") == items[2:4] and not client.exists(old)
        batch.erase("ws", "a")
        assert batch.recent("ws", "a") == [] and not client.exists(
            f"{redis_namespace}-b:window:ws:a"
        )
    finally:
        for prefix in (f"{redis_namespace}-b", f"{redis_namespace}-s"):
            for key in client.scan_iter(f"{prefix}:*", count=1000):
                client.delete(key)
        client.close()


# -- the WebSocket stream ----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_stream_through_redis_batches_in_order(redis_namespace: str) -> None:
    """With Redis, what one process publishes reaches another's subscribers in order, a
    whole batch in one Redis message per workspace; a single message (an older publisher)
    is still delivered."""
    import asyncio

    from sartor.bus.broadcast import Broadcaster

    publisher = Broadcaster(redis_streams.connect(require_redis()), redis_namespace)
    listener_client = redis_streams.connect(require_redis())
    listener = Broadcaster(listener_client, redis_namespace)

    raw = listener_client.pubsub(ignore_subscribe_messages=True)
    raw.psubscribe(f"{redis_namespace}:stream:*")

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        qa, qb = listener.subscribe("ws-a"), listener.subscribe("ws-b")
        await asyncio.sleep(0.3)  # the pattern subscription is in place
        for i in range(5):
            publisher.publish_many("ws-a", [{"n": i, "k": j} for j in range(3)])
            publisher.publish("ws-b", {"n": i})
        listener_client.publish(f"{redis_namespace}:stream:ws-b", orjson.dumps({"n": "old"}))
        got_a = [await asyncio.wait_for(qa.get(), 10) for _ in range(15)]
        got_b = [await asyncio.wait_for(qb.get(), 10) for _ in range(6)]
        return got_a, got_b

    try:
        got_a, got_b = asyncio.run(scenario())
    finally:
        publisher.close()
        listener.close()
    assert got_a == [{"n": i, "k": j} for i in range(5) for j in range(3)]
    # Each Redis message of the publisher is an array of stream messages.
    sent: list[Any] = []
    deadline = time.monotonic() + 10
    while len(sent) < 21 and time.monotonic() < deadline:  # at most 21 messages
        msg = raw.get_message(timeout=0.5)
        if msg is not None:
            sent.append(orjson.loads(msg["data"]))
        elif sum(len(m) for m in sent if isinstance(m, list)) == 20 and {"n": "old"} in sent:
            break
    raw.close()
    batches = [m for m in sent if m != {"n": "old"}]
    assert all(isinstance(m, list) for m in batches) and sum(map(len, batches)) == 20
    # (the publisher sends from its own thread: the direct publish may come first)
    assert [m for m in got_b if m["n"] != "old"] == [{"n": i} for i in range(5)]
    assert {"n": "old"} in got_b


@pytest.mark.timeout(60)
def test_stream_delivers_events_and_profile_changes(
    engine: Engine, workspace: CreatedWorkspace, client: Any
) -> None:
    engine.start()
    keys = workspace.keys
    with client.websocket_connect(f"/v1/stream?key={keys['read']}") as socket:
        hello = socket.receive_json()
        assert hello == {"type": "subscribed", "workspaceId": workspace.workspace.id}
        resp = client.post(
            "/v1/track",
            json={
                "userId": "live-1",
                "event": "Product Viewed",
                "messageId": "live-msg-1",
                "properties": {"product_id": "sku-9", "price": 12.5},
            },
            auth=(keys["write"], ""),
        )
        assert resp.status_code == 200, resp.text
        seen: list[dict[str, Any]] = []
        while not (
            any(m["type"] == "event" for m in seen)
            and any(m["type"] == "profile.updated" for m in seen)
        ):
            seen.append(socket.receive_json())
    event = next(m for m in seen if m["type"] == "event")
    assert event["messageId"] == "live-msg-1" and event["userId"] == "live-1"
    assert event["event"] == "Product Viewed" and event["eventType"] == "track"
    update = next(m for m in seen if m["type"] == "profile.updated")
    assert update["profileId"] == event["profileId"]
    assert update["workspaceId"] == workspace.workspace.id and update["events"] == 1
    assert update["lastSeq"] >= 1


@pytest.mark.parametrize(
    ("query", "code"), [("?key={write}", 4403), ("", 4401), ("?key=nonsense", 4401)]
)
def test_stream_refuses_write_keys_and_missing_keys(
    client: Any, workspace: CreatedWorkspace, query: str, code: int
) -> None:
    url = "/v1/stream" + query.format(write=workspace.keys["write"])
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect(url) as socket:
            socket.receive_json()
    assert refused.value.code == code


def test_stream_accepts_an_admin_key_as_bearer(client: Any, workspace: CreatedWorkspace) -> None:
    headers = {"Authorization": f"Bearer {workspace.keys['admin']}"}
    with client.websocket_connect("/v1/stream", headers=headers) as socket:
        assert socket.receive_json()["type"] == "subscribed"


# -- the profile API ---------------------------------------------------------------------------


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_profile_lookup_by_any_id(engine: Engine, workspace: CreatedWorkspace, client: Any) -> None:
    ws, keys = workspace.workspace, workspace.keys
    engine.track(ws, "Product Viewed", anonymous_id="visitor-7", properties={"product_id": "a"})
    engine.identify(
        ws,
        anonymous_id="visitor-7",
        user_id="member-7",
        traits={"email": "Ann.Lee@Example.com", "plan": "pro"},
    )
    read = _bearer(keys["read"])
    by_user = client.get("/v1/profiles/member-7", headers=read)
    assert by_user.status_code == 200, by_user.text
    doc = by_user.json()
    pid = doc["profileId"]
    assert doc["traits"]["plan"] == "pro"
    assert doc["traits"]["email"].startswith("hmac-sha256:")  # PII is hashed by default
    assert doc["computed"]["events"] == 2 and doc["computed"]["product_views"] == 1
    email_hash = next(i["value"] for i in doc["identities"] if i["kind"] == "email_hash")
    for ref in (
        "visitor-7",
        "Ann.Lee@Example.com",
        "ann.lee@example.com",
        f"hmac-sha256:{email_hash}",
        pid,
    ):
        resp = client.get(f"/v1/profiles/{ref}", headers=read)
        assert resp.status_code == 200, (ref, resp.text)
        assert resp.json()["profileId"] == pid, ref
    for unknown in (
        "nobody",
        "nobody@example.com",
        "hmac-sha256:abc",
        "p_000000000000000000000000",
    ):
        resp = client.get(f"/v1/profiles/{unknown}", headers=read)
        assert resp.status_code == 404, (unknown, resp.text)
    # Reading needs a read (or admin) key.
    assert client.get("/v1/profiles/member-7", headers=_bearer(keys["write"])).status_code == 403
    assert client.get("/v1/profiles/member-7").status_code == 401
    assert client.get("/v1/profiles/member-7", headers=_bearer(keys["admin"])).status_code == 200


def test_profile_listing_pages_and_filters_by_trait(
    engine: Engine, workspace: CreatedWorkspace, client: Any
) -> None:
    ws, read = workspace.workspace, _bearer(workspace.keys["read"])
    result = engine.ingest(
        ws,
        [
            {
                "type": "identify",
                "userId": f"lister-{i:03d}",
                "messageId": f"list-{i}",
                "traits": {"plan": "pro" if i % 3 == 0 else "free", "rank": i},
            }
            for i in range(120)
        ],
    )
    assert result.stored == 120

    def walk(query: str, limit: int) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(200):
            url = f"/v1/profiles?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
            resp = client.get(url, headers=read)
            assert resp.status_code == 200, resp.text
            page = resp.json()
            assert len(page["profiles"]) <= limit
            got += page["profiles"]
            cursor = page["next"]
            if cursor is None:
                return got
        raise AssertionError("the cursor never ended")

    def users(docs: list[dict[str, Any]]) -> list[str]:
        return [i["value"] for d in docs for i in d["identities"] if i["kind"] == "user_id"]

    # Nothing has read these profiles yet (no bus runs here): a filter must still see the
    # traits the log holds.
    pro_users = [f"lister-{i:03d}" for i in range(0, 120, 3)]
    assert sorted(users(walk("&trait.plan=pro", 500))) == pro_users

    everyone = walk("", 25)
    assert len(everyone) == 120
    assert len({d["profileId"] for d in everyone}) == 120  # each exactly once
    assert sorted(users(everyone)) == [f"lister-{i:03d}" for i in range(120)]
    assert [d["profileId"] for d in everyone] == sorted(d["profileId"] for d in everyone)
    assert len(walk("", 120)) == 120 and len(walk("", 500)) == 120

    pros = walk("&trait.plan=pro", 7)
    assert sorted(users(pros)) == [f"lister-{i:03d}" for i in range(0, 120, 3)]
    assert all(d["traits"]["plan"] == "pro" for d in pros)
    # String equality on both dialects, numbers included (a query parameter is a string).
    assert users(walk("&trait.plan=pro&trait.rank=3", 10)) == ["lister-003"]
    assert walk("&trait.plan=enterprise", 10) == []
    assert client.get("/v1/profiles", headers=_bearer(workspace.keys["write"])).status_code == 403


def test_listing_shows_a_profile_whose_only_event_consent_refused(
    engine: Engine, workspace: CreatedWorkspace, client: Any
) -> None:
    ws, read = workspace.workspace, _bearer(workspace.keys["read"])
    # The refusal is recorded on a new profile; the event itself is dropped.
    refused = engine.track(
        ws,
        "Product Viewed",
        anonymous_id="shy-visitor",
        context={"consent": {"categoryPreferences": {"Analytics": False}}},
    )
    assert refused.dropped == {"consent": 1}
    engine.track(ws, "Product Viewed", anonymous_id="open-visitor")
    resp = client.get("/v1/profiles", headers=read)
    assert resp.status_code == 200, resp.text
    docs = resp.json()["profiles"]
    assert len(docs) == 2
    shy = next(d for d in docs if d["identities"][0]["value"] == "shy-visitor")
    assert shy["computed"]["events"] == 0 and shy["lastSeq"] is None
    assert shy["consent"]["analytics"]["granted"] is False
    assert client.get("/v1/profiles/shy-visitor", headers=read).status_code == 200


def test_pushed_traits_are_logged_and_survive_a_rebuild(
    engine: Engine, workspace: CreatedWorkspace, client: Any
) -> None:
    ws, keys = workspace.workspace, workspace.keys
    engine.track(ws, "Product Viewed", user_id="crm-1", properties={"product_id": "x"})
    engine.track(ws, "Product Viewed", anonymous_id="crm-anon", properties={"product_id": "y"})
    write = {"auth": (keys["write"], "")}

    resp = client.post(
        "/v1/profiles/crm-1/traits",
        json={"tier": "gold", "$set_once": {"source": "crm"}, "$set": {"score": 7}},
        **write,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["traits"] == {"tier": "gold", "source": "crm", "score": 7}
    time.sleep(0.002)  # the next push gets a later timestamp
    resp = client.post(
        "/v1/profiles/crm-1/traits",
        json={"$set_once": {"source": "other"}, "$unset": ["tier"]},
        **write,
    )
    assert resp.status_code == 200, resp.text
    expected = {"source": "crm", "score": 7}
    assert resp.json()["traits"] == expected

    # An anonymous profile takes pushed traits too, and stays anonymous.
    resp = client.post("/v1/profiles/crm-anon/traits", json={"segment": "new"}, **write)
    assert resp.status_code == 200, resp.text
    anon_doc = resp.json()
    assert anon_doc["traits"] == {"segment": "new"}
    assert [i["kind"] for i in anon_doc["identities"]] == ["anonymous_id"]

    # The pushes are identifies in the log, the source of truth...
    logged = [e for e in engine.events(ws, user="crm-1") if e["type"] == "identify"]
    assert [e["traits"] for e in logged] == [
        {"tier": "gold", "$set_once": {"source": "crm"}, "$set": {"score": 7}},
        {"$set_once": {"source": "other"}, "$unset": ["tier"]},
    ]
    # ... so a rebuild from the log reproduces them.
    engine.rebuild(ws)
    read = _bearer(keys["read"])
    assert client.get("/v1/profiles/crm-1", headers=read).json()["traits"] == expected
    assert client.get("/v1/profiles/crm-anon", headers=read).json()["traits"] == {"segment": "new"}
    # Pushing needs a write key.
    denied = client.post("/v1/profiles/crm-1/traits", json={"a": 1}, headers=read)
    assert denied.status_code == 403
    assert client.post("/v1/profiles/crm-1/traits", json={"a": 1}).status_code == 401


def test_pushing_traits_by_profile_id_or_email_targets_that_profile(
    engine: Engine, workspace: CreatedWorkspace
) -> None:
    ws = workspace.workspace
    engine.identify(ws, user_id="mail-1", traits={"email": "mail@example.com"})
    pid = engine.profile(ws, "mail-1")["profileId"]
    assert engine.push_traits(ws, pid, {"via": "pid"})["profileId"] == pid
    assert engine.push_traits(ws, "mail@example.com", {"via": "email"})["profileId"] == pid
    assert engine.profile(ws, "mail-1")["traits"]["via"] == "email"
    with engine.db.connect() as conn:
        ids = conn.execute(select(profiles.c.profile_id)).scalars().all()
    assert ids == [pid]  # no profile was created for the pid or the email as a userId
    assert not [e for e in engine.events(ws) if e["userId"] in (pid, "mail@example.com")]


# -- erasure reaches the profile and Redis -------------------------------------------------------


def _redis_mentions(client: Any, namespace: str, needles: list[str]) -> list[str]:
    """Every key of the namespace whose name or content mentions one of ``needles``."""
    found: list[str] = []
    raw = [n.encode() for n in needles]
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        kind = client.type(key).decode()
        blobs: list[bytes] = [key]
        if kind == "stream":
            for _, fields in client.xrange(key):
                blobs += list(fields.keys()) + list(fields.values())
        elif kind == "list":
            blobs += client.lrange(key, 0, -1)
        elif kind == "zset":
            blobs += client.zrange(key, 0, -1)
        elif kind == "set":
            blobs += list(client.smembers(key))
        elif kind == "hash":
            for k, v in client.hgetall(key).items():
                blobs += [k, v]
        elif kind == "string":
            blobs.append(client.get(key) or b"")
        for blob in blobs:
            if any(n in blob for n in raw):
                found.append(f"{key.decode()} ({kind})")
                break
    return found


@pytest.mark.integration
def test_erasure_removes_the_profile_and_every_redis_trace(
    database_url: str, redis_settings: Settings
) -> None:
    from fastapi.testclient import TestClient

    from sartor.api.app import create_app

    engine = Engine.open(database_url, settings=redis_settings)
    ns = redis_settings.redis_namespace
    client_r = engine.redis
    assert client_r is not None
    try:
        created = new_workspace(engine)
        ws, keys = created.workspace, created.keys
        # An anonymous visitor, folded (so hot state exists under their first profile id),
        # then an identified user, then an event carrying both: the profiles merge.
        engine.track(
            ws,
            "Product Viewed",
            anonymous_id="gone-anon",
            properties={"product_id": "sku-a", "category": "hats"},
        )
        anon_pid = engine.profile(ws, "gone-anon")["profileId"]
        engine.identify(ws, user_id="gone-user", traits={"email": "gone@example.com"})
        user_pid = engine.profile(ws, "gone-user")["profileId"]
        assert anon_pid != user_pid
        engine.track(
            ws,
            "Product Added",
            anonymous_id="gone-anon",
            user_id="gone-user",
            properties={"product_id": "sku-b", "price": 20},
        )
        assert engine.profile(ws, "gone-anon")["profileId"] == user_pid
        for i in range(12):  # enough to refresh: window, cooldown and recent keys exist
            engine.track(
                ws,
                "Product Viewed",
                user_id="gone-user",
                timestamp=iso(now_ms()),
                properties={"product_id": f"sku-{i}"},
                message_id=f"gone-{i}",
            )
        engine.profile(ws, "gone-user")
        engine.track(ws, "Product Viewed", user_id="someone-else", properties={"product_id": "z"})
        other_pid = engine.profile(ws, "someone-else")["profileId"]
        needles = [anon_pid, user_pid]
        assert _redis_mentions(client_r, ns, needles)  # the traces this test must see go

        with TestClient(create_app(engine), raise_server_exceptions=False) as client:
            admin = _bearer(keys["admin"])
            exported = client.get("/v1/users/gone-user/export", headers=admin)
            assert exported.status_code == 200, exported.text
            doc = exported.json()
            assert [p["profileId"] for p in doc["profiles"]] == [user_pid]
            profile = doc["profiles"][0]
            assert profile["computed"]["events"] == 15  # segment transitions are not behaviour
            assert profile["traits"]["email"].startswith("hmac-sha256:")
            assert profile["refreshed"]["interactions"] >= 10
            assert profile["hotState"]["recentItems"]
            own = [e for e in doc["events"] if not e["messageId"].startswith("seg-")]
            assert len(own) == 15

            erased = client.delete("/v1/users/gone-user", headers=admin)
            assert erased.status_code == 200, erased.text
            assert erased.json()["erased"]["profiles"] == 1

            read = _bearer(keys["read"])
            for ref in ("gone-user", "gone-anon", "gone@example.com", user_pid, anon_pid):
                assert client.get(f"/v1/profiles/{ref}", headers=read).status_code == 404, ref
            assert client.get("/v1/users/gone-user/export", headers=admin).status_code == 404
        with pytest.raises(NotFound):
            engine.profile(ws, "gone-user")
        left_over = _redis_mentions(client_r, ns, needles)
        assert left_over == [], (left_over, needles)
        assert _redis_mentions(client_r, ns, [other_pid])  # others' state is untouched
        with engine.db.connect() as conn:
            left = (
                conn.execute(select(profiles.c.profile_id).where(profiles.c.workspace_id == ws.id))
                .scalars()
                .all()
            )
        assert left == [other_pid]
    finally:
        engine.close()
        client_r.close()
