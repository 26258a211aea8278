"""Many populations in one batch (``metarec.envs.task_batch``): each task's users behave as that
task's own environment would, rows keep their task, and mismatched tasks are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.envs.core.backend import torch_backend
from metarec.envs.drifting.env import DriftingUsersVectorEnv
from metarec.envs.drifting.model import DriftingUsersModel
from metarec.envs.drifting.params import SimulatorConfig
from metarec.envs.task_batch import TaskBatchVectorEnv

# Two populations that differ in everything the batch turns into per-user parameters.
TASK_A = SimulatorConfig.model_validate(
    {
        "catalog": {"seed": 11, "num_items": 300, "num_topics": 5},
        "population": {
            "session_budget": 12.0,
            "no_click_utility": 0.0,
            "choice_temperature": 0.3,
            "num_clusters": 2,
            "fatigue_rate": 0.6,
            "position_bias": 0.4,
            "trend_rate": 0.0,
        },
    }
)
TASK_B = SimulatorConfig.model_validate(
    {
        "catalog": {"seed": 12, "num_items": 500, "num_topics": 8, "min_length": 5.0, "max_length": 20.0},
        "population": {
            "session_budget": 40.0,
            "no_click_utility": 2.0,
            "choice_temperature": 1.0,
            "num_clusters": 6,
            "quality_weight": 2.0,
            "shift_hazard": 0.05,
            "trend_rate": 1.0,
        },
    }
)


def random_slates(generator: torch.Generator, batch: int, n: int = 20, k: int = 5) -> torch.Tensor:
    return torch.rand(batch, n, generator=generator).argsort(dim=1)[:, :k]


def test_choice_model_of_each_task_equals_its_own_model() -> None:
    env = TaskBatchVectorEnv([TASK_A, TASK_B, TASK_A], users_per_task=64)
    env.reset(seed=0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):  # some fatigue and drift first
        env.step(random_slates(generator, env.num_envs))
    state, batch = env.state, env.model
    truth = batch.choice_model(state)
    item_offset = [0, 300, 800]
    cluster_offset = [0, 2, 8]
    for t, config in enumerate([TASK_A, TASK_B, TASK_A]):
        rows = slice(64 * t, 64 * (t + 1))
        single = DriftingUsersModel(config, torch_backend())
        local = {key: value[rows] for key, value in state.items() if key != "task"}
        local["candidates"] = local["candidates"] - item_offset[t]
        local["cluster"] = local["cluster"] - cluster_offset[t]
        local["fatigue"] = local["fatigue"][:, : config.catalog.num_topics]
        assert int(local["candidates"].min()) >= 0 and int(local["candidates"].max()) < config.catalog.num_items
        own = single.choice_model(local)
        torch.testing.assert_close(truth.weights[rows], own.weights)
        torch.testing.assert_close(truth.revenue[rows], own.revenue)
        torch.testing.assert_close(truth.utilities[rows], own.utilities)
        slate, value, _ = batch.oracle({k: v[rows] for k, v in state.items()})
        own_slate, own_value, _ = single.oracle(local)
        assert torch.equal(slate, own_slate)
        torch.testing.assert_close(value, own_value)


def episode_stats(env, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean reward per step and number of finished episodes, under a uniform random slate."""
    env.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    reward = torch.zeros(env.num_envs)
    episodes = torch.zeros(env.num_envs)
    for _ in range(steps):
        _, r, terminated, truncated, _ = env.step(random_slates(generator, env.num_envs))
        reward += r
        episodes += (terminated | truncated).float()
    return (reward / steps).numpy(), episodes.numpy()


def test_each_task_in_the_batch_behaves_like_its_own_env() -> None:
    users, steps = 800, 60
    batch_reward, batch_episodes = episode_stats(TaskBatchVectorEnv([TASK_A, TASK_B], users), steps, seed=2)
    for t, config in enumerate([TASK_A, TASK_B]):
        own_reward, own_episodes = episode_stats(DriftingUsersVectorEnv(users, config), steps, seed=3)
        rows = slice(users * t, users * (t + 1))
        for mine, own in ((batch_reward[rows], own_reward), (batch_episodes[rows], own_episodes)):
            se = np.sqrt(mine.var() / users + own.var() / users)
            assert abs(mine.mean() - own.mean()) < 4 * se + 1e-9, (t, mine.mean(), own.mean(), se)
    # and the two tasks are far apart, so the comparison above can tell them apart
    assert abs(batch_reward[:users].mean() - batch_reward[users:].mean()) > 1.0


def test_rows_keep_their_task_through_resets_and_draw_only_their_items() -> None:
    env = TaskBatchVectorEnv([TASK_A, TASK_B], users_per_task=50)
    obs, _ = env.reset(seed=4)
    generator = torch.Generator().manual_seed(4)
    finished = 0
    for _ in range(80):
        obs, _, terminated, truncated, _ = env.step(random_slates(generator, env.num_envs))
        finished += int((terminated | truncated).sum())
        ids, state = obs["candidate_ids"], env.state
        assert torch.equal(state["task"], env.task_of_rows())
        assert int(ids[:50].max()) < 300 and int(ids[50:].min()) >= 300 and int(ids[50:].max()) < 800
        assert int(state["cluster"][:50].max()) < 2 and int(state["cluster"][50:].min()) >= 2
        assert torch.all(state["fatigue"][:50, 5:] == 0)  # task A has 5 topics
    assert finished > 50  # users were replaced, and stayed in their task


