"""The group-commit writer: answers at the commit, listeners after it on their own thread,
in commit order; a job without events is a barrier behind every listener before it."""

from __future__ import annotations

import threading
from typing import Any

from sartor.collect.ingest import LINK_KINDS, Outcome, _rows, _sql
from sartor.collect.prepare import PreparedEvent, prepare
from sartor.collect.writer import GroupCommitWriter
from sartor.engine import Engine
from sartor.storage.db import write_tx


def _prepared(engine: Engine, ws: Any, n: int, start: int = 0) -> list[PreparedEvent]:
    return [
        prepare(
            {"type": "track", "event": "Custom", "userId": f"u{i}", "messageId": f"w{i}"},
            index=k,
            prefix="",
            settings=ws.settings,
            pii_key=b"k" * 32,
            received_at=1_700_000_000_000,
        )
        for k, i in enumerate(range(start, start + n))
    ]


def test_listeners_run_in_commit_order_off_the_writer_and_barriers_wait(
    sqlite_engine: Engine,
) -> None:
    ws = sqlite_engine.create_workspace("w").workspace
    calls: list[tuple[list[str], str]] = []
    release = threading.Event()

    def listener(_ws: Any, evs: list[PreparedEvent], outcomes: list[Outcome]) -> None:
        release.wait(10)
        calls.append(([o.status for o in outcomes], threading.current_thread().name))

    writer = GroupCommitWriter(sqlite_engine.db, "secret-key-0123456789", on_commit=listener)
    try:
        first = writer.submit(ws, _prepared(sqlite_engine, ws, 3)).result(timeout=10)
        # Answered at its commit although its listener is still blocked.
        assert [o.status for o in first] == ["stored"] * 3
        second = writer.submit(ws, _prepared(sqlite_engine, ws, 2, start=2)).result(timeout=10)
        assert [o.status for o in second] == ["duplicate", "stored"]
        barrier = writer.submit(ws, [])
        assert not barrier.done()  # behind the blocked listeners
        release.set()
        assert barrier.result(timeout=10) == []
        assert [c[0] for c in calls] == [["stored"] * 3, ["duplicate", "stored"]]
        assert {c[1] for c in calls} == {"sartor-commit-listeners"}
    finally:
        release.set()
        writer.close()


def test_close_runs_the_listeners_of_every_commit(sqlite_engine: Engine) -> None:
    ws = sqlite_engine.create_workspace("w").workspace
    seen: list[int] = []

    def listener(_ws: Any, evs: list[PreparedEvent], _outcomes: list[Outcome]) -> None:
        seen.append(len(evs))

    writer = GroupCommitWriter(sqlite_engine.db, "secret-key-0123456789", on_commit=listener)
    futures = [writer.submit(ws, _prepared(sqlite_engine, ws, 2, start=10 * i)) for i in range(5)]
    writer.close()
    assert all(f.done() for f in futures)
    assert sorted(seen) == [2] * 5


def test_lookups_read_in_one_step_return_the_rows(sqlite_engine: Engine) -> None:
    """SQLite's lookups come back as one JSON row: the same values, text kept as text
    (a consent document stays the string the column holds, however odd its content)."""
    odd = ["plain", 'quote " and \\ backslash', "ünï ☃ 𝄞", "x" * 255]
    with write_tx(sqlite_engine.db) as conn:
        sql = _sql(conn)
        conn.exec_driver_sql(
            sql.insert_links,
            [("ws", "user_id", v, f"p{i}", 1) for i, v in enumerate(odd)],
        )
        conn.exec_driver_sql(
            sql.insert_profiles,
            [("ws", "p0", '{"ads": false, "note": "\\"q\\""}', "{}", 1, 1, 1)],
        )
        wanted = {"user_id": [*odd, "absent"], "anonymous_id": odd[:1], "email_hash": []}
        params = ["ws"]
        for kind in LINK_KINDS:  # every kind in one statement, an empty list included
            params += [kind, sql.values(wanted[kind])]
        found = _rows(conn, sql, sql.links, tuple(params))
        assert sorted(map(tuple, found)) == sorted(
            ("user_id", v, f"p{i}") for i, v in enumerate(odd)
        )
        consent = _rows(conn, sql, sql.consent_of, ("ws", sql.values(["p0", "p9"])))
        assert [tuple(r) for r in consent] == [("p0", '{"ads": false, "note": "\\"q\\""}')]
        assert _rows(conn, sql, sql.message_ids, ("ws", sql.values(["none"]))) == []
