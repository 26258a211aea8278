"""Recommenders by name or by saved run, for the CLI, evaluations and A/B tests.

Built-in recommenders are registered by name. Saved ones (a training run directory, a meta-learned
method of a meta-train run) load through entry points, ``"module:function"`` strings resolved only
when used, as in Gymnasium's registry: so an A/B test serves a meta-learned arm without this layer
importing :mod:`metarec.meta`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metarec.agents.base import Recommender, slate_size_of
from metarec.agents.baselines.bandits import EpsilonGreedyRecommender, GreedyRecommender, num_items_of
from metarec.agents.baselines.hbayes import BayesPrior, HierarchicalBayesRecommender
from metarec.agents.baselines.linear import LinUCBRecommender, ThompsonRecommender
from metarec.agents.baselines.popularity import BernoulliTSRecommender, PopularRecommender
from metarec.agents.baselines.reference import OracleRecommender, RandomRecommender

# name -> factory(env, generator) building the recommender for a vector environment.
Factory = Callable[[Any, torch.Generator], Recommender]
RECOMMENDERS: dict[str, Factory] = {}


def register_recommender(name: str, factory: Factory) -> None:
    """Makes ``name`` usable as ``--agent name`` (``factory(env, generator)``; env is unwrapped)."""
    RECOMMENDERS[name] = factory


#: What a saved recommender is -> the entry point that loads it, ``loader(path, env, seed)``.
LOADERS: dict[str, str] = {
    "run": "metarec.agents.training:load_recommender",  # a training run directory (model.pt or model.zip)
    "meta": "metarec.meta.serving:load_meta_recommender",  # RUN/methods/METHOD.pt of a meta-train run
}


def register_loader(kind: str, entry_point: str) -> None:
    """Loads saved recommenders of ``kind`` with ``entry_point`` (``"module:function"``)."""
    if entry_point.count(":") != 1:
        raise ValueError(f"entry_point: expected 'module:function', got {entry_point!r}")
    LOADERS[kind] = entry_point


def load_entry_point(entry_point: str) -> Callable[..., Any]:
    """The function an entry point string names, imported now."""
    module, _, attribute = entry_point.partition(":")
    return getattr(importlib.import_module(module), attribute)


def saved_kind(name: str) -> str | None:
    """Which kind of saved recommender the path ``name`` holds (a key of :data:`LOADERS`), or None."""
    path = Path(name)
    if path.suffix == ".pt" and not path.is_dir():  # also a missing one: its loader says what is wrong
        return "meta"
    if path.is_dir():
        return "run"
    return None


def make_recommender(name: str, env: Any, seed: int) -> Recommender:
    """The recommender ``name`` for vector env ``env``: a registered name, a training run directory or a
    meta-trained method (``RUN/methods/METHOD.pt``). A named one's generator is seeded apart from the env's."""
    if not hasattr(env, "device"):  # recommenders step on torch: gym.make_vec's numpy view is for other tools
        raise ValueError("env: expected a metarec vector env on torch, such as gym.make_vec(ID, num_envs=N, "
                         "vectorization_mode='vector_entry_point', array_backend='torch')")  # fmt: skip
    if name not in RECOMMENDERS:
        kind = saved_kind(name)
        if kind is None:
            raise ValueError(
                f"agent: expected one of {', '.join(sorted(RECOMMENDERS))} or a run directory, got {name!r}"
            )
        return load_entry_point(LOADERS[kind])(name, env, seed)
    return RECOMMENDERS[name](env, generator_for(env, seed))


def generator_for(env: Any, seed: int) -> torch.Generator:
    """The generator a named recommender gets for ``seed``: on the env's device, seeded apart from the env's."""
    return torch.Generator(device=env.device).manual_seed(seed + 1_000_003)


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
    "bts", lambda env, generator: BernoulliTSRecommender(slate_size_of(env), num_items_of(env, "bts"), generator)
)
register_recommender(
    "greedy", lambda env, generator: GreedyRecommender(slate_size_of(env), num_items_of(env, "greedy"), generator)
)
register_recommender(
    "epsilon-greedy",
    lambda env, generator: EpsilonGreedyRecommender(slate_size_of(env), num_items_of(env, "epsilon-greedy"), generator),
)
register_recommender("linucb", lambda env, generator: LinUCBRecommender(slate_size_of(env), generator))
register_recommender("thompson", lambda env, generator: ThompsonRecommender(slate_size_of(env), generator))


def make_hbayes(env: Any, generator: torch.Generator, prior: BayesPrior | None = None) -> Recommender:
    """``hbayes`` for an environment of the DriftingUsers family: one population per task of a task
    batch, else one for the whole batch; ``prior`` the family's constants (default: its defaults)."""
    config = getattr(getattr(env, "model", None), "config", None)
    catalog = getattr(config, "catalog", None)
    slate_size = slate_size_of(env)
    if catalog is None or slate_size is None:
        raise ValueError(
            "agent: hbayes models the DriftingUsers family (slates, catalogue embeddings); "
            f"this environment is {type(env).__name__}"
        )
    groups = int(getattr(env, "num_tasks", 1))
    return HierarchicalBayesRecommender(
        slate_size,
        num_items_of(env, "hbayes"),
        catalog.embedding_dim,
        generator,
        groups=groups,
        distinct_ids=True,
        prior=prior,
    )  # a task batch's catalogue ids are distinct across its populations: one item table serves them


register_recommender("hbayes", make_hbayes)
