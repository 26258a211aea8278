"""Recommenders: one interface (:class:`Recommender`) for baselines, neural and trained policies."""

from metarec.agents.base import Recommender
from metarec.agents.baselines.reference import OracleRecommender, RandomRecommender

__all__ = ["OracleRecommender", "RandomRecommender", "Recommender"]
