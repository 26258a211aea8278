"""The vector env's documented autoreset modes."""

import gymnasium as gym
import pytest
import torch
from gymnasium.vector import AutoresetMode

from metarec.envs.core.model import UserModel
from metarec.envs.task_batch import TaskBatchVectorEnv

SHORT = {"population": {"session_budget": 1.0, "step_cost": 1.0}}  # every session ends at its first step


def test_same_step_autoreset_returns_the_new_users_first_observation():
    env = gym.make_vec(
        "metarec/DriftingUsers-v0", num_envs=64, vectorization_mode="vector_entry_point", array_backend="torch", **SHORT
    )
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, _ = env.reset(seed=0)
    slate = torch.arange(5).expand(64, 5)
    obs, _, terminated, truncated, info = env.step(slate)
    done = terminated | truncated
    assert done.all()
    assert info["_final_obs"].equal(done)
    # New users start with an empty history (valid flag 0); the finished episodes hold their step.
    assert (obs["history"][..., -1] == 0).all()
    assert (info["final_obs"]["history"][:, -1, -1] == 1).all()
    assert (env.unwrapped.state["step"] == 0).all()


def test_disabled_autoreset_keeps_finished_users_until_reset_mask():
    env = gym.make_vec(
        "metarec/DriftingUsers-v0",
        num_envs=8,
        vectorization_mode="vector_entry_point",
        array_backend="torch",
        autoreset=False,
        **SHORT,
    )
    assert env.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    env.reset(seed=1)
    slate = torch.arange(5).expand(8, 5)
    for _ in range(3):
        _, _, terminated, truncated, info = env.step(slate)
        assert (terminated | truncated).all()
    assert "final_obs" not in info
    assert (env.unwrapped.state["step"] == 3).all(), "finished users are not replaced"
    mask = torch.tensor([True, False] * 4)
    env.reset(options={"reset_mask": mask})
    steps = env.unwrapped.state["step"]
    assert (steps[mask] == 0).all() and (steps[~mask] == 3).all()


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize(
    "make",
    [
        lambda: gym.make_vec("metarec/DriftingUsers-v0", num_envs=300, vectorization_mode="vector_entry_point",
                             array_backend="torch", population={"session_budget": 6.0}),
        lambda: gym.make_vec("metarec/DriftingUsers-v0", num_envs=300, vectorization_mode="vector_entry_point",
                             array_backend="torch", compact_observation=True, population={"session_budget": 6.0}),
        lambda: gym.make_vec("metarec/DriftingUsers-v0", num_envs=300, vectorization_mode="vector_entry_point",
                             array_backend="torch", catalog={"churn_rate": 0.5}, population={"session_budget": 6.0}),
        lambda: gym.make_vec("metarec/RecSimNGInterestEvolution-v0", num_envs=300,
                             vectorization_mode="vector_entry_point", array_backend="torch", max_steps=5),
        lambda: TaskBatchVectorEnv([{"population": {"session_budget": 6.0, "num_sessions": 3}},
                                    {"population": {"num_sessions": 3}}], 150),
    ],
    ids=["drifting", "compact", "churn", "recsim-ng", "task-batch"],
)  # fmt: skip
def test_newcomers_written_in_place_change_nothing_a_step_returned(make, monkeypatch):
    # newcomers go in place into the arrays a step made that nothing it returned shares: every observation, final
    # observation, info and state returned stays what copying every array first gives, also after later steps
    def run():
        env = make()
        env.reset(seed=1)
        base, g = env.unwrapped, torch.Generator().manual_seed(1)
        kept, resets = [], 0
        for _ in range(12):
            n = int(base.single_action_space.nvec[0])
            returned = env.step(torch.randint(n, (base.num_envs, base.model.slate_size), generator=g))
            resets += int((returned[2] | returned[3]).sum())
            kept.append((returned, base.state))
        assert resets > 0
        return kept

    in_place = run()
    plain_reset = UserModel.reset_users
    monkeypatch.setattr(UserModel, "reset_users", lambda self, rng, state, done, in_place=(): plain_reset(
        self, rng, state, done))  # fmt: skip
    copied = run()
    for (returned, state), (returned_copied, state_copied) in zip(in_place, copied, strict=True):
        assert all(_same(a, b) for a, b in zip(returned, returned_copied, strict=True))
        assert _same(state, state_copied)
