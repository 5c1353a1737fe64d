"""Profile rows: locking, the events to fold, saving, checkpoints, lookups."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Executable,
    String,
    any_,
    bindparam,
    func,
    select,
    text,
    update,
)

from sartor.clock import now_ms
from sartor.profiles.folds import Doc, empty
from sartor.storage.sql import chunks, insert_ignore
from sartor.storage.tables import checkpoints, events, identities, profiles


def ids_in(column: Any, pg: bool, name: str = "pids") -> ColumnElement[bool]:
    """``column`` in the list bound as ``name``. On PostgreSQL one array parameter
    (``= ANY``): the statement's text is then the same whatever the list's length, so
    psycopg converts it once and, run often, prepares it on the server (no parse and plan
    per batch); an expanding ``IN`` has a different text for each length. Elsewhere an
    expanding ``IN``."""
    if pg:
        return column == any_(bindparam(name, type_=ARRAY(String)))
    return column.in_(bindparam(name, expanding=True))


class ByDialect:
    """A statement built once per dialect kind (PostgreSQL, or the others)."""

    def __init__(self, build: Callable[[bool], Executable]) -> None:
        self.pg, self.other = build(True), build(False)

    def __call__(self, conn: Connection) -> Executable:
        return self.pg if conn.dialect.name == "postgresql" else self.other


# Built once: building and hashing a statement on every batch costs more than running it.
_LOCK = ByDialect(
    lambda pg: (
        select(profiles.c.profile_id, profiles.c.last_seq, profiles.c.version, profiles.c.consent)
        .where(profiles.c.workspace_id == bindparam("ws"), ids_in(profiles.c.profile_id, pg))
        .order_by(profiles.c.profile_id)
        .with_for_update()
    )
)
_FOLD_STATES = ByDialect(
    lambda pg: select(
        profiles.c.profile_id, profiles.c.computed, profiles.c.traits, profiles.c.last_seq
    ).where(profiles.c.workspace_id == bindparam("ws"), ids_in(profiles.c.profile_id, pg))
)


_ROWS = ByDialect(
    lambda pg: select(
        profiles.c.profile_id, profiles.c.last_seq, profiles.c.version, profiles.c.consent
    ).where(profiles.c.workspace_id == bindparam("ws"), ids_in(profiles.c.profile_id, pg))
)


def profile_rows(conn: Connection, workspace_id: str, pids: Sequence[str]) -> dict[str, Any]:
    """As :func:`lock_profiles`, without locking (to fold before taking the lock)."""
    rows = conn.execute(_ROWS(conn), {"ws": workspace_id, "pids": list(pids)})
    return {row.profile_id: row for row in rows}


def lock_profiles(conn: Connection, workspace_id: str, pids: Sequence[str]) -> dict[str, Any]:
    """The profile rows' watermark, version and consent, locked for update on PostgreSQL
    (SQLite's write transaction is already exclusive). Sorted ids keep two workers from
    deadlocking. The fold state is read apart (:func:`fold_states`): the updater often has
    it in memory already, and decoding it is the costly part of the row."""
    rows = conn.execute(_LOCK(conn), {"ws": workspace_id, "pids": sorted(pids)})
    return {row.profile_id: row for row in rows}


def fold_states(
    conn: Connection, workspace_id: str, pids: Sequence[str]
) -> dict[str, tuple[Doc, int]]:
    """The fold state and watermark of profiles (see :func:`doc_of`)."""
    out: dict[str, tuple[Doc, int]] = {}
    for part in chunks(list(pids)):
        rows = conn.execute(_FOLD_STATES(conn), {"ws": workspace_id, "pids": part})
        out.update((row.profile_id, doc_of(row)) for row in rows)
    return out


def doc_of(row: Any | None) -> tuple[Doc, int]:
    """The fold state of a row and its watermark; a row marked for rebuild starts empty."""
    if row is None or row.last_seq is None or row.computed is None:
        return empty(), 0
    doc = dict(row.computed)
    doc["traits"] = dict(row.traits or {})
    return doc, int(row.last_seq)


_EVENT_COLUMNS = (
    events.c.seq,
    events.c.message_id,
    events.c.type,
    events.c.event,
    events.c.timestamp,
    events.c.received_at,
    events.c.profile_id,
    events.c.payload,
)
EVENT_FIELDS = tuple(column.name for column in _EVENT_COLUMNS)  # the rows' fields, in order


def events_after_each(
    conn: Connection, workspace_id: str, watermarks: Mapping[str, int], stream: bool = True
) -> Iterator[Any]:
    """Each profile's events past its own watermark, in log order, streamed (or, with
    ``stream=False``, fetched at once: on PostgreSQL a server-side cursor costs three round
    trips, which a live batch of a few events does not need).

    Unlike one query from the lowest watermark, a profile new to the batch (or far
    behind) does not drag in every other profile's older events: those rows would be read,
    sent and decoded only to be skipped. A ``VALUES`` list (SQLite), or two ``unnest``ed
    arrays (PostgreSQL), joined on the ``(workspace_id, profile_id)`` index."""
    if not watermarks:
        return
    if conn.dialect.name == "postgresql":
        # Two array parameters: one statement text for any number of profiles, which
        # psycopg converts once and prepares on the server.
        pg_params = {
            "ws": workspace_id,
            "pids": list(watermarks),
            "afters": [int(a) for a in watermarks.values()],
        }
        yield from conn.execute(_EVENTS_AFTER_EACH_PG[stream], pg_params)
        return
    params: dict[str, Any] = {"ws": workspace_id}
    for i, (pid, after) in enumerate(watermarks.items()):
        params[f"p{i}"], params[f"a{i}"] = pid, int(after)
    query = _events_after_each_query(len(watermarks), stream)
    yield from conn.execute(query, params)


@functools.lru_cache(maxsize=128)
def _events_after_each_query(n: int, stream: bool) -> Executable:
    """The statement for ``n`` profiles (parsing 2n bind parameters is not free)."""
    rows = ", ".join(f"(:p{i}, :a{i})" for i in range(n))
    query = text(
        f"WITH w(pid, after) AS (VALUES {rows}) "
        "SELECT e.seq, e.message_id, e.type, e.event, e.timestamp, e.received_at, "
        "e.profile_id, e.payload FROM w JOIN events e ON e.workspace_id = :ws "
        "AND e.profile_id = w.pid AND e.seq > w.after ORDER BY e.seq"
    ).columns(*_EVENT_COLUMNS)
    return query.execution_options(yield_per=2000) if stream else query


# LATERAL: one index lookup per profile whatever the planner's statistics say (with a
# plain join, statistics older than the table's growth can turn it into a hash join over
# the workspace's whole log).
_EVENTS_AFTER_EACH_PG_TEXT = text(
    "SELECT e.seq, e.message_id, e.type, e.event, e.timestamp, e.received_at, "
    "e.profile_id, e.payload "
    "FROM unnest(CAST(:pids AS VARCHAR[]), CAST(:afters AS BIGINT[])) AS w(pid, after) "
    "CROSS JOIN LATERAL (SELECT * FROM events WHERE events.workspace_id = :ws "
    "AND events.profile_id = w.pid AND events.seq > w.after) AS e "
    "ORDER BY e.seq"
).columns(*_EVENT_COLUMNS)
_EVENTS_AFTER_EACH_PG = {
    False: _EVENTS_AFTER_EACH_PG_TEXT,
    True: _EVENTS_AFTER_EACH_PG_TEXT.execution_options(yield_per=2000),
}


_SAVE_MANY = (
    update(profiles)
    .where(
        profiles.c.workspace_id == bindparam("b_ws"), profiles.c.profile_id == bindparam("b_pid")
    )
    .values(
        computed=bindparam("b_computed", type_=profiles.c.computed.type),
        traits=bindparam("b_traits", type_=profiles.c.traits.type),
        last_seq=bindparam("b_last_seq", type_=profiles.c.last_seq.type),
        version=profiles.c.version + 1,
        updated_at=bindparam("b_now", type_=profiles.c.updated_at.type),
    )
)


def save_many(conn: Connection, workspace_id: str, saves: Sequence[tuple[str, Doc, int]]) -> None:
    """Save the fold state and watermark of several ``(profile, doc, last_seq)`` in one
    executemany (pipelined on
    PostgreSQL: one round trip instead of one per profile)."""
    now = now_ms()
    rows = [
        {
            "b_ws": workspace_id,
            "b_pid": pid,
            "b_computed": {k: v for k, v in doc.items() if k != "traits"},
            "b_traits": doc["traits"],
            "b_last_seq": last_seq,
            "b_now": now,
        }
        for pid, doc, last_seq in saves
    ]
    if rows:
        conn.execute(_SAVE_MANY, rows)


def get_checkpoint(conn: Connection, name: str) -> int:
    value = conn.execute(select(checkpoints.c.position).where(checkpoints.c.name == name)).scalar()
    return int(value or 0)


def set_checkpoint(conn: Connection, name: str, position: int) -> None:
    conn.execute(insert_ignore(conn, checkpoints).values(name=name, position=0, updated_at=0))
    conn.execute(
        update(checkpoints)
        .where(checkpoints.c.name == name, checkpoints.c.position < position)
        .values(position=position, updated_at=now_ms())
    )


def head(conn: Connection) -> int:
    return int(conn.execute(select(func.max(events.c.seq))).scalar() or 0)


def touched_since(
    conn: Connection, after: int, upto: int, limit: int = 5000
) -> list[tuple[str, str, int]]:
    """``(workspace, profile, max seq)`` of profiles with events in ``(after, upto]``,
    the first ``limit`` by seq order, so a replay can walk the log in bounded steps."""
    query = (
        select(events.c.workspace_id, events.c.profile_id, func.max(events.c.seq).label("top"))
        .where(events.c.seq > after, events.c.seq <= upto)
        .group_by(events.c.workspace_id, events.c.profile_id)
        .order_by(func.max(events.c.seq))
        .limit(limit)
    )
    return [(r.workspace_id, r.profile_id, int(r.top)) for r in conn.execute(query)]


_WATERMARKS = ByDialect(
    lambda pg: select(profiles.c.profile_id, profiles.c.last_seq).where(
        profiles.c.workspace_id == bindparam("ws"), ids_in(profiles.c.profile_id, pg)
    )
)


def not_folded(
    conn: Connection, touched: Sequence[tuple[str, str, int]]
) -> list[tuple[str, str, int]]:
    """Those ``(workspace, profile, seq)`` whose profile has not folded up to ``seq`` (its
    watermark is lower, or NULL); profiles that no longer exist (merged away) are left out."""
    by_ws: dict[str, dict[str, int]] = {}
    for ws, pid, seq in touched:
        by_ws.setdefault(ws, {})[pid] = seq
    out: list[tuple[str, str, int]] = []
    for ws, wanted in by_ws.items():
        for part in chunks(sorted(wanted)):
            rows = conn.execute(_WATERMARKS(conn), {"ws": ws, "pids": part})
            out.extend((ws, pid, wanted[pid]) for pid, at in rows if at is None or at < wanted[pid])
    return out


def all_profiles(conn: Connection, workspace_id: str | None = None) -> list[tuple[str, str]]:
    query = select(profiles.c.workspace_id, profiles.c.profile_id).order_by(
        profiles.c.workspace_id, profiles.c.profile_id
    )
    if workspace_id is not None:
        query = query.where(profiles.c.workspace_id == workspace_id)
    return [(r.workspace_id, r.profile_id) for r in conn.execute(query)]


def identities_of(conn: Connection, workspace_id: str, pid: str) -> list[dict[str, str]]:
    rows = conn.execute(
        select(identities.c.kind, identities.c.value)
        .where(identities.c.workspace_id == workspace_id, identities.c.profile_id == pid)
        .order_by(identities.c.kind, identities.c.value)
    )
    return [{"kind": r.kind, "value": r.value} for r in rows]


def category_medians(conn: Connection, workspace_id: str, sample: int = 20_000) -> dict[str, float]:
    """The median product price per category over the workspace's newest product events,
    the reference of each profile's price-sensitivity index."""
    rows = conn.execute(
        select(events.c.payload)
        .where(
            events.c.workspace_id == workspace_id,
            events.c.event.in_(["Product Viewed", "Product Added", "Order Completed"]),
        )
        .order_by(events.c.seq.desc())
        .limit(sample)
    )
    prices: dict[str, list[float]] = {}
    for (payload,) in rows:
        props = (payload or {}).get("properties") or {}
        listed = props.get("products")
        products: list[Any] = listed if isinstance(listed, list) else [props]
        for p in products:
            if not isinstance(p, dict):
                continue
            category, price = p.get("category"), p.get("price")
            if isinstance(category, str) and isinstance(price, int | float) and price > 0:
                prices.setdefault(category, []).append(float(price))
    return {c: statistics.median(v) for c, v in prices.items()}
