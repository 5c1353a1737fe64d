"""Helpers for tests and benchmarks: synthetic shops with planted behaviour segments."""

from sartor.testing.synthetic import (
    CATALOG_CATEGORIES,
    SEGMENTS,
    Behaviour,
    SyntheticShop,
    feature_frame,
    generate,
    iter_profile_docs,
)

__all__ = [
    "CATALOG_CATEGORIES",
    "SEGMENTS",
    "Behaviour",
    "SyntheticShop",
    "feature_frame",
    "generate",
    "iter_profile_docs",
]
