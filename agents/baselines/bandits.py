"""Batched bandit baselines: popularity, greedy and epsilon-greedy on item ids, LinUCB and linear
Thompson sampling on candidate features.

Each learns online from the slates it shows. Feedback (:func:`slate_targets`): the item at the
chosen position gets the target (the step's reward, or 1 for a click) and the other shown items 0,
so an impression the user passed over counts against an item. Everything is batched over users; the
only Python loops run over slate positions (K).

* ``popular`` — one table of mean target per impression ("click-through rate") over catalog ids,
  shared by every user.
* ``greedy`` / ``epsilon-greedy`` — such a table per user.
* ``linucb`` / ``thompson`` — a ridge regression per user on the candidate features (Li et al.,
  2010, "A contextual-bandit approach to personalized news article recommendation"; Agrawal and
  Goyal, 2013, "Thompson sampling for contextual bandits with linear payoffs").

The id-keyed agents need ``candidate_ids`` in the observation: the RecSim ports draw fresh
documents every step, so their items have no identity to count clicks of.

Here: the feedback and slate helpers, :class:`OnlineBandit` and the per-user id-keyed agents
(``greedy``, ``epsilon-greedy``); ``popular`` is in :mod:`metarec.agents.baselines.popularity`,
``linucb`` and ``thompson`` in :mod:`metarec.agents.baselines.linear`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import torch

from metarec.agents.base import Recommender, UserDraws, active_rows, arrived_items, fill_slates
from metarec.envs.vector import recommender_space

TARGETS = ("reward", "click")


def num_items_of(env: Any, agent: str) -> int:
    """Size of the catalog an id-keyed agent counts over: ``max(candidate_ids) + 1`` of ``env``'s
    observation space.

    Raises:
        ValueError: ``env`` observes no ``candidate_ids``.
    """
    space = recommender_space(env) if hasattr(env, "single_observation_space") else None
    if space is None or "candidate_ids" not in getattr(space, "spaces", {}):
        raise ValueError(_needs_ids(agent))
    return int(np.max(space["candidate_ids"].high)) + 1


def _needs_ids(agent: str) -> str:
    return (
        f"{agent} needs candidate_ids in the observation (catalog ids of the candidates); this environment "
        "has none: the RecSim ports draw fresh documents every step, so their items have no identity"
    )


def top_slate(scores: torch.Tensor, k: int, draws: UserDraws | torch.Generator) -> torch.Tensor:
    """``[B, k]`` indices of the ``k`` highest of ``scores`` (``[B, N]``), best first, ties broken
    uniformly at random (a stable sort of a random permutation of the candidates) with ``draws`` (a
    generator: draws for exactly these ``B`` users)."""
    if k > scores.shape[1]:
        raise ValueError(f"observation: a slate of {k} needs at least {k} candidates, got {scores.shape[1]}")
    if isinstance(draws, torch.Generator):
        draws = UserDraws(draws, scores.shape[0])
    keys = draws.rand(scores.shape[1]).to(scores.device)
    shuffle = torch.argsort(keys, dim=1)  # [B, N] a random permutation per user
    order = torch.sort(scores.gather(1, shuffle), dim=1, descending=True, stable=True).indices[:, :k]
    return shuffle.gather(1, order)


def slate_targets(reward: torch.Tensor, info: dict[str, Any], slate_size: int, target: str) -> torch.Tensor:
    """``[B, K]`` float32 regression targets of the items just shown: the target (``reward`` or
    ``1`` for a click) at ``info["chosen_position"]``, 0 at the other positions and without a click."""
    position = info["chosen_position"].to(torch.int64)  # [B], -1 without a click
    value = reward if target == "reward" else info["clicked"]
    positions = torch.arange(slate_size, device=position.device)
    return (position[:, None] == positions[None, :]).to(torch.float32) * value.to(torch.float32)[:, None]


def check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    """``value`` as a float, if a finite number ``> 0`` (``>= 0`` with ``allow_zero``); else a ValueError
    naming the argument ``name``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")
    return float(value)


