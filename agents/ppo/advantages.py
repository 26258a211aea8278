"""What PPO computes from a rollout before its update: a running reward scale, GAE advantages and
their per-minibatch standardisation (shared by :class:`~metarec.agents.ppo.trainer.BatchedPPO` and RL²)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from metarec.parallel import all_reduce_


class RunningMeanStd:
    """Running mean and variance of a stream of batches (Chan et al.'s parallel update), float64."""

    def __init__(self, device: torch.device) -> None:
        self.mean = torch.zeros((), dtype=torch.float64, device=device)
        self.var = torch.ones((), dtype=torch.float64, device=device)
        self.count = torch.full((), 1e-4, dtype=torch.float64, device=device)

    def update(self, batch: torch.Tensor, reduce: Callable[[list[torch.Tensor]], None] | None = None) -> None:
        """Adds ``batch``; ``reduce`` (e.g. a sum over the processes of a run, in place) makes it the
        batch of every process's values together."""
        batch = batch.to(torch.float64)
        n = batch.numel()
        if reduce is None:
            mean, var = batch.mean(), batch.var(unbiased=False)
        else:
            moments = torch.stack([torch.tensor(float(n), dtype=torch.float64, device=batch.device),
                                   batch.sum(), (batch**2).sum()])  # fmt: skip
            reduce([moments])
            n = int(moments[0])
            mean = moments[1] / n
            var = (moments[2] / n - mean**2).clamp_min(0)
        delta = mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, saved: dict[str, torch.Tensor]) -> None:
        self.mean, self.var, self.count = (saved[k].to(self.mean.device) for k in ("mean", "var", "count"))


def generalized_advantages(
    rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """GAE(gamma, lambda) advantages ``[T, B]`` of a rollout: ``dones[t]`` (float) marks an episode
    that ended with step ``t``; ``next_value`` ``[B]`` is V of the observation after the last step."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * following * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
    return advantages


def standardise(
    values: torch.Tensor, count: int, reduce: Callable[[list[torch.Tensor]], None] = all_reduce_
) -> torch.Tensor:
    """``values`` less their mean, over their standard deviation (float32), where the minibatch of
    ``count`` samples may be spread over processes: ``reduce`` sums this process's moments with the
    others' (in float64), so every process standardises by the same minibatch statistics."""
    values = values.double()
    moments = torch.stack([values.sum(), (values**2).sum()])
    reduce([moments])
    mean = moments[0] / count
    std = ((moments[1] - count * mean**2).clamp_min(0) / (count - 1)).sqrt()
    return ((values - mean) / (std + 1e-8)).float()
