"""Storing a group of prepared events in one transaction.

For each event, in arrival order: dedupe on ``(workspace, messageId)`` -> suppression of
erased ids -> identity resolution (anonymousId <-> userId) -> consent gate -> location
policy -> append to the event log. All reads a group needs are made up front in a few
``IN (...)`` queries and all writes at the end, so a group of thousands of events costs a
handful of statements whatever its size.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, delete, select, text, update

from sartor.clock import now_ms
from sartor.collect.prepare import PreparedEvent
from sartor.privacy.consent import allowed, apply_consent, merge_consent
from sartor.privacy.pii import apply_location_policy, derive_key, keyed_hash
from sartor.storage.sql import chunks, execute_many, insert_ignore
from sartor.storage.tables import events, identities, profiles, suppressions
from sartor.workspace import Workspace

USER = "user_id"
ANON = "anonymous_id"
EMAIL = "email_hash"
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


def _load(conn: Connection, ws: str, evs: list[PreparedEvent], key: bytes) -> _Identities:
    ids = _Identities(ws, key)
    users = sorted(
        {e.user_id for e in evs if e.user_id} | {e.previous_id for e in evs if e.previous_id}
    )
    anons = sorted(
        {e.anonymous_id for e in evs if e.anonymous_id}
        | {e.previous_id for e in evs if e.previous_id}
    )
    emails = sorted({e.email_hash for e in evs if e.email_hash})
    for kind, values in ((USER, users), (ANON, anons), (EMAIL, emails)):
        for part in chunks(values):
            rows = conn.execute(
                select(identities.c.value, identities.c.profile_id).where(
                    identities.c.workspace_id == ws,
                    identities.c.kind == kind,
                    identities.c.value.in_(part),
                )
            ).all()  # all(): one fetchall, not a fetchone per row
            for value, pid in rows:
                ids.links[(kind, value)] = pid
    pids = sorted(set(ids.links.values()))
    for part in chunks(pids):
        for pid, consent in conn.execute(
            select(profiles.c.profile_id, profiles.c.consent).where(
                profiles.c.workspace_id == ws, profiles.c.profile_id.in_(part)
            )
        ).all():
            ids.consent[pid] = consent or {}
            ids.existing_profiles.add(pid)
        for value, pid in conn.execute(
            select(identities.c.value, identities.c.profile_id).where(
                identities.c.workspace_id == ws,
                identities.c.kind == USER,
                identities.c.profile_id.in_(part),
            )
        ).all():
            ids.users[pid].add(value)
    return ids


def _existing_message_ids(conn: Connection, ws: str, message_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for part in chunks(message_ids):
        found.update(
            conn.execute(
                select(events.c.message_id).where(
                    events.c.workspace_id == ws, events.c.message_id.in_(part)
                )
            )
            .scalars()
            .all()
        )
    return found


def _has_suppressions(conn: Connection, ws: str) -> bool:
    query = select(suppressions.c.id_hash).where(suppressions.c.workspace_id == ws).limit(1)
    return conn.execute(query).first() is not None


def _suppressed(conn: Connection, ws: str, hashes: list[str]) -> set[str]:
    found: set[str] = set()
    for part in chunks(hashes):
        found.update(
            conn.execute(
                select(suppressions.c.id_hash).where(
                    suppressions.c.workspace_id == ws, suppressions.c.id_hash.in_(part)
                )
            ).scalars()
        )
    return found


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
    execute_many(
        conn,
        insert_ignore(conn, identities),
        [
            {
                "workspace_id": ws,
                "kind": k,
                "value": v,
                "profile_id": ids.resolve(p),
                "created_at": now,
            }
            for (k, v), p in ids.new_links.items()
        ],
    )
    new_profiles = {ids.resolve(p) for p in ids.new_profiles} - ids.existing_profiles
    execute_many(
        conn,
        insert_ignore(conn, profiles),
        [
            {
                "workspace_id": ws,
                "profile_id": p,
                "consent": ids.consent_of(p),
                "traits": {},
                "created_at": now,
                "updated_at": now,
                "version": 1,
            }
            for p in sorted(new_profiles)
        ],
    )
    for p in sorted({ids.resolve(p) for p in ids.dirty_consent} - new_profiles):
        conn.execute(
            update(profiles)
            .where(profiles.c.workspace_id == ws, profiles.c.profile_id == p)
            .values(consent=ids.consent_of(p), updated_at=now, version=profiles.c.version + 1)
        )
    execute_many(
        conn,
        insert_ignore(conn, events),
        [
            {
                "workspace_id": ws,
                "message_id": e.message_id,
                "type": e.type,
                "event": e.event,
                "category": e.category,
                "user_id": e.user_id,
                "anonymous_id": e.anonymous_id,
                "profile_id": ids.resolve(pid),
                "timestamp": e.timestamp,
                "received_at": e.received_at,
                "payload": payload,
            }
            for e, pid, payload in rows
        ],
    )
