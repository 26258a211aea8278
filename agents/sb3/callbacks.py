"""SB3 callbacks and logging: recommender metrics (click rate, engagement, returns) through SB3's logger, and
a TensorBoard output that writes SB3's own statistics under the tags batched PPO and meta-train use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam, KVWriter, Logger

# Per-step engagement in the step info: minutes watched (DriftingUsers, long-term satisfaction) or
# watch time (RecSim's interest evolution).
ENGAGEMENT_KEY = "engagement"  # the info key of the engagement reward, in every metarec env


class RecommenderMetricsCallback(BaseCallback):
    """Logs recommender metrics through SB3's logger (TensorBoard when ``tensorboard_log`` is set).

    Means since the last dump of the logs, under batched PPO's tags: ``charts/ctr`` (clicks per step),
    ``charts/engagement`` (per step, where the env reports ``engagement``), ``charts/episode_return`` and
    ``charts/episode_length`` (per finished episode, from ``info["episode"]``, which :class:`SB3VecEnv` or
    SB3's ``Monitor`` write) and, with ``reference``, ``charts/normalised_return`` =
    ``(R - random) / (oracle - random)``. :func:`tensorboard_logger` writes SB3's own statistics under the
    same layout.

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
            self.logger.record_mean("charts/ctr", float(np.mean(clicked)))
        engagement = [_engagement(info) for info in infos]
        engagement = [x for x in engagement if x is not None]
        if engagement:
            self.logger.record_mean("charts/engagement", float(np.mean(engagement)))
        for info in infos:
            if "episode" not in info:
                continue
            episode_return = float(info["episode"]["r"])
            self.logger.record_mean("charts/episode_return", episode_return)
            self.logger.record_mean("charts/episode_length", float(info["episode"]["l"]))
            if self.reference is not None:
                random_return, oracle_return = self.reference
                normalised = (episode_return - random_return) / (oracle_return - random_return)
                self.logger.record_mean("charts/normalised_return", normalised)
        return True


def _engagement(info: dict[str, Any]) -> float | None:
    return float(info[ENGAGEMENT_KEY]) if ENGAGEMENT_KEY in info else None


#: SB3's own statistics under the tags metarec's batched PPO and meta-train write (None: not written, because
#: :class:`RecommenderMetricsCallback` writes the same quantity, per episode, under batched PPO's tag).
#: Other ``train/`` keys go under ``losses/``, other ``time/`` keys are dropped, and the rest keep their keys.
SB3_TAGS: dict[str, str | None] = {
    "rollout/ep_rew_mean": None,
    "rollout/ep_len_mean": None,
    "rollout/exploration_rate": "charts/exploration_rate",
    "time/fps": "charts/steps_per_second",
    "train/learning_rate": "charts/learning_rate",
    "train/policy_gradient_loss": "losses/policy_loss",
    "train/entropy_loss": "losses/entropy",  # SB3 logs minus the entropy; written as the entropy
    "train/clip_fraction": "losses/clipfrac",
    "train/clip_range": "charts/clip_range",
    "train/n_updates": None,  # a counter, not a loss
}


def metarec_tag(key: str) -> str | None:
    """The tag SB3's logger key ``key`` is written under (None: not written)."""
    if key in SB3_TAGS:
        return SB3_TAGS[key]
    if key.startswith("train/"):
        return "losses/" + key.removeprefix("train/")
    if key.startswith("time/"):
        return None
    return key


class TensorBoardLog(KVWriter):
    """SB3's TensorBoard output under metarec's tags (:data:`SB3_TAGS`), into ``folder`` itself (no ``PPO_1``
    sub-run per ``learn``), so SB3 runs, batched PPO and meta-train share charts. ``purge_after``: on a resume,
    the step of the checkpoint; what an interrupted process logged after it is dropped."""

    def __init__(self, folder: str | Path, purge_after: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=None if purge_after is None else purge_after + 1)

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        from torch.utils.tensorboard.summary import hparams

        for key, value in key_values.items():
            excluded = key_excluded.get(key)
            if excluded is not None and "tensorboard" in excluded:
                continue
            if isinstance(value, HParam):
                file_writer = self.writer._get_file_writer()
                for summary in hparams(value.hparam_dict, metric_dict=value.metric_dict):
                    file_writer.add_summary(summary)
                continue
            tag = metarec_tag(key)
            if tag is None:
                continue
            if isinstance(value, str):
                self.writer.add_text(tag, value, step)
            elif isinstance(value, int | float | np.integer | np.floating):
                value = -float(value) if key == "train/entropy_loss" else float(value)
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_logger(folder: str | Path, purge_after: int | None = None) -> Logger:
    """An SB3 logger that writes TensorBoard into ``folder`` under metarec's tags (:class:`TensorBoardLog`):
    ``model.set_logger(tensorboard_logger("runs/NAME/tb"))`` before ``model.learn``. Episode returns and lengths
    come from :class:`RecommenderMetricsCallback` (SB3's own ``rollout/ep_*_mean`` are not written)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Logger(str(folder), [TensorBoardLog(folder, purge_after)])
