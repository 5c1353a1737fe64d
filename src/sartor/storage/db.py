"""Database engines for both dialects, and migrations through Alembic."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

try:
    import fcntl
except ImportError:  # Windows: processes queue on SQLite's busy handler
    fcntl = None  # type: ignore[assignment]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def normalize_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain ``postgresql://`` URLs."""
    u = make_url(url)
    if u.get_backend_name() == "postgresql" and u.get_driver_name() in ("", "psycopg2"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine with the dialect's durability settings applied on every connection.

    SQLite runs in WAL mode: readers never block the single writer, and a commit is on disk
    before :meth:`EventStore.append` returns (``synchronous=FULL`` also survives power loss).
    """
    url = normalize_url(url)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=8,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite opens transactions lazily; take control so BEGIN is explicit.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # A writer takes the lock up front (IMMEDIATE), so two writers in different
            # processes queue on busy_timeout instead of failing at their first write.
            # Readers start deferred and never block anyone in WAL mode.
            if conn.get_execution_options().get("sqlite_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(
        url,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
    )


# SQLite has one writer at a time. Writers queue on a lock of Sartor's rather than on
# SQLite's busy handler, which polls with sleeps of up to 100 ms: a waiting writer would
# sleep long after the lock was free. Threads of one process queue on a lock of the
# process; processes (`sartor serve` and its profile folding process, an import run from
# the command line) on an advisory lock of a file beside the database, which the kernel
# hands to the next waiter the moment it is released, and releases if its holder dies.
# Other programs writing the file still queue on busy_timeout.
_WRITE_LOCK_WAIT = 30.0  # as busy_timeout; after that, SQLite's own waiting decides


class _SqliteWriteLock:
    """The process's lock, then (outermost only: transactions nest) the file's."""

    def __init__(self, database: str | None) -> None:
        self.local = threading.RLock()
        self.depth = 0
        self.path = f"{database}-sartor-lock" if database and database != ":memory:" else None
        self.fd: int | None = None

    def acquire(self) -> bool:
        if not self.local.acquire(timeout=_WRITE_LOCK_WAIT):
            return False
        if self.depth == 0 and self.path is not None and fcntl is not None:
            try:
                if self.fd is None:
                    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except OSError:
                self._close()  # a file system without locks: SQLite's own waiting decides
        self.depth += 1
        return True

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.fd is not None and fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            except OSError:
                self._close()
        self.local.release()

    def _close(self) -> None:
        fd, self.fd, self.path = self.fd, None, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:  # the engine is gone
        if self.fd is not None:
            os.close(self.fd)


_SQLITE_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, _SqliteWriteLock] = (
    weakref.WeakKeyDictionary()
)
_LOCKS_GUARD = threading.Lock()


def _sqlite_write_lock(engine: Engine) -> _SqliteWriteLock | None:
    if engine.dialect.name != "sqlite":
        return None
    lock = _SQLITE_WRITE_LOCKS.get(engine)
    if lock is None:
        with _LOCKS_GUARD:
            lock = _SQLITE_WRITE_LOCKS.setdefault(engine, _SqliteWriteLock(engine.url.database))
    return lock


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed on exit, rolled back on error."""
    lock = _sqlite_write_lock(engine)
    locked = lock.acquire() if lock is not None else False
    try:
        with engine.connect().execution_options(sqlite_write=True) as conn, conn.begin():
            yield conn
    finally:
        if locked and lock is not None:
            lock.release()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic ``upgrade``)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with write_tx(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def head_revision() -> str:
    """The newest migration shipped with this version of Sartor."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
