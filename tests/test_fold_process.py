"""Profile folding in a child process of the server (`sartor serve` without Redis): the
child folds what the server stores, profile changes come back to the server's stream
subscribers, erasure reaches the child's memory, a dead child is replaced, and a child
whose server died stops."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from sartor.bus.child import ChildProcessBus
from sartor.config import Settings
from sartor.engine import CreatedWorkspace, Engine
from sartor.storage.tables import identities, profiles
from tests.server import ServerProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def folding(database_url: str, settings: Settings) -> Iterator[Engine]:
    eng = Engine.open(database_url, settings=settings, fold_process=True)
    assert isinstance(eng.bus, ChildProcessBus)
    eng.start()
    yield eng
    eng.close()


def _bus(engine: Engine) -> ChildProcessBus:
    assert isinstance(engine.bus, ChildProcessBus)
    return engine.bus


def _wait(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def _folded_seq(engine: Engine, ws: str) -> dict[str, int | None]:
    """Each profile's watermark as stored: set only by a fold (this test never reads a
    profile through the engine, which would fold it in this process)."""
    with engine.db.connect() as conn:
        rows = conn.execute(
            select(profiles.c.profile_id, profiles.c.last_seq).where(
                profiles.c.workspace_id == ws
            )
        )
        return {pid: seq for pid, seq in rows}


def _view(engine: Engine, ws: CreatedWorkspace, user: str, sku: str, n: int) -> str:
    result = engine.track(
        ws.workspace.id,
        "Product Viewed",
        userId=user,
        messageId=f"{user}-{sku}-{n}",
        properties={"product_id": sku, "price": 10.0, "category": "Shoes"},
    )
    [item] = result.items
    assert item["status"] == "stored", item
    with engine.db.connect() as conn:
        pid = conn.execute(
            select(identities.c.profile_id).where(
                identities.c.workspace_id == ws.workspace.id,
                identities.c.kind == "user_id",
                identities.c.value == user,
            )
        ).scalar_one()
    return str(pid)


def test_the_child_folds_and_its_changes_reach_the_servers_subscribers(
    folding: Engine,
) -> None:
    from fastapi.testclient import TestClient

    from sartor.api.app import create_app

    bus = _bus(folding)
    assert bus.pid is not None and bus.pid != os.getpid()
    ws = folding.create_workspace("shop")
    with TestClient(create_app(folding)) as client:
        with client.websocket_connect(f"/v1/stream?key={ws.keys['read']}") as socket:
            assert socket.receive_json()["type"] == "subscribed"
            time.sleep(0.2)  # the child hears of the subscriber before the event
            pid = _view(folding, ws, "child-1", "sku-1", 1)
            seen: list[dict[str, Any]] = []
            while not any(m["type"] == "profile.updated" for m in seen):
                seen.append(socket.receive_json())
    update = next(m for m in seen if m["type"] == "profile.updated")
    assert update["profileId"] == pid and update["events"] == 1
    assert _folded_seq(folding, ws.workspace.id)[pid] == update["lastSeq"]
    # This process folded nothing: its own hot state never saw the person.
    assert folding.hot.recent(ws.workspace.id, pid) == []
    recent = bus.recent(ws.workspace.id, pid)
    assert recent is not None and [i["product_id"] for i in recent] == ["sku-1"]


def test_export_shows_the_childs_hot_state_and_erasure_clears_it(folding: Engine) -> None:
    ws = folding.create_workspace("shop")
    pid = _view(folding, ws, "erase-me", "sku-7", 1)
    _wait(lambda: _folded_seq(folding, ws.workspace.id).get(pid))
    exported = folding.export_user(ws.workspace.id, "erase-me")
    [profile] = exported["profiles"]
    assert [i["product_id"] for i in profile["hotState"]["recentItems"]] == ["sku-7"]

    folding.erase_user(ws.workspace.id, "erase-me")
    # The erasure message and this request travel in order on one socket.
    assert _bus(folding).recent(ws.workspace.id, pid) == []


def test_a_dead_child_is_replaced_and_the_new_one_folds_what_it_missed(
    folding: Engine,
) -> None:
    bus = _bus(folding)
    ws = folding.create_workspace("shop")
    first = _view(folding, ws, "u-1", "sku-1", 1)
    _wait(lambda: _folded_seq(folding, ws.workspace.id).get(first))
    old = bus.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    # Stored while no child runs: the notification is lost, the log is not.
    second = _view(folding, ws, "u-2", "sku-2", 1)
    _wait(lambda: bus.pid not in (None, old) and bus.restarts == 1)
    _wait(lambda: _folded_seq(folding, ws.workspace.id).get(second))
    third = _view(folding, ws, "u-3", "sku-3", 1)
    _wait(lambda: _folded_seq(folding, ws.workspace.id).get(third))


def test_closing_the_engine_stops_the_child(database_url: str, settings: Settings) -> None:
    eng = Engine.open(database_url, settings=settings, fold_process=True).start()
    bus = _bus(eng)
    proc = bus._proc
    assert proc is not None and proc.poll() is None
    ws = eng.create_workspace("shop")
    pid = _view(eng, ws, "last", "sku-1", 1)
    eng.close()
    assert proc.poll() == 0
    # What was stored before the close was folded by the child before it stopped.
    check = Engine.open(database_url, settings=settings)
    try:
        assert _folded_seq(check, ws.workspace.id)[pid] is not None
    finally:
        check.close()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(k) for k in (task / "children").read_text().split()]
    return found


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for a reaper counts: it runs no more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_sartor_serve_folds_in_a_child_that_stops_when_the_server_is_killed(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    settings = Settings(env="test", home=tmp_path, secret_key="test-secret-key-0123456789")
    with Engine.open(url, settings=settings) as eng:
        ws = eng.create_workspace("shop")
    server = ServerProcess(url, tmp_path).start()
    try:
        assert server.proc is not None
        [child] = _wait(lambda: _children(server.proc.pid))  # type: ignore[union-attr]
        r = httpx.post(
            f"{server.url}/v1/track",
            json={"userId": "srv-1", "event": "Product Viewed", "messageId": "srv-msg-1"},
            auth=(ws.keys["write"], ""),
        )
        assert r.status_code == 200, r.text

        def all_folded() -> bool:
            with Engine.open(url, settings=settings, migrate=False) as check:
                folded = _folded_seq(check, ws.workspace.id)
            return bool(folded) and all(seq is not None for seq in folded.values())

        _wait(all_folded)
        server.kill()
        # Its end of the socket closed with it: the child finishes and exits.
        _wait(lambda: _gone(child), timeout=15)
    finally:
        server.kill()
