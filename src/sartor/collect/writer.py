"""Group commit: one writer thread turns many concurrent requests into one transaction.

SQLite has one writer at a time and each commit costs an fsync; committing every request on
its own would cap throughput at the disk's fsync rate. Requests hand their prepared events to
the writer and wait; the writer drains whatever has queued, stores it all in one transaction,
commits, and only then resolves each request's future. An acknowledged event is therefore
always a committed one.
"""

from __future__ import annotations

import logging
import queue
import threading
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
    ) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._secret = secret
        self._max_events = max_events
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sartor-writer", daemon=True)
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
        self._thread.join(timeout)

    def _run(self) -> None:
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
            self._commit(jobs)

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
            for job, result in zip(jobs, results, strict=True):
                try:
                    self._on_commit(job.workspace, job.events, result)
                except Exception:  # notifications are best effort; the log has it all
                    log.exception("commit listener failed")

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
