"""The ``popular`` bandit: one table of mean target per impression over catalog ids, shared by every
user (see :mod:`metarec.agents.baselines.bandits` for the feedback all bandits learn from)."""

from __future__ import annotations

from typing import Any

import torch

from metarec.agents.baselines.bandits import ItemBandit, candidate_ids, top_slate
from metarec.parallel import EXACT_SCALE, add_exact


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
        ids = candidate_ids(observation, self.name, self.num_items)  # [B, N]
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
