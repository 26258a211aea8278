"""A trained :class:`~metarec.agents.nn.networks.SlatePolicy` as a :class:`~metarec.agents.base.Recommender`."""

from __future__ import annotations

from typing import Any

import torch

from metarec.agents.base import Recommender, active_rows, fill_slates
from metarec.agents.nn.networks import SlatePolicy


class PolicyRecommender(Recommender):
    """A :class:`SlatePolicy` as a :class:`Recommender`: the most probable slate (``deterministic``)
    or a Plackett–Luce draw from ``generator``."""

    name = "ppo"

    def __init__(
        self,
        policy: SlatePolicy,
        single_item: bool = False,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if not deterministic and generator is None:
            raise ValueError("generator: a stochastic PolicyRecommender needs an explicit torch.Generator")
        self.policy = policy
        self.single_item = single_item
        self.deterministic = deterministic
        self.generator = generator

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        batch = next(iter(observation.values())).shape[0]
        rows = active_rows(info.get("active"), batch)  # run the network only for users who see a slate
        if rows is not None:
            observation = {key: value[rows] for key, value in observation.items()}
        with torch.no_grad():
            logits, _ = self.policy(observation)
            dist = self.policy.distribution(logits)
            if self.deterministic:
                picked = dist.mode()
            else:
                assert self.generator is not None
                picked = dist.sample(self.generator, rows_of=self.draws(self.generator, batch, rows).rows_of())
        slate = fill_slates(picked, rows, batch)
        return slate[:, 0] if self.single_item else slate

    def slate_propensity(self, num_candidates: int) -> float | None:
        return 1.0 if self.deterministic else None

    def export_module(self, keys: list[str]) -> torch.nn.Module:
        from metarec.agents.export import SlateScorer

        return SlateScorer(self.policy, keys, self.policy.slate_size)
