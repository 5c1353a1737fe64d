"""Approximate nearest neighbours over item vectors with FAISS, for large catalogs.

Below ``SARTOR_REC_ANN_THRESHOLD`` items, scoring every item with numpy is exact and fast
(a 10,000 x 64 product is tens of microseconds). Above it, candidates come from an HNSW
inner-product index over the model's item vectors: ALS item factors (a user vector's dot
product is the ALS score; normalized factors give cosine for "similar items") or dense
content embeddings. An index is built once per loaded model version, in a background
thread: requests use the exact path until it is ready, so no request waits on a build.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("sartor.recommend")

HNSW_NEIGHBOURS = 32
EF_CONSTRUCTION = 80


def _faiss() -> Any:
    import faiss

    return faiss


class VectorIndex:
    """An inner-product HNSW index over the rows of ``vectors`` (float32, one per item)."""

    def __init__(self, vectors: np.ndarray) -> None:
        faiss = _faiss()
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        self.n, self.dim = data.shape
        self.index = faiss.IndexHNSWFlat(self.dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.index.add(data)
        self._lock = threading.Lock()

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and inner products of the ``k`` best items (fewer when the index has fewer)."""
        k = max(1, min(int(k), self.n))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        with self._lock:  # efSearch is index state: set and search together
            self.index.hnsw.efSearch = max(64, 2 * k)
            scores, rows = self.index.search(q, k)
        keep = rows[0] >= 0
        return rows[0][keep].astype(np.int64), scores[0][keep].astype(np.float64)


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): inner product becomes cosine."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


class IndexCache:
    """Vector indexes by key, built in the background.

    :meth:`get` returns the index when it is ready and otherwise starts building it (once)
    and returns None, so the caller takes the exact path meanwhile.
    """

    def __init__(self, max_indexes: int = 16) -> None:
        self.max_indexes = max_indexes
        self._ready: dict[tuple[Any, ...], VectorIndex] = {}
        self._building: set[tuple[Any, ...]] = set()
        self._families: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        key: tuple[Any, ...],
        vectors: Callable[[], np.ndarray],
        *,
        family: tuple[Any, ...] = (),
        wait: bool = False,
    ) -> VectorIndex | None:
        """The index for ``key`` if built. ``family`` names what successive keys replace one
        another (a workspace's model slot and index kind): building a new one drops the
        family's older ones."""
        found = self._ready.get(key)
        if found is not None or key in self._building:
            return found
        with self._lock:
            if key in self._ready or key in self._building:
                return self._ready.get(key)
            self._building.add(key)
        if wait:
            self._build(key, vectors, family)
            return self._ready.get(key)
        threading.Thread(
            target=self._build, args=(key, vectors, family), name="sartor-ann", daemon=True
        ).start()
        return None

    def _build(
        self, key: tuple[Any, ...], vectors: Callable[[], np.ndarray], family: tuple[Any, ...]
    ) -> None:
        try:
            index = VectorIndex(vectors())
        except Exception:
            log.exception("building the ANN index %s failed; serving stays exact", key)
            return  # stays in _building: not retried for this model version
        with self._lock:
            for old in [k for k, f in self._families.items() if f == family and k != key]:
                self._ready.pop(old, None)
                del self._families[old]
            while len(self._ready) >= self.max_indexes:
                oldest = next(iter(self._ready))
                del self._ready[oldest]
                self._families.pop(oldest, None)
            self._ready[key] = index
            self._families[key] = family
            self._building.discard(key)

    def ready(self) -> int:
        """How many indexes are built and serving."""
        return len(self._ready)

    def clear(self) -> None:
        with self._lock:
            self._ready.clear()
            self._building.clear()
            self._families.clear()
