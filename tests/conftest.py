"""Shared fixtures. Every storage-touching test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``SARTOR_TEST_POSTGRES_URL`` (default: the local server, database
``test``). When it is unreachable, its tests skip with the reason, except under ``CI=true``,
where a missing server fails the run so the real-server tests cannot silently stop running.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sartor.config import Settings
from sartor.engine import CreatedWorkspace, Engine
from sartor.storage.db import make_engine, migrate

warnings.filterwarnings("ignore", message=".*httpx2.*")

CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get(
    "SARTOR_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _pg_reason() -> str | None:
    try:
        eng = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:  # any failure to reach the server
        return f"PostgreSQL not reachable at {PG_URL}: {str(exc).splitlines()[0]}"


_PG_STATE: dict[str, str | None] = {}


def require_postgres() -> None:
    """Skip (or fail under CI) when PostgreSQL is not reachable."""
    if "reason" not in _PG_STATE:
        _PG_STATE["reason"] = _pg_reason()
    reason = _PG_STATE["reason"]
    if reason:
        if CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


REDIS_URL = os.environ.get("SARTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_REDIS_STATE: dict[str, str | None] = {}


def _redis_reason() -> str | None:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # any failure to reach the server
        return f"Redis not reachable at {REDIS_URL}: {str(exc).splitlines()[0]}"


def require_redis() -> str:
    """The Redis URL; skip (or fail under CI) when Redis is not reachable."""
    if "reason" not in _REDIS_STATE:
        _REDIS_STATE["reason"] = _redis_reason()
    reason = _REDIS_STATE["reason"]
    if reason:
        if CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    return REDIS_URL


def _admin_engine():  # type: ignore[no-untyped-def]
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database that each test copies (CREATE DATABASE ... TEMPLATE)."""
    require_postgres()
    name = f"sartor_tpl_{secrets.token_hex(4)}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    eng = make_engine(url)
    migrate(eng)
    eng.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def new_pg_database(template: str) -> tuple[str, str]:
    name = f"sartor_t_{secrets.token_hex(5)}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    admin.dispose()
    return name, make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(name: str) -> None:
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: an SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sartor.db'}"
        return
    template = request.getfixturevalue("pg_template")
    name, url = new_pg_database(template)
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        env="test",
        home=tmp_path,
        secret_key="test-secret-key-0123456789",
        rate_limit_events_per_second=0,
        log_json=False,
    )


@pytest.fixture
def engine(database_url: str, settings: Settings) -> Iterator[Engine]:
    eng = Engine.open(database_url, settings=settings)
    yield eng
    eng.close()


@pytest.fixture
def sqlite_engine(tmp_path: Path, settings: Settings) -> Iterator[Engine]:
    """SQLite only, for tests of logic that does not depend on the dialect."""
    eng = Engine.open(f"sqlite:///{tmp_path / 'only.db'}", settings=settings)
    yield eng
    eng.close()


@pytest.fixture
def workspace(engine: Engine) -> CreatedWorkspace:
    return engine.create_workspace("shop")


@pytest.fixture
def client(engine: Engine):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from sartor.api.app import create_app

    with TestClient(create_app(engine), raise_server_exceptions=False) as c:
        yield c


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or a skip (a failure under CI) when it is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        if CI:
            pytest.fail(f"CI=true and shared data {path} is missing")
        pytest.skip(f"shared data {path} is not present on this machine")
    return path
