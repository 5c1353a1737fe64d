"""Per-workspace token buckets for the ingestion rate (events per second)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """``take(key, n, rate)`` spends n tokens of key's bucket or says how long to wait.

    A bucket holds ``burst_seconds * rate`` tokens and refills at ``rate`` per second. A
    request larger than the bucket is let through when the bucket is full, so a legal batch
    is never refused forever.
    """

    def __init__(self, burst_seconds: float = 2.0) -> None:
        self._burst = burst_seconds
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, n: int, rate: float, now: float | None = None) -> float:
        """0.0 if allowed (tokens spent), else the seconds until it would be."""
        if rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        capacity = max(rate * self._burst, 1.0)
        with self._lock:
            tokens, last = self._buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            need = min(float(n), capacity)
            if tokens >= need:
                self._buckets[key] = (tokens - n, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (need - tokens) / rate
