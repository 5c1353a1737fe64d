"""Attribution: served lists, the events that follow them, and the report per slot and model.

Every served list is a row of ``recommendations`` (its id, slot, model versions and item
ids). A request never waits on that write: rows queue in memory and one background thread
writes them in batches (on SQLite each commit is an fsync; one per request would cap the
serving rate). An event whose properties (or one of whose products) carry the list's
``recommendation_id`` (or ``recommendationId``) becomes a row of
``recommendation_outcomes`` through the same thread, after the event's own commit.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, delete, func, select

from sartor.clock import iso
from sartor.storage.db import write_tx
from sartor.storage.sql import chunks, execute_many, insert_ignore
from sartor.storage.tables import events, recommendation_outcomes, recommendations

log = logging.getLogger("sartor.recommend")

CLICK_EVENTS = ("Product Clicked", "Product Viewed")
ADD_EVENTS = ("Product Added",)
ORDER_EVENTS = ("Order Completed",)
ID_KEYS = ("recommendation_id", "recommendationId")
MAX_ID = 40  # recommendations.id
MAX_ITEM = 200  # recommendation_outcomes.item_id
MAX_QUEUE = 200_000  # rows kept for a retry while the database is unavailable


@dataclass(frozen=True)
class Outcome:
    """One event attributed to a served list (before its ``seq`` is known)."""

    message_id: str
    recommendation_id: str
    event: str
    item_id: str | None
    revenue: float | None
    at: int


def _rec_id(props: Mapping[str, Any]) -> str | None:
    for key in ID_KEYS:
        value = props.get(key)
        if isinstance(value, str) and 0 < len(value) <= MAX_ID and "\x00" not in value:
            return value
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _item(value: Mapping[str, Any]) -> str | None:
    for key in ("product_id", "sku"):
        got = value.get(key)
        if isinstance(got, str | int) and not isinstance(got, bool):
            text = str(got)
            if text and len(text) <= MAX_ITEM and "\x00" not in text:
                return text
    return None


def _line_value(product: Mapping[str, Any]) -> float | None:
    price = _num(product.get("price"))
    if price is None:
        return None
    quantity = _num(product.get("quantity"))
    return price * (quantity if quantity is not None else 1.0)


def outcome_of(
    message_id: str, event: str | None, props: Mapping[str, Any] | None, at: int
) -> Outcome | None:
    """The attribution an event carries, if any (pure).

    The id is read from the properties, else from the first product that has one; an order's
    revenue is its ``revenue``/``total``/``value`` (or the sum of its lines) when the id is
    on the order, and the line's price times quantity when it is on a product.
    """
    if not event or not isinstance(props, Mapping):
        return None
    rec = _rec_id(props)
    item = _item(props)
    revenue: float | None = None
    products = props.get("products")
    lines = [p for p in products if isinstance(p, Mapping)] if isinstance(products, list) else []
    if rec is not None:
        if event in ORDER_EVENTS:
            for key in ("revenue", "total", "value"):
                revenue = _num(props.get(key))
                if revenue is not None:
                    break
            if revenue is None and lines:
                revenue = sum(v for v in (_line_value(p) for p in lines) if v is not None)
        if item is None and len(lines) == 1:
            item = _item(lines[0])
    else:
        for line in lines:
            rec = _rec_id(line)
            if rec is not None:
                item = _item(line)
                if event in ORDER_EVENTS:
                    revenue = _line_value(line)
                break
    if rec is None:
        return None
    return Outcome(message_id, rec, event[:200], item, revenue, at)


class AttributionWriter:
    """Background, batched writes of served lists and their outcomes."""

    # A second between writes: at hundreds of lists a second, a SQLite insert costs a third
    # as much per row in batches of hundreds as in batches of tens (and it competes with the
    # requests for the interpreter). flush() does not wait for it.
    def __init__(self, db: Engine, interval: float = 1.0, batch: int = 2000) -> None:
        self.db = db
        self.interval = interval
        self.batch = batch
        self._cond = threading.Condition()
        self._served: list[dict[str, Any]] = []
        self._outcomes: list[tuple[str, Outcome]] = []
        self._queued = 0  # generations: every enqueue bumps it ...
        self._written = 0  # ... and a finished write catches up to what it took
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- queueing -------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._run, name="sartor-attribution", daemon=True
            )
            self._thread.start()

    def served(self, row: dict[str, Any]) -> None:
        with self._cond:
            self._ensure_thread()
            if len(self._served) >= MAX_QUEUE:
                # The database has been away for long: the oldest lists lose attribution
                # rather than the process its memory.
                del self._served[: len(self._served) // 10]
            self._served.append(row)
            self._queued += 1
            if len(self._served) >= self.batch:
                self._cond.notify_all()

    def outcomes(self, ws_id: str, found: Sequence[Outcome]) -> None:
        if not found:
            return
        with self._cond:
            self._ensure_thread()
            if len(self._outcomes) >= MAX_QUEUE:
                del self._outcomes[: len(self._outcomes) // 10]
            self._outcomes.extend((ws_id, o) for o in found)
            self._queued += 1
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued before this call was written (or its write failed
        and is queued for a retry); False on timeout."""
        with self._cond:
            target = self._queued
            if self._written >= target:
                return True
            self._ensure_thread()
            self._cond.notify_all()
            deadline = time.monotonic() + timeout
            while self._written < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        self.flush(timeout=10.0)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10.0)
        self._thread = None

    # -- writing --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._served and not self._outcomes:
                    if self._closed:
                        return
                    self._cond.wait(self.interval)
                    if not self._served and not self._outcomes:
                        self._written = self._queued
                        self._cond.notify_all()
                        continue
                elif len(self._served) < self.batch and not self._closed:
                    # Let a few more requests join this transaction.
                    self._cond.wait(self.interval)
                served, self._served = self._served, []
                found, self._outcomes = self._outcomes, []
                generation = self._queued
            try:
                self._write(served, found)
            except Exception:
                log.exception("attribution rows not written yet; retrying")
                with self._cond:
                    self._served[:0] = served
                    self._outcomes[:0] = found
                    self._written = generation  # flush() must not hang while the db is down
                    self._cond.notify_all()
                    self._cond.wait(1.0)
                continue
            with self._cond:
                self._written = generation
                self._cond.notify_all()

    def _write(self, served: list[dict[str, Any]], found: list[tuple[str, Outcome]]) -> None:
        with write_tx(self.db) as conn:
            for part in chunks(served, 500):
                execute_many(conn, insert_ignore(conn, recommendations), part)
            by_ws: dict[str, list[Outcome]] = {}
            for ws_id, outcome in found:
                by_ws.setdefault(ws_id, []).append(outcome)
            for ws_id, outs in by_ws.items():
                seqs: dict[str, int] = {}
                for part_ids in chunks(sorted({o.message_id for o in outs})):
                    for row in conn.execute(
                        select(events.c.message_id, events.c.seq).where(
                            events.c.workspace_id == ws_id, events.c.message_id.in_(part_ids)
                        )
                    ):
                        seqs[row.message_id] = row.seq
                rows = [
                    {
                        "workspace_id": ws_id,
                        "event_seq": seqs[o.message_id],
                        "recommendation_id": o.recommendation_id,
                        "event": o.event,
                        "item_id": o.item_id,
                        "revenue": o.revenue,
                        "at": o.at,
                    }
                    for o in outs
                    if o.message_id in seqs  # an event erased meanwhile has no outcome
                ]
                for part in chunks(rows, 500):
                    execute_many(conn, insert_ignore(conn, recommendation_outcomes), part)


