"""Periodic work of a running server: segment re-evaluation (lapsing users produce no event),
daily size history, RFM, weekly behavioural clusters, recommendation model retraining and
the purge of import rejects files past their retention.
Each job can also be run on demand."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sartor.clock import now_ms

if TYPE_CHECKING:
    from sartor.engine import Engine

log = logging.getLogger("sartor.scheduler")


class Scheduler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, float] = {}

    def tick(self, now: int | None = None, force: bool = False) -> list[str]:
        """Run what is due; returns the jobs that ran."""
        s = self.engine.settings
        due = {
            "segments": s.segment_schedule_minutes * 60,
            "rfm": s.rfm_schedule_hours * 3600,
            # Checked hourly; each workspace is re-clustered when its newest stored run is
            # older than the schedule, so restarts do not postpone the weekly run.
            "clusters": min(s.cluster_schedule_days * 86400, 3600),
            # Rejects files past SARTOR_IMPORT_RETENTION_DAYS (by file age): checked hourly.
            "imports": 3600,
        }
        if s.rec_retrain_hours > 0:
            # Checked hourly, like clusters: the newest stored version decides.
            due["models"] = min(s.rec_retrain_hours * 3600, 3600)
        ran = []
        clock = time.monotonic()
        for job, every in due.items():
            if force or clock - self._last.get(job, -1e18) >= every:
                self._last[job] = clock
                self._run(job, now if now is not None else now_ms(), force)
                ran.append(job)
        return ran

    def _run(self, job: str, now: int, force: bool = False) -> None:
        if job == "imports":  # the job folders of every workspace at once
            try:
                self.engine.imports.purge_rejects(now)
            except Exception:
                log.exception("scheduled %s failed", job)
            return
        for ws in self.engine.workspaces():
            try:
                if job == "segments":
                    self.engine.segments.backfill(ws.id, now=now)
                elif job == "rfm":
                    self.engine.segments.run_rfm(ws.id, now)
                elif job == "clusters":
                    from sartor.segments import clustering

                    last = clustering.last_run_at(self.engine, ws.id)
                    every = self.engine.settings.cluster_schedule_days * 86_400_000
                    if force or last is None or now_ms() - last >= every:
                        clustering.run_clustering(self.engine, ws.id, now=now)
                elif job == "models":
                    from sartor.recommend.training import last_trained_at

                    last = last_trained_at(self.engine, ws.id)
                    every = self.engine.settings.rec_retrain_hours * 3_600_000
                    if force or last is None or now_ms() - last >= every:
                        self.engine.train(ws.id)
            except Exception:
                log.exception("scheduled %s failed", job, extra={"workspace": ws.id})

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="sartor-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _loop(self) -> None:
        # Let the first replay settle, then check every minute what is due.
        self._last = {"segments": time.monotonic(), "rfm": time.monotonic()}
        while not self._stop.wait(60):
            self.tick()
