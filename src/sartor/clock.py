"""Wall-clock time as integer epoch milliseconds, the unit every stored time uses."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int | None) -> str | None:
    """An epoch-ms time as ISO 8601 UTC with milliseconds, as Segment writes them."""
    if ms is None:
        return None
    try:
        dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
