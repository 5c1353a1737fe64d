"""Recommendations: catalog, interactions, models, registry, serving and evaluation."""

from sartor.recommend.base import NotFittedError, Recommender
from sartor.recommend.models import (
    ALS,
    EASE,
    EDLAE,
    MODELS,
    ContentBased,
    Hybrid,
    ItemKNN,
    Popularity,
    UserKNN,
    make_model,
)
from sartor.recommend.vocab import Vocabulary

__all__ = [
    "ALS",
    "EASE",
    "EDLAE",
    "MODELS",
    "ContentBased",
    "Hybrid",
    "ItemKNN",
    "NotFittedError",
    "Popularity",
    "Recommender",
    "UserKNN",
    "Vocabulary",
    "make_model",
]
