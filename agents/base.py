"""The one interface everything that recommends implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Recommender(ABC):
    """Given a batch of observations, returns a batch of slates.

    Observations and infos are what a :class:`~metarec.envs.adapters.UserSimVectorEnv` returns
    (dicts of tensors with a leading batch dimension ``B``). Slates are ``[B, K]`` int64 candidate
    indices (``[B]`` for single-item environments).
    """

    name: str = "recommender"

    @abstractmethod
    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        """The slates to show now."""

    def observe(self, reward: torch.Tensor, done: torch.Tensor, info: dict[str, Any]) -> None:  # noqa: B027
        """Feedback on the last slates (learning agents override this; ``done`` marks new users)."""


def slate_shape(observation: dict[str, torch.Tensor]) -> tuple[int, int]:
    """``(B, N)``: users and candidates in a batch."""
    candidates = observation["candidates"]
    return int(candidates.shape[0]), int(candidates.shape[1])
