"""The embedded bus: a thread that folds what the writer just committed.

It needs no checkpoint of its own: on start and every ``reconcile_seconds`` it replays the
log past the updater's checkpoint, which also picks up events stored by other processes
(a CLI import while the server runs).
"""

from __future__ import annotations

import logging
import queue
import threading
from functools import partial

from sartor.profiles.updater import ProfileUpdater

log = logging.getLogger("sartor.bus")


class InProcessBus:
    def __init__(self, updater: ProfileUpdater, reconcile_seconds: float = 5.0) -> None:
        self.updater = updater
        self.reconcile_seconds = reconcile_seconds
        self._queue: queue.SimpleQueue[list[tuple[str, str]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()

    def notify(self, pairs: list[tuple[str, str]], max_seq: int) -> None:
        if self._thread is not None:
            self.idle.clear()
            self._queue.put(pairs)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sartor-profiles", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        self._safe(self.updater.replay)
        while True:
            try:
                first = self._queue.get(timeout=self.reconcile_seconds)
            except queue.Empty:
                self._safe(self.updater.replay)
                continue
            if first is None:
                return
            pairs = set(first)
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                pairs.update(more)
            self._safe(partial(self.updater.catch_up, pairs))
            if self._queue.empty():
                self.idle.set()
            if stop:
                return

    @staticmethod
    def _safe(fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except Exception:
            # The log still holds everything; the next replay folds what failed here.
            log.exception("profile update failed; will retry from the log")
