"""Serving a memory method on a catalogue whose items last longer or shorter than any it trained on: the time
unit (``rl2.rescale_time``, serving only).

What RL² and the in-context recommender read of time is in minutes: each candidate's length, the engagement per
impression among the population's logged item statistics, the engagement in the history and the reward. A policy
trained on catalogues whose items last 0.5–6 minutes has never met a film of 30, and reads its responses as
off the scale it learned. With ``rescale_time``, each population is served in a unit of time that brings the
mean length of its catalogue into the range the training catalogues span: minutes inside the range, ``mean /
high`` minutes above it, ``mean / low`` minutes below it. The mean is that of the candidates the population's
users have been shown so far: observed, never read from the simulator. Everything the memory learns from the
responses (the belief, the population and item memories, the change test) is then in that unit too, so a
served population is to the policy a catalogue of the nearest length it trained on; the slates it picks are
shown as they are. The range is measured on the catalogues of the run's training split (:func:`length_range`).
Nothing is trained this way: the weights are those of the run.
"""

from __future__ import annotations

import numpy as np
import torch

from metarec.envs.drifting.model import make_world
from metarec.envs.fitted_task import FittedTask
from metarec.meta.tasks import TaskDistribution

RANGE_TASKS = 1024  # the training split's catalogues that length_range measures


def length_range(
    distribution: TaskDistribution, split: str, seed: int, tasks: int = RANGE_TASKS
) -> tuple[float, float]:
    """``(low, high)``: the smallest and the largest mean item length among ``tasks`` catalogues that ``split`` of
    ``distribution`` draws with ``seed`` (a fitted population's catalogue is its own, whichever user it draws).
    Measured once per distribution object and arguments (meta-eval builds a recommender per seed)."""
    key = (id(distribution), split, seed, tasks)
    if key not in _RANGES:
        sample = distribution.sample(split, tasks, seed)
        worlds = (t.pool.world if isinstance(t, FittedTask) else make_world(t) for t in sample)
        means = [float(np.mean(world["item_length"])) for world in worlds]
        if len(_RANGES) >= 8:
            _RANGES.pop(next(iter(_RANGES)))
        _RANGES[key] = (distribution, (min(means), max(means)))  # the object kept alive, so its id stays its own
    return _RANGES[key][1]


_RANGES: dict[tuple[int, str, int, int], tuple[TaskDistribution, tuple[float, float]]] = {}


class TimeUnit:
    """The unit of time each population is served in (see the module docstring).

    Args:
        low: the smallest mean item length of the training catalogues (minutes, ``> 0``).
        high: the largest (``>= low``).
        embedding_dim: ``d``: a candidate's length is its feature ``d``, a history row's engagement its ``d``.
        item_stats: the candidates carry the item statistics after the length (CTR, engagement per impression,
            log impressions), so feature ``d + 2`` counts minutes too.
        population: how many consecutive rows are one population (each measured on its own); None: every row.
    """

    def __init__(self, low: float, high: float, embedding_dim: int, item_stats: bool, population: int | None) -> None:
        if not 0 < low <= high:
            raise ValueError(f"low, high: expected 0 < low <= high (minutes), got {low!r} and {high!r}")
        self.low, self.high, self.embedding_dim = float(low), float(high), embedding_dim
        self.item_stats, self.population = item_stats, population
        self.sums: torch.Tensor | None = None  # [G, 2] float64: the lengths shown to each population, and how many

    def reset(self) -> None:
        """Forgets what was measured: the next step starts new populations."""
        self.sums = None

    def scale(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B]``: minutes per unit for each row, after adding this step's candidates to its population's mean."""
        lengths = observation["candidates"][..., self.embedding_dim].double()  # [B, N]
        batch = lengths.shape[0]
        size = self.population or batch
        if batch % size:
            raise ValueError(f"population: {size} users a population do not divide a batch of {batch}")
        step = torch.stack([lengths.reshape(-1, size * lengths.shape[1]).sum(1),
                            torch.full((batch // size,), float(size * lengths.shape[1]), dtype=torch.float64,
                                       device=lengths.device)], dim=1)  # fmt: skip
        self.sums = step if self.sums is None else self.sums + step
        mean = self.sums[:, 0] / self.sums[:, 1]
        unit = torch.where(mean > self.high, mean / self.high, torch.where(mean < self.low, mean / self.low, 1.0))
        return unit.repeat_interleave(size).float()

    def apply(self, observation: dict[str, torch.Tensor], unit: torch.Tensor) -> dict[str, torch.Tensor]:
        """``observation`` with what counts minutes in units of ``unit`` (``[B]``); nothing is written in place."""
        d = self.embedding_dim
        columns = [d, d + 2] if self.item_stats else [d]
        candidates = observation["candidates"].float().clone()
        candidates[..., columns] /= unit[:, None, None]
        history = observation["history"].float().clone()
        history[..., d] /= unit[:, None]
        return {**observation, "candidates": candidates, "history": history}
