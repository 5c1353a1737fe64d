"""Acceptance tests against a real ``sartor serve`` subprocess, on SQLite and PostgreSQL.

1. The official Segment Python library (``segment-analytics-python``) talks to Sartor as if
   it were api.segment.io: sync calls, then a gzipped, flushed batch from its consumer thread.
2. A crash test: concurrent senders post batches, the server is killed with SIGKILL while
   requests are in flight, restarted on the same port and database, and the senders retry
   whatever was not acknowledged. Nothing acknowledged is lost; nothing is stored twice.
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from sartor.config import Settings
from sartor.engine import Engine
from sartor.storage.db import make_engine
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- 1. the official Segment client ------------------------------------------------------------


def test_official_segment_client(database_url: str, settings: Settings, tmp_path: Path) -> None:
    from segment.analytics import Client

    with Engine.open(database_url, settings=settings) as setup:
        created = setup.create_workspace("shop")
    ws_id = created.workspace.id
    write_key = created.keys["write"]

    errors: list[tuple[Exception, list[Any]]] = []

    def on_error(exc: Exception, batch: list[Any]) -> None:
        errors.append((exc, batch))

    server = ServerProcess(database_url, tmp_path).start()
    sent: dict[str, dict[str, Any]] = {}  # messageId -> the message the client built
    try:
        sync = Client(
            write_key,
            host=server.url,
            sync_mode=True,
            on_error=on_error,
            max_retries=2,
            timeout=10,
        )
        # An anonymous visitor adds to cart (GA4 spelling), a known user orders (Segment
        # spelling) before the two are linked, then identify links them (a merge).
        calls: list[tuple[bool, dict[str, Any]]] = [
            sync.track(
                anonymous_id="anon-1",
                event="add_to_cart",
                properties={
                    "currency": "EUR",
                    "items": [{"item_id": "sku-42", "item_name": "Mug", "price": "19.90"}],
                },
            ),
            sync.track(
                user_id="user-1",
                event="Order Completed",
                properties={
                    "order_id": 1001,
                    "revenue": "39.80",
                    "products": [{"product_id": "sku-42", "price": 19.9, "quantity": 2}],
                },
            ),
            sync.identify(
                user_id="user-1",
                anonymous_id="anon-1",
                traits={"plan": "pro", "email": "ada@example.com"},
            ),
            sync.page(
                user_id="user-1", category="Docs", name="Pricing", properties={"path": "/pricing"}
            ),
        ]
        for ok, msg in calls:
            assert ok
            sent[msg["messageId"]] = msg

        batch_client = Client(
            write_key,
            host=server.url,
            on_error=on_error,
            gzip=True,
            upload_size=20,
            upload_interval=0.2,
            max_retries=2,
            timeout=10,
        )
        batch_ids = [f"batch-{i:03d}" for i in range(50)]
        for i, mid in enumerate(batch_ids):
            if i % 2:
                ok, msg = batch_client.track(
                    user_id=f"user-b{i % 7}",
                    event="view_item",
                    properties={"item_id": f"sku-{i}", "price": i + 0.5},
                    message_id=mid,
                )
            else:
                ok, msg = batch_client.track(
                    anonymous_id=f"anon-b{i % 5}",
                    event="Product Viewed",
                    properties={"product_id": f"sku-{i}", "price": str(i)},
                    message_id=mid,
                )
            assert ok and msg["messageId"] == mid
            sent[mid] = msg
        batch_client.flush()
        batch_client.shutdown()
    finally:
        server.stop()

    assert errors == [], f"the Segment client reported errors: {errors}"

    with Engine.open(database_url, settings=settings) as engine:
        rows = engine.events(ws_id, limit=1000)
    # Sartor's own segment transitions (e.g. entering "active") are in the log too.
    rows = [r for r in rows if r.get("event") not in ("Segment Entered", "Segment Exited")]
    assert len(rows) == len(sent) == 54
    by_id = {r["messageId"]: r for r in rows}
    assert set(by_id) == set(sent), "every message is stored, exactly once, under its id"

    for mid, msg in sent.items():
        row = by_id[mid]
        assert row["type"] == msg["type"]
        assert row["userId"] == msg.get("userId")
        assert row["anonymousId"] == msg.get("anonymousId")
        assert _when(row["timestamp"]) == _when(msg["timestamp"])
        assert row["context"]["library"]["name"] == "analytics-python"

    added, order, ident, page = (by_id[m["messageId"]] for _, m in calls)
    assert added["event"] == "Product Added"
    assert added["originalEvent"] == "add_to_cart"
    assert added["properties"]["product_id"] == "sku-42"
    assert added["properties"]["price"] == pytest.approx(19.9)
    assert added["properties"]["products"] == [
        {"product_id": "sku-42", "name": "Mug", "price": pytest.approx(19.9)}
    ]
    assert "items" not in added["properties"]
    assert order["event"] == "Order Completed"
    assert order["properties"]["order_id"] == "1001"
    assert order["properties"]["revenue"] == pytest.approx(39.8)
    assert order["properties"]["products"][0]["product_id"] == "sku-42"
    assert ident["traits"]["plan"] == "pro"
    assert ident["traits"]["email"] != "ada@example.com", "PII traits are hashed by default"
    assert page["name"] == "Pricing"
    assert page["properties"]["path"] == "/pricing"
    # identify linked anon-1 to user-1: every event of either id is on one profile.
    assert len({r["profileId"] for r in (added, order, ident, page)}) == 1

    for i, mid in enumerate(batch_ids):
        row = by_id[mid]
        assert row["type"] == "track"
        assert row["event"] == "Product Viewed"
        assert row["properties"]["product_id"] == f"sku-{i}"
        assert row["properties"]["price"] == (i + 0.5 if i % 2 else i)
    # One profile per distinct id of the batch part (7 users, 5 anonymous visitors).
    assert len({by_id[m]["profileId"] for m in batch_ids}) == 12


# -- 2. kill -9 mid-stream ---------------------------------------------------------------------

BATCHES = 40
PER_BATCH = 100
SENDERS = 4
KILL_AFTER_ACKS = 10


def _crash_batch(b: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for i in range(PER_BATCH):
        n = b * PER_BATCH + i
        u = n % 97
        item: dict[str, Any] = {"messageId": f"crash-{b:03d}-{i:03d}", "anonymousId": f"anon-{u}"}
        if n % 10 == 0:
            item.update(type="identify", userId=f"user-{u}", traits={"plan": "free"})
        elif n % 3 == 0:
            item.update(
                type="track",
                userId=f"user-{u}",
                event="Order Completed",
                properties={"order_id": f"o-{n}", "revenue": 10 + u},
            )
        else:
            item.update(
                type="track",
                event="view_item",
                properties={"items": [{"item_id": f"sku-{n % 31}", "price": 5}]},
            )
        items.append(item)
    return items


def test_kill_9_mid_stream_loses_no_acknowledged_event(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    with Engine.open(database_url, settings=settings) as setup:
        created = setup.create_workspace("crash")
    ws_id = created.workspace.id
    write_key = created.keys["write"]

    batches = {b: _crash_batch(b) for b in range(BATCHES)}
    all_ids = {item["messageId"] for items in batches.values() for item in items}
    assert len(all_ids) == BATCHES * PER_BATCH

    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for b in batches:
        todo.put(b)
    lock = threading.Lock()
    acked: dict[int, dict[str, Any]] = {}  # batch -> the 200 answer
    attempts: list[tuple[int, float, float, str]] = []  # batch, start, end, outcome
    in_flight = [0]
    done = threading.Event()
    deadline = time.monotonic() + 25

    server = ServerProcess(database_url, tmp_path).start()

    def sender() -> None:
        with httpx.Client(base_url=server.url, auth=(write_key, ""), timeout=10.0) as http:
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    b = todo.get(timeout=0.05)
                except queue.Empty:
                    continue
                with lock:
                    in_flight[0] += 1
                start = time.monotonic()
                try:
                    res = http.post("/v1/batch", json={"batch": batches[b]})
                    outcome = str(res.status_code)
                except httpx.HTTPError as exc:
                    res, outcome = None, type(exc).__name__
                end = time.monotonic()
                with lock:
                    in_flight[0] -= 1
                    attempts.append((b, start, end, outcome))
                    if res is not None and res.status_code == 200:
                        acked[b] = res.json()
                        if len(acked) == BATCHES:
                            done.set()
                        continue
                todo.put(b)  # not acknowledged: send the very same batch again
                time.sleep(0.05)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    try:
        for t in threads:
            t.start()
        # Kill once some batches are acknowledged and others are on the wire.
        while time.monotonic() < deadline:
            with lock:
                if len(acked) >= KILL_AFTER_ACKS and in_flight[0] >= 2:
                    break
            time.sleep(0.001)
        with lock:
            acked_before_kill = set(acked)
        killed_at = time.monotonic()
        server.kill()
        assert len(acked_before_kill) >= KILL_AFTER_ACKS
        assert len(acked_before_kill) < BATCHES, "the kill must land mid-stream"
        time.sleep(0.3)  # senders keep trying against the dead port
        server.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 1)
        # An acknowledgement lost on the way back looks the same to a client: it resends.
        # The restarted server must recognize the batch committed before the crash.
        lost_ack = min(acked_before_kill)
        resent = httpx.post(
            f"{server.url}/v1/batch",
            json={"batch": batches[lost_ack]},
            auth=(write_key, ""),
            timeout=10.0,
        )
    finally:
        done.set()
        server.stop()

    assert len(acked) == BATCHES, f"unacknowledged after retries: {set(batches) - set(acked)}"
    interrupted = [a for a in attempts if a[1] < killed_at and a[2] >= killed_at and a[3] != "200"]
    assert interrupted, "the kill should have cut at least one request in flight"
    # Network errors while the server is down are expected; so is 503 (nothing stored).
    unexpected = {a[3] for a in attempts if a[3].isdigit()} - {"200", "503"}
    assert not unexpected, f"unexpected HTTP statuses: {unexpected}"
    assert resent.status_code == 200, resent.text
    assert (resent.json()["stored"], resent.json()["duplicates"]) == (0, PER_BATCH)
    for b, answer in acked.items():
        assert answer["errors"] == [], answer["errors"]
        assert answer["stored"] + answer["duplicates"] == PER_BATCH, answer
        if b in acked_before_kill:
            assert answer["stored"] == PER_BATCH

    db = make_engine(database_url)
    try:
        with db.connect() as conn:
            counts = dict(
                conn.execute(
                    text(
                        "SELECT message_id, count(*) FROM events WHERE workspace_id = :ws "
                        "AND (event IS NULL OR event NOT IN ('Segment Entered', 'Segment Exited')) "
                        "GROUP BY message_id"
                    ),
                    {"ws": ws_id},
                ).all()
            )
            orphans = conn.execute(
                text(
                    "SELECT count(*) FROM events e WHERE e.workspace_id = :ws AND NOT EXISTS "
                    "(SELECT 1 FROM profiles p WHERE p.workspace_id = e.workspace_id "
                    "AND p.profile_id = e.profile_id)"
                ),
                {"ws": ws_id},
            ).scalar_one()
    finally:
        db.dispose()

    acked_ids = {item["messageId"] for b in acked for item in batches[b]}
    missing = acked_ids - set(counts)
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
    doubled = {m: c for m, c in counts.items() if c != 1}
    assert not doubled, f"stored more than once: {list(doubled.items())[:5]}"
    assert set(counts) == all_ids
    assert sum(counts.values()) == len(all_ids) == BATCHES * PER_BATCH
    assert orphans == 0, "every stored event belongs to a stored profile"
