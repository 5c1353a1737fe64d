"""Keeping profiles up to date with the event log.

``catch_up`` folds, for each profile, the events with ``seq`` above the profile's
watermark, in log order, and saves the new state and watermark in the same transaction.
Folding is therefore exactly-once in effect whatever triggers it: a notification from the
bus, a redelivery, a replay from the checkpoint, or a read that wants fresh data. A profile
whose watermark is NULL (after an identity merge) is folded again from its first event.

The log position itself is safe to use as a checkpoint because events are committed in
``seq`` order (one writer on SQLite; an advisory lock around the insert on PostgreSQL).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, update

from sartor.clock import now_ms
from sartor.profiles import store
from sartor.profiles.folds import SYSTEM_EVENTS, Doc, ProfileConfig, empty, fold, view
from sartor.profiles.hot import HotState, InProcessHotState
from sartor.storage.db import write_tx
from sartor.storage.sql import chunks
from sartor.storage.tables import profiles

log = logging.getLogger("sartor.profiles")

CHECKPOINT = "profiles"
INTERACTIONS = frozenset({"track", "page", "screen"})


@dataclass
class ProfileChange:
    """A profile that changed: what a stream subscriber or a cache listener receives."""

    workspace_id: str
    profile_id: str
    last_seq: int
    events: int
    kind: str = "profile.updated"
    data: dict[str, Any] = field(default_factory=dict)
    # The state just folded and committed, for in-process batch listeners (segment
    # evaluation reads it here instead of reading and decoding the row again); never sent.
    doc: Doc | None = field(default=None, repr=False, compare=False)
    consent: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "workspaceId": self.workspace_id,
            "profileId": self.profile_id,
            "lastSeq": self.last_seq,
            "events": self.events,
            **self.data,
        }


class DocCache:
    """The fold states this process saved last, by profile: at most ``size``, least
    recently used out, none older than ``ttl`` seconds.

    Decoding a profile's JSON state costs more than folding a few events into it. An entry
    is used only while the row's watermark and version are still the ones it was saved
    with: every save bumps the version (in the same locked transaction), and a merge or a
    rebuild clears the watermark, so a state changed by another process, or marked for
    refolding, is read again. Cached states are shared, never mutated (folds are pure).
    The time limit bounds how long an erased person's state can outlive the erasure in the
    memory of another process (this process forgets it at once)."""

    def __init__(self, size: int, ttl: float = 60.0) -> None:
        self.size = size
        self.ttl = ttl
        self._docs: OrderedDict[tuple[str, str], tuple[int, int, Doc, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ws: str, pid: str, last_seq: int, version: int) -> Doc | None:
        with self._lock:
            hit = self._docs.get((ws, pid))
            if hit is None or hit[0] != last_seq or hit[1] != version:
                return None
            if hit[3] < time.monotonic():
                del self._docs[(ws, pid)]
                return None
            self._docs.move_to_end((ws, pid))
            return hit[2]

    def put(self, ws: str, entries: Iterable[tuple[str, int, int, Doc]]) -> None:
        if self.size <= 0:
            return
        expires = time.monotonic() + self.ttl
        with self._lock:
            for pid, last_seq, version, doc in entries:
                self._docs[(ws, pid)] = (last_seq, version, doc, expires)
                self._docs.move_to_end((ws, pid))
            while len(self._docs) > self.size:
                self._docs.popitem(last=False)
            # Expired entries at the front (least recently used) go now; get() checks the rest.
            while self._docs:
                key, entry = next(iter(self._docs.items()))
                if entry[3] >= time.monotonic():
                    break
                del self._docs[key]

    def forget(self, ws: str, pid: str) -> None:
        with self._lock:
            self._docs.pop((ws, pid), None)


@dataclass
class _Folding:
    """Profiles folded in memory: state, watermark, the events folded in (per profile),
    which states were read from the database rather than kept in memory, and each
    state's recent items before the fold (to tell whether the fold changed them)."""

    docs: dict[str, Doc] = field(default_factory=dict)
    tops: dict[str, int] = field(default_factory=dict)
    folded: defaultdict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    read: set[str] = field(default_factory=set)
    recent0: dict[str, Any] = field(default_factory=dict)

    def replace(self, other: _Folding) -> None:
        """``other``'s profiles instead of this one's."""
        for pid in other.tops:
            self.folded.pop(pid, None)
            self.read.discard(pid)
        self.docs.update(other.docs)
        self.tops.update(other.tops)
        self.folded.update(other.folded)
        self.recent0.update(other.recent0)
        self.read |= other.read

    def keep(self, pids: Iterable[str]) -> None:
        keep = set(pids)
        for table in (self.docs, self.tops, self.folded, self.recent0):
            for pid in [p for p in table if p not in keep]:
                del table[pid]
        self.read &= keep