class OnlineBandit(Recommender):
    """What every bandit here shares: slate size, generator, target, and the last slate shown.

    Subclasses implement :meth:`choose` (the ``[B, K]`` slate, remembering what they need about the
    shown items) and :meth:`learn` (an update from the ``[B, K]`` targets of that slate).

    Args:
        slate_size: K; ``None`` for single-item environments (``act`` returns ``[B]``).
        generator: the explicit random generator; state lives on its device (the environment's).
        target: ``"reward"`` (the step's reward) or ``"click"`` (1 for a click).
    """

    def __init__(self, slate_size: int | None, generator: torch.Generator, target: str = "reward") -> None:
        if slate_size is not None and (
            isinstance(slate_size, bool) or not isinstance(slate_size, int | np.integer) or slate_size < 1
        ):
            raise ValueError(f"slate_size: expected a positive integer or None, got {slate_size!r}")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        if target not in TARGETS:
            raise ValueError(f"target: expected one of {', '.join(TARGETS)}, got {target!r}")
        self.slate_size = None if slate_size is None else int(slate_size)
        self.k = 1 if slate_size is None else int(slate_size)
        self.generator = generator
        self.device = generator.device
        self.target = target
        self.batch: int | None = None  # users whose per-user state is allocated
        self._acted = False
        self._active: torch.Tensor | None = None  # users whose last feedback counts
        self._serving: torch.Tensor | None = None  # users who see the slate being chosen
        # the users shown the last slate (None: all) and what a subclass keeps of it ([B or A, K, ...])
        self._shown: tuple[torch.Tensor | None, torch.Tensor] | None = None

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        # ``info["active"]`` ([B] bool), when given, marks the users who will see the slate; the others
        # may get any legal slate, so per-user work can skip them (see LinearBandit)
        self._serving = info.get("active")
        slate = self.choose(observation)  # [B, K]
        self._acted = True
        return slate[:, 0] if self.slate_size is None else slate

    def observe(self, reward: torch.Tensor, done: torch.Tensor, info: dict[str, Any]) -> None:
        if not self._acted:
            raise RuntimeError("observe() called before act()")
        self._acted = False
        # ``info["active"]`` ([B] bool), when given, marks the users whose feedback counts (an A/B test
        # passes it: users who left, or are served by another arm, must not teach a shared table)
        self._active = info.get("active")
        self.learn(slate_targets(reward, info, self.k, self.target))
        if "item_arrived" in info:
            self.forget_items(info)

    def forget_items(self, info: dict[str, Any]) -> None:
        """Forgets what it learned of the catalog ids that took a new item at this step (catalog churn,
        :func:`~metarec.agents.base.arrived_items`); nothing for a bandit that keeps no per-item state."""

    @abstractmethod
    def choose(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``[B, K]`` slate for ``observation``."""

    @abstractmethod
    def learn(self, targets: torch.Tensor) -> None:
        """Update from the ``[B, K]`` targets of the slate last chosen."""

    def serving_rows(self, batch: int) -> torch.Tensor | None:
        """Indices of the users who will see the slate being chosen (``info["active"]`` of :meth:`act`)
        when they are a strict subset of an allocated batch, else None (all users)."""
        if self._serving is None or self.batch != batch:
            return None
        return active_rows(self._serving.to(self.device), batch)

    def learning_rows(self, rows: torch.Tensor | None, shown: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Of the users shown the last slate (``rows``, None for all, with per-user data ``shown``), those
        whose feedback counts (``info["active"]`` of :meth:`observe`), with their rows of ``shown``."""
        if self._active is None:
            return rows, shown
        active = self._active.to(self.device)
        keep = active if rows is None else active[rows]
        if bool(keep.all()):
            return rows, shown
        index = torch.nonzero(keep)[:, 0]
        return (index if rows is None else rows[index]), shown[index]

    def _check_batch(self, batch: int) -> bool:
        """Whether per-user state must be allocated for ``batch`` users (it is not yet)."""
        if self.batch is None:
            self.batch = batch
            return True
        if batch != self.batch:
            raise ValueError(f"observation: expected {self.batch} users (reset() to start over), got {batch}")
        return False


def candidate_ids(observation: dict[str, torch.Tensor], agent: str, num_items: int) -> torch.Tensor:
    """``[B, N]`` int64 catalog ids of the candidates, checked to lie in ``[0, num_items)``; a ValueError
    naming ``agent`` when the observation has no ``candidate_ids``."""
    if "candidate_ids" not in observation:
        raise ValueError(_needs_ids(agent))
    ids = observation["candidate_ids"].to(torch.int64)  # [B, N]
    outside = (ids < 0) | (ids >= num_items)
    if bool(outside.any()):  # one device sync per step
        raise ValueError(f"observation['candidate_ids']: expected ids in [0, {num_items}), got {int(ids[outside][0])}")
    return ids


class ItemBandit(OnlineBandit):
    """Scores catalog ids by a Beta-prior mean of their observed targets:
    ``(successes + prior_successes) / (impressions + prior_successes + prior_failures)``.

    Args:
        slate_size: K; ``None`` for single-item environments.
        num_items: catalog size (ids are ``0 .. num_items - 1``).
        generator: the explicit random generator (on the environment's device).
        target: ``"reward"`` or ``"click"``.
        prior_successes: Beta prior's pseudo-successes (``> 0``).
        prior_failures: Beta prior's pseudo-failures (``> 0``). With the default (1, 1) an unseen
            item scores 0.5, above most items' click-through rate: optimism that makes a greedy
            agent try items it has not shown.
    """

    def __init__(
        self,
        slate_size: int | None,
        num_items: int,
        generator: torch.Generator,
        target: str = "reward",
        prior_successes: float = 1.0,
        prior_failures: float = 1.0,
    ) -> None:
        super().__init__(slate_size, generator, target)
        if isinstance(num_items, bool) or not isinstance(num_items, int | np.integer) or num_items < 1:
            raise ValueError(f"num_items: expected a positive integer, got {num_items!r}")
        self.num_items = int(num_items)
        self.prior_successes = check_positive("prior_successes", prior_successes)
        self.prior_failures = check_positive("prior_failures", prior_failures)

    def score(self, successes: torch.Tensor, impressions: torch.Tensor) -> torch.Tensor:
        """The Beta-prior mean of each item's target."""
        prior = self.prior_successes + self.prior_failures
        return (successes + self.prior_successes) / (impressions + prior)


class GreedyRecommender(ItemBandit):
    """Shows each user the candidates with the highest click-through rate observed for that user.

    Per-user tables of summed targets and impressions over catalog ids (``[B, num_items]`` float32
    each: 8 bytes per user and item); the optimistic Beta prior (see :class:`ItemBandit`) makes it
    try unseen items before it gives up on them. Arguments as :class:`ItemBandit`.
    """

    name = "greedy"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.successes: torch.Tensor | None = None  # [B, M]
        self.impressions: torch.Tensor | None = None  # [B, M]

    def user_scores(
        self, observation: dict[str, torch.Tensor], rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates' catalog ids and scores for each user (``[B, N]`` each), or for the users
        ``rows`` only (``[A, N]``)."""
        ids = candidate_ids(observation, self.name, self.num_items)
        if self._check_batch(ids.shape[0]):
            self.successes = torch.zeros((ids.shape[0], self.num_items), dtype=torch.float32, device=self.device)
            self.impressions = torch.zeros_like(self.successes)
        assert self.successes is not None and self.impressions is not None
        if rows is None:
            return ids, self.score(self.successes.gather(1, ids), self.impressions.gather(1, ids))
        ids = ids[rows]
        return ids, self.score(self.successes[rows[:, None], ids], self.impressions[rows[:, None], ids])

    def choose(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = observation["candidates"].shape[0]
        rows = self.serving_rows(batch)
        ids, scores = self.user_scores(observation, rows)
        picked = top_slate(scores, self.k, self.draws(self.generator, batch, rows))
        self._shown = (rows, ids.gather(1, picked))
        return fill_slates(picked, rows, batch)

    def learn(self, targets: torch.Tensor) -> None:
        assert self._shown is not None and self.successes is not None and self.impressions is not None
        rows, shown_ids = self.learning_rows(*self._shown)
        # A slate's candidates are distinct items of the catalog, so no id repeats within a row.
        if rows is None:
            self.successes.scatter_add_(1, shown_ids, targets)
            self.impressions.scatter_add_(1, shown_ids, torch.ones_like(targets))
        else:
            where = (rows[:, None].expand_as(shown_ids), shown_ids)
            self.successes.index_put_(where, targets[rows], accumulate=True)
            self.impressions.index_put_(where, torch.ones_like(targets[rows]), accumulate=True)

    def forget_items(self, info: dict[str, Any]) -> None:
        arrived = arrived_items(info, self.device)
        if arrived is not None and self.successes is not None and self.impressions is not None:
            self.successes[:, arrived] = 0.0
            self.impressions[:, arrived] = 0.0

    def reset(self, mask: torch.Tensor | None = None) -> None:
        if mask is None:
            self.successes = self.impressions = None
            self.batch = None
        elif self.successes is not None and self.impressions is not None:
            self.successes[mask] = 0.0
            self.impressions[mask] = 0.0


class EpsilonGreedyRecommender(GreedyRecommender):
    """Greedy, but each slate position shows, with probability ``epsilon``, a candidate drawn
    uniformly from those not yet in the slate; otherwise the best-scoring candidate not yet in it.

    Args:
        *args: as :class:`ItemBandit`.
        epsilon: probability of exploring at each position, in ``[0, 1]``.
        **kwargs: as :class:`ItemBandit`.
    """

    name = "epsilon-greedy"

    def __init__(self, *args: Any, epsilon: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ok = isinstance(epsilon, int | float) and not isinstance(epsilon, bool) and 0.0 <= epsilon <= 1.0
        if not ok:
            raise ValueError(f"epsilon: expected a probability in [0, 1], got {epsilon!r}")
        self.epsilon = float(epsilon)

    def choose(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, scores = self.user_scores(observation)
        batch, n = scores.shape
        draws = self.draws(self.generator, batch)
        ranking = top_slate(scores, n, draws)  # [B, N] every candidate, best first
        positions = torch.arange(n, device=self.device).expand(batch, n)
        rank = torch.empty_like(ranking).scatter_(1, ranking, positions)  # [B, N] rank of each candidate
        explore = draws.rand(self.k) < self.epsilon
        used = torch.zeros((batch, n), dtype=torch.bool, device=self.device)
        picks = []
        for k in range(self.k):
            best = rank.masked_fill(used, n).argmin(dim=1)
            keys = draws.rand(n).masked_fill(used, -1.0)
            pick = torch.where(explore[:, k], keys.argmax(dim=1), best)  # [B]
            used.scatter_(1, pick[:, None], True)
            picks.append(pick)
        slate = torch.stack(picks, dim=1)
        self._shown = (None, ids.gather(1, slate))
        return slate
