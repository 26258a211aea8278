"""The ``popular`` bandit: one table of mean target per impression over catalog ids, shared by every
user; ``bts``, Bernoulli Thompson sampling on the same table of clicks (see
:mod:`metarec.agents.baselines.bandits` for the feedback all bandits learn from)."""

from __future__ import annotations

from typing import Any

import torch

from metarec.agents.base import UserDraws, arrived_items
from metarec.agents.baselines.bandits import ItemBandit, candidate_ids, top_slate
from metarec.parallel import EXACT_SCALE, add_exact


class PopularRecommender(ItemBandit):
    """Shows the candidates with the highest mean target per impression over all users so far (reward
    per impression by default; click-through rate with ``target="click"``).

    One table of summed targets and impressions per catalog id, learned online from every user's
    feedback and never reset, except for an id whose item catalog churn replaced: that entry starts afresh.
    The sums are int64 fixed point (:func:`~metarec.parallel.add_exact`): exact over millions of users and
    the same whatever the order of summation, so a run split across processes (each step's sums added up
    over them) serves exactly as one process does. Arguments as
    :class:`ItemBandit`.
    """

    name = "popular"
    shares_state_across_users = True

    def __init__(self, *args: Any, groups: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups: expected a positive integer, got {groups!r}")
        #: Independent tables, one per contiguous block of users (``B / groups`` users each): ``groups``
        #: popularity learners that never see each other's users, stepped as one batch (independent replicates
        #: of an A/B test's arm, say). 1: one table for every user.
        self.groups = groups
        self.table = torch.zeros((2, groups * self.num_items), dtype=torch.int64, device=self.device)  # fixed point

    @property
    def successes(self) -> torch.Tensor:
        """``[groups * M]`` float64 summed targets per item (of each group's table in turn)."""
        return self.table[0].to(torch.float64) / EXACT_SCALE

    @property
    def impressions(self) -> torch.Tensor:
        """``[groups * M]`` float64 impressions per item."""
        return self.table[1].to(torch.float64)

    def choose(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = self.grouped(candidate_ids(observation, self.name, self.num_items))  # [B, N] rows of the table
        draws = self.draws(self.generator, ids.shape[0])
        slate = top_slate(self.slate_scores(ids, draws), self.k, draws)
        self._shown = (None, ids.gather(1, slate))
        return slate

    def slate_scores(self, ids: torch.Tensor, draws: UserDraws) -> torch.Tensor:
        """``[B, N]`` the candidates' scores (rows ``ids`` of the table): the Beta-prior mean."""
        return self.score(self.successes[ids], self.impressions[ids])

    def grouped(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` catalog ids as entries of the table of each user's group."""
        if self.groups == 1:
            return ids
        batch = ids.shape[0]
        if batch % self.groups:
            raise ValueError(f"groups: {self.groups} groups need a batch that divides into them, got {batch} users")
        group = torch.arange(batch, device=ids.device) // (batch // self.groups)
        return ids + (group * self.num_items)[:, None]

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

    def forget_items(self, info: dict[str, Any]) -> None:
        arrived = arrived_items(info, self.device, self.groups)
        if arrived is not None:
            self.table[:, arrived] = 0


class BernoulliTSRecommender(PopularRecommender):
    """Bernoulli Thompson sampling over catalog ids, shared by every user (``bts``): the logging policy of the
    Open Bandit Dataset's A/B test.

    Each item's click probability has a Beta(``prior_successes`` + clicks, ``prior_failures`` + impressions
    without a click) posterior, from one table of every user's clicks and impressions (as ``popular-ctr``
    keeps it, fixed point and exact across processes). For each user and step it draws one click probability
    per candidate from that posterior and shows the ``K`` highest. Context is not used. Draws are keyed by user
    (:class:`~metarec.agents.base.UserDraws`), so a run split across processes draws as one process does.

    A Beta draw is ``G1 / (G1 + G2)`` of two Gamma draws, each by Marsaglia and Tsang's method (2000) on the
    shape plus one with a fixed six proposals, times ``U ** (1 / shape)``; a draw whose six proposals are all
    rejected (probability below 1e-7 for any shape) takes the proposal's centre instead.
    """

    name = "bts"
    #: Proposals per Gamma draw: each is accepted with probability above 0.95 for shapes >= 1.
    proposals = 6

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, target="click", **kwargs)

    def slate_propensity(self, num_candidates: int) -> float | None:
        return None  # it samples: its propensities depend on the table

    def score_draws(self, successes: torch.Tensor, impressions: torch.Tensor, draws: UserDraws) -> torch.Tensor:
        """``[B, N]`` click probabilities drawn from each candidate's posterior."""
        clicks = successes + self.prior_successes
        misses = (impressions - successes).clamp(min=0) + self.prior_failures
        first, second = gamma_draws(clicks, draws, self.proposals), gamma_draws(misses, draws, self.proposals)
        return torch.nan_to_num(first / (first + second), nan=0.5)  # 0 / 0: both boosts drew U = 0

    def slate_scores(self, ids: torch.Tensor, draws: UserDraws) -> torch.Tensor:
        return self.score_draws(self.successes[ids], self.impressions[ids], draws)


def gamma_draws(shape: torch.Tensor, draws: UserDraws, proposals: int) -> torch.Tensor:
    """Gamma(``shape``, 1) draws (``shape`` ``[B, N]``, every entry > 0) from keyed uniform and normal draws:
    Marsaglia and Tsang's squeeze-free method on ``shape + 1`` with ``proposals`` proposals, scaled by
    ``U ** (1 / shape)``."""
    shape = shape.to(torch.float64)
    d = shape + 1.0 - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    z = draws.randn(*shape.shape[1:], proposals).to(shape.device, torch.float64)
    u = draws.rand(*shape.shape[1:], proposals).to(shape.device, torch.float64)
    v = (1.0 + c[..., None] * z) ** 3
    positive = v > 0
    log_v = torch.log(torch.where(positive, v, torch.ones_like(v)))
    accepted = positive & (torch.log(u) < 0.5 * z * z + d[..., None] * (1.0 - v + log_v))
    first = accepted.to(torch.int8).argmax(dim=-1, keepdim=True)  # the first accepted proposal
    value = d * torch.where(accepted.any(dim=-1), v.gather(-1, first).squeeze(-1), torch.ones_like(d))
    boost = draws.rand(*shape.shape[1:]).to(shape.device, torch.float64)
    return value * boost ** (1.0 / shape)
