"""``sartor import events``: rows of a file -> Segment messages -> the event log.

The rows stream through a mapper (a preset or a mapping file) into messages; each batch of
messages is validated by the same :func:`sartor.collect.prepare.prepare` as the API's, then
stored by :func:`sartor.collect.ingest.store_events` (dedupe, erasure suppression, identity,
consent) in one large transaction, without HTTP, the API's rate limit or its group-commit
thread. Profiles catch up through the bus (a running server folds them on its next
reconcile; the CLI folds them at the end).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from sartor.collect.errors import FieldError
from sartor.collect.ingest import store_events
from sartor.collect.prepare import PreparedEvent, prepare
from sartor.importers import ImportConfigError, ImportJob
from sartor.importers.mapping import (
    ColumnMapper,
    Draft,
    Mapper,
    MappingError,
    Overlay,
    RowError,
    load_mapping,
)
from sartor.importers.presets import preset_mapper
from sartor.importers.source import MalformedRow
from sartor.privacy.pii import derive_key
from sartor.storage.db import write_tx

# A trusted import may carry orders bigger than the API's 32 KB per event (a 1,000-line
# invoice is one real order).
IMPORT_EVENT_BYTES = 2 * 1024 * 1024
# An order of an import may list more products than the API's 1,000 (the largest Online
# Retail invoice has 1,114 lines).
IMPORT_MAX_PRODUCTS = 100_000
# Events per transaction: big enough that commits (an fsync each on SQLite) do not dominate,
# small enough that a transaction holds a few MB and a live server's writes wait briefly.
TRANSACTION_EVENTS = 5_000
# ... and at most this many source rows (an event may stand for a whole invoice).
TRANSACTION_ROWS = 100_000
# Rows between two progress callbacks.
PROGRESS_EVERY = 5_000

_INDEX = re.compile(r"\[\d+\]")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def reason_of(exc: FieldError) -> str:
    """A reason to count by: the field path without indexes, the message without the
    offending value (that value is in the rejects file's row)."""
    field = _INDEX.sub("[]", exc.field) if exc.field else "event"
    return f"{field}: {_QUOTED.sub('...', exc.message)}"


def build_mapper(job: ImportJob) -> tuple[Mapper, Overlay]:
    mapping = load_mapping(job.mapping) if job.mapping is not None else None
    preset = job.preset
    if mapping is not None and mapping.get("preset"):
        if preset is not None and preset != mapping["preset"]:
            raise MappingError(
                f"the mapping names preset {mapping['preset']!r} but {preset!r} was asked for"
            )
        preset = mapping["preset"]
    if preset is not None:
        if mapping is not None and mapping.get("fields"):
            raise MappingError("a mapping with `fields` cannot be combined with a preset")
        return preset_mapper(preset), Overlay(mapping)
    if mapping is None:
        raise ImportConfigError("give a mapping file (--mapping) or a preset (--preset)")
    return ColumnMapper(mapping), Overlay(None)


class _Batcher:
    """Validates and stores batches of drafts, counting into the job's summary."""

    def __init__(self, job: ImportJob, products_normalized: bool) -> None:
        self.job = job
        self.products_normalized = products_normalized
        self.ws = job.workspace
        self.secret = job.engine.settings.secret_key
        self.pii_key = derive_key(self.secret, self.ws.id, "pii")
        self.drafts: list[Draft] = []
        self.rows = 0

    def add(self, drafts: Sequence[Draft]) -> None:
        self.drafts.extend(drafts)
        for draft in drafts:
            self.rows += draft[1]
        if len(self.drafts) >= TRANSACTION_EVENTS or self.rows >= TRANSACTION_ROWS:
            self.flush()

    def flush(self) -> None:
        drafts, self.drafts = self.drafts, []
        self.rows = 0
        if not drafts:
            return
        job, summary = self.job, self.job.summary
        received = time.time_ns() // 1_000_000
        settings = self.ws.settings
        prepared: list[PreparedEvent] = []
        for i, (line, rows, msg) in enumerate(drafts):
            try:
                prepared.append(
                    prepare(
                        msg,
                        index=i,
                        prefix="",
                        settings=settings,
                        pii_key=self.pii_key,
                        received_at=received,
                        max_event_bytes=IMPORT_EVENT_BYTES,
                        max_products=IMPORT_MAX_PRODUCTS,
                        products_normalized=self.products_normalized,
                    )
                )
            except FieldError as exc:
                self._reject(line, rows, reason_of(exc), msg, exc.field, exc.message)
        if not prepared:
            return
        with write_tx(job.engine.db) as conn:
            outcomes = store_events(conn, self.ws, prepared, self.secret)
        for o in outcomes:
            if o.status == "stored":
                summary.imported += 1
            elif o.status == "duplicate":
                summary.duplicates += 1
            else:
                line, rows, msg = drafts[o.index]
                reason = (
                    f"dropped: {o.reason}" if o.status == "dropped" else f"{o.field}: {o.reason}"
                )
                self._reject(line, rows, reason, msg, o.field)
        # As after an API commit: profile folders, live subscribers and the catalog (items
        # seen in product events) hear of what was stored.
        job.engine.notify_stored(self.ws, prepared, outcomes)

    def _reject(
        self,
        line: int,
        rows: int,
        reason: str,
        msg: Any,
        field: str | None,
        message: str | None = None,
    ) -> None:
        # `reason` is what the summary counts by; `message` keeps the offending value.
        self.job.rejects.write(line, reason, msg, field, message)
        if rows > 1:
            # One event stood for several source rows (an invoice): all of them are refused.
            self.job.summary.reject(reason, rows - 1)


def import_events(job: ImportJob) -> None:
    """The ``events`` importer (see :func:`sartor.importers.run_import`)."""
    mapper, overlay = build_mapper(job)
    summary, rejects = job.summary, job.rejects
    normalized = getattr(mapper, "products_normalized", False) and not any(
        target.startswith("properties.products") for target in overlay.constants
    )
    batcher = _Batcher(job, normalized)
    since_progress = 0
    for line, row in job.rows():
        since_progress += 1
        if since_progress >= PROGRESS_EVERY:
            summary.read += since_progress
            job.advance(since_progress)
            since_progress = 0
        if type(row) is MalformedRow:
            rejects.write(line, row.reason, row.report())
            continue
        try:
            drafts = mapper.feed(line, row)
        except RowError as exc:
            rejects.write(line, exc.reason, row, exc.field)
            continue
        if drafts:
            if overlay:
                for _, _, msg in drafts:
                    overlay.apply(msg)
            batcher.add(drafts)
    summary.read += since_progress
    tail = mapper.finish()
    if overlay:
        for _, _, msg in tail:
            overlay.apply(msg)
    batcher.add(tail)
    batcher.flush()
    job.advance(since_progress)
