"""Recommenders: one interface (:class:`Recommender`) for baselines, neural and trained policies."""

from .base import Recommender
from .reference import OracleRecommender, RandomRecommender

__all__ = ["OracleRecommender", "RandomRecommender", "Recommender"]
