"""Task distributions for meta-RL: reproducible sampling, ranges, disjoint splits, clear errors."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import stats

from metarec.config import load_yaml_config
from metarec.meta.tasks import WORLD_SEED_BAND, Range, TaskDistribution

SHIPPED = Path(__file__).parents[1] / "configs" / "meta_tasks.yaml"


@pytest.fixture(scope="module")
def tasks() -> TaskDistribution:
    return load_yaml_config(TaskDistribution, SHIPPED)


def test_shipped_distribution_has_training_and_held_out_splits(tasks: TaskDistribution) -> None:
    assert not tasks.splits["meta-train"].holds_out
    assert {"meta-test", "meta-test-regime", "meta-test-domain"} <= set(tasks.splits)


def test_sampling_is_reproducible_and_splits_never_share_a_world(tasks: TaskDistribution) -> None:
    first = tasks.sample("meta-train", 20, seed=0)
    assert first == tasks.sample("meta-train", 20, seed=0)
    assert first != tasks.sample("meta-train", 20, seed=1)
    seeds = {name: {t.catalog.seed for t in tasks.sample(name, 50, seed=0)} for name in tasks.splits}
    for i, name in enumerate(tasks.splits):
        assert all(i * WORLD_SEED_BAND <= s < (i + 1) * WORLD_SEED_BAND for s in seeds[name])
    assert not seeds["meta-train"] & seeds["meta-test"]
    regimes = {t.population.shift_hazard for t in tasks.sample("meta-test-regime", 10, seed=0)}
    assert regimes == {0.02}  # only the held-out regime
    assert {t.catalog.num_topics for t in tasks.sample("meta-test-domain", 10, seed=0)} == {6}


def test_every_sampled_task_is_an_environment(tasks: TaskDistribution) -> None:
    for name in tasks.splits:
        for task in tasks.sample(name, 2, seed=3):
            env = gym.make_vec(
                "metarec/DriftingUsers-v0",
                num_envs=16,
                vectorization_mode="vector_entry_point",
                array_backend="torch",
                config=task,
            )
            _, info = env.reset(seed=0)
            _, reward, *_ = env.step(info["oracle_slate"])
            assert bool(torch.isfinite(reward).all())


def test_ranges_draw_the_stated_distributions() -> None:
    rng = np.random.default_rng(0)
    log = Range(low=0.1, high=10.0, log=True)
    draws = np.array([log.draw(rng) for _ in range(4000)])
    assert stats.kstest(draws, stats.loguniform(0.1, 10.0).cdf).pvalue > 0.01
    integers = np.array([Range(low=2, high=5).draw_int(rng) for _ in range(4000)])
    counts = np.bincount(integers, minlength=6)[2:]
    assert set(np.unique(integers)) == {2, 3, 4, 5}
    assert stats.chisquare(counts).pvalue > 0.01  # the ends as likely as the middle


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prior": {"ranges": {"happiness": {"low": 0, "high": 1}}}}, "ranges.happiness: expected a population field"),
        ({"prior": {"ranges": {"choice_temperature": {"low": 2, "high": 1}}}}, "high: expected >= low"),
        (
            {"prior": {"ranges": {"choice_temperature": {"low": 0, "high": 1, "log": True}}}},
            "a log range needs low > 0",
        ),
        ({"prior": {"regimes": {"wild": {"consumption_pull": 2.0}}}}, "regimes.wild.consumption_pull"),
        ({"prior": {"domains": {"odd": {"num_itemz": 5}}}}, "domains.odd.num_itemz: unknown field"),
        ({"splits": {"test": {"regimes": ["default"], "domains": ["nowhere"]}}}, "splits.test.domains: 'nowhere'"),
        (
            {
                "prior": {"regimes": {"a": {}, "b": {}}},
                "splits": {
                    "train": {"regimes": ["a", "b"], "domains": ["default"]},
                    "test": {"regimes": ["b"], "domains": ["default"], "holds_out": ["regimes"]},
                },
            },
            "splits.test.regimes: holds out b, which training split 'train' uses",
        ),
    ],
)
def test_bad_distributions_name_the_field(change: dict, message: str) -> None:
    from metarec.config import validate_config

    values = {"splits": {"train": {"regimes": ["default"], "domains": ["default"]}}, **change}
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        validate_config(TaskDistribution, values)


def test_sample_rejects_bad_arguments(tasks: TaskDistribution) -> None:
    with pytest.raises(ValueError, match="split: expected one of"):
        tasks.sample("meta-val", 3, 0)
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        tasks.sample("meta-train", 0, 0)
