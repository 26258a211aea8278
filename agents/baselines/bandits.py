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
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import torch

from metarec.agents.base import Recommender, UserDraws, active_rows, fill_slates
from metarec.parallel import EXACT_SCALE, add_exact

TARGETS = ("reward", "click")


def num_items_of(env: Any, agent: str) -> int:
    """Size of the catalog an id-keyed agent counts over: ``max(candidate_ids) + 1`` of ``env``'s
    observation space.

    Raises:
        ValueError: ``env`` observes no ``candidate_ids``.
    """
    space = getattr(env, "single_observation_space", None)
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


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
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


def _candidate_ids(observation: dict[str, torch.Tensor], agent: str, num_items: int) -> torch.Tensor:
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
        self.prior_successes = _check_positive("prior_successes", prior_successes)
        self.prior_failures = _check_positive("prior_failures", prior_failures)

    def score(self, successes: torch.Tensor, impressions: torch.Tensor) -> torch.Tensor:
        """The Beta-prior mean of each item's target."""
        prior = self.prior_successes + self.prior_failures
        return (successes + self.prior_successes) / (impressions + prior)


class PopularRecommender(ItemBandit):
    """Shows the candidates with the highest mean target per impression over all users so far (reward
    per impression by default; click-through rate with ``target="click"``).

    One table of summed targets and impressions per catalog id, learned online from every user's
    feedback and never reset. The sums are int64 fixed point (:func:`~metarec.parallel.add_exact`):
    exact over millions of users and the same whatever the order of summation, so a run split across
    processes (each step's sums added up over them) serves exactly as one process does. Arguments as
    :class:`ItemBandit`.
    """

    name = "popular"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table = torch.zeros((2, self.num_items), dtype=torch.int64, device=self.device)  # fixed-point sums

    @property
    def successes(self) -> torch.Tensor:
        """``[M]`` float64 summed targets per item."""
        return self.table[0].to(torch.float64) / EXACT_SCALE

    @property
    def impressions(self) -> torch.Tensor:
        """``[M]`` float64 impressions per item."""
        return self.table[1].to(torch.float64)

    def choose(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = _candidate_ids(observation, self.name, self.num_items)  # [B, N]
        scores = self.score(self.successes[ids], self.impressions[ids])
        slate = top_slate(scores, self.k, self.draws(self.generator, ids.shape[0]))
        self._shown = (None, ids.gather(1, slate))
        return slate

    def learn(self, targets: torch.Tensor) -> None:
        assert self._shown is not None
        rows, shown_ids = self.learning_rows(*self._shown)  # only the users whose feedback counts
        if rows is not None:
            targets = targets[rows]
        ids = shown_ids.reshape(-1)
        step = torch.zeros_like(self.table)
        add_exact(step[0], ids, targets.reshape(-1))
        step[1].index_add_(0, ids, torch.ones_like(ids))
        if self.shard is not None:
            self.shard.sum_(step)  # every process's users, added exactly
        self.table += step


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
        ids = _candidate_ids(observation, self.name, self.num_items)
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


def ridge_estimate(inverse: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """``[B, F]`` the ridge estimates ``θ = A⁻¹ b`` of a batch of users."""
    return (inverse @ response[:, :, None])[:, :, 0]


def ridge_prediction(
    x: torch.Tensor, inverse: torch.Tensor, response: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, N] x·θ, [B, N] xᵀA⁻¹x)``: each candidate's (``x``: ``[B, N, F]``) predicted target under
    the users' ridge estimates, and its variance factor (LinUCB's bonus is ``alpha`` times its root)."""
    mean = (x @ ridge_estimate(inverse, response)[:, :, None])[:, :, 0]
    variance = ((x @ inverse) * x).sum(dim=2).clamp_min(0.0)
    return mean, variance


class LinearBandit(OnlineBandit):
    """A ridge regression of the target on candidate features per user, for LinUCB and Thompson.

    Features are ``observation["candidates"]`` (``[B, N, F]``) with a constant 1 appended. Per user
    it keeps ``A⁻¹`` (``A = ridge·I + Σ x xᵀ`` over every shown item) by Sherman–Morrison rank-one
    updates, one per shown item, and ``b = Σ target·x``; the estimate is ``θ = A⁻¹ b``.
    State: ``(F + 1)² + F + 1`` float32 per user.

    Args:
        slate_size: K; ``None`` for single-item environments.
        generator: the explicit random generator (on the environment's device).
        target: ``"reward"`` or ``"click"``.
        ridge: the prior precision λ (``> 0``).
    """

    def __init__(
        self, slate_size: int | None, generator: torch.Generator, target: str = "reward", ridge: float = 1.0
    ) -> None:
        super().__init__(slate_size, generator, target)
        self.ridge = _check_positive("ridge", ridge)
        self.inverse: torch.Tensor | None = None  # [B, F, F] A⁻¹
        self.response: torch.Tensor | None = None  # [B, F] b

    def features(self, observation: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, N, F + 1]``: the candidates' features and a constant 1 (of the users ``rows`` only,
        when given), allocating state on first use."""
        candidates = observation["candidates"]
        batch, dim = candidates.shape[0], candidates.shape[-1] + 1
        if self._check_batch(batch):
            eye = torch.eye(dim, dtype=torch.float32, device=self.device)
            self.inverse = (eye / self.ridge).expand(batch, dim, dim).clone()
            self.response = torch.zeros((batch, dim), dtype=torch.float32, device=self.device)
        assert self.inverse is not None
        if dim != self.inverse.shape[-1]:
            expected = self.inverse.shape[-1] - 1
            raise ValueError(f"observation['candidates']: expected {expected} features per candidate, got {dim - 1}")
        x = candidates if rows is None else candidates[rows]
        x = x.to(device=self.device, dtype=torch.float32)
        return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)

    @property
    def theta(self) -> torch.Tensor:
        """``[B, F + 1]`` the ridge estimate ``A⁻¹ b`` of each user."""
        assert self.inverse is not None and self.response is not None, "no state before the first act()"
        return ridge_estimate(self.inverse, self.response)

    @staticmethod
    def update(inverse: torch.Tensor, response: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adds K observations per user: features ``x`` (``[B, K, F + 1]``, constant included) with
        targets ``y`` (``[B, K]``). Returns the new ``A⁻¹``, one Sherman–Morrison update per shown item
        (``A⁻¹ ← A⁻¹ - (A⁻¹x)(A⁻¹x)ᵀ / (1 + xᵀA⁻¹x)``; cheaper here than one batched K x K solve), made
        exactly symmetric; adds ``Xᵀy`` to ``response`` in place. ``inverse`` is updated in place too."""
        for k in range(x.shape[1]):
            xk = x[:, k]
            u = (inverse @ xk[:, :, None])[:, :, 0]  # [B, F] A⁻¹x
            denominator = 1.0 + (xk * u).sum(dim=1)
            inverse -= u[:, :, None] * (u / denominator[:, None])[:, None, :]
        response += (y[:, :, None] * x).sum(dim=1)
        # Rounding makes the float32 inverse drift from symmetric; keep it exactly so.
        return 0.5 * (inverse + inverse.transpose(1, 2))

    def choose(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = observation["candidates"].shape[0]
        rows = self.serving_rows(batch)
        x = self.features(observation, rows)  # [B or A, N, F]
        assert self.inverse is not None and self.response is not None
        draws = self.draws(self.generator, batch, rows)
        if rows is None:
            slate = top_slate(self.scores(x, self.inverse, self.response, draws), self.k, draws)
            self._shown = (None, x.gather(1, slate[:, :, None].expand(-1, -1, x.shape[-1])))
            return slate
        # score only the users who will see a slate
        picked = top_slate(self.scores(x, self.inverse[rows], self.response[rows], draws), self.k, draws)
        self._shown = (rows, x.gather(1, picked[:, :, None].expand(-1, -1, x.shape[-1])))
        return fill_slates(picked, rows, batch)

    @abstractmethod
    def scores(self, x: torch.Tensor, inverse: torch.Tensor, response: torch.Tensor, draws: UserDraws) -> torch.Tensor:
        """``[B, N]`` score of each candidate (``x``: ``[B, N, F + 1]``) from the users' ``A⁻¹`` and ``b``
        (``draws``: random draws for these users)."""

    def learn(self, targets: torch.Tensor) -> None:
        assert self._shown is not None and self.inverse is not None and self.response is not None
        rows, shown = self.learning_rows(*self._shown)  # users shown a slate who count, and its features
        if rows is None:
            self.inverse = self.update(self.inverse, self.response, shown, targets)
        else:  # gathered copies, written back
            response = self.response[rows]
            self.inverse[rows] = self.update(self.inverse[rows], response, shown, targets[rows])
            self.response[rows] = response

    def reset(self, mask: torch.Tensor | None = None) -> None:
        if mask is None:
            self.inverse = self.response = None
            self.batch = None
        elif self.inverse is not None and self.response is not None:
            dim = self.inverse.shape[-1]
            self.inverse[mask] = torch.eye(dim, dtype=torch.float32, device=self.device) / self.ridge
            self.response[mask] = 0.0


class LinUCBRecommender(LinearBandit):
    """LinUCB: shows the top-K candidates by ``x·θ + alpha·sqrt(xᵀA⁻¹x)`` (Li et al., 2010).

    Args:
        slate_size: K; ``None`` for single-item environments.
        generator: the explicit random generator (on the environment's device).
        target: ``"reward"`` or ``"click"``.
        ridge: the prior precision λ (``> 0``).
        alpha: width of the confidence bonus (``>= 0``; 0 is greedy ridge regression).
    """

    name = "linucb"

    def __init__(
        self,
        slate_size: int | None,
        generator: torch.Generator,
        target: str = "reward",
        ridge: float = 1.0,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(slate_size, generator, target, ridge)
        self.alpha = _check_positive("alpha", alpha, allow_zero=True)

    def scores(self, x: torch.Tensor, inverse: torch.Tensor, response: torch.Tensor, draws: UserDraws) -> torch.Tensor:
        mean, variance = ridge_prediction(x, inverse, response)
        return mean + self.alpha * variance.sqrt()


class ThompsonRecommender(LinearBandit):
    """Linear Thompson sampling: draws ``θ ~ N(A⁻¹b, v²A⁻¹)`` per user and step and shows the
    top-K candidates by ``x·θ`` (Agrawal and Goyal, 2013).

    Args:
        slate_size: K; ``None`` for single-item environments.
        generator: the explicit random generator (on the environment's device).
        target: ``"reward"`` or ``"click"``.
        ridge: the prior precision λ (``> 0``).
        scale: v, the posterior scale (``> 0``; the noise std of the target under the model). The
            default 0.3 is within noise of the best of 0.1, 0.3, 0.5 and 1 on DriftingUsers-v0;
            1 keeps exploring for longer than a ~30-step session.
    """

    name = "thompson"

    def __init__(
        self,
        slate_size: int | None,
        generator: torch.Generator,
        target: str = "reward",
        ridge: float = 1.0,
        scale: float = 0.3,
    ) -> None:
        super().__init__(slate_size, generator, target, ridge)
        self.scale = _check_positive("scale", scale)

    def scores(self, x: torch.Tensor, inverse: torch.Tensor, response: torch.Tensor, draws: UserDraws) -> torch.Tensor:
        factor, failed = torch.linalg.cholesky_ex(inverse)  # [B, F, F] lower, A⁻¹ = L Lᵀ
        # A float32 inverse that rounding made indefinite samples its mean for that step.
        factor = factor.masked_fill((failed != 0)[:, None, None], 0.0)
        mean = ridge_estimate(inverse, response)  # [B, F]
        noise = draws.randn(mean.shape[1]).to(mean.device)
        theta = mean + self.scale * (factor @ noise[:, :, None])[:, :, 0]
        return (x @ theta[:, :, None])[:, :, 0]
