"""Adversarial population sampling: the pool, its draws, RL² training on it (determinism, resume), the
per-population summary meta-eval reports, and meta-eval's robustness section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from metarec.config import load_yaml_config, validate_config
from metarec.meta.adversarial import AdversarialConfig, PopulationPool
from metarec.meta.config import load_meta_config
from metarec.meta.eval_run import meta_eval
from metarec.meta.protocol_summary import population_summary
from metarec.meta.rl2 import RL2Config, RL2Trainer
from metarec.meta.robustness import PERTURBATIONS, perturbed
from metarec.meta.tasks import TaskDistribution
from metarec.meta.train import meta_train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "meta_tiny.yaml"


@pytest.fixture(scope="module")
def distribution() -> TaskDistribution:
    return load_yaml_config(TaskDistribution, ROOT / "configs" / "meta_tasks.yaml")


def pool_of(distribution, **settings) -> PopulationPool:
    return PopulationPool(AdversarialConfig(**settings), distribution, "meta-train", seed=3, sessions=2)


def test_pool_is_drawn_once_from_the_training_split(distribution):
    pool = pool_of(distribution, pool=12)
    again = pool_of(distribution, pool=12)
    assert [t.catalog.seed for t in pool.tasks] == [t.catalog.seed for t in again.tasks]
    assert len({t.catalog.seed for t in pool.tasks}) == 12
    assert all(t.population.num_sessions == 2 for t in pool.tasks)
    training = {t.catalog.seed // 1_000_000 for t in distribution.sample("meta-train", 5, seed=0)}
    assert {t.catalog.seed // 1_000_000 for t in pool.tasks} == training  # the training split's band of worlds


def test_probabilities_favour_regret_but_never_fall_below_the_uniform_share(distribution):
    pool = pool_of(distribution, pool=10, temperature=0.05, uniform_mix=0.2)
    np.testing.assert_allclose(pool.probabilities(), 0.1)  # nothing measured yet: uniform
    pool.record(np.array([0, 1, 2]), np.array([0.1, 0.2, 0.6]))
    p = pool.probabilities()
    assert p.sum() == pytest.approx(1.0) and p.min() >= 0.2 / 10 - 1e-12
    # not measured yet counts at the highest regret measured (0.6): as likely as population 2
    assert p[3] == pytest.approx(p[2]) and p[2] > p[1] > p[0]
    weights = np.exp(np.array([0.1, 0.2, 0.6] + [0.6] * 7) / 0.05)
    np.testing.assert_allclose(p, 0.8 * weights / weights.sum() + 0.02)


def test_draws_are_distinct_reproducible_and_follow_the_probabilities(distribution):
    pool = pool_of(distribution, pool=8, temperature=0.1, uniform_mix=0.25)
    pool.record(np.arange(8), np.linspace(0.0, 0.4, 8))
    batches = [pool.draw(i, 1) for i in range(4000)]
    assert all(np.array_equal(pool.draw(i, 1), batches[i]) for i in range(5))
    counts = np.bincount(np.concatenate(batches), minlength=8)
    assert stats.chisquare(counts, pool.probabilities() * 4000).pvalue > 1e-3
    assert all(len(set(pool.draw(i, 5))) == 5 for i in range(20))


def test_regret_is_a_moving_average(distribution):
    pool = pool_of(distribution, pool=4, refresh=0.25)
    pool.record(np.array([1]), np.array([0.4]))
    pool.record(np.array([1]), np.array([0.8]))
    assert pool.regret[1] == pytest.approx(0.75 * 0.4 + 0.25 * 0.8) and pool.visits.tolist() == [0, 2, 0, 0]


def adversarial_config(**settings):
    config = load_meta_config(TINY)
    rl2 = validate_config(RL2Config, {**config.rl2.model_dump(), "adversarial": {"pool": 6, **settings}})
    return config, rl2


def test_rl2_trains_on_the_pool_and_measures_its_regret(distribution):
    config, rl2 = adversarial_config()
    trainer = RL2Trainer(config.tasks, config.train_split, rl2, config.sessions, seed=0)
    seeds = {t.catalog.seed for t in trainer.pool.tasks}
    while not trainer.done:
        assert {t.catalog.seed for t in trainer.env.tasks} <= seeds
        stats_ = trainer.step()
    measured = trainer.pool.regret[~np.isnan(trainer.pool.regret)]
    assert len(measured) >= rl2.tasks_per_batch and np.all((measured > 0) & (measured < 1))
    assert stats_["pool_relative_regret"] == pytest.approx(measured.mean())


def test_rl2_on_the_pool_is_deterministic_and_resumes_exactly():
    config, rl2 = adversarial_config()

    def trainer():
        return RL2Trainer(config.tasks, config.train_split, rl2, config.sessions, seed=1)

    whole = trainer()
    while not whole.done:
        whole.step()
    first = trainer()
    for _ in range(3):  # past one new meta-batch (resample_every 2): a draw that used measured regrets
        first.step()
    saved = first.state_dict()
    resumed = trainer()
    resumed.load_state_dict(saved)
    while not resumed.done:
        resumed.step()
    for a, b in zip(whole.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(whole.pool.regret, resumed.pool.regret)


def test_bad_adversarial_settings_are_named():
    with pytest.raises(ValueError, match=r"adversarial.pool: expected at least tasks_per_batch \(4\), got 3"):
        adversarial_config(pool=3)
    with pytest.raises(ValueError, match="uniform_mix"):
        adversarial_config(uniform_mix=1.5)
    with pytest.raises(ValueError, match="uniform_mix"):
        adversarial_config(uniform_mix=0.0)
    with pytest.raises(ValueError, match="adversarial: adversarial population sampling trains RL² only"):
        load_meta_config(TINY, ["icl.adversarial={pool: 8}"])


def test_population_summary_by_hand():
    random = [np.array([[1.0, 1.0], [2.0, 2.0]])]
    oracle = [np.array([[3.0, 3.0], [2.0, 2.0]])]  # the second population: oracle no better than random
    method = [np.array([[2.5, 2.5], [5.0, 5.0]])]
    summary = population_summary(method, random, oracle)
    assert summary["normalised_return"] == [[0.75, None]]
    assert summary["mean"] == 0.75 and summary["worst_decile"] == 0.75 and summary["sessions"] == 2
    values = np.linspace(0, 1, 20)[:, None].repeat(2, axis=1)
    summary = population_summary([values], [np.zeros((20, 2))], [np.ones((20, 2))])
    assert summary["worst_decile"] == pytest.approx(np.mean(np.linspace(0, 1, 20)[:2]))


# -- robustness ----------------------------------------------------------------------------------------------------
def test_perturbations_move_each_population_by_the_stated_amount(distribution):
    tasks = distribution.sample("meta-test", 4, seed=0)
    expected = {
        "choice_temperature x1.5": lambda p: {"choice_temperature": 1.5 * p.choice_temperature},
        "position_bias +0.1": lambda p: {"position_bias": p.position_bias + 0.1},
        "drift x2": lambda p: {"consumption_pull": min(1.0, 2 * p.consumption_pull), "ou_noise": 2 * p.ou_noise,
                               "shift_hazard": min(1.0, 2 * p.shift_hazard), "trend_rate": 2 * p.trend_rate},
    }  # fmt: skip
    assert set(expected) == set(PERTURBATIONS)
    for name, change in expected.items():
        for task, moved in zip(tasks, perturbed(name)(tasks), strict=True):
            values = task.population.model_dump()
            for field, value in change(task.population).items():
                assert getattr(moved.population, field) == pytest.approx(value), (name, field)
                values[field] = getattr(moved.population, field)
            # nothing else moves: the catalog, the sizes and every other population field
            assert moved.population.model_dump() == values and moved.catalog == task.catalog
            assert moved.num_candidates == task.num_candidates and moved.slate_size == task.slate_size
    with pytest.raises(ValueError, match=r"perturbation: expected one of choice_temperature x1\.5"):
        perturbed("louder")


def test_meta_eval_robustness_reports_each_perturbation_against_the_unperturbed_run(tmp_path):
    config = load_meta_config(TINY, ["methods=[rl2]", "rl2.updates=2"])
    meta_train(config, tmp_path / "run", progress=False)
    result = meta_eval(tmp_path / "run", "test", metrics=False, baselines=False, robustness=True)
    section = result["robustness"]
    assert section["perturbations"] == list(PERTURBATIONS)
    assert set(section["methods"]) == {"random", "oracle", "rl2"}
    for name in PERTURBATIONS:
        # normalised again under the perturbation: its own oracle is 1 (the unperturbed oracle would not be)
        assert section["methods"]["oracle"][name]["mean"] == pytest.approx(1.0)
        assert section["methods"]["random"][name]["mean"] == pytest.approx(0.0, abs=1e-12)
    # each perturbation changes what the users do: no perturbed run is the unperturbed one
    assert all(section["methods"]["rl2"][name]["mean_change"] != 0 for name in PERTURBATIONS)


def test_meta_train_reports_what_the_sampler_measured_including_the_last_meta_batch(tmp_path):
    overrides = ["methods=[rl2]", "rl2.adversarial={pool: 6, temperature: 0.1}", "rl2.updates=3"]
    config = load_meta_config(TINY, overrides)
    results = meta_train(config, tmp_path / "run", progress=False)
    trainer = RL2Trainer(config.tasks, config.train_split, config.rl2, config.sessions, seed=config.seed,
                         item_stats=config.item_stats)  # as meta-train builds it
    batches = [set(trainer.pool_batch.tolist())]
    while not trainer.done:
        trainer.step()
        batches.append(set(trainer.pool_batch.tolist()))
    # 3 updates, a new meta-batch after the second: both batches measured, the last one when training ends
    assert results["methods"]["rl2"]["adversarial"] == trainer.pool.summary()
    assert batches[0] == batches[1] and batches[2] == batches[3]
    assert trainer.pool.summary()["populations_trained_on"] == len(batches[0] | batches[2])

