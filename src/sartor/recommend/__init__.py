"""Recommendations: catalog, interactions, models, registry, serving and evaluation."""
