"""Running one arm of an A/B test: every user of the arm, day by day, in one batch.

Users step as one batch until each has left or finished their last day; a user's day is their
session number (multi-session mode), so users need not be in lockstep, and users who have left
drop out of the batch. With a pre-period, a user's
first ``pre_period_days`` sessions are served by the control recommender and the arm's recommender
takes over (forgetting anything it held about that user) from the first experiment session.
Recommenders only learn from users currently in their care: ``info["active"]`` marks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from metarec.envs.backend import RowSubsetRandom
from metarec.envs.calibrated import with_population_fields
from tqdm.auto import tqdm

from metarec.evaluation import make_agent

from .metrics import COUNTERS, StepMetrics, shown_once


@dataclass
class ArmRun:
    """What one arm's simulation produced.

    Attributes:
        counters: ``[U, D, F]`` float64 per-user per-day sums of :data:`~metarec.abtest.metrics.COUNTERS`
            over the experiment days.
        pre: ``[U, P, F]`` the same over the pre-period days (P may be 0).
        impressions: ``[D, M]`` how often each catalogue item was shown each day (None without a catalogue).
        steps: simulation steps taken.
        seconds: wall time of the simulation.
    """

    counters: np.ndarray
    pre: np.ndarray
    impressions: np.ndarray | None
    steps: int
    seconds: float = 0.0


def make_env(env_id: str, env_kwargs: dict[str, Any], users: int, sessions: int, device: str) -> Any:
    """The batched env of an arm: ``users`` users over ``sessions`` sessions, no autoreset (a user who
    leaves stays gone), ground truth on."""
    # num_sessions also when 1: a multi-session env's own setting must not leak in
    kwargs = with_population_fields(env_kwargs, {"num_sessions": sessions})
    env = gym.make_vec(
        env_id, num_envs=users, vectorization_mode="vector_entry_point", device=device, autoreset=False,
        ground_truth=True, **kwargs,
    )
    return env.unwrapped if hasattr(env, "unwrapped") else env


def simulate_arm(
    env_id: str,
    env_kwargs: dict[str, Any],
    agent: str,
    control_agent: str | None,
    users: int,
    days: int,
    pre_period_days: int,
    env_seed: int,
    agent_seed: int,
    control_seed: int,
    device: str = "cpu",
    max_steps: int = 1_000_000,
    progress: str | None = None,
) -> ArmRun:
    """Simulates one arm (see the module docstring).

    The users still present step through the environment's model as one compacted batch; their
    random draws come from :class:`~metarec.envs.backend.RowSubsetRandom`, so every user's
    trajectory is the one the full vector env (``reset(seed=env_seed)``, no autoreset) would give,
    whoever else is still there. Recommenders see full ``[users, ...]`` batches (rows of users who
    left keep their last observation and get no feedback).

    Args:
        env_id, env_kwargs: The environment.
        agent: The arm's recommender (registry name or run directory).
        control_agent: The recommender of the pre-period (needed when ``pre_period_days > 0``).
        users: Users of the arm.
        days, pre_period_days: Experiment and pre-period days (sessions).
        env_seed: Seed of the users and the environment's random streams; the same for every arm of a
            paired design (common random numbers).
        agent_seed, control_seed: Seeds of the recommenders.
        device: Torch device.
        max_steps: Safety limit.
        progress: tqdm description, or None for no bar.
    """
    sessions = pre_period_days + days
    env = make_env(env_id, env_kwargs, users, sessions, device)
    model, dev = env.model, env.device
    rng = env.backend.make_random(env_seed)
    state = model.initial_state(rng, users)  # what env.reset(seed=env_seed) draws
    arm = make_agent(agent, env, agent_seed)
    arm.reset()
    control = None
    if pre_period_days > 0:
        if control_agent is None:
            raise ValueError("control_agent: a pre-period needs the control recommender")
        control = make_agent(control_agent, env, control_seed)
        control.reset()
    metrics = StepMetrics(env, seed=0)  # the novelty reference: the same users for every arm and seed
    f = len(COUNTERS)
    counters = torch.zeros((users * sessions, f), dtype=torch.float64, device=dev)
    num_items = metrics.num_items
    impressions = None if num_items is None else torch.zeros(days * num_items, dtype=torch.float64, device=dev)

    rows = torch.arange(users, device=dev)  # the users still present, ascending
    observation = model.observe(state)  # [A, ...] of the present users
    oracle_slate, oracle_value, truth = model.oracle(state)
    full_observation = {key: value.clone() for key, value in observation.items()}  # [users, ...], updated in place
    full_info = {"oracle_slate": oracle_slate.clone(), "oracle_value": oracle_value.clone(),
                 "candidate_utilities": truth.utilities.clone()}
    was_in = torch.zeros(users, dtype=torch.bool, device=dev)
    bar = tqdm(total=users, desc=progress, unit="user", disable=progress is None, leave=False)
    steps = 0
    while rows.shape[0] > 0:
        if steps >= max_steps:
            bar.close()
            raise RuntimeError(f"max_steps: the arm did not finish within {max_steps} steps")
        session = state["session"]
        present = torch.zeros(users, dtype=torch.bool, device=dev)
        present[rows] = True
        in_experiment = torch.zeros(users, dtype=torch.bool, device=dev)
        in_experiment[rows] = session >= pre_period_days
        if control is not None:
            arm.reset(in_experiment & ~was_in)  # users entering the experiment start fresh with the arm
        was_in |= in_experiment
        serving_arm = in_experiment
        serving_control = present & ~in_experiment
        arm_acts = bool(serving_arm.any())
        control_acts = control is not None and bool(serving_control.any())
        action = arm.act(full_observation, {**full_info, "active": serving_arm}) if arm_acts else None
        if control_acts:
            assert control is not None
            fallback = control.act(full_observation, {**full_info, "active": serving_control})
            action = fallback if action is None else torch.where(_rows(in_experiment, action), action, fallback)
        assert action is not None
        slate = metrics.slate(action)[rows]  # [A, K]
        info = {"candidate_utilities": truth.utilities}
        values = metrics.before(observation, info, slate)
        if impressions is not None and arm_acts:
            day = (session - pre_period_days).clamp_min(0)
            ids = observation["candidate_ids"].gather(1, slate) + (day * num_items)[:, None]
            weight = (shown_once(slate) & serving_arm[rows][:, None]).to(torch.float64)
            impressions.index_add_(0, ids.reshape(-1), weight.reshape(-1))

        state, outcome = model.step(RowSubsetRandom(rng, users, rows), state, slate, truth)
        step_info = {**outcome.info, "regret": oracle_value - outcome.info["expected_reward"]}
        done = outcome.terminated | outcome.truncated
        values = metrics.after(values, outcome.reward, step_info, observation)
        counters.index_add_(0, rows * sessions + session, values.to(torch.float64))

        feedback = {key: _spread(value, rows, users) for key, value in step_info.items()}
        reward, full_done = _spread(outcome.reward, rows, users), _spread(done, rows, users)
        if arm_acts:
            arm.observe(reward, full_done, {**full_info, **feedback, "active": serving_arm})
        if control_acts:
            assert control is not None
            control.observe(reward, full_done, {**full_info, **feedback, "active": serving_control})

        steps += 1
        if bool(done.any()):
            bar.update(int(done.sum()))
            keep = ~done
            rows = rows[keep]
            state = {key: value[keep] for key, value in state.items()}
        if rows.shape[0] == 0:
            break
        observation = model.observe(state)
        oracle_slate, oracle_value, truth = model.oracle(state)
        for key, value in observation.items():
            full_observation[key][rows] = value
        full_info["oracle_slate"][rows] = oracle_slate
        full_info["oracle_value"][rows] = oracle_value
        full_info["candidate_utilities"][rows] = truth.utilities
    bar.close()
    env.close()
    table = counters.reshape(users, sessions, f).cpu().numpy()
    return ArmRun(
        counters=table[:, pre_period_days:],
        pre=table[:, :pre_period_days],
        impressions=None if impressions is None else impressions.reshape(days, -1).cpu().numpy(),
        steps=steps,
    )


def _spread(value: torch.Tensor, rows: torch.Tensor, users: int) -> torch.Tensor:
    """``[A, ...]`` values of the present users as a ``[users, ...]`` batch; absent users get -1 for
    indices (``chosen_*``) and 0 / False otherwise."""
    fill = -1 if value.dtype in (torch.int64, torch.int32) else 0
    full = torch.full((users, *value.shape[1:]), fill, dtype=value.dtype, device=value.device)
    full[rows] = value
    return full


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` ([B]) broadcast over the trailing dimensions of ``like``."""
    return mask.reshape(-1, *([1] * (like.dim() - 1)))
