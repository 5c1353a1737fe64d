"""Segments in a workspace: definitions, back-fill, real-time membership, schedules, RFM.

Membership of rule segments is evaluated on every profile change (the updater calls
:meth:`Segments.on_profile_change`) and over all profiles on a schedule, since lapsing
("no order in 90 days") produces no event. Entering or leaving a segment is written to the
event log as ``Segment Entered`` / ``Segment Exited``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import Connection, bindparam, delete, func, select, update

from sartor.clock import now_ms
from sartor.collect.errors import FieldError
from sartor.collect.ingest import store_events
from sartor.profiles import folds
from sartor.profiles import store as profile_store
from sartor.segments.rfm import GROUPS, RFM
from sartor.segments.rules import Context, EventCondition, Rule, compile_rule
from sartor.storage.db import write_tx
from sartor.storage.sql import chunks, execute_many, insert_ignore
from sartor.storage.tables import (
    cluster_assignments,
    cluster_runs,
    events,
    identities,
    memberships,
    profiles,
    segment_sizes,
    segments,
)

if TYPE_CHECKING:
    from sartor.collect.prepare import PreparedEvent
    from sartor.engine import Engine
    from sartor.profiles.updater import ProfileChange
    from sartor.workspace import Workspace

log = logging.getLogger("sartor.segments")

KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,99}$")
ENTERED, EXITED = "Segment Entered", "Segment Exited"

BUILTINS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "frequent-buyers": (
        "Frequent Buyers",
        "Five or more orders in the last 90 days.",
        {"event": "Order Completed", "min_count": 5, "within_days": 90},
    ),
    "lapsed-users": (
        "Lapsed Users",
        "Customers whose last order is more than 90 days old.",
        {"property": "computed.last_order_at", "op": "older_than_days", "value": 90},
    ),
    "high-value-shoppers": (
        "High-Value Shoppers",
        "Net revenue of 1,000 or more (edit the threshold to your currency).",
        {"property": "computed.rfm.monetary", "op": "gte", "value": 1000},
    ),
    "active": (
        "Active",
        "Seen in the last 30 days.",
        {"property": "computed.last_seen", "op": "within_days", "value": 30},
    ),
}


# Built once: the real-time path runs them on every fold batch, and building and hashing a
# statement costs more than running it.
# On PostgreSQL the ids are one array parameter (see ``profile_store.ids_in``).
_STATES = profile_store.ByDialect(
    lambda pg: select(
        profiles.c.profile_id,
        profiles.c.computed,
        profiles.c.traits,
        profiles.c.consent,
        profiles.c.last_seq,
    ).where(
        profiles.c.workspace_id == bindparam("ws"),
        profile_store.ids_in(profiles.c.profile_id, pg),
    )
)
_MEMBERSHIPS = profile_store.ByDialect(
    lambda pg: select(memberships.c.segment_key, memberships.c.profile_id).where(
        memberships.c.workspace_id == bindparam("ws"),
        profile_store.ids_in(memberships.c.profile_id, pg),
    )
)
_IDENTITIES = profile_store.ByDialect(
    lambda pg: select(identities.c.kind, identities.c.value, identities.c.profile_id).where(
        identities.c.workspace_id == bindparam("ws"),
        profile_store.ids_in(identities.c.profile_id, pg),
    )
)


_REFRESH_SIZE = (
    update(segments)
    .where(segments.c.workspace_id == bindparam("b_ws"), segments.c.key == bindparam("b_key"))
    .values(
        size=select(func.count())
        .where(
            memberships.c.workspace_id == bindparam("b_ws"),
            memberships.c.segment_key == bindparam("b_key"),
        )
        .scalar_subquery(),
        evaluated_at=bindparam("b_now"),
    )
)


# Event types: a track event named like one shares its count with those events.
_TYPES = frozenset({"track", "page", "screen", "identify", "group", "alias"})


def _count_range(
    states: Mapping[str, tuple[folds.Doc | None, dict[str, Any]]], now: int
) -> Callable[[str, EventCondition], tuple[int, int] | None]:
    """Bounds ``(least, most)`` of a condition's count per profile, known without a query.

    The fold counts every stored track event by name, so a folded profile's count of a name
    bounds every windowed or filtered count of it; and when all the profile's events (or
    orders, for ``Order Completed``) fall inside the condition's time window, an unfiltered
    condition counts exactly them. Events stored but not folded yet are left for the fold
    that follows their notification, which evaluates again. Segment transitions are not
    folded, and a profile waiting to be folded again has no counts: no bounds for those."""

    def known(pid: str, cond: EventCondition) -> tuple[int, int] | None:
        doc = states[pid][0] if pid in states else None
        if doc is None or cond.event in folds.SYSTEM_EVENTS or cond.event in _TYPES:
            return None
        most = int(doc["counts"].get(cond.event, 0))
        if most == 0 or cond.where:
            return 0, most
        first, last = (
            (doc["first_order_at"], doc["last_order_at"])
            if cond.event == folds.ORDER
            else (doc["first_seen"], doc["last_seen"])
        )
        # The window as the query has it (whole milliseconds).
        start = None if cond.within_days is None else now - int(cond.within_days * 86_400_000)
        inside = (
            first is not None
            and last is not None
            and (start is None or first >= start)
            and (cond.since is None or first >= cond.since)
            and (cond.until is None or last <= cond.until)
        )
        return (most, most) if inside else (0, most)

    return known


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise FieldError(
            "key", "1-100 lowercase letters, digits, '-' or '_', starting alphanumeric"
        )
    return key


class Segments:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.db = engine.db
        self._rules: dict[str, tuple[float, list[tuple[str, Rule]]]] = {}
        self._lock = threading.Lock()

    # -- definitions ----------------------------------------------------------------------

    def _row(self, conn: Connection, ws: str, key: str) -> Any:
        return conn.execute(
            select(segments).where(segments.c.workspace_id == ws, segments.c.key == key)
        ).first()

    @staticmethod
    def _doc(row: Any) -> dict[str, Any]:
        return {
            "key": row.key,
            "name": row.name,
            "kind": row.kind,
            "description": row.description,
            "definition": row.definition,
            "timeBased": bool(row.time_based),
            "size": row.size,
            "createdAt": row.created_at,
            "updatedAt": row.updated_at,
            "evaluatedAt": row.evaluated_at,
        }

    def all(self, ws: str) -> list[dict[str, Any]]:
        with self.db.connect() as conn:
            rows = conn.execute(
                select(segments).where(segments.c.workspace_id == ws).order_by(segments.c.key)
            )
            return [self._doc(r) for r in rows]

    def get(self, ws: str, key: str) -> dict[str, Any] | None:
        with self.db.connect() as conn:
            row = self._row(conn, ws, key)
        return self._doc(row) if row else None

    def save(
        self,
        ws: str,
        key: str,
        name: str,
        definition: Any,
        description: str = "",
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Create or replace a rule segment, then back-fill it over every profile."""
        check_key(key)
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise FieldError("name", "is required, at most 200 characters")
        rule = compile_rule(definition)
        self._check_references(ws, key, rule)
        now = now_ms()
        with write_tx(self.db) as conn:
            row = self._row(conn, ws, key)
            if row is not None and row.kind != "rule":
                raise FieldError("key", f"{key!r} is a {row.kind} segment and is managed for you")
            values = {
                "name": name.strip(),
                "definition": definition,
                "description": description,
                "time_based": int(rule.time_based),
                "updated_at": now,
            }
            if row is None:
                conn.execute(
                    segments.insert().values(
                        workspace_id=ws, key=key, kind="rule", size=0, created_at=now, **values
                    )
                )
            else:
                conn.execute(
                    update(segments)
                    .where(segments.c.workspace_id == ws, segments.c.key == key)
                    .values(**values)
                )
        self._rules.pop(ws, None)
        self.backfill(ws, key, progress=progress)
        doc = self.get(ws, key)
        assert doc is not None
        return doc

    def _check_references(self, ws: str, key: str, rule: Rule) -> None:
        for ref in rule.references:
            if ref == key:
                raise FieldError("definition", "a segment cannot contain itself")
            if ref.startswith("rfm:"):
                if ref[4:] not in GROUPS:
                    raise FieldError(
                        "definition", f"unknown RFM group {ref[4:]!r}; one of {GROUPS}"
                    )
            elif not ref.startswith("cluster:") and self.get(ws, ref) is None:
                raise FieldError("definition", f"no segment {ref!r}")

    def delete(self, ws: str, key: str) -> bool:
        with write_tx(self.db) as conn:
            n = conn.execute(
                delete(segments).where(segments.c.workspace_id == ws, segments.c.key == key)
            ).rowcount
            conn.execute(
                delete(memberships).where(
                    memberships.c.workspace_id == ws, memberships.c.segment_key == key
                )
            )
        self._rules.pop(ws, None)
        return bool(n)

    def install_builtins(self, ws: str) -> None:
        for key, (name, description, definition) in BUILTINS.items():
            if self.get(ws, key) is None:
                self.save(ws, key, name, definition, description)

    # -- evaluation -----------------------------------------------------------------------

    def _rule_set(self, ws: str) -> list[tuple[str, Rule]]:
        cached = self._rules.get(ws)
        if cached is not None and cached[0] > now_ms():
            return cached[1]
        with self.db.connect() as conn:
            rows = conn.execute(
                select(segments.c.key, segments.c.definition).where(
                    segments.c.workspace_id == ws, segments.c.kind == "rule"
                )
            ).all()
        rules = []
        for key, definition in rows:
            try:
                rules.append((key, compile_rule(definition)))
            except FieldError:
                log.warning("segment %s has an invalid definition; skipped", key)
        # Segments that refer to others are evaluated after them.
        rules.sort(key=lambda kr: (len(kr[1].references & {k for k, _ in rules}), kr[0]))
        self._rules[ws] = (now_ms() + 5_000, rules)
        return rules

    def _states(
        self, conn: Connection, ws: str, pids: list[str]
    ) -> dict[str, tuple[folds.Doc | None, dict[str, Any]]]:
        """Each profile's fold state (None while it waits to be folded again after a merge)
        and consent, read from the database."""
        out: dict[str, tuple[folds.Doc | None, dict[str, Any]]] = {}
        for part in chunks(pids):
            rows = conn.execute(_STATES(conn), {"ws": ws, "pids": part})
            for row in rows:
                folded = row.last_seq is not None and row.computed is not None
                doc = profile_store.doc_of(row)[0] if folded else None
                out[row.profile_id] = (doc, row.consent or {})
        return out

    def _view(
        self, pid: str, doc: folds.Doc | None, consent: dict[str, Any], now: int
    ) -> dict[str, Any]:
        doc = doc if doc is not None else folds.empty()
        return {
            "profileId": pid,
            "traits": doc["traits"],
            # Fields computed as rules read them: most rules read one or two.
            "computed": folds.LazyView(doc, now, self.engine.settings.profile_config),
            "consent": consent,
        }

    def _memberships(self, conn: Connection, ws: str, pids: list[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {p: set() for p in pids}
        for part in chunks(pids):
            for key, pid in conn.execute(_MEMBERSHIPS(conn), {"ws": ws, "pids": part}):
                out.setdefault(pid, set()).add(key)
        return out

    def _event_counter(
        self,
        conn: Connection,
        ws: str,
        pids: list[str],
        now: int,
        known: Callable[[str, EventCondition], tuple[int, int] | None] | None = None,
    ) -> Callable[[str, EventCondition], int]:
        """Counts of a condition's events per profile, one query per condition for the
        batch. With ``known`` (bounds per profile), only the profiles the bounds cannot
        decide are counted: the rule asks for no others."""
        cache: dict[EventCondition, dict[str, int]] = {}
        asked: dict[EventCondition, set[str]] = {}

        def undecided(pid: str, cond: EventCondition) -> bool:
            return known is None or cond.decide(known(pid, cond)) is None

        def count(pid: str, cond: EventCondition) -> int:
            if cond not in cache:
                some = [p for p in pids if undecided(p, cond)]
                cache[cond] = self._count_events(conn, ws, some, cond, now)
                asked[cond] = set(some)
            if pid not in asked[cond]:  # not expected: counted on its own
                cache[cond].update(self._count_events(conn, ws, [pid], cond, now))
                asked[cond].add(pid)
            return cache[cond].get(pid, 0)

        return count

    @staticmethod
    def _count_events(
        conn: Connection, ws: str, pids: list[str], cond: EventCondition, now: int
    ) -> dict[str, int]:
        t = events
        base = [t.c.workspace_id == ws, t.c.event == cond.event, t.c.type == "track"]
        if cond.within_days is not None:
            base.append(t.c.timestamp >= now - int(cond.within_days * 86_400_000))
        if cond.since is not None:
            base.append(t.c.timestamp >= cond.since)
        if cond.until is not None:
            base.append(t.c.timestamp <= cond.until)
        counts: dict[str, int] = {}
        for part in chunks(pids):
            if not cond.where:
                query = (
                    select(t.c.profile_id, func.count())
                    .where(*base, t.c.profile_id.in_(part))
                    .group_by(t.c.profile_id)
                )
                counts.update({pid: int(n) for pid, n in conn.execute(query)})
                continue
            query = select(t.c.profile_id, t.c.payload).where(*base, t.c.profile_id.in_(part))
            for pid, payload in conn.execute(query):
                if cond.matches((payload or {}).get("properties") or {}):
                    counts[pid] = counts.get(pid, 0) + 1
        return counts

    def evaluate(
        self,
        ws: str,
        pids: list[str],
        now: int | None = None,
        only: set[str] | None = None,
        states: Mapping[str, tuple[folds.Doc | None, dict[str, Any]]] | None = None,
    ) -> list[tuple[str, str, bool]]:
        """Re-evaluate rule segments for profiles and apply the changes; returns
        ``(segment, profile, entered)`` for each change. ``states`` are the profiles' fold
        states and consent when the caller has them (the updater has just folded them)."""
        now = now if now is not None else now_ms()
        rules = [(k, r) for k, r in self._rule_set(ws) if only is None or k in only]
        if not rules or not pids:
            return []
        changes: list[tuple[str, str, bool]] = []
        with self.db.connect() as conn:
            if states is None:
                states = self._states(conn, ws, pids)
            present = [p for p in pids if p in states]
            known = _count_range(states, now)
            current = self._memberships(conn, ws, present)
            counter = self._event_counter(conn, ws, present, now, known)
            for pid in present:
                doc, consent = states[pid]
                view = self._view(pid, doc, consent, now)
                member_of = set(current.get(pid, set()))
                ctx = Context(now=now, memberships=frozenset(member_of))
                ctx.count_events = partial(counter, pid)
                ctx.event_range = partial(known, pid)
                for key, rule in rules:
                    inside = rule(view, ctx)
                    if inside != (key in member_of):
                        changes.append((key, pid, inside))
                        (member_of.add if inside else member_of.discard)(key)
                        ctx.memberships = frozenset(member_of)
        self._apply(ws, changes, now)
        return changes

    def _apply(self, ws: str, changes: list[tuple[str, str, bool]], now: int) -> None:
        if not changes:
            return
        # The transitions are logged in the same transaction as the memberships: both or
        # neither are committed, and the real-time path neither queues behind the
        # group-commit writer nor waits for a second commit.
        if self.db.dialect.name == "sqlite":
            # Read and prepared before the write transaction: SQLite's one write lock
            # (shared with the group-commit writer) is held only to write.
            with self.db.connect() as conn:
                workspace, prepared = self._transitions(conn, ws, changes, now)
        with write_tx(self.db) as conn:
            if self.db.dialect.name != "sqlite":  # PostgreSQL locks rows: one connection
                workspace, prepared = self._transitions(conn, ws, changes, now)
            execute_many(
                conn,
                insert_ignore(conn, memberships),
                [
                    {
                        "workspace_id": ws,
                        "segment_key": k,
                        "profile_id": p,
                        "since": now,
                        "data": None,
                    }
                    for k, p, inside in changes
                    if inside
                ],
            )
            for k, p, inside in changes:
                if not inside:
                    conn.execute(
                        delete(memberships).where(
                            memberships.c.workspace_id == ws,
                            memberships.c.segment_key == k,
                            memberships.c.profile_id == p,
                        )
                    )
            for key in {k for k, _, _ in changes}:
                self._refresh_size(conn, ws, key, now)
            secret = self.engine.settings.secret_key
            outcomes = store_events(conn, workspace, prepared, secret) if prepared else []
        if prepared:
            # As after any commit: the bus folds them, stream subscribers see them.
            self.engine.notify_stored(workspace, prepared, outcomes)

    def _refresh_size(self, conn: Connection, ws: str, key: str, now: int) -> None:
        # One statement (the count as a subquery): this runs on every batch with a change.
        conn.execute(_REFRESH_SIZE, {"b_ws": ws, "b_key": key, "b_now": now})

    def record_sizes(self, ws: str, now: int | None = None) -> None:
        """Keep today's size of every segment (one point per segment per day)."""
        now = now if now is not None else now_ms()
        day = now - now % 86_400_000
        with write_tx(self.db) as conn:
            rows = conn.execute(
                select(segments.c.key, segments.c.size).where(segments.c.workspace_id == ws)
            ).all()
            conn.execute(
                delete(segment_sizes).where(
                    segment_sizes.c.workspace_id == ws, segment_sizes.c.at == day
                )
            )
            execute_many(
                conn,
                segment_sizes.insert(),
                [{"workspace_id": ws, "segment_key": k, "at": day, "size": n} for k, n in rows],
            )

    def _transitions(
        self, conn: Connection, ws: str, changes: list[tuple[str, str, bool]], now: int
    ) -> tuple[Workspace, list[PreparedEvent]]:
        """``Segment Entered`` / ``Segment Exited`` for the log, under the person's id."""
        ids: dict[str, dict[str, str]] = {}
        for part in chunks(sorted({p for _, p, _ in changes})):
            for kind, value, pid in conn.execute(_IDENTITIES(conn), {"ws": ws, "pids": part}):
                ids.setdefault(pid, {}).setdefault(kind, value)
        items = []
        for key, pid, entered in changes:
            who = ids.get(pid, {})
            ident = (
                {"userId": who["user_id"]}
                if "user_id" in who
                else {"anonymousId": who["anonymous_id"]}
                if "anonymous_id" in who
                else None
            )
            if ident is None:
                continue
            items.append(
                {
                    "type": "track",
                    "event": ENTERED if entered else EXITED,
                    "messageId": "seg-"
                    + hashlib.sha256(f"{entered}|{now}|{key}|{pid}".encode()).hexdigest()[:40],
                    "timestamp": now,
                    "properties": {"segment_key": key},
                    **ident,
                }
            )
        workspace = self.engine.workspace(ws)
        prepared: list[PreparedEvent] = []
        for group in chunks(items, 1000):
            _, ready, errors = self.engine.prepare(workspace, group)
            for error in errors:
                log.warning("segment transition not logged: %s", error)
            prepared.extend(ready)
        return workspace, prepared

    def on_profile_changes(self, changes: list[ProfileChange]) -> None:
        """Real-time membership: re-evaluate the rule segments of the changed profiles."""
        by_ws: dict[str, list[ProfileChange]] = {}
        for change in changes:
            if change.kind == "profile.updated" and change.events:
                by_ws.setdefault(change.workspace_id, []).append(change)
        for ws, group in by_ws.items():
            if not self._rule_set(ws):
                continue
            states = {c.profile_id: (c.doc, c.consent or {}) for c in group if c.doc is not None}
            pids = [c.profile_id for c in group]
            # The updater hands over what it folded; without it, the rows are read.
            self.evaluate(ws, pids, states=states if len(states) == len(pids) else None)

    def backfill(
        self,
        ws: str,
        key: str | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
        now: int | None = None,
        batch: int = 2000,
    ) -> int:
        """Evaluate one segment (or all) over every profile, streaming in batches."""
        now = now if now is not None else now_ms()
        with self.db.connect() as conn:
            pids = [pid for _, pid in profile_store.all_profiles(conn, ws)]
        only = {key} if key else None
        done = 0
        for part in chunks(pids, batch):
            self.evaluate(ws, part, now, only)
            done += len(part)
            if progress:
                progress(done, len(pids))
        with write_tx(self.db) as conn:
            keys = [key] if key else [k for k, _ in self._rule_set(ws)]
            for k in keys:
                self._refresh_size(conn, ws, k, now)
        self.record_sizes(ws, now)
        return len(pids)

    # -- reading --------------------------------------------------------------------------

    def preview(
        self, ws: str, definition: Any, sample: int = 10, limit: int = 100_000
    ) -> dict[str, Any]:
        """Size and a sample of a definition, without saving it."""
        rule = compile_rule(definition)
        now = now_ms()
        with self.db.connect() as conn:
            pids = [pid for _, pid in profile_store.all_profiles(conn, ws)][:limit]
            size, members = 0, list[str]()
            for part in chunks(pids, 2000):
                states = self._states(conn, ws, part)
                current = self._memberships(conn, ws, part)
                known = _count_range(states, now)
                counter = self._event_counter(conn, ws, list(states), now, known)
                for pid, (doc, consent) in states.items():
                    view = self._view(pid, doc, consent, now)
                    ctx = Context(now=now, memberships=frozenset(current.get(pid, set())))
                    ctx.count_events = partial(counter, pid)
                    ctx.event_range = partial(known, pid)
                    if rule(view, ctx):
                        size += 1
                        if len(members) < sample:
                            members.append(pid)
        return {"size": size, "sample": members, "evaluated": len(pids)}

    def members(
        self, ws: str, key: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[dict[str, Any]], str | None]:
        m = memberships
        query = select(m.c.profile_id, m.c.since, m.c.data).where(
            m.c.workspace_id == ws, m.c.segment_key == key
        )
        if after:
            query = query.where(m.c.profile_id > after)
        with self.db.connect() as conn:
            rows = conn.execute(query.order_by(m.c.profile_id).limit(limit)).all()
        page = [{"profileId": r.profile_id, "since": r.since, **(r.data or {})} for r in rows]
        return page, (rows[-1].profile_id if len(rows) == limit else None)

    def sizes(self, ws: str, key: str) -> list[dict[str, int]]:
        with self.db.connect() as conn:
            rows = conn.execute(
                select(segment_sizes.c.at, segment_sizes.c.size)
                .where(segment_sizes.c.workspace_id == ws, segment_sizes.c.segment_key == key)
                .order_by(segment_sizes.c.at)
            )
            return [{"at": r.at, "size": r.size} for r in rows]

    def of_profile(self, ws: str, pid: str) -> list[str]:
        with self.db.connect() as conn:
            return sorted(
                conn.execute(
                    select(memberships.c.segment_key).where(
                        memberships.c.workspace_id == ws, memberships.c.profile_id == pid
                    )
                ).scalars()
            )

    # -- RFM ------------------------------------------------------------------------------

    def rfm_frame(self, ws: str, now: int | None = None) -> pd.DataFrame:
        """Recency (days), frequency and net monetary value of every identified profile."""
        now = now if now is not None else now_ms()
        rows: list[dict[str, Any]] = []
        with self.db.connect() as conn:
            # Customers are identified people: a guest checkout's one-off anonymous profile
            # would count as a new customer each time.
            identified = select(identities.c.profile_id).where(
                identities.c.workspace_id == ws, identities.c.kind == "user_id"
            )
            query = select(profiles.c.profile_id, profiles.c.computed).where(
                profiles.c.workspace_id == ws, profiles.c.profile_id.in_(identified)
            )
            for pid, computed in conn.execute(query.execution_options(yield_per=5000)):
                c = computed or {}
                last = c.get("last_order_at")
                rows.append(
                    {
                        "profile_id": pid,
                        "recency_days": (now - last) / 86_400_000 if last is not None else None,
                        "frequency": c.get("orders", 0),
                        # In cents: float sums in another order must not reorder ties.
                        "monetary": round(c.get("revenue", 0.0) - c.get("refunded", 0.0), 2),
                    }
                )
        frame = pd.DataFrame(rows, columns=["profile_id", "recency_days", "frequency", "monetary"])
        return frame.set_index("profile_id")

    def run_rfm(self, ws: str, reference: int | None = None, quantiles: int = 5) -> dict[str, int]:
        """Score every customer against ``reference`` (default now) in ``quantiles`` bins and
        store the ``rfm:<group>`` memberships; returns the group sizes."""
        now = reference if reference is not None else now_ms()
        self.engine.updater.replay()
        model = RFM(n_quantiles=quantiles).fit(self.rfm_frame(ws, now))
        scores = model.scores_
        with write_tx(self.db) as conn:
            conn.execute(
                delete(memberships).where(
                    memberships.c.workspace_id == ws, memberships.c.segment_key.like("rfm:%")
                )
            )
            rows = [
                {
                    "workspace_id": ws,
                    "segment_key": f"rfm:{group}",
                    "profile_id": pid,
                    "since": now,
                    "data": {"R": int(r.R), "F": int(r.F), "M": int(r.M), "RFM": r.RFM},
                }
                for pid, group, r in zip(
                    scores.index, model.groups_, scores.itertuples(), strict=True
                )
            ]
            for part in chunks(rows, 5000):
                execute_many(conn, memberships.insert(), part)
            sizes = {g: int(n) for g, n in model.groups_.value_counts().items()}
            for group in GROUPS:
                key = f"rfm:{group}"
                if self._row(conn, ws, key) is None:
                    conn.execute(
                        segments.insert().values(
                            workspace_id=ws,
                            key=key,
                            name=group,
                            kind="rfm",
                            definition=None,
                            description=f"RFM group {group}",
                            time_based=1,
                            size=0,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                conn.execute(
                    update(segments)
                    .where(segments.c.workspace_id == ws, segments.c.key == key)
                    .values(size=sizes.get(group, 0), evaluated_at=now, updated_at=now)
                )
        self.record_sizes(ws, now)
        self._rules.pop(ws, None)
        return sizes

    def erase(self, conn: Connection, ws: str, pids: Iterable[str]) -> int:
        n = 0
        for part in chunks(list(pids)):
            n += conn.execute(
                delete(memberships).where(
                    memberships.c.workspace_id == ws, memberships.c.profile_id.in_(part)
                )
            ).rowcount
        return n

    def erase_cluster_assignments(self, conn: Connection, ws: str, pids: Iterable[str]) -> int:
        """The profiles' rows in every clustering run of the workspace (erasure)."""
        runs = select(cluster_runs.c.id).where(cluster_runs.c.workspace_id == ws)
        n = 0
        for part in chunks(list(pids)):
            n += conn.execute(
                delete(cluster_assignments).where(
                    cluster_assignments.c.run_id.in_(runs),
                    cluster_assignments.c.profile_id.in_(part),
                )
            ).rowcount
        return n
