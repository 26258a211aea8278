"""The vector env's documented autoreset modes."""

import gymnasium as gym
import torch
from gymnasium.vector import AutoresetMode

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
