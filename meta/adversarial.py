"""Adversarial population sampling for meta-training: train more on the populations the learner does worst on.

With ``rl2.adversarial`` set, RL² meta-trains on a finite pool of ``pool`` training populations, drawn once from
the training split, instead of fresh ones for every meta-batch. Each meta-batch takes ``tasks_per_batch``
distinct populations of the pool, population ``i`` with probability

    p_i = (1 - uniform_mix) * softmax(regret_i / temperature) + uniform_mix / pool

(drawn one after another without replacement, renormalised over those left). ``regret_i`` is the learner's
relative regret on population ``i``: its per-step regret against the myopic oracle summed over its rollouts there,
over the oracle's value summed alike (0: it does what the oracle does; 1: it earns nothing). It is refreshed every
time the population is trained on, as a moving average (``refresh``: the weight of the new measurement). A
population not trained on yet counts at the highest regret measured so far, so each is tried early. The uniform
share keeps every population's chance at least ``uniform_mix / pool`` a draw: the sampler cannot collapse on a few.

Measuring the regret needs the simulator's ground truth in the training environment (the oracle's value each
step); it is only read for the sampler, never by the policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from metarec.config import FrozenConfig
from metarec.envs.drifting.params import SimulatorConfig
from metarec.meta.tasks import TaskDistribution, with_sessions

#: Keys the pool's and the draws' generators apart from the uniform task stream's.
POOL_STREAM = 0x706F6F6C


class AdversarialConfig(FrozenConfig):
    """Adversarial sampling of the training populations (see :mod:`metarec.meta.adversarial`)."""

    pool: int = Field(256, ge=2, description="Training populations in the pool (drawn once from the training split).")
    temperature: float = Field(
        0.05, gt=0, description="Softmax temperature on the relative regret (0 to 1); lower is greedier."
    )
    uniform_mix: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Share of each draw's probability spread uniformly over the pool (> 0: every population stays "
        "possible, and the softmax can underflow without leaving too few to draw).",
    )
    refresh: float = Field(0.5, gt=0, le=1, description="Weight of a new regret measurement in the moving average.")


class PopulationPool:
    """The pool of training populations, what the learner's regret on each is, and the meta-batches drawn from it.

    Args:
        config: the sampler's settings.
        distribution: the task distribution; ``split`` names the training split the pool is drawn from.
        seed: the run's seed (the pool and every draw follow from it and the regrets measured).
        sessions: sessions per user of every population.
    """

    def __init__(
        self, config: AdversarialConfig, distribution: TaskDistribution, split: str, seed: int, sessions: int
    ) -> None:
        self.config, self.seed = config, seed
        pool_seed = int(np.random.SeedSequence([seed, POOL_STREAM]).generate_state(1)[0])
        self.tasks: list[SimulatorConfig] = with_sessions(distribution.sample(split, config.pool, pool_seed), sessions)
        self.regret = np.full(config.pool, np.nan)
        self.visits = np.zeros(config.pool, dtype=np.int64)

    def probabilities(self) -> np.ndarray:
        """``[pool]`` the chance of each population at the next draw (before any is taken)."""
        c, size = self.config, len(self.tasks)
        seen = ~np.isnan(self.regret)
        if not seen.any():
            return np.full(size, 1.0 / size)
        regret = np.where(seen, self.regret, np.nanmax(self.regret))
        logits = regret / c.temperature
        weights = np.exp(logits - logits.max())
        return (1.0 - c.uniform_mix) * weights / weights.sum() + c.uniform_mix / size

    def draw(self, index: int, size: int) -> np.ndarray:
        """``[size]`` distinct pool indices for meta-batch ``index``, from its own generator."""
        if size > len(self.tasks):
            raise ValueError(f"rl2.adversarial.pool: expected at least tasks_per_batch ({size}), got {len(self.tasks)}")
        rng = np.random.default_rng([self.seed, POOL_STREAM, index])
        return rng.choice(len(self.tasks), size, replace=False, p=self.probabilities())

    def record(self, ids: np.ndarray, regret: np.ndarray) -> None:
        """Folds the relative regrets measured on populations ``ids`` into the moving averages."""
        old, weight = self.regret[ids], self.config.refresh
        self.regret[ids] = np.where(np.isnan(old), regret, (1 - weight) * old + weight * regret)
        self.visits[ids] += 1

    def summary(self) -> dict[str, Any]:
        """What the sampler has measured: the mean and worst decile of the regrets, the populations tried and
        the effective number of populations it draws from (the inverse Simpson index of the probabilities)."""
        seen = self.regret[~np.isnan(self.regret)]
        worst = np.sort(seen)[-max(1, len(seen) // 10) :] if len(seen) else seen
        p = self.probabilities()
        return {
            "populations_trained_on": int((self.visits > 0).sum()),
            "mean_relative_regret": float(seen.mean()) if len(seen) else None,
            "worst_decile_relative_regret": float(worst.mean()) if len(seen) else None,
            "effective_populations": float(1.0 / np.square(p).sum()),
        }

    def state_dict(self) -> dict[str, Any]:
        """Tensors only (checkpoints load with ``weights_only``)."""
        return {"regret": torch.from_numpy(self.regret.copy()), "visits": torch.from_numpy(self.visits.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.regret = state["regret"].numpy().astype(np.float64).copy()
        self.visits = state["visits"].numpy().astype(np.int64).copy()
