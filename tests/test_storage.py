"""The schema and migrations are the same on both dialects; the store enforces uniqueness."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError

from sartor.engine import Engine
from sartor.storage.db import current_revision, head_revision, write_tx
from sartor.storage.tables import events, metadata


def test_migrated_schema_matches_the_tables(engine: Engine) -> None:
    assert current_revision(engine.db) == head_revision()
    with engine.db.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    names = set(inspect(engine.db).get_table_names())
    assert {"workspaces", "api_keys", "events", "identities", "profiles", "suppressions"} <= names


def test_migrate_is_idempotent(engine: Engine) -> None:
    from sartor.storage.db import migrate

    migrate(engine.db)
    migrate(engine.db)
    assert current_revision(engine.db) == head_revision()


def test_events_are_unique_per_workspace_and_message_id(engine: Engine) -> None:
    a = engine.create_workspace("a").workspace
    b = engine.create_workspace("b").workspace
    row = {
        "message_id": "same",
        "type": "track",
        "event": "x",
        "category": "analytics",
        "user_id": "u",
        "anonymous_id": None,
        "profile_id": "p_1",
        "timestamp": 1,
        "received_at": 1,
        "payload": {},
    }
    with write_tx(engine.db) as conn:
        conn.execute(events.insert(), [dict(row, workspace_id=a.id), dict(row, workspace_id=b.id)])
    with pytest.raises(IntegrityError), write_tx(engine.db) as conn:
        conn.execute(events.insert(), [dict(row, workspace_id=a.id)])
    with engine.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar() == 2


def test_sqlite_runs_in_wal_mode(sqlite_engine: Engine) -> None:
    with sqlite_engine.db.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_json_payloads_round_trip(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    props = {"nested": {"list": [1, 2.5, "x", None, True]}, "unicode": "ünï ☃ 𝄞"}
    engine.track(workspace.workspace, "Custom", user_id="u", properties=props)
    assert engine.events(workspace.workspace)[0]["properties"] == props


def test_a_large_group_commits_in_one_go(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    items = [
        {
            "type": "track",
            "event": "Product Viewed",
            "anonymousId": f"a{i % 700}",
            "userId": f"u{i % 300}" if i % 3 == 0 else None,
            "messageId": f"m{i}",
        }
        for i in range(2500)
    ]
    result = engine.ingest(workspace.workspace, items)
    assert result.stored == 2500 and not result.errors
    assert len(engine.events(workspace.workspace, limit=1000, after=1500)) == 1000
