"""Redis Streams: the writer announces committed profiles; ``sartor worker`` processes,
in one consumer group, fold them. A dead worker's pending entries are reclaimed by the
others (XAUTOCLAIM). Entries carry only pseudonymous profile ids, never user ids.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import orjson

from sartor.profiles import store
from sartor.profiles.updater import ProfileUpdater

log = logging.getLogger("sartor.bus")

GROUP = "profile-updaters"


def stream_key(namespace: str) -> str:
    return f"{namespace}:profile-changes"


def connect(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


class RedisStreamPublisher:
    def __init__(self, client: Any, namespace: str = "sartor", maxlen: int = 200_000) -> None:
        self.r = client
        self.stream = stream_key(namespace)
        self.maxlen = maxlen

    def notify(self, pairs: list[tuple[str, str]], max_seq: int) -> None:
        try:
            self.r.xadd(
                self.stream,
                {"pairs": orjson.dumps(pairs), "seq": max_seq},
                maxlen=self.maxlen,
                approximate=True,
            )
        except Exception:
            # Losing a notification loses nothing: the workers' replay finds the events.
            log.warning("could not publish profile changes to Redis", exc_info=True)

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 0.0) -> None:
        pass


def erase_profile(
    client: Any, namespace: str, workspace_id: str, profile_id: str, batch: int = 1000
) -> int:
    """Delete stream entries naming the profile (erasure leaves no trace in the bus)."""
    stream = stream_key(namespace)
    needle = orjson.dumps([workspace_id, profile_id])
    removed = 0
    start = "-"
    while True:
        entries = client.xrange(stream, min=start, max="+", count=batch)
        if not entries:
            return removed
        doomed = [eid for eid, fields in entries if needle in fields.get(b"pairs", b"")]
        if doomed:
            removed += client.xdel(stream, *doomed)
        last = entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0]
        if len(entries) < batch:
            return removed
        ms, _, n = last.partition("-")
        start = f"{ms}-{int(n) + 1}"


class RedisStreamWorker:
    """One consumer of the group. ``run`` blocks until ``stop`` is set."""

    def __init__(
        self,
        updater: ProfileUpdater,
        client: Any,
        *,
        namespace: str = "sartor",
        name: str | None = None,
        block_ms: int = 500,
        claim_idle_ms: int = 5_000,
        reconcile_seconds: float = 5.0,
        count: int = 200,
    ) -> None:
        self.updater = updater
        self.r = client
        self.stream = stream_key(namespace)
        self.replay_lock = f"{namespace}:lock:replay"
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.reconcile_seconds = reconcile_seconds
        self.count = count
        self.stop = threading.Event()
        self.processed = 0
        self._settled: int | None = None  # the log head at the previous replay
        self._claimed_at = -float("inf")  # when pending entries were last looked for

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def replay(self) -> None:
        """One worker at a time walks the log past the checkpoint: all of it at start, then
        up to the head seen at the previous replay. Newer events are still on their way
        through the stream; folding them here too would only hold up this worker's share of
        the stream (and a lost notification is still found one period later)."""
        lock_ms = int(max(self.reconcile_seconds * 4, 30) * 1000)
        with self.updater.db.connect() as conn:
            head = store.head(conn)
        if self.r.set(self.replay_lock, self.name, nx=True, px=lock_ms):
            try:
                self.updater.replay(upto=self._settled)
            finally:
                if self.r.get(self.replay_lock) == self.name.encode():
                    self.r.delete(self.replay_lock)
        self._settled = head

    def _handle(self, entries: list[tuple[Any, dict[bytes, bytes]]]) -> None:
        if not entries:
            return
        pairs: set[tuple[str, str]] = set()
        for _, fields in entries:
            raw = fields.get(b"pairs")
            if raw:
                pairs.update((ws, pid) for ws, pid in orjson.loads(raw))
        self.updater.catch_up(pairs)
        self.r.xack(self.stream, GROUP, *[eid for eid, _ in entries])
        self.processed += len(entries)

    def run_once(self) -> None:
        # Entries are reclaimed once idle for claim_idle_ms: looking for them every half of
        # that is soon enough, and spares a command on every read under load.
        now = time.monotonic()
        if now - self._claimed_at >= self.claim_idle_ms / 2000:
            self._claimed_at = now
            claimed = self.r.xautoclaim(
                self.stream,
                GROUP,
                self.name,
                min_idle_time=self.claim_idle_ms,
                start_id="0-0",
                count=self.count,
            )
            entries = [e for e in claimed[1] if e and e[1] is not None]
            if len(claimed[1]) >= self.count:
                self._claimed_at = -float("inf")  # maybe more: look again on the next step
            self._handle(entries)
        read = self.r.xreadgroup(
            GROUP, self.name, {self.stream: ">"}, count=self.count, block=self.block_ms
        )
        for _, entries in read or []:
            self._handle(entries)

    def run(self) -> None:
        self.ensure_group()
        self.replay()
        last_replay = time.monotonic()
        while not self.stop.is_set():
            try:
                self.run_once()
                if time.monotonic() - last_replay >= self.reconcile_seconds:
                    self.replay()
                    last_replay = time.monotonic()
            except Exception:
                log.exception("worker step failed; retrying")
                self.stop.wait(1.0)
