"""How far does knowing more take a myopic recommender? An information ladder for the adaptation protocol.

The oracle that normalises the adaptation curve plans with everything hidden: the user's current
interest, every item's quality, the fatigue and the population's parameters. An
:class:`InformedOracle` plans the same way (the environment's own revenue-ordered slate, one step
ahead) but with only part of that knowledge:

* ``user`` is what it knows of the user's interest: ``"population"`` the mean interest of the
  population's users of the same age (the mean of its cluster centres, moved by the population's trend
  for as many steps as the user has lived; nothing about this user), ``"cluster"`` the centre of the
  user's cluster moved by the trend since the user's interests were last drawn (not the user's offset
  from it, nor consumption or random-walk drift), ``"interest"`` the true current interest.
* ``quality=False`` plans as if every item had the prior mean quality, 0 (the planner's quality weight
  is 0); ``True`` uses the true qualities.

Everything else (population parameters, fatigue, position bias, candidate embeddings, and items'
appeal where a catalogue has any) the rungs know exactly. The rungs are myopic planners, not upper
bounds: a learner may plan better than a rung with the same knowledge (looking further ahead, or
Bayes-optimally under its uncertainty). A learner scoring well above the ``interest`` rung without
quality suggests it has learned the items' qualities, and one above the ``cluster`` rung more of the
user than their cluster. :func:`ladder` gives the factories to run through
:func:`metarec.meta.evaluate.evaluate` (see ``benchmarks/meta_ceiling.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Literal

import torch

from metarec.agents.base import Recommender
from metarec.envs.task_batch import TaskBatchModel, TaskBatchVectorEnv

UserKnowledge = Literal["population", "cluster", "interest"]
USER_KNOWLEDGE: tuple[str, ...] = ("population", "cluster", "interest")
REDRAWN_TOLERANCE = 1e-4  # an anchor that moved further than the trend from one step to the next was redrawn


def rung_name(user: str, quality: bool) -> str:
    return f"{user}+quality" if quality else user


class InformedOracle(Recommender):
    """The myopic oracle's slate when it knows only ``user`` of the interest and, unless ``quality``,
    nothing of item quality (see the module docstring). Reads the hidden state of ``env``; for
    measurement only, like :class:`~metarec.agents.baselines.reference.OracleRecommender`."""

    def __init__(self, env: TaskBatchVectorEnv, user: UserKnowledge, quality: bool) -> None:
        if user not in USER_KNOWLEDGE:
            raise ValueError(f"user: expected one of {', '.join(USER_KNOWLEDGE)}, got {user!r}")
        if not isinstance(env.model, TaskBatchModel):
            raise TypeError(f"env: expected a TaskBatchVectorEnv, got {type(env).__name__}")
        self.env, self.user, self.quality = env, user, quality
        self.name = rung_name(user, quality)
        self.model = env.model
        self.planner = self.model if quality else quality_blind(self.model)
        if user == "population":
            self.population_mean, self.population_trend = population_mean_interest(self.model)  # [T, d] each
        self.redraws = RedrawTracker(self.model)
        self._drawn: torch.Tensor | None = None  # each user's anchor when last drawn

    def reset(self, mask: torch.Tensor | None = None) -> None:
        if mask is None:  # a new run; a user replaced in a running one shows by its step count
            self.redraws.reset()
            self._drawn = None

    def planning_interest(self, state: dict[str, Any]) -> torch.Tensor:
        """``[B, d]``: the interest this rung plans with for the users in ``state``."""
        if self.env.model is not self.model:
            raise RuntimeError(
                "env: its model was rebuilt (set_tasks) after this InformedOracle was made; make a new one"
            )
        if self.user == "interest":
            return state["interest"]
        if self.user == "population":
            age = state["step"].to(self.population_trend.dtype)[:, None]
            return self.population_mean[state["task"]] + age * self.population_trend[state["task"]]
        centre = self.model.world["cluster_centre"][state["cluster"]]
        return centre + state["anchor"] - self._anchor_when_drawn(state)

    def _anchor_when_drawn(self, state: dict[str, Any]) -> torch.Tensor:
        """Each user's anchor as last drawn (new user, abrupt shift): what the anchor has moved since is
        the population's trend, which the cluster rung knows."""
        redrawn = self.redraws.update(state)
        if self._drawn is None or self._drawn.shape != state["anchor"].shape:
            self._drawn = state["anchor"].clone()
        self._drawn = torch.where(redrawn[:, None], state["anchor"], self._drawn)
        return self._drawn

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        state = dict(self.env.state)
        state["interest"] = self.planning_interest(state)
        slate, _, _ = self.planner.oracle(state)
        return slate


