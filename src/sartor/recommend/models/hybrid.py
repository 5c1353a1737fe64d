"""Hybrid: a weighted blend of other models' per-user normalized scores."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from sartor.recommend.base import ARRAYS_FILE, ERASED_KEY, META_FILE, Recommender, check_rows

NORMALIZERS = ("minmax", "zscore")
COMPONENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

ComponentSpec = Recommender | Mapping[str, Any]


class Hybrid(Recommender):
    """``score = sum_c weight_c * normalize(score_c)`` over the components, each row of each
    component's scores normalized first (``"minmax"`` to [0, 1], or ``"zscore"``), so that
    models on different scales blend fairly.

    ``components`` maps a name to a model instance (``{"als": ALS(), "itemknn": ItemKNN()}``)
    or to a spec ``{"model": "als", "params": {...}}``; :meth:`get_params` returns specs, so
    ``Hybrid(**hybrid.get_params())`` rebuilds it and the params are JSON. ``weights`` maps
    the same names to non-negative weights (default: all equal). ``fit`` fits every
    component on the same data and context; ``save`` puts each in a sub-folder.
    """

    name = "hybrid"

    def __init__(
        self,
        components: Mapping[str, ComponentSpec],
        weights: Mapping[str, float] | None = None,
        normalize: str = "minmax",
    ) -> None:
        self.components = components
        self.weights = weights
        self.normalize = normalize

    def get_params(self) -> dict[str, Any]:
        specs: dict[str, Any] = {}
        for name, comp in self.components.items():
            if isinstance(comp, Recommender):
                specs[name] = {"model": comp.name, "params": comp.get_params()}
            else:
                specs[name] = {"model": comp["model"], "params": dict(comp.get("params", {}))}
        return {
            "components": specs,
            "weights": None if self.weights is None else dict(self.weights),
            "normalize": self.normalize,
        }

    # ---- building -----------------------------------------------------------------
    def _build(self) -> dict[str, Recommender]:
        from sartor.recommend.models import make_model

        if not self.components:
            raise ValueError("Hybrid needs at least one component")
        built: dict[str, Recommender] = {}
        for name, comp in self.components.items():
            if not COMPONENT_NAME.match(str(name)):
                raise ValueError(
                    f"component name {name!r} must be letters, digits, '_', '-' or '.' "
                    "(it names a sub-folder)"
                )
            if isinstance(comp, Recommender):
                built[name] = comp
            elif isinstance(comp, Mapping) and "model" in comp:
                built[name] = make_model(str(comp["model"]), **dict(comp.get("params", {})))
            else:
                raise ValueError(
                    f"component {name!r} must be a model or {{'model': ..., 'params': {{...}}}}"
                )
        return built

    def _resolved_weights(self, names: list[str]) -> dict[str, float]:
        if self.normalize not in NORMALIZERS:
            raise ValueError(f"normalize must be one of {NORMALIZERS}, got {self.normalize!r}")
        if self.weights is None:
            return {n: 1.0 / len(names) for n in names}
        unknown = sorted(set(self.weights) - set(names))
        missing = sorted(set(names) - set(self.weights))
        if unknown or missing:
            raise ValueError(
                f"weights must name exactly the components {sorted(names)}; "
                f"unknown: {unknown}, missing: {missing}"
            )
        out = {n: float(self.weights[n]) for n in names}
        bad = [n for n, w in out.items() if not np.isfinite(w) or w < 0]
        if bad:
            raise ValueError(f"weights must be finite and >= 0; bad: {bad}")
        if sum(out.values()) <= 0:
            raise ValueError("at least one weight must be > 0")
        return out

    def fit(self, interactions: sp.csr_matrix, **context: Any) -> Self:
        components = self._build()
        weights = self._resolved_weights(list(components))
        for comp in components.values():
            comp.fit(interactions, **context)
        self._set_fitted(components, weights)
        return self

    def _set_fitted(self, components: dict[str, Recommender], weights: dict[str, float]) -> None:
        shapes = {(c.n_users_, c.n_items_) for c in components.values()}
        if len(shapes) != 1:
            raise ValueError(f"Hybrid components disagree on the matrix shape: {sorted(shapes)}")
        self.components_ = components
        self.weights_ = weights
        self.n_users_, self.n_items_ = shapes.pop()

    # ---- scores -------------------------------------------------------------------
    def _blend(self, score: Callable[[Recommender], np.ndarray], rows: int) -> np.ndarray:
        total = np.zeros((rows, self.n_items_), dtype=np.float64)
        for name, comp in self.components_.items():
            weight = self.weights_[name]
            if weight == 0:
                continue
            part = np.array(score(comp), dtype=np.float64).reshape(rows, self.n_items_)
            total += weight * _normalize_rows(part, self.normalize)
        return total

    def score_users(self, user_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(user_rows, self.n_users_, "user")
        return self._blend(lambda c: c.score_users(rows), len(rows))

    def score_history(self, item_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        items = check_rows(item_rows, self.n_items_, "item")
        return self._blend(lambda c: c.score_history(items, weights), 1)[0]

    def similar_scores(self, item_rows: np.ndarray) -> np.ndarray:
        rows = check_rows(item_rows, self.n_items_, "item")
        return self._blend(lambda c: c.similar_scores(rows), len(rows))

    def _forget(self, user_rows: np.ndarray) -> None:
        for comp in self.components_.values():
            comp.forget_users(user_rows)

    # ---- persistence --------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        names = list(self.components_)
        return {"weights": np.asarray([self.weights_[n] for n in names], dtype=np.float64)}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        pass  # Hybrid.load rebuilds everything from the sub-folders

    def save(self, folder: str | Path) -> Path:
        path = super().save(folder)
        meta = json.loads((path / META_FILE).read_text())
        meta["components"] = {name: comp.name for name, comp in self.components_.items()}
        (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for name, comp in self.components_.items():
            comp.save(path / name)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Self:
        from sartor.recommend.models import MODELS

        path = Path(folder)
        meta = cls._read_meta(path)
        components: dict[str, Recommender] = {}
        for name, kind in meta["components"].items():
            if kind not in MODELS:
                raise ValueError(f"{path / name} holds an unknown model kind {kind!r}")
            components[name] = MODELS[kind].load(path / name)
        params = meta["params"]
        model = cls(components, weights=params.get("weights"), normalize=params["normalize"])
        model._set_fitted(components, model._resolved_weights(list(components)))
        with np.load(path / ARRAYS_FILE, allow_pickle=False) as data:
            if ERASED_KEY in data.files:
                model._restore_erased(data[ERASED_KEY])
        return model


def _normalize_rows(scores: np.ndarray, how: str) -> np.ndarray:
    """Each row to [0, 1] (minmax) or to mean 0, sd 1 (zscore) over its finite entries;
    ``-inf`` stays ``-inf``; a constant row becomes 0."""
    finite = np.isfinite(scores)
    if finite.all():
        if how == "minmax":
            lo = scores.min(axis=1, keepdims=True)
            span = scores.max(axis=1, keepdims=True) - lo
            return np.divide(scores - lo, span, out=np.zeros_like(scores), where=span > 0)
        mean = scores.mean(axis=1, keepdims=True)
        sd = scores.std(axis=1, keepdims=True)
        return np.divide(scores - mean, sd, out=np.zeros_like(scores), where=sd > 0)
    out = np.full_like(scores, -np.inf)
    for i in range(scores.shape[0]):
        keep = finite[i]
        if keep.any():
            out[i, keep] = _normalize_rows(scores[i, keep][None, :], how)[0]
    return out
