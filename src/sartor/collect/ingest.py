"""Storing a group of prepared events in one transaction.

For each event, in arrival order: dedupe on ``(workspace, messageId)`` -> suppression of
erased ids -> identity resolution (anonymousId <-> userId) -> consent gate -> location
policy -> append to the event log. All reads a group needs are made up front in a few
``IN (...)`` queries and all writes at the end, so a group of thousands of events costs a
handful of statements whatever its size.

Those statements are written out for each dialect (:class:`_Sql`) rather than built with
SQLAlchemy constructs: an expanding ``IN`` renders and compiles a new statement for every
list length (which SQLite then prepares again), and the per-row parameter processing of a
Core ``executemany`` cost more than the rest of storing an event. A list goes in one
parameter (a JSON array read by ``json_each`` on SQLite, an array on PostgreSQL), rows as
tuples, documents serialized once with orjson as the engine's JSON type would.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, and_, delete, text, update

from sartor.clock import now_ms
from sartor.collect.prepare import PreparedEvent
from sartor.privacy.consent import allowed, apply_consent, merge_consent
from sartor.privacy.pii import apply_location_policy, derive_key, keyed_hash
from sartor.storage.tables import events, identities, profiles
from sartor.workspace import Workspace

USER = "user_id"
ANON = "anonymous_id"
EMAIL = "email_hash"
LINK_KINDS = (USER, ANON, EMAIL)  # the kinds an event's ids are looked up under
# One lock for all event inserts on PostgreSQL, so rows commit in seq order and the log
# position is a safe checkpoint for the profile updaters.
PG_LOG_LOCK = 0x5A7702


@dataclass(slots=True)
class Outcome:
    """What happened to one item: ``stored``, ``duplicate``, ``dropped`` or ``error``."""

    index: int
    message_id: str | None
    status: str
    reason: str | None = None
    field: str | None = None
    profile_id: str | None = None


def profile_id_for(key: bytes, kind: str, value: str) -> str:
    """A new profile's id, derived from the identity that created it (keyed, so it cannot
    be recomputed from a user id without the secret), so two writers that see the same new
    visitor at once create the same profile."""
    digest = hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()
    return "p_" + digest[:24]


def suppression_hashes(secret: str, workspace_id: str, ids: list[str]) -> dict[str, str]:
    key = derive_key(secret, workspace_id, "suppress")
    return {i: keyed_hash(key, i) for i in ids}


@dataclass
class _Identities:
    """The identity graph of the profiles a group touches, loaded once, changed in memory."""

    workspace_id: str
    key: bytes
    links: dict[tuple[str, str], str] = field(default_factory=dict)
    users: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    consent: dict[str, dict[str, Any]] = field(default_factory=dict)
    existing_profiles: set[str] = field(default_factory=set)
    new_profiles: set[str] = field(default_factory=set)
    new_links: dict[tuple[str, str], str] = field(default_factory=dict)
    merged_into: dict[str, str] = field(default_factory=dict)
    merges: list[tuple[str, str]] = field(default_factory=list)
    dirty_consent: set[str] = field(default_factory=set)

    def resolve(self, pid: str) -> str:
        while pid in self.merged_into:
            pid = self.merged_into[pid]
        return pid

    def get(self, kind: str, value: str | None) -> str | None:
        if value is None:
            return None
        pid = self.links.get((kind, value))
        return self.resolve(pid) if pid else None

    def consent_of(self, pid: str) -> dict[str, Any]:
        return self.consent.get(pid, {})


class AliasConflict(Exception):
    pass


def _plan(ids: _Identities, e: PreparedEvent) -> tuple[str, list[tuple[Any, ...]]]:
    """The profile an event belongs to and the identity changes it implies (not applied)."""
    actions: list[tuple[Any, ...]] = []
    uid, aid = e.user_id, e.anonymous_id

    def new_profile(kind: str, value: str) -> str:
        pid = profile_id_for(ids.key, kind, value)
        actions.append(("create", pid))
        actions.append(("link", kind, value, pid))
        return pid

    if e.type == "alias":
        prev = e.previous_id
        assert prev is not None and uid is not None
        p_prev = ids.get(USER, prev) or ids.get(ANON, prev)
        pu = ids.get(USER, uid)
        if p_prev is not None and not ids.users.get(p_prev, set()) <= {prev}:
            if pu != p_prev:
                raise AliasConflict("previousId belongs to another identified user")
        if pu is None and p_prev is None:
            pid = new_profile(USER, uid)
            actions.append(("link", ANON, prev, pid))
        elif pu is None:
            assert p_prev is not None
            pid = p_prev
            actions.append(("link", USER, uid, pid))
        elif p_prev is None:
            pid = pu
            actions.append(("link", ANON, prev, pid))
        else:
            pid = pu
            if p_prev != pu:
                actions.append(("merge", p_prev, pu))
        return pid, actions

    pu = ids.get(USER, uid)
    pa = ids.get(ANON, aid)
    if uid is None:
        assert aid is not None
        return (pa if pa is not None else new_profile(ANON, aid)), actions
    anon_is_free = pa is not None and not ids.users.get(pa)
    if pu is None:
        if anon_is_free:
            assert pa is not None
            pid = pa  # the visitor signs in: their anonymous profile becomes identified
            actions.append(("link", USER, uid, pid))
        else:
            pid = new_profile(USER, uid)
            if aid is not None and pa is None:
                actions.append(("link", ANON, aid, pid))
        return pid, actions
    pid = pu
    if aid is not None:
        if pa is None:
            actions.append(("link", ANON, aid, pid))
        elif pa != pu and anon_is_free:
            actions.append(("merge", pa, pu))
        # pa identified as someone else: two identified users are never merged automatically
    return pid, actions


def _apply(ids: _Identities, actions: list[tuple[Any, ...]]) -> None:
    for action in actions:
        if action[0] == "create":
            pid = action[1]
            if pid not in ids.existing_profiles:
                ids.new_profiles.add(pid)
        elif action[0] == "link":
            _, kind, value, pid = action
            ids.links[(kind, value)] = pid
            ids.new_links[(kind, value)] = pid
            if kind == USER:
                ids.users[pid].add(value)
        elif action[0] == "merge":
            _, src, dst = action
            ids.merged_into[src] = dst
            ids.merges.append((src, dst))
            ids.users[dst] |= ids.users.pop(src, set())
            ids.consent[dst] = merge_consent(ids.consent_of(dst), ids.consent.pop(src, {}))
            ids.dirty_consent.add(dst)


class _Sql:
    """The statements of the hot path in one dialect's SQL and parameter style."""

    def __init__(self, dialect: str) -> None:
        pg = dialect == "postgresql"
        self.pg = pg
        p = "%s" if pg else "?"
        doc = "%s::jsonb" if pg else "?"

        def within(column: str) -> str:
            if pg:
                return f"{column} = ANY(%s)"
            return f"{column} IN (SELECT value FROM json_each(?))"

        # The links of every kind in one round trip: (kind, ids) pairs, a list may be empty.
        kinds = " OR ".join([f"(kind = {p} AND {within('value')})"] * len(LINK_KINDS))
        self.links = (
            f"SELECT kind, value, profile_id FROM identities WHERE workspace_id = {p} AND ({kinds})"
        )
        self.users_of = (
            f"SELECT value, profile_id FROM identities WHERE workspace_id = {p} AND kind = {p}"
            f" AND {within('profile_id')}"
        )
        self.consent_of = (
            f"SELECT profile_id, consent FROM profiles WHERE workspace_id = {p}"
            f" AND {within('profile_id')}"
        )
        self.message_ids = (
            f"SELECT message_id FROM events WHERE workspace_id = {p} AND {within('message_id')}"
        )
        self.any_suppression = f"SELECT 1 FROM suppressions WHERE workspace_id = {p} LIMIT 1"
        self.suppressed = (
            f"SELECT id_hash FROM suppressions WHERE workspace_id = {p} AND {within('id_hash')}"
        )
        self.insert_links = (
            "INSERT INTO identities (workspace_id, kind, value, profile_id, created_at)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING"
        )
        self.insert_profiles = (
            "INSERT INTO profiles (workspace_id, profile_id, consent, traits, created_at,"
            f" updated_at, version) VALUES ({p}, {p}, {doc}, {doc}, {p}, {p}, {p})"
            " ON CONFLICT DO NOTHING"
        )
        self.update_consent = (
            f"UPDATE profiles SET consent = {doc}, updated_at = {p}, version = version + 1"
            f" WHERE workspace_id = {p} AND profile_id = {p}"
        )
        self.insert_events = (
            "INSERT INTO events (workspace_id, message_id, type, event, category, user_id,"
            " anonymous_id, profile_id, timestamp, received_at, payload)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {doc})"
            " ON CONFLICT DO NOTHING"
        )

        # SQLite: a lookup's rows come back as one JSON array in one row, made in C and
        # decoded by orjson, rather than as one Python tuple per row, each its own step
        # (and its own release and retaking of the GIL) in the sqlite3 module.
        self.aggregate = {
            q: q if pg else _aggregated(q)
            for q in (self.links, self.users_of, self.consent_of, self.message_ids)
        }

    def values(self, values: list[str]) -> Any:
        """A list as the one parameter of a ``within`` condition."""
        return values if self.pg else orjson.dumps(values).decode()


