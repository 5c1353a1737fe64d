"""Group commit: one writer thread turns many concurrent requests into one transaction.

SQLite has one writer at a time and each commit costs an fsync; committing every request on
its own would cap throughput at the disk's fsync rate. Requests hand their prepared events to
the writer and wait; the writer drains whatever has queued, stores it all in one transaction,
commits, and only then resolves each request's future. An acknowledged event is therefore
always a committed one.

The commit listeners (profile notifications, the live stream, catalog and attribution
hooks) run after the answers, in commit order, on a thread of their own: the writer goes
on to the next group instead of waiting for a Redis round trip or the catalog's own
transaction. A job without events is a barrier: it is answered once the listeners of
every commit before it have run. At most ``max_pending`` commits wait for their
listeners; past that the writer waits too.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy import Engine

from sartor.collect.ingest import Outcome, store_events
from sartor.collect.prepare import PreparedEvent
from sartor.storage.db import write_tx
from sartor.workspace import Workspace

log = logging.getLogger("sartor.writer")


@dataclass(slots=True)
class _Job:
    workspace: Workspace
    events: list[PreparedEvent]
    future: Future[list[Outcome]] = field(default_factory=Future)


class GroupCommitWriter:
    """A daemon thread that stores submitted events in shared transactions."""

    def __init__(
        self,
        engine: Engine,
        secret: str,
        *,
        max_events: int = 5000,
        on_commit: Callable[[Workspace, list[PreparedEvent], list[Outcome]], None] | None = None,
        max_pending: int = 64,
    ) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._secret = secret
        self._max_events = max_events
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Committed jobs with their outcomes (listeners to run), or barriers (no outcomes).
        self._pending: queue.Queue[tuple[list[_Job], list[list[Outcome]] | None] | None] = (
            queue.Queue(max_pending)
        )
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sartor-writer", daemon=True)
        self._notifier = threading.Thread(
            target=self._notify_loop, name="sartor-commit-listeners", daemon=True
        )
        self._notifier.start()
        self._thread.start()
        self.commits = 0

    def submit(self, workspace: Workspace, events: list[PreparedEvent]) -> Future[list[Outcome]]:
        job = _Job(workspace, events)
        with self._lock:
            if self._closed:
                raise RuntimeError("the writer is closed")
            self._queue.put(job)
        return job.future

    def close(self, timeout: float = 30.0) -> None:
        """Store what is queued, then stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        self._notifier.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                job = self._queue.get()
                if job is None:
                    break
                jobs = [job]
                size = len(job.events)
                while size < self._max_events:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    jobs.append(nxt)
                    size += len(nxt.events)
                barriers = [j for j in jobs if not j.events]
                if len(barriers) < len(jobs):
                    self._commit([j for j in jobs if j.events])
                if barriers:
                    self._pending.put((barriers, None))
        finally:
            self._pending.put(None)

    def _notify_loop(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            jobs, results = item
            if results is None:  # barriers: every listener before them has run
                for job in jobs:
                    job.future.set_result([])
                continue
            if self._on_commit is None:
                continue
            for job, result in zip(jobs, results, strict=True):
                try:
                    self._on_commit(job.workspace, job.events, result)
                except Exception:  # notifications are best effort; the log has it all
                    log.exception("commit listener failed")

    def _commit(self, jobs: list[_Job]) -> None:
        try:
            results = self._store(jobs)
        except Exception as exc:
            if len(jobs) > 1:
                # One job's failure must not fail its neighbours: retry each on its own.
                for job in jobs:
                    self._commit([job])
                return
            log.exception("storing events failed", extra={"workspace": jobs[0].workspace.id})
            jobs[0].future.set_exception(exc)
            return
        self.commits += 1
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)
        if self._on_commit is not None:
            self._pending.put((jobs, results))

    def _store(self, jobs: list[_Job]) -> list[list[Outcome]]:
        by_ws: dict[str, list[PreparedEvent]] = {}
        workspaces: dict[str, Workspace] = {}
        for job in jobs:
            workspaces[job.workspace.id] = job.workspace
            by_ws.setdefault(job.workspace.id, []).extend(job.events)
        outcomes: dict[tuple[str, int], list[Outcome]] = {}
        with write_tx(self._engine) as conn:
            for ws_id, evs in by_ws.items():
                # Events of several jobs share indexes; key outcomes by job position.
                results = store_events(conn, workspaces[ws_id], evs, self._secret)
                pos = 0
                for j, job in enumerate(jobs):
                    if job.workspace.id != ws_id:
                        continue
                    outcomes[(ws_id, j)] = results[pos : pos + len(job.events)]
                    pos += len(job.events)
        return [outcomes[(job.workspace.id, j)] for j, job in enumerate(jobs)]
