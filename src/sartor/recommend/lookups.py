"""The two reads of every recommendation request, as plain SQL on the driver's cursor.

A request reads who the person is (identity -> profile, consent) and their newest events.
Through SQLAlchemy each read costs more in statement handling than in the database (the
tables are indexed for exactly these lookups), so they are written out once per dialect
and run on a raw pooled connection. The SQL is deliberately the same as the Core queries
elsewhere: identities by ``(workspace_id, kind, value)``, the primary key; events by the
``(workspace_id, profile_id)`` index, newest first. Both dialects run the same tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Engine

from sartor.collect.ingest import ANON, EMAIL, USER

IDENTITY_KINDS = (USER, ANON, EMAIL)


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

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raw = self.db.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                cursor.execute(sql, tuple(params))
                return list(cursor.fetchall())
            finally:
                cursor.close()
        finally:
            raw.close()  # back to the pool (rolled back there)

    def person(self, ws_id: str, value: str) -> list[IdentityRow]:
        """Every identity of each profile the value (a userId, anonymousId or email hash)
        belongs to; or, for a profile id, that profile's identities."""
        rows = self._fetch(self._person, (ws_id, value))
        if not rows and value.startswith("p_"):
            rows = self._fetch(self._person_by_pid, (ws_id, value))
        return [IdentityRow(r[0], r[1], r[2], r[3], _json(r[4])) for r in rows]

    def events(
        self, ws_id: str, profile_id: str, names: Sequence[str], limit: int
    ) -> list[EventRow]:
        """The profile's newest track events named ``names``, newest first."""
        if not names:
            return []
        if self.sqlite:
            where = "event IN (" + ", ".join("?" * len(names)) + ")"
            params: tuple[Any, ...] = (ws_id, profile_id, *names, limit)
        else:
            where = "event = ANY(%s)"
            params = (ws_id, profile_id, list(names), limit)
        rows = self._fetch(self._events_head + where + self._events_tail, params)
        return [EventRow(r[0], r[1], r[2], r[3], r[4], _json(r[5]), _json(r[6])) for r in rows]
