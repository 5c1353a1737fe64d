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

# (workspace, profile, recent items or None when unchanged, interaction stamps) for
# ``HotState.update_many``.
HotUpdate = tuple[str, str, list[dict[str, Any]] | None, list[tuple[str, int]]]


class HotState(Protocol):
    def record(
        self, ws: str, pid: str, stamps: Iterable[tuple[str, int]], now: int, window: int
    ) -> int:
        """Add ``(messageId, time)`` interactions; return how many fall in the window."""

    def claim_refresh(self, ws: str, pid: str, now: int, window: int) -> bool:
        """True once per window per profile: the caller does the refresh."""

    def push_recent(self, ws: str, pid: str, items: list[dict[str, Any]], limit: int) -> None: ...

    def update_many(self, updates: list[HotUpdate], limit: int, now: int, window: int) -> list[int]:
        """``push_recent`` (unless the items are ``None``: unchanged) then ``record`` for
        each ``(ws, pid, recent items, stamps)``, at once; the interaction counts, in
        order."""

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
            if items is not None:
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


# ``RedisHotState.update_many`` on the server. KEYS: each profile's recent items and
# window; ARGV: the window's exclusive low and high scores and its time to live (ms), then
# per profile 1 and the recent items as a JSON array (or 0: leave them alone), the number
# of interactions and their (score, member) pairs. Returns each window's size.
_UPDATE_MANY = """
local lo, hi, ttl = ARGV[1], ARGV[2], ARGV[3]
local at = 4
local out = {}
for i = 1, #KEYS, 2 do
  local recent, win = KEYS[i], KEYS[i + 1]
  if ARGV[at] == '1' then
    redis.call('SET', recent, ARGV[at + 1])
    at = at + 2
  else
    at = at + 1
  end
  local m = tonumber(ARGV[at])
  at = at + 1
  local stop = at + 2 * m
  while at < stop do  -- at most 500 pairs a call (unpack's stack is bounded)
    local last = math.min(at + 999, stop - 1)
    redis.call('ZADD', win, unpack(ARGV, at, last))
    at = last + 1
  end
  redis.call('ZREMRANGEBYSCORE', win, '-inf', lo)
  redis.call('ZREMRANGEBYSCORE', win, hi, '+inf')
  out[#out + 1] = redis.call('ZCARD', win)
  redis.call('PEXPIRE', win, ttl)
end
return out
"""


class RedisHotState:
    """The same state in Redis: a sorted set per profile window, a key per cooldown, the
    recent items as one JSON string (written whole: one argument, not one per item).
    Lists of recent items left by older versions (key ``recent``) are still read."""

    def __init__(self, client: Any, prefix: str = "sartor") -> None:
        self.r = client
        self.prefix = prefix
        self._update_script: Any = None

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
        pipe = self.r.pipeline()
        pipe.set(self._key("recent-items", ws, pid), orjson.dumps(items[:limit]))
        pipe.delete(self._key("recent", ws, pid))  # an older version's list
        pipe.execute()

    def update_many(self, updates: list[HotUpdate], limit: int, now: int, window: int) -> list[int]:
        """The same commands as ``push_recent`` + ``record``, for every profile of a fold
        batch in one script call: one command per batch (Redis parses and the client
        encodes one request and one reply) instead of five to seven a profile. A profile
        whose recent items are ``None`` (unchanged by the batch) keeps them."""
        if not updates:
            return []
        keys: list[str] = []
        args: list[Any] = [f"({now - window}", f"({now + window}", window * 2]
        for ws, pid, items, stamps in updates:
            keys += [self._key("recent-items", ws, pid), self._key("window", ws, pid)]
            if items is None:
                args.append(0)
            else:
                args += [1, orjson.dumps(items[:limit])]
            mapping = dict(stamps)  # one score per messageId, the last one given
            args.append(len(mapping))
            for mid, ts in mapping.items():
                args += [ts, mid]
        if self._update_script is None:
            self._update_script = self.r.register_script(_UPDATE_MANY)
        return [int(n) for n in self._update_script(keys=keys, args=args)]

    def claim_refresh_many(self, keys: list[tuple[str, str]], now: int, window: int) -> list[bool]:
        if not keys:
            return []
        pipe = self.r.pipeline(transaction=False)
        for ws, pid in keys:
            pipe.set(self._key("refreshed", ws, pid), now, nx=True, px=window)
        return [bool(v) for v in pipe.execute()]

    def recent(self, ws: str, pid: str) -> list[dict[str, Any]]:
        raw = self.r.get(self._key("recent-items", ws, pid))
        if raw is not None:
            items: list[dict[str, Any]] = orjson.loads(raw)
            return items
        return [orjson.loads(v) for v in self.r.lrange(self._key("recent", ws, pid), 0, -1)]

    def erase(self, ws: str, pid: str) -> None:
        self.r.delete(
            *(self._key(w, ws, pid) for w in ("window", "refreshed", "recent", "recent-items"))
        )