def _aggregated(query: str) -> str:
    """``SELECT a, b FROM ...`` as one row: ``[[a, b], ...]`` (JSON text), or NULL."""
    select, rest = query.split(" FROM ", 1)
    columns = select.removeprefix("SELECT ")
    return f"SELECT json_group_array(json_array({columns})) FROM {rest}"


_SQL = {name: _Sql(name) for name in ("sqlite", "postgresql")}


def _sql(conn: Connection) -> _Sql:
    return _SQL[conn.dialect.name]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _document(value: Any) -> Any:
    """A JSON column as read: text on SQLite, already decoded by psycopg on PostgreSQL."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _load(conn: Connection, ws: str, evs: list[PreparedEvent], key: bytes) -> _Identities:
    ids = _Identities(ws, key)
    sql = _sql(conn)
    previous = {e.previous_id for e in evs if e.previous_id}
    users = {e.user_id for e in evs if e.user_id} | previous
    anons = {e.anonymous_id for e in evs if e.anonymous_id} | previous
    emails = {e.email_hash for e in evs if e.email_hash}
    links = ids.links
    wanted = dict(zip(LINK_KINDS, (users, anons, emails), strict=True))
    if users or anons or emails:
        params = [ws]
        for kind in LINK_KINDS:
            params += [kind, sql.values(list(wanted[kind]))]
        for kind, value, pid in _rows(conn, sql, sql.links, tuple(params)):
            links[(kind, value)] = pid
    if links:
        pids = sql.values(list(set(links.values())))
        for pid, consent in _rows(conn, sql, sql.consent_of, (ws, pids)):
            # "{}": what almost every profile of an opt_out workspace holds
            ids.consent[pid] = (_document(consent) if consent != "{}" else None) or {}
            ids.existing_profiles.add(pid)
        for value, pid in _rows(conn, sql, sql.users_of, (ws, USER, pids)):
            ids.users[pid].add(value)
    return ids


def _rows(conn: Connection, sql: _Sql, query: str, params: tuple[Any, ...]) -> Sequence[Any]:
    """The rows of one of ``sql``'s lookups (as tuples or lists), read in one step."""
    if sql.pg:
        return conn.exec_driver_sql(query, params).all()  # all(): one fetchall
    found = conn.exec_driver_sql(sql.aggregate[query], params).scalar()
    return orjson.loads(found) if found else []


