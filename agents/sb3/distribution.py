"""Slates in SB3's terms: the action space's slate size, and SB3's view of a Plackett–Luce law over slates."""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution

from metarec.agents.nn.distributions import PlackettLuce


def slate_of(action_space: spaces.Space, observation_space: spaces.Dict) -> tuple[int, bool]:
    """``(K, single_item)`` of a metarec action space: ``Discrete(N)`` or ``MultiDiscrete([N] * K)``."""
    if isinstance(action_space, spaces.Discrete):
        slate_size, single_item, n = 1, True, int(action_space.n)
    elif (
        isinstance(action_space, spaces.MultiDiscrete)
        and action_space.nvec.ndim == 1
        and len(set(action_space.nvec.tolist())) == 1
    ):
        slate_size, single_item, n = len(action_space.nvec), False, int(action_space.nvec[0])
    else:
        raise ValueError(f"action_space: expected Discrete(N) or MultiDiscrete([N] * K), got {action_space}")
    candidates = observation_space["candidates"].shape[0]
    if n != candidates:
        raise ValueError(f"action_space: expected indices into the {candidates} candidates, got {action_space}")
    return slate_size, single_item


class SlateDistribution(Distribution):
    """SB3's view of a :class:`PlackettLuce` law: actions are slates ``[B, K]`` or, single-item, items ``[B]``.

    The logits come from :class:`SlatePolicy`, so there is no ``proba_distribution_net``.
    """

    def __init__(self, slate_size: int, single_item: bool) -> None:
        super().__init__()
        self.slate_size = slate_size
        self.single_item = single_item
        self.distribution: PlackettLuce | None = None

    def proba_distribution(self, logits: torch.Tensor) -> SlateDistribution:  # type: ignore[override]
        self.distribution = PlackettLuce(logits, self.slate_size)
        return self

    def proba_distribution_net(self, *args: Any, **kwargs: Any) -> torch.nn.Module:
        raise NotImplementedError("the logits come from SlatePolicy; a SlateDistribution has no network of its own")

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self._law.log_prob(self._slates(actions))

    def entropy(self, actions: torch.Tensor | None = None) -> torch.Tensor:
        """Exact where small enough, else the chain-rule estimate along ``actions`` (see PlackettLuce.entropy)."""
        return self._law.entropy(None if actions is None else self._slates(actions))

    def sample(self) -> torch.Tensor:
        return self._actions(self._law.sample())

    def mode(self) -> torch.Tensor:
        return self._actions(self._law.mode())

    def actions_from_params(self, logits: torch.Tensor, deterministic: bool = False) -> torch.Tensor:  # type: ignore[override]
        return self.proba_distribution(logits).get_actions(deterministic=deterministic)

    def log_prob_from_params(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        actions = self.actions_from_params(logits)
        return actions, self.log_prob(actions)

    @property
    def _law(self) -> PlackettLuce:
        if self.distribution is None:
            raise RuntimeError("proba_distribution(logits) has not been called")
        return self.distribution

    def _slates(self, actions: torch.Tensor) -> torch.Tensor:
        # SB3's buffers hand actions back as floats; single-item actions are [B] or [B, 1].
        actions = actions.long()
        return actions.reshape(-1, 1) if self.single_item else actions

    def _actions(self, slates: torch.Tensor) -> torch.Tensor:
        return slates[..., 0] if self.single_item else slates
