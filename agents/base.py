"""The one interface everything that recommends implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from metarec.envs.core.backend import RowSubsetRandom, TorchRandom
from metarec.parallel import Shard


class UserDraws:
    """Random draws for users of a batch, keyed by user: every draw is made for the whole run's users
    (the batch, or ``shard.total``) and the rows of the users asked for are returned.

    A user therefore meets the same numbers whichever other users are being served this step and
    however the users are split across processes. Without ``rows`` and ``shard`` it draws exactly
    what ``torch.rand((batch, ...), generator=generator)`` would.

    Args:
        generator: the recommender's explicit generator.
        batch: users of this process's batch.
        rows: the users drawn for (indices into the batch), or None for all.
        shard: where the batch sits among all users, or None (one process).
    """

    def __init__(
        self, generator: torch.Generator, batch: int, rows: torch.Tensor | None = None, shard: Shard | None = None
    ) -> None:
        if shard is not None and shard.size != batch:
            raise ValueError(f"shard: expected {batch} users in this process's batch, got {shard}")
        self.generator = generator
        self.total = batch if shard is None else shard.total
        offset = 0 if shard is None else shard.offset
        whole = TorchRandom(generator)
        if rows is None and offset == 0 and self.total == batch:
            self.rows: torch.Tensor | None = None
            self.users, self.random = batch, whole
        else:  # the environments' way of drawing for a subset of a batch's rows
            local = torch.arange(batch, device=generator.device) if rows is None else rows.to(generator.device)
            self.rows = local + offset
            self.users, self.random = len(self.rows), RowSubsetRandom(whole, self.total, self.rows)

    def rows_of(self) -> tuple[int, torch.Tensor] | None:
        """``(total, rows)`` for :meth:`~metarec.agents.nn.distributions.PlackettLuce.sample`, or None."""
        return None if self.rows is None else (self.total, self.rows)

    def rand(self, *tail: int) -> torch.Tensor:
        """U[0, 1) draws, ``[users, *tail]``."""
        return self.random.uniform((self.users, *tail))

    def randn(self, *tail: int) -> torch.Tensor:
        """N(0, 1) draws, ``[users, *tail]``."""
        return self.random.normal((self.users, *tail))


class Recommender(ABC):
    """Given a batch of observations, returns a batch of slates.

    Observations and infos are what a :class:`~metarec.envs.vector.UserSimVectorEnv` returns
    (dicts of tensors with a leading batch dimension ``B``). Slates are ``[B, K]`` int64 candidate
    indices (``[B]`` for single-item environments).

    The protocol, as :func:`metarec.agents.evaluation.run_episodes` drives it::

        recommender.reset()
        slate = recommender.act(observation, info)
        observation, reward, terminated, truncated, info = env.step(slate)
        recommender.observe(reward, terminated | truncated, info)
        recommender.reset(terminated | truncated)   # when any user finished
    """

    name: str = "recommender"
    shard: Shard | None = None  # set by place(): this process's users among all users of the run
    #: Whether what it learns from one user changes what it shows another (a popularity table, pooled item
    #: statistics). Such a recommender makes its users dependent: an A/B test compares independent
    #: replicates of it, not its users (see :mod:`metarec.abtest.replicates`).
    shares_state_across_users: bool = False

    def place(self, shard: Shard | None) -> None:
        """Serves this process's share of a run split across processes (see :class:`Shard`); a
        recommender that wraps another places it too."""
        self.shard = shard

    def draws(self, generator: torch.Generator, batch: int, rows: torch.Tensor | None = None) -> UserDraws:
        """Random draws for ``rows`` (all when None) of a ``batch`` of users, keyed by user."""
        return UserDraws(generator, batch, rows, self.shard)

    @abstractmethod
    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        """The slates to show now. ``info["active"]`` ([B] bool), when present, marks the users who
        will see their slate; the others may get any legal slate (so per-user work can skip them)."""

    def observe(self, reward: torch.Tensor, done: torch.Tensor, info: dict[str, Any]) -> None:  # noqa: B027
        """Feedback on the last slates: ``info`` holds ``clicked``, ``chosen_position`` and the rest of
        the environment's step info. ``done`` marks users whose episode ended with this step.
        ``info["active"]`` ([B] bool), when present, marks the users whose feedback may be learned
        from (an A/B test sets it: users who left, or whom another arm serves, must not teach state
        shared across users)."""

    def reset(self, mask: torch.Tensor | None = None) -> None:  # noqa: B027
        """Forgets per-user state: of every user (``None``) or where ``mask`` is True (the vector
        env's autoreset put a fresh user there). Called before the first :meth:`act` and after each
        :meth:`observe` whose ``done`` has a True entry; state shared across users (a popularity
        table, learned weights) is kept."""

    def response_prediction(self) -> tuple[str, torch.Tensor, torch.Tensor | None] | None:
        """What it predicted of the response to the slates it just showed (call after :meth:`act`, before
        :meth:`observe`): ``(target, predictions, rows)``, with ``target`` ``"reward"`` (the reward at the clicked
        position, 0 at the others) or ``"click"``, ``predictions`` ``[A, K]`` per shown item, and the ``A`` users
        they are for (None: every user). None for a recommender that predicts nothing (see
        :mod:`metarec.agents.metrics`)."""
        return None

    def slate_propensity(self, num_candidates: int) -> float | None:
        """The probability that it shows a given candidate at a given position of its slate, where that is the
        same for every candidate, position and user (offline logs' propensity): ``1 / N`` for uniformly random
        slates, 1 for a deterministic recommender. None where it is not known (a bandit that explores, a policy
        that samples)."""
        return None

    def export_module(self, keys: list[str]) -> torch.nn.Module:
        """The network behind its deterministic slates as a module to export (see :mod:`metarec.agents.export`),
        reading the observation entries ``keys`` in that order; a ValueError naming ``run`` where there is none
        (a baseline) or it does not export."""
        raise ValueError(f"run: {self.name} is not a policy network (a baseline, say); nothing to export")


def arrived_items(info: dict[str, Any], device: Any, groups: int = 1) -> torch.Tensor | None:
    """``[groups * M]`` bool: the catalog ids that took a new item at the step ``info`` reports (catalog
    churn, ``info["item_arrived"]``), repeated for each of ``groups`` tables; None without churn. A table
    over catalog ids forgets these entries: the item behind the id is new."""
    arrived = info.get("item_arrived")
    if arrived is None:
        return None
    arrived = arrived if isinstance(arrived, torch.Tensor) else torch.as_tensor(np.array(arrived))
    row = arrived if arrived.dim() == 1 else arrived[0]  # one user's env gives the row itself
    return row.to(device, torch.bool).repeat(groups)


def slate_shape(observation: dict[str, torch.Tensor]) -> tuple[int, int]:
    """``(B, N)``: users and candidates in a batch."""
    candidates = observation["candidates"]
    return int(candidates.shape[0]), int(candidates.shape[1])


def active_rows(active: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Indices of the users marked in ``info["active"]`` when they are a strict subset of the ``batch``
    users; None when every user is (or no mask was given): compute for the whole batch."""
    if active is None:
        return None
    rows = torch.nonzero(active)[:, 0]
    return None if rows.shape[0] == batch else rows


def fill_slates(picked: torch.Tensor, rows: torch.Tensor | None, batch: int) -> torch.Tensor:
    """``[batch, K]`` slates with the ``rows``' slates from ``picked`` (``[A, K]``) and the first K
    candidates for the users who see no slate (any legal slate would do); ``picked`` when rows is None."""
    if rows is None:
        return picked
    k = picked.shape[1]
    slate = torch.arange(k, device=picked.device).expand(batch, k).clone()
    slate[rows] = picked
    return slate


def slate_size_of(env: Any) -> int | None:
    """``K`` of a vector environment (the length of its ``MultiDiscrete`` slate), ``None`` when it takes
    one item per step."""
    if getattr(env, "single_item", False) or not hasattr(env.single_action_space, "nvec"):
        return None
    return int(env.single_action_space.shape[0])