def test_mismatched_tasks_and_bad_arguments_are_refused_by_name() -> None:
    other = TASK_B.model_copy(update={"num_candidates": 10})
    with pytest.raises(ValueError, match=r"tasks\[1\]\.num_candidates: .*tasks\[0\] has 20.*got 10"):
        TaskBatchVectorEnv([TASK_A, other], 4)
    sessions = {**TASK_B.model_dump(), "population": {**TASK_B.population.model_dump(), "num_sessions": 3}}
    with pytest.raises(ValueError, match=r"tasks\[1\]\.population\.num_sessions"):
        TaskBatchVectorEnv([TASK_A, sessions], 4)
    with pytest.raises(ValueError, match="users_per_task: expected a positive integer"):
        TaskBatchVectorEnv([TASK_A], 0)
    with pytest.raises(ValueError, match="tasks: expected a non-empty list"):
        TaskBatchVectorEnv([], 4)
    with pytest.raises(ValueError, match=r"tasks\[0\]\.population\.choice_temperature"):
        TaskBatchVectorEnv([{"population": {"choice_temperature": -1.0}}], 4)
    env = TaskBatchVectorEnv([TASK_A, TASK_B], 4)
    with pytest.raises(ValueError, match="this env holds 2 tasks, got 1"):
        env.set_tasks([TASK_A])
    env.set_tasks([TASK_B, TASK_A])
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(torch.zeros(8, 5, dtype=torch.int64))
    obs, _ = env.reset(seed=0)
    assert int(obs["candidate_ids"][:4].min()) >= 0 and int(obs["candidate_ids"][:4].max()) < 500


def test_task_batch_is_deterministic_for_a_seed() -> None:
    a = episode_stats(TaskBatchVectorEnv([TASK_A, TASK_B], 30), 40, seed=5)
    b = episode_stats(TaskBatchVectorEnv([TASK_A, TASK_B], 30), 40, seed=5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_item_stats_count_what_was_shown_clicked_and_watched() -> None:
    env = TaskBatchVectorEnv([TASK_A, TASK_B], users_per_task=40, item_stats=True)
    obs, _ = env.reset(seed=6)
    assert obs["candidates"].shape == (80, 20, 17 + 3)
    assert env.single_observation_space["candidates"].shape == (20, 20)
    generator = torch.Generator().manual_seed(6)
    shown = clicks = 0
    watched = 0.0
    for _ in range(25):
        slate = random_slates(generator, env.num_envs)
        slate[:, 4] = slate[:, 0]  # a repeat is shown (and counted) once
        obs, reward, _, _, info = env.step(slate)
        shown += 4 * env.num_envs
        clicks += int(info["clicked"].sum())
        watched += float(reward.sum())
    stats = env.model.item_stats
    assert int(stats[:, 0].sum()) == shown and int(stats[:, 1].sum()) == clicks
    assert float(stats[:, 2].sum()) == pytest.approx(watched, rel=1e-5)
    assert torch.all(stats[:, 1] <= stats[:, 0])
    # the observation carries each candidate's smoothed CTR and engagement per impression
    seen = stats[obs["candidate_ids"]]
    torch.testing.assert_close(obs["candidates"][..., 17], (seen[..., 1] + 1) / (seen[..., 0] + 10))
    torch.testing.assert_close(obs["candidates"][..., 19], torch.log1p(seen[..., 0]))
    checkpoint = env.get_checkpoint()
    env.reset(seed=7)  # a full reset: a new population, nothing logged
    assert float(env.model.item_stats.abs().sum()) == 0
    env.load_checkpoint(checkpoint)
    torch.testing.assert_close(env.model.item_stats, stats)
    env.reset(options={"reset_mask": torch.ones(80, dtype=torch.bool)})  # new users, same population
    torch.testing.assert_close(env.model.item_stats, stats)


def test_without_autoreset_users_who_left_are_not_logged() -> None:
    env = TaskBatchVectorEnv([TASK_A], users_per_task=60, item_stats=True, autoreset=False)
    env.reset(seed=8)
    generator = torch.Generator().manual_seed(8)
    finished = torch.zeros(60, dtype=torch.bool)
    shown = clicks = 0
    for _ in range(60):
        slate = random_slates(generator, 60)
        _, _, terminated, truncated, info = env.step(slate)
        shown += 5 * int((~finished).sum())
        clicks += int((info["clicked"] & ~finished).sum())
        finished |= terminated | truncated
    assert bool(finished.any())  # some left, and were still stepped
    assert int(env.model.item_stats[:, 0].sum()) == shown
    assert int(env.model.item_stats[:, 1].sum()) == clicks


def test_nan_guard_names_the_quantity_the_step_and_the_users() -> None:
    env = DriftingUsersVectorEnv(16, TASK_A)
    env.reset(seed=9)
    generator = torch.Generator().manual_seed(9)
    env.step(random_slates(generator, 16))
    state = dict(env.state)
    state["interest"] = state["interest"].clone()
    state["interest"][[3, 11]] = float("nan")  # what a broken population would do
    env._state = state
    with pytest.raises(
        FloatingPointError, match=r"env step 2 in .*state\['interest'\] of 2 users \(first: \[3, 11\]\)"
    ):
        env.step(random_slates(generator, 16))


def test_recommenders_see_the_catalogues_of_the_tasks_set_last() -> None:
    from metarec.agents.baselines.bandits import num_items_of
    from metarec.envs.vector import recommender_space

    env = TaskBatchVectorEnv([TASK_A, TASK_A], 4)
    assert num_items_of(env, "popular") == 600
    env.set_tasks([TASK_B, TASK_B])  # larger catalogues: ids reach further
    assert recommender_space(env) == env.single_observation_space
    assert num_items_of(env, "popular") == 1000
