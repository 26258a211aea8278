"""SB3 callbacks: recommender metrics (click rate, engagement, returns) through SB3's logger."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

# Per-step engagement in the step info: minutes watched (DriftingUsers, long-term satisfaction) or
# watch time (RecSim's interest evolution).
ENGAGEMENT_KEY = "engagement"  # the info key of the engagement reward, in every metarec env


class RecommenderMetricsCallback(BaseCallback):
    """Logs recommender metrics through SB3's logger (TensorBoard when ``tensorboard_log`` is set).

    Means since the last dump of the logs: ``recommender/ctr`` (clicks per step), ``recommender/engagement``
    (per step, where the env reports ``engagement``), ``recommender/episode_return`` (per finished
    episode, from ``info["episode"]``, which :class:`SB3VecEnv` or SB3's ``Monitor`` write) and, with
    ``reference``, ``recommender/normalised_return`` = ``(R - random) / (oracle - random)``.

    Args:
        reference: ``(random_return, oracle_return)``: mean returns of the random and oracle recommenders
            on the same environment (e.g. from :func:`metarec.agents.evaluation.evaluate`).
    """

    def __init__(self, reference: tuple[float, float] | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        if reference is not None:
            random_return, oracle_return = (float(x) for x in reference)
            if oracle_return == random_return:
                raise ValueError(f"reference: the random and oracle returns must differ, got {reference}")
            reference = (random_return, oracle_return)
        self.reference = reference

    def _on_step(self) -> bool:
        infos: Sequence[dict[str, Any]] = self.locals["infos"]
        clicked = [info["clicked"] for info in infos if "clicked" in info]
        if clicked:
            self.logger.record_mean("recommender/ctr", float(np.mean(clicked)))
        engagement = [_engagement(info) for info in infos]
        engagement = [x for x in engagement if x is not None]
        if engagement:
            self.logger.record_mean("recommender/engagement", float(np.mean(engagement)))
        for info in infos:
            if "episode" not in info:
                continue
            episode_return = float(info["episode"]["r"])
            self.logger.record_mean("recommender/episode_return", episode_return)
            if self.reference is not None:
                random_return, oracle_return = self.reference
                normalised = (episode_return - random_return) / (oracle_return - random_return)
                self.logger.record_mean("recommender/normalised_return", normalised)
        return True


def _engagement(info: dict[str, Any]) -> float | None:
    return float(info[ENGAGEMENT_KEY]) if ENGAGEMENT_KEY in info else None
