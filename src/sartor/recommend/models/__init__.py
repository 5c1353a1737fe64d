"""The recommendation models, by name.

Every model follows :class:`sartor.recommend.base.Recommender`; ``MODELS`` maps the name
used in settings, the registry and ``sartor evaluate --models`` to its class.
"""

from __future__ import annotations

from typing import Any

from sartor.recommend.base import Recommender
from sartor.recommend.models.als import ALS
from sartor.recommend.models.content import ContentBased
from sartor.recommend.models.ease import EASE
from sartor.recommend.models.edlae import EDLAE
from sartor.recommend.models.hybrid import Hybrid
from sartor.recommend.models.itemknn import ItemKNN
from sartor.recommend.models.popularity import Popularity
from sartor.recommend.models.rp3beta import RP3beta
from sartor.recommend.models.userknn import UserKNN

MODELS: dict[str, type[Recommender]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "userknn": UserKNN,
    "als": ALS,
    "ease": EASE,
    "content": ContentBased,
    "hybrid": Hybrid,
    "edlae": EDLAE,
    "rp3beta": RP3beta,
}


def make_model(name: str, **params: Any) -> Recommender:
    """A new, unfitted model of kind ``name`` built with ``params``."""
    cls = MODELS.get(name)
    if cls is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for model {name!r}: {exc}") from exc


__all__ = [
    "ALS",
    "EASE",
    "EDLAE",
    "MODELS",
    "ContentBased",
    "Hybrid",
    "ItemKNN",
    "Popularity",
    "RP3beta",
    "UserKNN",
    "make_model",
]
