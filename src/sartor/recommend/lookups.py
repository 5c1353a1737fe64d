"""The two reads of every recommendation request, as plain SQL on the driver's cursor.

A request reads who the person is (identity -> profile, consent) and their newest events.
Through SQLAlchemy each read costs more in statement handling than in the database (the
tables are indexed for exactly these lookups), so they are written out once per dialect
and run on a raw connection: one for all the reads of a request, which on SQLite each
serving thread keeps (:meth:`Lookups.reading`). The SQL is deliberately the same as the Core queries
elsewhere: identities by ``(workspace_id, kind, value)``, the primary key; events by the
``(workspace_id, profile_id)`` index, newest first. Both dialects run the same tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Engine

from sartor.collect.ingest import ANON, EMAIL, USER

IDENTITY_KINDS = (USER, ANON, EMAIL)
# Threads that keep a SQLite connection of their own; any more use the pool (a library
# caller fanning out over a big thread pool must not hold a connection per thread).
MAX_HELD = 8


class IdentityRow(NamedTuple):
    matched: str  # the kind of identity the looked-up value is
    kind: str  # one identity of the same profile
    value: str
    profile_id: str
    consent: dict[str, Any] | None


class EventRow(NamedTuple):
    seq: int
    event: str
    timestamp: int
    product_id: Any
    sku: Any
    products: Any
    rating: Any


def _json(value: Any) -> Any:
    """A JSON value as SQLite returns it (text for arrays/objects, numbers and strings as
    themselves) or as PostgreSQL's driver already decoded it."""
    if isinstance(value, str | bytes) and value[:1] in ("[", "{", b"[", b"{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


class Lookups:
    def __init__(self, db: Engine) -> None:
        self.db = db
        self.sqlite = db.dialect.name == "sqlite"
        self._local = threading.local()
        self._held: list[Any] = []
        self._held_lock = threading.Lock()
        self._closed = False
        mark = "?" if self.sqlite else "%s"
        kinds = ", ".join(f"'{k}'" for k in IDENTITY_KINDS)
        self._person = (
            "SELECT i1.kind, i2.kind, i2.value, i1.profile_id, p.consent "
            "FROM identities AS i1 "
            "JOIN identities AS i2 "
            "ON i2.workspace_id = i1.workspace_id AND i2.profile_id = i1.profile_id "
            "LEFT OUTER JOIN profiles AS p "
            "ON p.workspace_id = i1.workspace_id AND p.profile_id = i1.profile_id "
            f"WHERE i1.workspace_id = {mark} AND i1.kind IN ({kinds}) AND i1.value = {mark}"
        )
        self._person_by_pid = (
            "SELECT i.kind, i.kind, i.value, i.profile_id, p.consent "
            "FROM identities AS i JOIN profiles AS p "
            "ON p.workspace_id = i.workspace_id AND p.profile_id = i.profile_id "
            f"WHERE i.workspace_id = {mark} AND i.profile_id = {mark}"
        )
        if self.sqlite:
            fields = (
                "CAST(json_extract(payload, '$.properties.product_id') AS TEXT), "
                "CAST(json_extract(payload, '$.properties.sku') AS TEXT), "
                "json_extract(payload, '$.properties.products'), "
                "json_extract(payload, '$.properties.rating')"
            )
        else:
            fields = (
                "payload #>> '{properties,product_id}', payload #>> '{properties,sku}', "
                "payload #> '{properties,products}', payload #> '{properties,rating}'"
            )
        self._events_head = (
            f"SELECT seq, event, timestamp, {fields} FROM events "
            f"WHERE workspace_id = {mark} AND profile_id = {mark} AND type = 'track' AND "
        )
        self._events_tail = f" ORDER BY seq DESC LIMIT {mark}"

    @contextmanager
    def reading(self) -> Iterator[Reader]:
        """One connection for a request's reads (a pool checkout and its return cost about
        as much as a read). On SQLite each thread keeps its own, out of the pool: requests
        are served on the event loop's thread, and a connection outside a statement holds
        no snapshot in WAL mode, so it sees every commit."""
        if self.sqlite:
            raw = getattr(self._local, "raw", None)
            if raw is None:
                raw = self._hold()
            if raw is not None:
                yield Reader(self, raw)
                return
        raw = self.db.raw_connection()
        try:
            yield Reader(self, raw)
        finally:
            raw.close()  # back to the pool (rolled back there)

    def _hold(self) -> Any | None:
        """A connection of this thread's own, out of the pool (None when enough threads
        already keep one, or after close)."""
        with self._held_lock:
            if self._closed or len(self._held) >= MAX_HELD:
                return None
            raw = self.db.raw_connection()
            raw.detach()  # no longer the pool's: closed by close(), never returned
            self._held.append(raw)
        self._local.raw = raw
        return raw

    def close(self) -> None:
        """Close the connections the threads kept (SQLite)."""
        with self._held_lock:
            self._closed = True
            held, self._held = self._held, []
        for raw in held:
            raw.close()

    def person(self, ws_id: str, value: str) -> list[IdentityRow]:
        with self.reading() as read:
            return read.person(ws_id, value)

    def events(
        self, ws_id: str, profile_id: str, names: Sequence[str], limit: int
    ) -> list[EventRow]:
        with self.reading() as read:
            return read.events(ws_id, profile_id, names, limit)


class Reader:
    """The reads of :class:`Lookups` on one connection."""

    def __init__(self, lookups: Lookups, raw: Any) -> None:
        self.lookups = lookups
        self.raw = raw

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cursor = self.raw.cursor()
        try:
            cursor.execute(sql, tuple(params))
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def person(self, ws_id: str, value: str) -> list[IdentityRow]:
        """Every identity of each profile the value (a userId, anonymousId or email hash)
        belongs to; or, for a profile id, that profile's identities."""
        rows = self._fetch(self.lookups._person, (ws_id, value))
        if not rows and value.startswith("p_"):
            rows = self._fetch(self.lookups._person_by_pid, (ws_id, value))
        return [IdentityRow(r[0], r[1], r[2], r[3], _json(r[4])) for r in rows]

    def events(
        self, ws_id: str, profile_id: str, names: Sequence[str], limit: int
    ) -> list[EventRow]:
        """The profile's newest track events named ``names``, newest first."""
        if not names:
            return []
        lookups = self.lookups
        if lookups.sqlite:
            where = "event IN (" + ", ".join("?" * len(names)) + ")"
            params: tuple[Any, ...] = (ws_id, profile_id, *names, limit)
        else:
            where = "event = ANY(%s)"
            params = (ws_id, profile_id, list(names), limit)
        rows = self._fetch(lookups._events_head + where + lookups._events_tail, params)
        # Most events have neither products nor a rating: no call for a NULL.
        return [
            EventRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                None if r[5] is None else _json(r[5]),
                None if r[6] is None else _json(r[6]),
            )
            for r in rows
        ]
