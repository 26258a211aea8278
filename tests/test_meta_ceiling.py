"""The information ladder (``metarec.meta.ceiling``): each rung plans with exactly what it is said to
know, the full rung is the oracle, and bad arguments are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metarec.envs.drifting_users import DriftingUsersVectorEnv
from metarec.envs.population import SimulatorConfig
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


def test_the_quality_blind_planner_ignores_item_quality_and_leaves_the_env_alone() -> None:
    env = _env()
    weight = env.model.task_params.quality_weight.clone()
    blind, sighted = InformedOracle(env, "interest", quality=False), InformedOracle(env, "interest", quality=True)
    before_blind, before_sighted = blind.act({}, {}), sighted.act({}, {})
    d = env.model.config.catalog.embedding_dim
    table = env.model.item_table
    original = table[:, d + 1].clone()
    table[:, d + 1] = torch.randn(table.shape[0], generator=torch.Generator().manual_seed(1))  # other qualities
    try:
        assert torch.equal(blind.act({}, {}), before_blind)
        assert not torch.equal(sighted.act({}, {}), before_sighted)
    finally:
        table[:, d + 1] = original
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
        error = (anchor.mean(dim=0) - population_mean_interest(model)[task]).abs().max()
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
    single = DriftingUsersVectorEnv(num_envs=2)
    with pytest.raises(TypeError, match="env: expected a TaskBatchVectorEnv, got DriftingUsersVectorEnv"):
        InformedOracle(single, "cluster", quality=True)  # type: ignore[arg-type]
