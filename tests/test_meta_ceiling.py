"""The information ladder (``metarec.meta.ceiling``): each rung plans with exactly what it is said to
know, the full rung is the oracle, and bad arguments are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.envs.drifting.env import DriftingUsersVectorEnv
from metarec.envs.drifting.params import SimulatorConfig
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.ceiling import InformedOracle, ladder, population_mean_interest, quality_blind


def _task(seed: int, clusters: int) -> SimulatorConfig:
    return SimulatorConfig.model_validate(
        {
            "catalog": {"seed": seed, "num_items": 200, "num_topics": 6},
            "population": {"num_clusters": clusters, "quality_weight": 1.5, "fatigue_rate": 0.3},
        }
    )


def _env() -> TaskBatchVectorEnv:
    env = TaskBatchVectorEnv([_task(3, 2), _task(4, 5)], users_per_task=32, autoreset=False)
    env.reset(seed=7)
    return env


def _with_state(env: TaskBatchVectorEnv, **values: torch.Tensor) -> None:
    env._state = {**env.state, **values}


def test_knowing_interest_and_quality_is_the_oracle() -> None:
    env = TaskBatchVectorEnv([_task(3, 2), _task(4, 5)], users_per_task=32)
    _, info = env.reset(seed=1)
    full = InformedOracle(env, "interest", quality=True)
    for _ in range(15):
        slate = full.act({}, info)
        torch.testing.assert_close(slate, info["oracle_slate"], rtol=0, atol=0)
        _, _, _, _, info = env.step(slate)


def test_each_rung_ignores_what_it_does_not_know() -> None:
    env = _env()
    generator = torch.Generator().manual_seed(0)
    other_interest = torch.randn(env.state["interest"].shape, generator=generator)
    rungs = {user: InformedOracle(env, user, quality=True) for user in ("population", "cluster", "interest")}
    before = {user: rung.act({}, {}) for user, rung in rungs.items()}
    _with_state(env, interest=other_interest, anchor=other_interest)  # same clusters, other users
    after = {user: rung.act({}, {}) for user, rung in rungs.items()}
    assert torch.equal(before["population"], after["population"])
    assert torch.equal(before["cluster"], after["cluster"])
    assert not torch.equal(before["interest"], after["interest"])  # the interest rung reads the interest
    _with_state(env, cluster=env.state["cluster"].flip(0))  # users of task 1 now in task 0's clusters and back
    assert torch.equal(rungs["population"].act({}, {}), before["population"])
    assert not torch.equal(rungs["cluster"].act({}, {}), before["cluster"])


def test_the_cluster_and_population_rungs_follow_the_trend_and_restart_at_a_shift() -> None:
    from metarec.meta.evaluate import shift_interests

    trending = SimulatorConfig.model_validate(
        {
            "catalog": {"seed": 5, "num_items": 200, "num_topics": 6},
            "population": {"num_clusters": 3, "trend_rate": 2.0, "shift_hazard": 0.0, "ou_noise": 0.0},
        }
    )
    still = trending.model_copy(update={"population": trending.population.model_copy(update={"trend_rate": 0.0})})
    env = TaskBatchVectorEnv([trending, still], users_per_task=16, autoreset=False)
    env.reset(seed=3)
    model, world = env.model, env.model.world
    cluster, population = InformedOracle(env, "cluster", quality=True), InformedOracle(env, "population", True)
    mean, _ = population_mean_interest(model)
    first = env.state["anchor"].clone()
    drift = model.task_params.drift_per_step[env.state["task"]][:, None]
    assert float(drift[0]) > 0 and float(drift[-1]) == 0  # the second task has no trend
    generator = torch.Generator().manual_seed(0)
    for step in range(1, 13):
        env.step(cluster.act({}, {}))
        population.act({}, {})
        moved = step * drift * world["trend_direction"][env.state["cluster"]]
        torch.testing.assert_close(env.state["anchor"] - first, moved, atol=1e-5, rtol=0)  # what the model does
        centre = world["cluster_centre"][env.state["cluster"]]
        torch.testing.assert_close(cluster.planning_interest(env.state), centre + moved, atol=1e-5, rtol=0)
        task = env.state["task"]
        cluster_mean_trend = torch.stack(
            [world["trend_direction"][model.world["cluster_offset"][t] : model.world["cluster_offset"][t] + c].mean(0)
             for t, c in zip(task.tolist(), model.world["num_clusters"][task].long().tolist(), strict=True)]
        )  # fmt: skip
        torch.testing.assert_close(
            population.planning_interest(env.state), mean[task] + step * drift * cluster_mean_trend, atol=1e-5, rtol=0
        )
    shifted = torch.rand(env.num_envs, generator=generator) < 0.5
    shift_interests(env, shifted, seed=9)
    after = cluster.planning_interest(env.state)
    centre = world["cluster_centre"][env.state["cluster"]]
    torch.testing.assert_close(after[shifted], centre[shifted], rtol=0, atol=1e-6)  # a fresh draw: no trend yet
    assert (after[~shifted] - centre[~shifted]).abs().amax() > 0.01  # the others keep what the trend moved


def test_the_quality_blind_planner_ignores_item_quality_and_leaves_the_env_alone() -> None:
    env = _env()
    weight = env.model.task_params.quality_weight.clone()
    blind, sighted = InformedOracle(env, "interest", quality=False), InformedOracle(env, "interest", quality=True)
    before_blind, before_sighted = blind.act({}, {}), sighted.act({}, {})
    quality = env.model.world["item_quality"]
    original = quality.clone()
    quality.copy_(torch.randn(quality.shape[0], generator=torch.Generator().manual_seed(1)))  # other qualities
    try:
        assert torch.equal(blind.act({}, {}), before_blind)
        assert not torch.equal(sighted.act({}, {}), before_sighted)
    finally:
        quality.copy_(original)
    assert torch.equal(env.model.task_params.quality_weight, weight)
    assert torch.count_nonzero(quality_blind(env.model).task_params.quality_weight) == 0


def test_population_mean_is_the_mean_interest_of_new_users() -> None:
    env = _env()
    model = env.model
    users = 40_000
    rng = model.backend.make_random(5)
    for task in range(2):
        _, anchor = model._draw_users(rng, users, torch.full((users,), task, dtype=torch.int64))
        spread = float(model.task_params.cluster_spread[task])
        error = (anchor.mean(dim=0) - population_mean_interest(model)[0][task]).abs().max()
        # the centres are drawn uniformly: the sample mean is off by its clusters' shares and the offsets'
        # noise, a few standard errors at most
        assert float(error) < 5 * (spread + 1.0) / np.sqrt(users)


def test_ladder_has_every_rung_but_the_oracle() -> None:
    env = _env()
    rungs = ladder()
    assert list(rungs) == ["population", "population+quality", "cluster", "cluster+quality", "interest"]
    assert [rungs[name](env, 0).name for name in rungs] == list(rungs)


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"user: expected one of population, cluster, interest, got 'everything'"):
        InformedOracle(_env(), "everything", quality=True)  # type: ignore[arg-type]
    env = _env()
    rung = InformedOracle(env, "cluster", quality=False)
    env.set_tasks([_task(5, 3), _task(6, 2)])  # another catalogue: the rung's view of the world is stale
    env.reset(seed=1)
    with pytest.raises(RuntimeError, match=r"env: its model was rebuilt \(set_tasks\)"):
        rung.act({}, {})
    single = DriftingUsersVectorEnv(num_envs=2)
    with pytest.raises(TypeError, match="env: expected a TaskBatchVectorEnv, got DriftingUsersVectorEnv"):
        InformedOracle(single, "cluster", quality=True)  # type: ignore[arg-type]