def _existing_message_ids(conn: Connection, ws: str, message_ids: list[str]) -> set[str]:
    sql = _sql(conn)
    rows = _rows(conn, sql, sql.message_ids, (ws, sql.values(message_ids)))
    return {row[0] for row in rows}


def _has_suppressions(conn: Connection, ws: str) -> bool:
    return conn.exec_driver_sql(_sql(conn).any_suppression, (ws,)).first() is not None


def _suppressed(conn: Connection, ws: str, hashes: list[str]) -> set[str]:
    sql = _sql(conn)
    return {row[0] for row in conn.exec_driver_sql(sql.suppressed, (ws, sql.values(hashes)))}


def store_events(
    conn: Connection, workspace: Workspace, evs: list[PreparedEvent], secret: str
) -> list[Outcome]:
    """Store one workspace's events (in order) inside the caller's transaction."""
    ws = workspace.id
    mode = workspace.settings.consent_mode
    ip_policy = workspace.settings.ip_policy
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOG_LOCK})
    seen = _existing_message_ids(conn, ws, [e.message_id for e in evs])
    hashes: dict[str, str] = {}
    suppressed: set[str] = set()
    if _has_suppressions(conn, ws):  # most workspaces have erased no one: skip the hashing
        all_ids = sorted({i for e in evs for i in e.ids})
        hashes = suppression_hashes(secret, ws, all_ids)
        suppressed = _suppressed(conn, ws, list(hashes.values()))
    ids = _load(conn, ws, evs, derive_key(secret, ws, "profile"))
    now = now_ms()

    outcomes: list[Outcome] = []
    rows: list[tuple[PreparedEvent, str, dict[str, Any]]] = []
    for e in evs:
        if e.message_id in seen:
            outcomes.append(Outcome(e.index, e.message_id, "duplicate"))
            continue
        seen.add(e.message_id)
        if suppressed and any(hashes[i] in suppressed for i in e.ids):
            outcomes.append(Outcome(e.index, e.message_id, "dropped", "suppressed"))
            continue
        try:
            pid, actions = _plan(ids, e)
        except AliasConflict as exc:
            outcomes.append(Outcome(e.index, e.message_id, "error", str(exc), "previousId"))
            continue
        state = ids.consent_of(pid)
        for action in actions:
            if action[0] == "merge":
                state = merge_consent(state, ids.consent_of(action[1]))
        if e.consent:
            state = apply_consent(state, e.consent, e.timestamp, e.consent_source)
        ok = allowed(state, e.category, mode)
        if not ok and not e.consent:
            outcomes.append(Outcome(e.index, e.message_id, "dropped", "consent"))
            continue
        if e.email_hash and ids.get(EMAIL, e.email_hash) is None:
            actions.append(("link", EMAIL, e.email_hash, pid))  # for lookups; never merges
        _apply(ids, actions)
        if e.consent:
            ids.consent[pid] = state
            ids.dirty_consent.add(pid)
        if not ok:
            outcomes.append(Outcome(e.index, e.message_id, "dropped", "consent"))
            continue
        payload = e.payload
        context = payload.get("context")
        if isinstance(context, dict):
            new_context = apply_location_policy(
                context, allowed(state, "location", mode), ip_policy
            )
            if new_context is not context:
                payload = {**payload, "context": new_context}
        rows.append((e, pid, payload))
        outcomes.append(Outcome(e.index, e.message_id, "stored", profile_id=pid))

    _write(conn, ids, rows, now)
    for o in outcomes:
        if o.profile_id is not None:
            o.profile_id = ids.resolve(o.profile_id)
    return outcomes


