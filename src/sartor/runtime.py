"""Process-wide tuning shared by the long-running commands (serve, worker, the folder)."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running server. Every request allocates
    thousands of objects (decoded JSON, rows), so the default threshold of 700 runs a young
    collection several times per batch, and each older one walks every object the process
    holds. Objects alive after start-up are frozen out of collection; young collections run
    every 10,000 allocations. Cyclic garbage is still collected, only later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
