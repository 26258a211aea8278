"""Users drawn anew in RL²'s training (``rl2.redraw_hazard``): at each step a share of the users still present get
new interests (a new cluster) while the memory of them carries on, as in the adaptation protocol's shift."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from metarec.config import load_yaml_config
from metarec.meta.incontext import InContextConfig
from metarec.meta.rl2 import RL2Config, RL2Trainer
from metarec.meta.tasks import TaskDistribution

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def distribution() -> TaskDistribution:
    return load_yaml_config(TaskDistribution, ROOT / "configs" / "meta_tasks.yaml")


def _trainer(distribution: TaskDistribution, hazard: float, seed: int = 3) -> RL2Trainer:
    config = RL2Config(tasks_per_batch=4, users_per_task=64, rollout_steps=8, hidden=8, num_minibatches=2,
                       belief=True, redraw_hazard=hazard)  # fmt: skip
    return RL2Trainer(distribution, "meta-train", config, sessions=3, seed=seed, item_stats=True)


def test_a_hazard_draws_that_share_of_the_users_present_anew_and_never_one_who_left(distribution) -> None:
    trainer = _trainer(distribution, 0.25)
    before = {key: trainer.env.state[key].clone() for key in ("cluster", "anchor", "interest")}
    done = torch.zeros(trainer.env.num_envs, dtype=torch.bool)
    done[:128] = True  # half the users just left: their rows are not theirs to redraw
    trainer._redraw_users(done)
    moved = (trainer.env.state["anchor"] != before["anchor"]).any(dim=1)
    assert not bool(moved[:128].any())
    assert 0.15 < float(moved[128:].float().mean()) < 0.35  # 128 users at 0.25
    # a redrawn user's interest is their new anchor, as at a user's first step
    assert torch.equal(trainer.env.state["interest"][moved], trainer.env.state["anchor"][moved])
    assert torch.equal(trainer.env.state["interest"][~moved], before["interest"][~moved])


def test_training_with_redraws_is_seeded_and_without_them_unchanged(distribution) -> None:
    def rollout(hazard: float) -> torch.Tensor:
        return _trainer(distribution, hazard).collect()["raw_rewards"]

    first, again = rollout(0.2), rollout(0.2)
    assert torch.equal(first, again)
    plain = rollout(0.0)
    assert not torch.equal(first, plain)  # the redraws changed what users did
    assert torch.equal(first[0], plain[0])  # the first step's responses come before any redraw


def test_bad_redraw_settings_are_refused_by_name() -> None:
    with pytest.raises(ValidationError, match=r"redraw_hazard"):
        RL2Config(redraw_hazard=1.0)
    with pytest.raises(ValidationError, match=r"redraw_hazard"):
        RL2Config(redraw_hazard=-0.1)
    with pytest.raises(ValidationError, match=r"redraw_hazard: users drawn anew in training are RL²'s only"):
        InContextConfig(redraw_hazard=0.1)
