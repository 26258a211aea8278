"""Evaluate a recommender on fresh simulated users: one episode per user, all users in one batch."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from scipy import stats

from metarec.agents import Recommender
from metarec.agents.registry import RECOMMENDERS, make_recommender


def agent_names() -> tuple[str, ...]:
    """Every name ``--agent`` accepts (besides a training run directory)."""
    return tuple(sorted(RECOMMENDERS))


def make_agent(name: str, env: Any, seed: int) -> Recommender:
    """A recommender by name, training run directory or meta-trained policy (``RUN/methods/rl2.pt`` of a
    meta-train run), for the vector environment ``env``."""
    from pathlib import Path

    if name not in RECOMMENDERS and Path(name).suffix == ".pt" and Path(name).is_file():
        from metarec.meta.runner import load_meta_recommender

        return load_meta_recommender(name, env, seed)
    if name not in RECOMMENDERS and Path(name).is_dir():
        from metarec.training import load_recommender

        return load_recommender(name, env)
    return make_recommender(name, env, seed)


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of its 95% Student-t interval."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.inf
    sem = float(np.std(values, ddof=1)) / math.sqrt(n)
    return mean, float(stats.t.ppf(0.975, n - 1) * sem)


def evaluate(
    env_id: str,
    agent: str | Recommender,
    users: int,
    seed: int = 0,
    device: str = "cpu",
    env_kwargs: dict[str, Any] | None = None,
    max_steps: int = 100_000,
) -> dict[str, Any]:
    """Runs ``users`` fresh users for one episode each and summarises their returns.

    Returns:
        ``env``, ``agent``, ``users``, ``seed``, ``device``, ``mean_return``, ``ci95`` (half-width),
        ``std_return``, ``mean_length``, ``click_rate``, ``mean_regret`` (per step, against the myopic
        oracle).
    """
    if users < 1:
        raise ValueError(f"users: expected a positive integer, got {users}")
    env = gym.make_vec(
        env_id, num_envs=users, vectorization_mode="vector_entry_point", device=device, **(env_kwargs or {})
    )
    base = env.unwrapped if hasattr(env, "unwrapped") else env
    recommender = make_agent(agent, base, seed) if isinstance(agent, str) else agent
    observation, info = env.reset(seed=seed)
    recommender.reset()
    dev = base.device
    returns = torch.zeros(users, dtype=torch.float64, device=dev)
    lengths = torch.zeros(users, dtype=torch.int64, device=dev)
    clicks = torch.zeros(users, dtype=torch.float64, device=dev)
    regret = torch.zeros(users, dtype=torch.float64, device=dev)
    running = torch.ones(users, dtype=torch.bool, device=dev)
    for _ in range(max_steps):
        action = recommender.act(observation, info)
        observation, reward, terminated, truncated, info = env.step(action)
        done = terminated | truncated
        recommender.observe(reward, done, info)
        active = running.to(torch.float64)
        returns += reward.to(torch.float64) * active
        lengths += running.to(torch.int64)
        clicks += info["clicked"].to(torch.float64) * active
        if "regret" in info:
            regret += info["regret"].to(torch.float64) * active
        running &= ~done
        if bool(done.any()):
            recommender.reset(done)
        if not bool(running.any()):
            break
    else:
        raise RuntimeError(f"evaluation did not finish within max_steps={max_steps}")
    env.close()
    per_user = returns.cpu().numpy()
    mean, half = mean_ci95(per_user)
    total_steps = float(lengths.sum())
    return {
        "env": env_id,
        "agent": recommender.name,
        "users": users,
        "seed": seed,
        "device": str(dev),
        "mean_return": mean,
        "ci95": half,
        "std_return": float(np.std(per_user, ddof=1)) if users > 1 else 0.0,
        "mean_length": total_steps / users,
        "click_rate": float(clicks.sum()) / total_steps,
        "mean_regret": float(regret.sum()) / total_steps,
    }
