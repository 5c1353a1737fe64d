"""Small dialect helpers shared by the stores."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

T = TypeVar("T")
# Well under SQLite's 32,766 bound parameters and PostgreSQL's 65,535.
CHUNK = 900


def chunks(values: Sequence[T] | Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    buf: list[T] = []
    for value in values:
        buf.append(value)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def insert_ignore(conn: Connection, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def execute_many(conn: Connection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(stmt, rows)
