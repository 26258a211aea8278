"""How far does knowing more take a myopic recommender? An information ladder for the adaptation protocol.

The oracle that normalises the adaptation curve plans with everything hidden: the user's current
interest, every item's quality, the fatigue and the population's parameters. An
:class:`InformedOracle` plans the same way (the environment's own revenue-ordered slate, one step
ahead) but with only part of that knowledge:

* ``user`` is what it knows of the user's interest: ``"population"`` the mean of the population's
  cluster centres (nothing about this user), ``"cluster"`` the centre of the user's cluster (not the
  user's offset from it, nor drift), ``"interest"`` the true current interest.
* ``quality=False`` plans as if every item had the prior mean quality, 0 (the planner's quality
  weight is 0); ``True`` uses the true qualities.

Everything else (population parameters, fatigue, position bias, candidate embeddings) the rungs know
exactly. A rung is not an upper bound for every learner (a planner that knows the population's
parameters may still plan worse than one that is Bayes-optimal under uncertainty), but a learner
that scores above the ``interest`` rung without quality must have learned the items' qualities, and
one above the ``cluster`` rung must have learned more of the user than their cluster:
:func:`ladder` gives the factories to run through :func:`metarec.meta.evaluate.evaluate`.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, Literal

import torch
from metarec.agents.base import Recommender
from metarec.envs.task_batch import TaskBatchModel, TaskBatchVectorEnv

UserKnowledge = Literal["population", "cluster", "interest"]
USER_KNOWLEDGE: tuple[str, ...] = ("population", "cluster", "interest")


class InformedOracle(Recommender):
    """The myopic oracle's slate when it knows only ``user`` of the interest and, unless ``quality``,
    nothing of item quality (see the module docstring). Reads the hidden state of ``env``; for
    measurement only, like :class:`~metarec.agents.reference.OracleRecommender`."""

    def __init__(self, env: TaskBatchVectorEnv, user: UserKnowledge, quality: bool) -> None:
        if user not in USER_KNOWLEDGE:
            raise ValueError(f"user: expected one of {', '.join(USER_KNOWLEDGE)}, got {user!r}")
        if not isinstance(env.model, TaskBatchModel):
            raise TypeError(f"env: expected a TaskBatchVectorEnv, got {type(env).__name__}")
        self.env, self.user, self.quality = env, user, quality
        self.name = f"{user}+quality" if quality else user
        model = env.model
        self.planner = model if quality else quality_blind(model)
        if user == "population":
            self.population_mean = population_mean_interest(model)  # [T, d]

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        state = dict(self.env.state)
        if self.user == "population":
            state["interest"] = self.population_mean[state["task"]]
        elif self.user == "cluster":
            state["interest"] = self.env.model.world["cluster_centre"][state["cluster"]]
        slate, _, _ = self.planner.oracle(state)
        return slate


def quality_blind(model: TaskBatchModel) -> TaskBatchModel:
    """A view of ``model`` whose utilities leave item quality out (quality weight 0 in every task); it
    shares the world and everything else with ``model``."""
    blind = copy.copy(model)
    params = vars(model.task_params)
    blind.task_params = SimpleNamespace(**{**params, "quality_weight": torch.zeros_like(params["quality_weight"])})
    return blind


def population_mean_interest(model: TaskBatchModel) -> torch.Tensor:
    """``[T, d]``: the mean anchor interest of each task's new users (its clusters are drawn uniformly,
    the offsets have mean 0), i.e. the mean of its cluster centres."""
    world = model.world
    offset, count = world["cluster_offset"].tolist(), world["num_clusters"].long().tolist()
    centres = world["cluster_centre"]
    return torch.stack([centres[o : o + c].mean(dim=0) for o, c in zip(offset, count, strict=True)])


def ladder() -> dict[str, Any]:
    """``{name: factory(env, seed)}`` for every rung but the oracle itself (``interest+quality``)."""
    rungs = [(user, quality) for user in USER_KNOWLEDGE for quality in (False, True)][:-1]
    return {
        (f"{user}+quality" if quality else user): (
            lambda env, seed, user=user, quality=quality: InformedOracle(env, user, quality)
        )
        for user, quality in rungs
    }