class RedrawTracker:
    """Which users' interests were drawn anew (a new user, an abrupt shift) since the last look. Follows the
    users step by step (``update`` at every step, as the protocol calls ``act``): an anchor that moved by
    the population's trend from one step to the next, or not at all without a step, was kept; a user not
    seen at the step before counts as redrawn."""

    def __init__(self, model: TaskBatchModel) -> None:
        self.model = model
        self._seen: tuple[torch.Tensor, torch.Tensor] | None = None  # step, anchor

    def reset(self) -> None:
        self._seen = None

    def update(self, state: dict[str, Any]) -> torch.Tensor:
        """``[B]`` bool: the users whose interests were drawn since the last call (all of them at the first)."""
        step, anchor = state["step"], state["anchor"]
        if self._seen is None or self._seen[0].shape != step.shape:
            redrawn = torch.ones(step.shape, dtype=torch.bool, device=step.device)
        else:
            last_step, last_anchor = self._seen
            trend = self.model.trend(self.model.params(state), state["cluster"])
            moved_by_trend = (anchor - last_anchor - trend).abs().amax(dim=-1) <= REDRAWN_TOLERANCE
            same = step == last_step  # no step since the last look
            redrawn = ~((same & (anchor == last_anchor).all(dim=-1)) | ((step == last_step + 1) & moved_by_trend))
        self._seen = (step.clone(), anchor.clone())
        return redrawn


def quality_blind(model: TaskBatchModel) -> TaskBatchModel:
    """A view of ``model`` whose utilities leave item quality out (quality weight 0 in every task); it
    shares the world and everything else with ``model``, and changes nothing of it."""
    blind = copy.copy(model)
    params = vars(model.task_params)
    blind.task_params = SimpleNamespace(**{**params, "quality_weight": torch.zeros_like(params["quality_weight"])})
    return blind


def population_mean_interest(model: TaskBatchModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T, d]`` twice: the mean anchor interest of each task's new users (its clusters are drawn
    uniformly, the offsets have mean 0), i.e. the mean of its cluster centres, and how far that mean
    moves per step with the population's trend (each cluster moves along its own direction)."""
    world = model.world
    offset, count = world["cluster_offset"].tolist(), world["num_clusters"].long().tolist()
    drift = model.task_params.drift_per_step
    means, trends = [], []
    for task, (o, c) in enumerate(zip(offset, count, strict=True)):
        means.append(world["cluster_centre"][o : o + c].mean(dim=0))
        trends.append(drift[task] * world["trend_direction"][o : o + c].mean(dim=0))
    return torch.stack(means), torch.stack(trends)


Factory = Callable[[TaskBatchVectorEnv, int], Recommender]


def ladder() -> dict[str, Factory]:
    """``{name: factory(env, seed)}`` for every rung but the oracle itself (``interest+quality``)."""
    rungs = [(u, q) for u in USER_KNOWLEDGE for q in (False, True) if (u, q) != ("interest", True)]
    return {rung_name(u, q): (lambda env, seed, u=u, q=q: InformedOracle(env, u, q)) for u, q in rungs}