@dataclass
class HotConfig:
    interactions: int = 10
    window_ms: int = 15 * 60 * 1000


class ProfileUpdater:
    def __init__(
        self,
        db: Engine,
        config: ProfileConfig,
        *,
        hot: HotState | None = None,
        hot_config: HotConfig | None = None,
        listeners: Iterable[Callable[[ProfileChange], None]] = (),
        batch_listeners: Iterable[Callable[[list[ProfileChange]], None]] = (),
        clock: Callable[[], int] = now_ms,
        doc_cache: int = 4096,
    ) -> None:
        self.db = db
        self.docs = DocCache(doc_cache)
        self.config = config
        self.hot = hot or InProcessHotState()
        self.hot_config = hot_config or HotConfig()
        self.listeners = list(listeners)
        self.batch_listeners = list(batch_listeners)
        self.clock = clock

    def catch_up(
        self, pairs: Iterable[tuple[str, str]], *, bulk: bool = False
    ) -> list[ProfileChange]:
        """Fold whatever each ``(workspace, profile)`` has not folded yet. ``bulk`` (a
        replay, a rebuild: many events per profile) streams the events instead of fetching
        each batch's at once."""
        by_ws: dict[str, set[str]] = defaultdict(set)
        for ws, pid in pairs:
            by_ws[ws].add(pid)
        changes: list[ProfileChange] = []
        refreshed: list[ProfileChange] = []
        for ws, pids in sorted(by_ws.items()):
            for part in chunks(sorted(pids), 200):
                folded, hot = self._catch_up(ws, part, bulk)
                changes.extend(folded)
                refreshed.extend(hot)
        self._after(changes, refreshed)
        return changes

    def _catch_up(
        self, ws: str, pids: list[str], bulk: bool = False
    ) -> tuple[list[ProfileChange], list[ProfileChange]]:
        """Fold, then save with the hot-user refresh in one write transaction.

        On SQLite the reading and folding happen before the write transaction, so that the
        database's one write lock (shared with the group-commit writer, whose commits
        acknowledge events) is held only to check and save. Under the lock, a profile whose
        watermark or version moved meanwhile (another updater saved it, a merge marked it
        for refolding) is folded again from what is stored now; the others are saved as
        folded. PostgreSQL locks rows, not the database: there the rows are locked first
        and folded under the lock, which saves a query."""
        seen: dict[str, Any] = {}
        work = _Folding()
        if self.db.dialect.name == "sqlite":
            with self.db.connect() as conn:
                seen = store.profile_rows(conn, ws, pids)
                if seen:
                    work = self._fold(conn, ws, seen, bulk)
        with write_tx(self.db) as conn:
            rows = store.lock_profiles(conn, ws, pids)
            if not rows:
                return [], []
            moved = {
                pid: row
                for pid, row in rows.items()
                if pid not in seen
                or (row.last_seq, row.version) != (seen[pid].last_seq, seen[pid].version)
            }
            if moved:
                work.replace(self._fold(conn, ws, moved, bulk))
            work.keep(rows)  # not those deleted meanwhile (merged away, erased)
            docs, tops, folded = work.docs, work.tops, work.folded
            store.save_many(conn, ws, [(pid, docs[pid], tops[pid]) for pid in folded])
            out: list[ProfileChange] = []
            stamps: list[list[tuple[str, int]]] = []
            for pid, evs in folded.items():
                stamps.append(
                    [  # the person's interactions, for the hot window (not transitions)
                        (e.message_id, e.timestamp)
                        for e in evs
                        if e.type in INTERACTIONS
                        and not (e.type == "track" and e.event in SYSTEM_EVENTS)
                    ]
                )
                # Segment transitions written by Sartor are not behaviour: a batch of only
                # those moves the watermark but does not trigger segment evaluation again.
                behaviour = [e for e in evs if not (e.type == "track" and e.event in SYSTEM_EVENTS)]
                change = ProfileChange(ws, pid, tops[pid], len(behaviour))
                change.doc, change.consent = docs[pid], rows[pid].consent or {}
                out.append(change)
            # In the same transaction: a separate one would cost a second commit (on SQLite,
            # a second wait for the write lock) for every batch with a hot user in it.
            # Folds replace a list they change, never mutate it: the same object is the same
            # recent items, which the hot state then need not be sent again.
            unchanged = [
                docs[c.profile_id]["recent_items"] is work.recent0.get(c.profile_id) for c in out
            ]
            refreshed = self._refresh_hot(conn, ws, out, stamps, unchanged)
        # Committed: the states saved here (version + 1), and those read but unchanged.
        self.docs.put(
            ws,
            [(pid, tops[pid], rows[pid].version + 1, docs[pid]) for pid in folded]
            + [
                (pid, tops[pid], rows[pid].version, docs[pid])
                for pid in work.read
                if pid not in folded
            ],
        )
        return out, refreshed

    def _fold(
        self, conn: Connection, ws: str, rows: dict[str, Any], bulk: bool = False
    ) -> _Folding:
        """The events past each row's watermark folded into its state (kept in memory, or
        read); ``rows`` carry ``last_seq`` and ``version``."""
        work = _Folding()
        state: dict[str, tuple[Doc, int]] = {}
        for pid, row in rows.items():
            if row.last_seq is None:  # marked for refolding (a merge, a rebuild)
                state[pid] = (empty(), 0)
                continue
            doc = self.docs.get(ws, pid, row.last_seq, row.version)
            if doc is not None:
                state[pid] = (doc, int(row.last_seq))
        read = store.fold_states(conn, ws, [pid for pid in rows if pid not in state])
        state.update(read)
        work.read = set(read)
        work.tops = {pid: after for pid, (_, after) in state.items()}
        work.docs = {pid: doc for pid, (doc, _) in state.items()}
        # A state folded again from scratch (a merge, a rebuild) counts as changed.
        work.recent0 = {
            pid: doc["recent_items"]
            for pid, doc in work.docs.items()
            if rows[pid].last_seq is not None
        }
        for ev in store.events_after_each(conn, ws, dict(work.tops), stream=bulk):
            pid = ev.profile_id
            if ev.seq <= work.tops[pid]:
                continue
            # As a plain dict: Row._asdict() costs several times the zip.
            event = dict(zip(store.EVENT_FIELDS, ev, strict=True))
            work.docs[pid] = fold(work.docs[pid], event, self.config)
            work.tops[pid] = ev.seq
            work.folded[pid].append(ev)
        return work

    def _refresh_hot(
        self,
        conn: Connection,
        ws: str,
        changes: list[ProfileChange],
        stamps: list[list[tuple[str, int]]],
        unchanged: list[bool] | None = None,
    ) -> list[ProfileChange]:
        """Hot state for the batch, and the refresh of the users it makes hot: their
        preferences recomputed now and kept on their profiles."""
        now = self.clock()
        window = self.hot_config.window_ms
        # The whole batch at once (with Redis: a round trip, not 2-3 a profile). Hot state is
        # idempotent (interactions are keyed by messageId), so a rolled back batch that is
        # folded again does not count twice.
        try:
            same = unchanged or [False] * len(changes)
            counts = self.hot.update_many(
                [
                    (ws, c.profile_id, None if u else (c.doc or empty())["recent_items"], s)
                    for c, s, u in zip(changes, stamps, same, strict=True)
                ],
                self.config.recent_items,
                now,
                window,
            )
        except Exception:  # hot state is a cache: a Redis hiccup must not stop folding
            log.exception("hot state unavailable")
            counts = [0] * len(changes)
        hot = [i for i, n in enumerate(counts) if n >= self.hot_config.interactions]
        if not hot:
            return []
        try:
            claimed = self.hot.claim_refresh_many(
                [(ws, changes[i].profile_id) for i in hot], now, window
            )
        except Exception:
            log.exception("hot state unavailable")
            return []
        out: list[ProfileChange] = []
        for i, ok in zip(hot, claimed, strict=True):
            if ok:
                doc = changes[i].doc or empty()
                preferences = self._preferences(doc, now, counts[i])
                out.append(
                    ProfileChange(
                        ws,
                        changes[i].profile_id,
                        0,
                        0,
                        "profile.refreshed",
                        {"preferences": preferences},
                    )
                )
        if out:
            conn.execute(
                update(profiles)
                .where(
                    profiles.c.workspace_id == bindparam("b_ws"),
                    profiles.c.profile_id == bindparam("b_pid"),
                )
                .values(refreshed=bindparam("b_refreshed", type_=profiles.c.refreshed.type)),
                [
                    {"b_ws": ws, "b_pid": c.profile_id, "b_refreshed": c.data["preferences"]}
                    for c in out
                ],
            )
        return out

    def _preferences(self, doc: Doc, now: int, interactions: int) -> dict[str, Any]:
        current = view(doc, now, self.config)
        return {
            "at": now,
            "interactions": interactions,
            "categories": dict(list(current["category_affinity"].items())[:10]),
            "brands": dict(list(current["brand_affinity"].items())[:10]),
            "price_median": current["price_median"],
            "recent_items": [i["product_id"] for i in current["recent_items"][:20]],
        }

    def _after(self, changes: list[ProfileChange], refreshed: list[ProfileChange]) -> None:
        """Listeners, once the folds are committed: each change, the refreshes, then the
        batch listeners (segment evaluation), which no change waits for."""
        for change in changes:
            self._emit(change)
        for change in refreshed:
            self._emit(change)
        for batch_listener in self.batch_listeners:
            try:
                batch_listener(changes)
            except Exception:
                log.exception("profile batch listener failed")

    def _emit(self, change: ProfileChange) -> None:
        for listener in self.listeners:
            try:
                listener(change)
            except Exception:
                log.exception("profile listener failed")

    def replay(self, limit_per_step: int = 5000, upto: int | None = None) -> int:
        """Fold every profile with events past the checkpoint, then move the checkpoint.

        Run at start (what the bus lost is found here) and periodically. ``upto`` stops at
        that log position instead of the head: a periodic replay under load passes the
        head it saw one period ago, so it leaves the events the bus is still delivering to
        the bus instead of folding them in a long pass that holds up the stream. Returns
        the number of profiles caught up."""
        done = 0
        with self.db.connect() as conn:
            position = store.get_checkpoint(conn, CHECKPOINT)
            top = store.head(conn)
        if upto is not None:
            top = min(top, upto)
        while position < top:
            with self.db.connect() as conn:
                touched = store.touched_since(conn, position, top, limit_per_step)
            if not touched:
                break
            if len(touched) < limit_per_step:
                step = top
            else:
                # Bounded step: every profile with an event <= step is in this step.
                step = min(t for _, _, t in touched[-1:])
                touched = [t for t in touched if t[2] <= step]
            # Only what the bus has not folded yet: under a steady load that is almost
            # nothing, and catching up an up-to-date profile still locks and reads it.
            with self.db.connect() as conn:
                stale = store.not_folded(conn, touched)
            self.catch_up(((ws, pid) for ws, pid, _ in stale), bulk=True)
            done += len(stale)
            with write_tx(self.db) as conn:
                store.set_checkpoint(conn, CHECKPOINT, step)
            position = step
        return done

    def rebuild(
        self, workspace_id: str | None = None, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Recompute every profile (of one workspace, or all) from the log."""
        with self.db.connect() as conn:
            pairs = store.all_profiles(conn, workspace_id)
        total = len(pairs)
        done = 0
        for part in chunks(pairs, 500):
            with write_tx(self.db) as conn:
                for ws in {ws for ws, _ in part}:
                    conn.execute(
                        update(profiles)
                        .where(
                            profiles.c.workspace_id == ws,
                            profiles.c.profile_id.in_([p for w, p in part if w == ws]),
                        )
                        .values(last_seq=None)
                    )
            self.catch_up(part, bulk=True)
            done += len(part)
            if progress:
                progress(done, total)
        return total
