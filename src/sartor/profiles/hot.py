"""Hot state: short-window interaction counters, refresh cooldowns and recent items.

In-process by default; in Redis when one is configured, so every worker and API process
sees the same windows.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

import orjson

# (workspace, profile, recent items, interaction stamps) for ``HotState.update_many``.
HotUpdate = tuple[str, str, list[dict[str, Any]], list[tuple[str, int]]]


class HotState(Protocol):
    def record(
        self, ws: str, pid: str, stamps: Iterable[tuple[str, int]], now: int, window: int
    ) -> int:
        """Add ``(messageId, time)`` interactions; return how many fall in the window."""

    def claim_refresh(self, ws: str, pid: str, now: int, window: int) -> bool:
        """True once per window per profile: the caller does the refresh."""

    def push_recent(self, ws: str, pid: str, items: list[dict[str, Any]], limit: int) -> None: ...

    def update_many(self, updates: list[HotUpdate], limit: int, now: int, window: int) -> list[int]:
        """``push_recent`` then ``record`` for each ``(ws, pid, recent items, stamps)``, at
        once; the interaction counts, in order."""

    def claim_refresh_many(self, keys: list[tuple[str, str]], now: int, window: int) -> list[bool]:
        """``claim_refresh`` for each ``(ws, pid)``, at once."""

    def recent(self, ws: str, pid: str) -> list[dict[str, Any]]: ...

    def erase(self, ws: str, pid: str) -> None: ...


class InProcessHotState:
    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], dict[str, int]] = {}
        self._refreshed: dict[tuple[str, str], int] = {}
        self._recent: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def record(
        self, ws: str, pid: str, stamps: Iterable[tuple[str, int]], now: int, window: int
    ) -> int:
        with self._lock:
            seen = self._windows.setdefault((ws, pid), {})
            for mid, ts in stamps:
                seen[mid] = ts
            for mid in [m for m, ts in seen.items() if ts < now - window or ts > now + window]:
                del seen[mid]
            return len(seen)

    def claim_refresh(self, ws: str, pid: str, now: int, window: int) -> bool:
        with self._lock:
            last = self._refreshed.get((ws, pid))
            if last is not None and now - last < window:
                return False
            self._refreshed[(ws, pid)] = now
            return True

    def push_recent(self, ws: str, pid: str, items: list[dict[str, Any]], limit: int) -> None:
        with self._lock:
            self._recent[(ws, pid)] = deque(items[:limit], maxlen=limit)

    def update_many(self, updates: list[HotUpdate], limit: int, now: int, window: int) -> list[int]:
        counts = []
        for ws, pid, items, stamps in updates:
            self.push_recent(ws, pid, items, limit)
            counts.append(self.record(ws, pid, stamps, now, window))
        return counts

    def claim_refresh_many(self, keys: list[tuple[str, str]], now: int, window: int) -> list[bool]:
        return [self.claim_refresh(ws, pid, now, window) for ws, pid in keys]

    def recent(self, ws: str, pid: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._recent.get((ws, pid), ()))

    def erase(self, ws: str, pid: str) -> None:
        with self._lock:
            for store in (self._windows, self._refreshed, self._recent):
                store.pop((ws, pid), None)


class RedisHotState:
    """The same state in Redis: a sorted set per profile window, a key per cooldown."""

    def __init__(self, client: Any, prefix: str = "sartor") -> None:
        self.r = client
        self.prefix = prefix

    def _key(self, what: str, ws: str, pid: str) -> str:
        return f"{self.prefix}:{what}:{ws}:{pid}"

    def record(
        self, ws: str, pid: str, stamps: Iterable[tuple[str, int]], now: int, window: int
    ) -> int:
        key = self._key("window", ws, pid)
        mapping = {mid: ts for mid, ts in stamps}
        pipe = self.r.pipeline()
        if mapping:
            pipe.zadd(key, mapping)
        pipe.zremrangebyscore(key, "-inf", f"({now - window}")
        pipe.zremrangebyscore(key, f"({now + window}", "+inf")
        pipe.zcard(key)
        pipe.pexpire(key, window * 2)
        return int(pipe.execute()[-2])

    def claim_refresh(self, ws: str, pid: str, now: int, window: int) -> bool:
        return bool(self.r.set(self._key("refreshed", ws, pid), now, nx=True, px=window))

    def push_recent(self, ws: str, pid: str, items: list[dict[str, Any]], limit: int) -> None:
        key = self._key("recent", ws, pid)
        pipe = self.r.pipeline()
        pipe.delete(key)
        if items:
            pipe.rpush(key, *[orjson.dumps(i) for i in items[:limit]])
        pipe.execute()

    def update_many(self, updates: list[HotUpdate], limit: int, now: int, window: int) -> list[int]:
        """The same commands as ``push_recent`` + ``record``, for every profile in one
        pipeline: one round trip per fold batch instead of two per profile."""
        if not updates:
            return []
        pipe = self.r.pipeline(transaction=False)
        per = []
        for ws, pid, items, stamps in updates:
            recent = self._key("recent", ws, pid)
            pipe.delete(recent)
            n = 1
            if items:
                pipe.rpush(recent, *[orjson.dumps(i) for i in items[:limit]])
                n += 1
            key = self._key("window", ws, pid)
            mapping = {mid: ts for mid, ts in stamps}
            if mapping:
                pipe.zadd(key, mapping)
                n += 1
            pipe.zremrangebyscore(key, "-inf", f"({now - window}")
            pipe.zremrangebyscore(key, f"({now + window}", "+inf")
            pipe.zcard(key)
            pipe.pexpire(key, window * 2)
            per.append(n + 4)
        results = pipe.execute()
        counts, at = [], 0
        for n in per:
            at += n
            counts.append(int(results[at - 2]))  # zcard, before pexpire
        return counts

    def claim_refresh_many(self, keys: list[tuple[str, str]], now: int, window: int) -> list[bool]:
        if not keys:
            return []
        pipe = self.r.pipeline(transaction=False)
        for ws, pid in keys:
            pipe.set(self._key("refreshed", ws, pid), now, nx=True, px=window)
        return [bool(v) for v in pipe.execute()]

    def recent(self, ws: str, pid: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for v in self.r.lrange(self._key("recent", ws, pid), 0, -1)]

    def erase(self, ws: str, pid: str) -> None:
        self.r.delete(*(self._key(w, ws, pid) for w in ("window", "refreshed", "recent")))