# -- erasure and the report ------------------------------------------------------------------


def erase(conn: Connection, ws_id: str, profile_ids: Iterable[str]) -> int:
    """Delete the lists served to these profiles, their outcomes, and the outcomes of these
    profiles' own events (before the events go). Returns the rows deleted."""
    pids = sorted(set(profile_ids))
    removed = 0
    r, o = recommendations, recommendation_outcomes
    for part in chunks(pids):
        theirs = select(r.c.id).where(r.c.workspace_id == ws_id, r.c.profile_id.in_(part))
        removed += conn.execute(
            delete(o).where(o.c.workspace_id == ws_id, o.c.recommendation_id.in_(theirs))
        ).rowcount
        own_events = select(events.c.seq).where(
            events.c.workspace_id == ws_id, events.c.profile_id.in_(part)
        )
        removed += conn.execute(
            delete(o).where(o.c.workspace_id == ws_id, o.c.event_seq.in_(own_events))
        ).rowcount
        removed += conn.execute(
            delete(r).where(r.c.workspace_id == ws_id, r.c.profile_id.in_(part))
        ).rowcount
    return removed


def _ratio(a: float, b: float) -> float:
    return round(a / b, 6) if b else 0.0


def _models_key(value: Any) -> str:
    return orjson.dumps(value or {}, option=orjson.OPT_SORT_KEYS).decode()


