"""Shared numerical helpers for the neighbourhood and linear models (not public API)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import scipy.linalg.lapack as lapack
import scipy.sparse as sp

# Densify the operand when it takes at most this many bytes (float32): dense BLAS products
# beat scipy's single-threaded sparse products by far on MovieLens-like densities.
DENSE_LIMIT_BYTES = 1 << 30
# Multiply-adds per second measured on a 2-core box: scipy's sparse x sparse product vs
# BLAS sgemm; only the ratio matters, to choose the cheaper route.
SPARSE_RATE = 3e8
DENSE_RATE = 8e10
BLOCK_BYTES = 128 << 20


def gram_blocks(
    a: sp.csr_matrix, block: int | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, G)`` with ``G = a[start:stop] @ a.T`` as dense float32, block by
    block, so the whole ``n x n`` product never has to exist at once."""
    a = a.tocsr().astype(np.float32)
    n, d = a.shape
    if block is None:
        block = max(1, min(n, BLOCK_BYTES // max(1, 4 * n)))
    col_counts = np.bincount(a.indices, minlength=d).astype(np.float64)
    sparse_seconds = float((col_counts**2).sum()) / SPARSE_RATE
    dense_seconds = float(n) * n * d / DENSE_RATE
    dense = n * d * 4 <= DENSE_LIMIT_BYTES and dense_seconds < sparse_seconds
    if dense:
        full = a.toarray()
        for start in range(0, n, block):
            stop = min(n, start + block)
            yield start, stop, full[start:stop] @ full.T
    else:
        at = a.T.tocsr()
        for start in range(0, n, block):
            stop = min(n, start + block)
            part = (a[start:stop] @ at).toarray()
            yield start, stop, part.astype(np.float32, copy=False)


def gram(a: sp.csr_matrix) -> np.ndarray:
    """``a @ a.T`` as a dense float64 matrix."""
    n = a.shape[0]
    out = np.empty((n, n), dtype=np.float64)
    for start, stop, g in gram_blocks(a):
        out[start:stop] = g
    return out


def top_k_sparse(
    dense_rows: np.ndarray, start: int, k: int, drop_diagonal: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the ``k`` largest positive entries of each row of ``dense_rows`` (rows
    ``start..``), dropping the diagonal. Returns COO parts (rows, cols, values)."""
    block = dense_rows
    b, n = block.shape
    if drop_diagonal:
        idx = np.arange(b)
        cols = start + idx
        inside = cols < n
        block[idx[inside], cols[inside]] = 0.0
    k = min(k, n)
    if k <= 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float32)
    if k < n:
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), (b, n))
    vals = np.take_along_axis(block, part, axis=1)
    keep = vals > 0
    rows = np.broadcast_to(np.arange(start, start + b)[:, None], part.shape)[keep]
    return rows.astype(np.int64), part[keep].astype(np.int64), vals[keep].astype(np.float32)


def knn_matrix(
    vectors: sp.csr_matrix,
    k: int,
    norms: np.ndarray | None = None,
    shrinkage: float = 0.0,
) -> sp.csr_matrix:
    """Row-by-row nearest neighbours of ``vectors`` (rows are the things compared):
    ``sim(i, j) = <v_i, v_j> / (|v_i| |v_j| + shrinkage)`` when ``norms`` is given, the
    plain dot product otherwise; the top ``k`` positive entries of each row, self excluded.
    """
    if norms is None:
        return top_k_gram(vectors, k)
    norms32 = np.asarray(norms, dtype=np.float32)
    inv = np.divide(1.0, norms32, out=np.zeros_like(norms32), where=norms32 > 0)

    def scale(start: int, stop: int, g: np.ndarray) -> None:
        if shrinkage == 0:
            # A zero vector has a zero dot product with everything: scaling by 0 is right.
            g *= inv[start:stop, None]
            g *= inv[None, :]
        else:
            denom = norms32[start:stop, None] * norms32[None, :]
            denom += np.float32(shrinkage)
            g /= denom

    return top_k_gram(vectors, k, scale)


def top_k_gram(
    vectors: sp.csr_matrix,
    k: int,
    scale: Callable[[int, int, np.ndarray], None] | None = None,
) -> sp.csr_matrix:
    """The top ``k`` positive entries of each row of ``vectors @ vectors.T``, self excluded,
    as a float32 CSR matrix, computed block by block (:func:`gram_blocks`) and cut as it
    goes. ``scale(start, stop, block)`` may rescale each dense block (rows ``start:stop``)
    in place before the cut."""
    n = vectors.shape[0]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for start, stop, g in gram_blocks(vectors):
        if scale is not None:
            scale(start, stop, g)
        r, c, v = top_k_sparse(g, start, k)
        rows.append(r)
        cols.append(c)
        vals.append(v)
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    out = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, n),
        dtype=np.float32,
    )
    out.sort_indices()
    return out


def row_norms(m: sp.csr_matrix) -> np.ndarray:
    sq = m.multiply(m).sum(axis=1) if m.nnz else np.zeros((m.shape[0], 1))
    return np.sqrt(np.asarray(sq, dtype=np.float64).reshape(-1))


def weighted_row_sum(m: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``weights @ m[rows]`` as a dense float64 vector, gathered straight from the CSR
    arrays (no scipy slicing, which costs tens of microseconds per call)."""
    n_cols = m.shape[1]
    if len(rows) == 0:
        return np.zeros(n_cols, dtype=np.float64)
    starts = m.indptr[rows].astype(np.int64)
    lengths = m.indptr[rows + 1].astype(np.int64) - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(n_cols, dtype=np.float64)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    pos = np.arange(total, dtype=np.int64) + offsets
    vals = m.data[pos] * np.repeat(weights, lengths)
    return np.bincount(m.indices[pos], weights=vals, minlength=n_cols)


def sparse_rows_times(x: sp.csr_matrix, rows: np.ndarray, right: sp.csr_matrix) -> np.ndarray:
    """``x[rows] @ right`` as a dense float64 array."""
    if len(rows) == 1:
        lo, hi = x.indptr[rows[0]], x.indptr[rows[0] + 1]
        return weighted_row_sum(right, x.indices[lo:hi], x.data[lo:hi].astype(np.float64))[None, :]
    return np.asarray((x[rows] @ right).toarray(), dtype=np.float64)


def spd_inverse(g: np.ndarray, model: str) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix through Cholesky (LAPACK potrf and
    potri, in place where LAPACK allows): half the work of a general inverse and no second
    ``n x n`` buffer. ``model`` names the caller in the errors. Returns a C-ordered array."""
    n = g.shape[0]
    a = g.T  # the same symmetric matrix as a Fortran-ordered view: LAPACK needs no copy
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    c, info = potrf(a, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise ValueError(
            f"{model}: the regularized Gram matrix is not positive definite (LAPACK info {info})"
        )
    inv, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"{model}: inverting the Gram matrix failed (LAPACK info {info})")
    # potri fills the upper triangle only; mirror it block by block (no n x n temporary).
    step = 1024
    for start in range(0, n, step):
        stop = min(n, start + step)
        inv[start:stop, :start] = inv[:start, start:stop].T
        block = inv[start:stop, start:stop]
        inv[start:stop, start:stop] = np.triu(block) + np.triu(block, 1).T
    # Exactly symmetric now, so the C-ordered transpose view is the same matrix, no copy.
    result: np.ndarray = inv.T
    return result
