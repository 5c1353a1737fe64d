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
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, bindparam, update

from sartor.clock import now_ms
from sartor.profiles import store
from sartor.profiles.folds import SYSTEM_EVENTS, Doc, ProfileConfig, fold, view
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "workspaceId": self.workspace_id,
            "profileId": self.profile_id,
            "lastSeq": self.last_seq,
            "events": self.events,
            **self.data,
        }


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
    ) -> None:
        self.db = db
        self.config = config
        self.hot = hot or InProcessHotState()
        self.hot_config = hot_config or HotConfig()
        self.listeners = list(listeners)
        self.batch_listeners = list(batch_listeners)
        self.clock = clock

    def catch_up(self, pairs: Iterable[tuple[str, str]]) -> list[ProfileChange]:
        """Fold whatever each ``(workspace, profile)`` has not folded yet."""
        by_ws: dict[str, set[str]] = defaultdict(set)
        for ws, pid in pairs:
            by_ws[ws].add(pid)
        changes: list[ProfileChange] = []
        for ws, pids in sorted(by_ws.items()):
            for part in chunks(sorted(pids), 200):
                changes.extend(self._catch_up(ws, part))
        self._after(changes)
        return changes

    def _catch_up(self, ws: str, pids: list[str]) -> list[ProfileChange]:
        out: list[ProfileChange] = []
        with write_tx(self.db) as conn:
            rows = store.lock_profiles(conn, ws, pids)
            if not rows:
                return out
            state: dict[str, tuple[Doc, int]] = {
                pid: store.doc_of(row) for pid, row in rows.items()
            }
            tops = {pid: after for pid, (_, after) in state.items()}
            docs = {pid: doc for pid, (doc, _) in state.items()}
            folded: dict[str, list[Any]] = defaultdict(list)
            for ev in store.events_after_each(conn, ws, dict(tops)):
                pid = ev.profile_id
                if ev.seq <= tops[pid]:
                    continue
                docs[pid] = fold(docs[pid], ev._asdict(), self.config)
                tops[pid] = ev.seq
                folded[pid].append(ev)
            store.save_many(conn, ws, [(pid, docs[pid], tops[pid]) for pid in folded])
            for pid, evs in folded.items():
                stamps = [  # the person's interactions, for the hot window (not transitions)
                    (e.message_id, e.timestamp)
                    for e in evs
                    if e.type in INTERACTIONS
                    and not (e.type == "track" and e.event in SYSTEM_EVENTS)
                ]
                # Segment transitions written by Sartor are not behaviour: a batch of only
                # those moves the watermark but does not trigger segment evaluation again.
                behaviour = [e for e in evs if not (e.type == "track" and e.event in SYSTEM_EVENTS)]
                change = ProfileChange(ws, pid, tops[pid], len(behaviour))
                change.data = {"_doc": docs[pid], "_stamps": stamps}
                out.append(change)
        return out

    def _after(self, changes: list[ProfileChange]) -> None:
        """Hot state, the hot-user refresh, and listeners, once the folds are committed."""
        now = self.clock()
        window = self.hot_config.window_ms
        docs = [change.data.pop("_doc") for change in changes]
        stamps = [change.data.pop("_stamps") for change in changes]
        # Hot state for the whole batch at once (with Redis: a round trip, not 2-3 a profile).
        try:
            counts = self.hot.update_many(
                [
                    (c.workspace_id, c.profile_id, doc["recent_items"], s)
                    for c, doc, s in zip(changes, docs, stamps, strict=True)
                ],
                self.config.recent_items,
                now,
                window,
            )
        except Exception:  # hot state is a cache: a Redis hiccup must not stop folding
            log.exception("hot state unavailable")
            counts = [0] * len(changes)
        hot = [i for i, n in enumerate(counts) if n >= self.hot_config.interactions]
        try:
            claimed = self.hot.claim_refresh_many(
                [(changes[i].workspace_id, changes[i].profile_id) for i in hot], now, window
            )
        except Exception:
            log.exception("hot state unavailable")
            claimed = [False] * len(hot)
        for change in changes:
            self._emit(change)
        refresh = [i for i, ok in zip(hot, claimed, strict=True) if ok]
        if refresh:
            # One transaction for the batch's hot users (on SQLite, one commit, not one each).
            for refreshed in self.refresh_many(
                [
                    (changes[i].workspace_id, changes[i].profile_id, docs[i], counts[i])
                    for i in refresh
                ],
                now,
            ):
                self._emit(refreshed)
        for batch_listener in self.batch_listeners:
            try:
                batch_listener(changes)
            except Exception:
                log.exception("profile batch listener failed")

    def refresh_many(self, hot: list[tuple[str, str, Doc, int]], now: int) -> list[ProfileChange]:
        """Recompute hot users' preferences at ``now`` and keep them on their profiles, for
        several ``(workspace, profile, doc, interactions)`` in one transaction."""
        out: list[ProfileChange] = []
        for ws, pid, doc, interactions in hot:
            current = view(doc, now, self.config)
            preferences = {
                "at": now,
                "interactions": interactions,
                "categories": dict(list(current["category_affinity"].items())[:10]),
                "brands": dict(list(current["brand_affinity"].items())[:10]),
                "price_median": current["price_median"],
                "recent_items": [i["product_id"] for i in current["recent_items"][:20]],
            }
            out.append(
                ProfileChange(ws, pid, 0, 0, "profile.refreshed", {"preferences": preferences})
            )
        with write_tx(self.db) as conn:
            conn.execute(
                update(profiles)
                .where(
                    profiles.c.workspace_id == bindparam("b_ws"),
                    profiles.c.profile_id == bindparam("b_pid"),
                )
                .values(refreshed=bindparam("b_refreshed", type_=profiles.c.refreshed.type)),
                [
                    {
                        "b_ws": c.workspace_id,
                        "b_pid": c.profile_id,
                        "b_refreshed": c.data["preferences"],
                    }
                    for c in out
                ],
            )
        return out

    def _emit(self, change: ProfileChange) -> None:
        for listener in self.listeners:
            try:
                listener(change)
            except Exception:
                log.exception("profile listener failed")

    def replay(self, limit_per_step: int = 5000) -> int:
        """Fold every profile with events past the checkpoint, then move the checkpoint.

        Run at start (what the bus lost is found here) and periodically. Returns the number
        of profiles caught up."""
        done = 0
        with self.db.connect() as conn:
            position = store.get_checkpoint(conn, CHECKPOINT)
            top = store.head(conn)
        while position < top:
            with self.db.connect() as conn:
                touched = store.touched_since(conn, position, top, limit_per_step)
            if not touched:
                break
            if len(touched) < limit_per_step:
                upto = top
            else:
                # Bounded step: every profile with an event <= upto is in this step.
                upto = min(t for _, _, t in touched[-1:])
                touched = [t for t in touched if t[2] <= upto]
            # Only what the bus has not folded yet: under a steady load that is almost
            # nothing, and catching up an up-to-date profile still locks and reads it.
            with self.db.connect() as conn:
                stale = store.not_folded(conn, touched)
            self.catch_up((ws, pid) for ws, pid, _ in stale)
            done += len(stale)
            with write_tx(self.db) as conn:
                store.set_checkpoint(conn, CHECKPOINT, upto)
            position = upto
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
            self.catch_up(part)
            done += len(part)
            if progress:
                progress(done, total)
        return total