def _summary(served: int, counts: Mapping[str, int], revenue: float) -> dict[str, Any]:
    clicks, adds, orders = counts.get("click", 0), counts.get("add", 0), counts.get("order", 0)
    return {
        "served": served,
        "clicks": clicks,
        "ctr": _ratio(clicks, served),
        "addToCarts": adds,
        "orders": orders,
        "conversionRate": _ratio(orders, served),
        "revenue": round(revenue, 2),
    }


def report(
    conn: Connection, ws_id: str, slot: str | None = None, since: int | None = None
) -> dict[str, Any]:
    """Served lists, clicks, click-through rate, cart adds, orders, conversion rate and
    revenue per slot, and per set of model versions within each slot.

    A list counts once per kind of outcome, however many events it got: ``clicks`` is the
    number of lists with at least one click (``Product Clicked`` or ``Product Viewed``),
    ``orders`` the number with at least one ``Order Completed``; ``revenue`` sums every
    attributed order.
    """
    r, o = recommendations, recommendation_outcomes
    where = [r.c.workspace_id == ws_id]
    if slot is not None:
        where.append(r.c.slot == slot)
    if since is not None:
        where.append(r.c.created_at >= since)
    served_rows = conn.execute(
        select(r.c.slot, r.c.models, func.count().label("n"))
        .where(*where)
        .group_by(r.c.slot, r.c.models)
    ).all()
    kinds = {
        **{e: "click" for e in CLICK_EVENTS},
        **{e: "add" for e in ADD_EVENTS},
        **{e: "order" for e in ORDER_EVENTS},
    }
    outcome_rows = conn.execute(
        select(
            r.c.slot,
            r.c.models,
            o.c.event,
            func.count(func.distinct(o.c.recommendation_id)).label("lists"),
            func.coalesce(func.sum(o.c.revenue), 0.0).label("revenue"),
        )
        .select_from(o.join(r, (r.c.id == o.c.recommendation_id) & (r.c.workspace_id == ws_id)))
        .where(o.c.workspace_id == ws_id, o.c.event.in_(list(kinds)), *where)
        .group_by(r.c.slot, r.c.models, o.c.event)
    ).all()
    # Clicks: a list clicked through both Product Clicked and Product Viewed counts once.
    click_lists: dict[tuple[str, str], int] = {}
    if any(row.event in CLICK_EVENTS for row in outcome_rows):
        for row in conn.execute(
            select(
                r.c.slot,
                r.c.models,
                func.count(func.distinct(o.c.recommendation_id)).label("lists"),
            )
            .select_from(o.join(r, (r.c.id == o.c.recommendation_id) & (r.c.workspace_id == ws_id)))
            .where(o.c.workspace_id == ws_id, o.c.event.in_(CLICK_EVENTS), *where)
            .group_by(r.c.slot, r.c.models)
        ):
            click_lists[(row.slot, _models_key(row.models))] = int(row.lists)

    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for row in served_rows:
        key = (row.slot, _models_key(row.models))
        groups[key] = {"models": row.models or {}, "served": int(row.n), "counts": {}, "rev": 0.0}
    for row in outcome_rows:
        key = (row.slot, _models_key(row.models))
        group = groups.setdefault(
            key, {"models": row.models or {}, "served": 0, "counts": {}, "rev": 0.0}
        )
        kind = kinds[row.event]
        if kind != "click":
            group["counts"][kind] = group["counts"].get(kind, 0) + int(row.lists)
        if kind == "order":
            group["rev"] += float(row.revenue or 0.0)
    for key, lists in click_lists.items():
        groups[key]["counts"]["click"] = lists

    slots: dict[str, dict[str, Any]] = {}
    for (slot_name, _), group in sorted(groups.items()):
        entry = slots.setdefault(
            slot_name, {"slot": slot_name, "served": 0, "counts": {}, "rev": 0.0, "byModels": []}
        )
        entry["served"] += group["served"]
        entry["rev"] += group["rev"]
        for kind, n in group["counts"].items():
            entry["counts"][kind] = entry["counts"].get(kind, 0) + n
        entry["byModels"].append(
            {"models": group["models"], **_summary(group["served"], group["counts"], group["rev"])}
        )
    out = []
    for entry in slots.values():
        out.append(
            {
                "slot": entry["slot"],
                **_summary(entry["served"], entry["counts"], entry["rev"]),
                "byModels": sorted(entry["byModels"], key=lambda g: -g["served"]),
            }
        )
    return {"since": iso(since), "slot": slot, "slots": out}
