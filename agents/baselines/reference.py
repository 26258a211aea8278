"""Reference agents that bound every other: random (lower) and the myopic oracle (upper)."""

from __future__ import annotations

from typing import Any

import torch

from metarec.agents.base import Recommender, slate_shape


class RandomRecommender(Recommender):
    """Slates of distinct candidates drawn uniformly without replacement, like RecSim's random agent.

    Args:
        slate_size: K; ``None`` for single-item environments (returns ``[B]``).
        generator: the explicit random generator (on the environment's device).
    """

    name = "random"

    def __init__(self, slate_size: int | None, generator: torch.Generator) -> None:
        self.slate_size = slate_size
        self.generator = generator

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        batch, candidates = slate_shape(observation)
        keys = self.draws(self.generator, batch).rand(candidates)
        k = 1 if self.slate_size is None else self.slate_size
        slate = torch.topk(keys, k, dim=1).indices  # the first k of a uniform random permutation
        return slate[:, 0] if self.slate_size is None else slate

    def slate_propensity(self, num_candidates: int) -> float:
        return 1.0 / num_candidates  # a uniform permutation puts each candidate at each position with 1 / N


class OracleRecommender(Recommender):
    """Shows the best slate under the true current user state (myopic: one step ahead).

    It reads ``info["oracle_slate"]``, which environments built with ``ground_truth=True`` (the
    default) compute from the hidden state; no policy other than this one may use it.
    """

    name = "oracle"

    def __init__(self, single_item: bool = False) -> None:
        self.single_item = single_item

    def slate_propensity(self, num_candidates: int) -> float:
        return 1.0  # deterministic given the state

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        if "oracle_slate" not in info:
            raise ValueError("info['oracle_slate'] is missing: build the environment with ground_truth=True")
        slate = info["oracle_slate"]
        return slate[:, 0] if self.single_item else slate