def _write(
    conn: Connection,
    ids: _Identities,
    rows: list[tuple[PreparedEvent, str, dict[str, Any]]],
    now: int,
) -> None:
    ws = ids.workspace_id
    for src, dst in ids.merges:
        dst = ids.resolve(dst)
        conn.execute(
            update(identities)
            .where(identities.c.workspace_id == ws, identities.c.profile_id == src)
            .values(profile_id=dst)
        )
        conn.execute(
            update(events)
            .where(events.c.workspace_id == ws, events.c.profile_id == src)
            .values(profile_id=dst)
        )
        conn.execute(
            delete(profiles).where(
                and_(profiles.c.workspace_id == ws, profiles.c.profile_id == src)
            )
        )
        # The merged profile is folded again from its first event (now including src's).
        conn.execute(
            update(profiles)
            .where(profiles.c.workspace_id == ws, profiles.c.profile_id == dst)
            .values(last_seq=None)
        )
        ids.existing_profiles.discard(src)
        ids.new_profiles.discard(src)
    sql = _sql(conn)
    if ids.new_links:
        conn.exec_driver_sql(
            sql.insert_links,
            [(ws, k, v, ids.resolve(p), now) for (k, v), p in ids.new_links.items()],
        )
    new_profiles = {ids.resolve(p) for p in ids.new_profiles} - ids.existing_profiles
    if new_profiles:
        conn.exec_driver_sql(
            sql.insert_profiles,
            [(ws, p, _dumps(ids.consent_of(p)), "{}", now, now, 1) for p in sorted(new_profiles)],
        )
    changed = sorted({ids.resolve(p) for p in ids.dirty_consent} - new_profiles)
    if changed:  # one executemany (one pipeline on PostgreSQL), not a statement per profile
        conn.exec_driver_sql(
            sql.update_consent, [(_dumps(ids.consent_of(p)), now, ws, p) for p in changed]
        )
    if rows:
        resolve = ids.resolve
        conn.exec_driver_sql(
            sql.insert_events,
            [
                (
                    ws,
                    e.message_id,
                    e.type,
                    e.event,
                    e.category,
                    e.user_id,
                    e.anonymous_id,
                    resolve(pid),
                    e.timestamp,
                    e.received_at,
                    _dumps(payload),
                )
                for e, pid, payload in rows
            ],
        )
