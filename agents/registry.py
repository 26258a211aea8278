"""Recommenders by name, for the CLI, evaluations and A/B tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from metarec.agents.base import Recommender, slate_size_of
from metarec.agents.baselines.bandits import (
    EpsilonGreedyRecommender,
    GreedyRecommender,
    LinUCBRecommender,
    PopularRecommender,
    ThompsonRecommender,
    num_items_of,
)
from metarec.agents.baselines.reference import OracleRecommender, RandomRecommender

# name -> factory(env, generator) building the recommender for a vector environment.
Factory = Callable[[Any, torch.Generator], Recommender]
RECOMMENDERS: dict[str, Factory] = {}


def register_recommender(name: str, factory: Factory) -> None:
    """Makes ``name`` usable as ``--agent name`` (``factory(env, generator)``; env is unwrapped)."""
    RECOMMENDERS[name] = factory


def make_recommender(name: str, env: Any, seed: int) -> Recommender:
    """The recommender called ``name`` for vector env ``env``; its generator is seeded apart from the env's."""
    if name not in RECOMMENDERS:
        raise ValueError(f"agent: expected one of {', '.join(sorted(RECOMMENDERS))} or a run directory, got {name!r}")
    generator = torch.Generator(device=env.device).manual_seed(seed + 1_000_003)
    return RECOMMENDERS[name](env, generator)


register_recommender("random", lambda env, generator: RandomRecommender(slate_size_of(env), generator))
register_recommender("oracle", lambda env, generator: OracleRecommender(single_item=getattr(env, "single_item", False)))
register_recommender(
    "popular", lambda env, generator: PopularRecommender(slate_size_of(env), num_items_of(env, "popular"), generator)
)


def _popular_ctr(env: Any, generator: torch.Generator) -> Recommender:
    """``popular`` ranking items by click-through rate instead of reward per impression."""
    agent = PopularRecommender(slate_size_of(env), num_items_of(env, "popular-ctr"), generator, target="click")
    agent.name = "popular-ctr"
    return agent


register_recommender("popular-ctr", _popular_ctr)
register_recommender(
    "greedy", lambda env, generator: GreedyRecommender(slate_size_of(env), num_items_of(env, "greedy"), generator)
)
register_recommender(
    "epsilon-greedy",
    lambda env, generator: EpsilonGreedyRecommender(slate_size_of(env), num_items_of(env, "epsilon-greedy"), generator),
)
register_recommender("linucb", lambda env, generator: LinUCBRecommender(slate_size_of(env), generator))
register_recommender("thompson", lambda env, generator: ThompsonRecommender(slate_size_of(env), generator))
