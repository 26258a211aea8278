"""Running one arm of an A/B test: every user of the arm, day by day, in one batch.

Users step as one batch until each has left or finished their last day; a user's day is their
session number (multi-session mode), so users need not be in lockstep, and users who have left
drop out of the batch. With a pre-period, a user's
first ``pre_period_days`` sessions are served by the control recommender and the arm's recommender
takes over (forgetting anything it held about that user) from the first experiment session.
Recommenders only learn from users currently in their care: ``info["active"]`` marks them.

A run may be split across processes (:class:`~metarec.agents.base.Shard`): each steps a contiguous
block of the users, drawing every random number for all users and keeping its own rows (the
environment's through :class:`~metarec.envs.core.backend.RowSubsetRandom`, the recommenders' through
:class:`~metarec.agents.base.UserDraws`), and what recommenders learn across users is summed exactly
over the processes each step. The processes step in lockstep until every user of the run is done,
and :func:`merge_runs` puts the blocks back together: the result equals one process's, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from metarec.abtest.metrics import COUNTERS, StepMetrics, shown_once
from metarec.agents.registry import make_recommender
from metarec.envs.calibrated import with_population_fields
from metarec.envs.core.backend import RowSubsetRandom
from metarec.envs.core.finite import check_finite_outcome
from metarec.parallel import Shard


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
        ground_truth=True, array_backend="torch", **kwargs,
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
    shard: Shard | None = None,
) -> ArmRun:
    """Simulates one arm (see the module docstring).

    The users still present step through the environment's model as one compacted batch; their
    random draws come from :class:`~metarec.envs.core.backend.RowSubsetRandom`, so every user's
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
        shard: This process's block of the ``users`` when the run is split across processes (see the
            module docstring); the result then holds that block's users only.
    """
    sessions = pre_period_days + days
    total = users
    offset, users = _block(users, shard)
    env = make_env(env_id, env_kwargs, users, sessions, device)
    model, dev = env.model, env.device
    rng = env.backend.make_random(env_seed)
    state = model.initial_state(rng, total)  # what env.reset(seed=env_seed) draws
    state = {key: value[offset : offset + users] for key, value in state.items()}  # this process's users
    if pre_period_days > 0 and control_agent is None:
        raise ValueError("control_agent: a pre-period needs the control recommender")
    arm = _start_recommender(agent, env, agent_seed, shard)
    control = _start_recommender(control_agent, env, control_seed, shard) if pre_period_days > 0 else None
    metrics = StepMetrics(env, seed=0)  # the novelty reference: the same users for every arm and seed
    f = len(COUNTERS)
    counters = torch.zeros((users * sessions, f), dtype=torch.float64, device=dev)
    num_items = metrics.num_items
    impressions = _impression_table(num_items, days, dev)

    rows = torch.arange(users, device=dev)  # the users still present, ascending
    observation = model.observe(state)  # [A, ...] of the present users
    oracle_slate, oracle_value, truth = model.oracle(state)
    full_observation = {key: value.clone() for key, value in observation.items()}  # [users, ...], updated in place
    full_info = {"oracle_slate": oracle_slate.clone(), "oracle_value": oracle_value.clone(),
                 "candidate_utilities": truth.utilities.clone()}
    was_in = torch.zeros(users, dtype=torch.bool, device=dev)
    bar = tqdm(total=users, desc=progress, unit="user", disable=progress is None, leave=False)
    steps = 0
    while True:
        session = state["session"]
        present = torch.zeros(users, dtype=torch.bool, device=dev)
        present[rows] = True
        in_experiment = torch.zeros(users, dtype=torch.bool, device=dev)
        in_experiment[rows] = session >= pre_period_days
        serving_arm = in_experiment
        serving_control = present & ~in_experiment
        # one device sync (and, split across processes, one exchange) per step
        anyone, arm_acts, control_acts = _any_process(
            torch.stack([present.any(), serving_arm.any(), serving_control.any() & (control is not None)]), shard
        )
        if not anyone:
            break
        _check_budget(steps, max_steps, bar)
        if control is not None:
            arm.reset(in_experiment & ~was_in)  # users entering the experiment start fresh with the arm
        was_in |= in_experiment
        action = arm.act(full_observation, {**full_info, "active": serving_arm}) if arm_acts else None
        if control_acts:
            action = _with_control(control, action, full_observation, full_info, serving_control, in_experiment)
        assert action is not None
        if rows.shape[0] > 0:  # else this process only keeps step with the others
            slate = metrics.slate(action)[rows]  # [A, K]
            info = {"candidate_utilities": truth.utilities}
            values = metrics.before(observation, info, slate)
            if impressions is not None and arm_acts:
                day = (session - pre_period_days).clamp_min(0)
                _count_impressions(impressions, observation, slate, day * num_items, serving_arm[rows])

            state, outcome = model.step(RowSubsetRandom(rng, total, rows + offset), state, slate, truth)
            step_info = {**outcome.info, "regret": oracle_value - outcome.info["expected_reward"]}
            check_finite_outcome(model, state, outcome, step=steps + 1, users=rows + offset,
                                 info={**step_info, "candidate_utilities": truth.utilities})  # fmt: skip
            step_reward, done = outcome.reward, outcome.terminated | outcome.truncated
            values = metrics.after(values, step_reward, step_info, observation)
            counters.index_add_(0, rows * sessions + session, values.to(torch.float64))
        else:  # this process's users are all gone: no feedback (the last step's, for none of them)
            step_info = {key: value[:0] for key, value in step_info.items()}
            step_reward, done = step_reward[:0], done[:0]
        feedback = _feedback(model, step_info, rows, users, steps + 1)
        reward, full_done = _spread(step_reward, rows, users), _spread(done, rows, users)
        for recommender, acts, serving in ((arm, arm_acts, serving_arm), (control, control_acts, serving_control)):
            if acts and recommender is not None:
                recommender.observe(reward, full_done, {**full_info, **feedback, "active": serving})

        steps += 1
        if rows.shape[0] > 0 and bool(done.any()):
            bar.update(int(done.sum()))
            rows, state = rows[~done], {key: value[~done] for key, value in state.items()}
        if rows.shape[0] > 0:
            observation, oracle_value, truth = _observe(model, state, rows, full_observation, full_info)
    bar.close()
    env.close()
    table = counters.reshape(users, sessions, f).cpu().numpy()
    return ArmRun(
        counters=table[:, pre_period_days:],
        pre=table[:, :pre_period_days],
        impressions=None if impressions is None else impressions.reshape(days, -1).cpu().numpy(),
        steps=steps,
    )


def _impression_table(num_items: int | None, days: int, device: torch.device) -> torch.Tensor | None:
    """Impressions per (day, item) of the arm's recommender, or None when the env has no item ids."""
    return None if num_items is None else torch.zeros(days * num_items, dtype=torch.float64, device=device)


def _check_budget(steps: int, max_steps: int, bar: Any) -> None:
    """A RuntimeError once the arm has taken ``max_steps`` steps without every user leaving."""
    if steps >= max_steps:
        bar.close()
        raise RuntimeError(f"max_steps: the arm did not finish within {max_steps} steps")


def _block(users: int, shard: Shard | None) -> tuple[int, int]:
    """``(offset, size)`` of this process's users among the arm's ``users``."""
    if shard is None:
        return 0, users
    if shard.total != users:
        raise ValueError(f"shard: expected a block of the {users} users, got {shard}")
    return shard.offset, shard.size


def _start_recommender(name: str, env: Any, seed: int, shard: Shard | None) -> Any:
    """The recommender ``name`` for ``env``, placed on ``shard`` and reset for its first users."""
    recommender = make_recommender(name, env, seed)
    recommender.place(shard)
    recommender.reset()
    return recommender


def _with_control(control: Any, action: torch.Tensor | None, observation: dict[str, torch.Tensor],
                  info: dict[str, torch.Tensor], serving: torch.Tensor,
                  in_experiment: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The control's slates for the users it serves (``serving``), the arm's ``action`` for the others."""
    fallback = control.act(observation, {**info, "active": serving})
    return fallback if action is None else torch.where(_rows(in_experiment, action), action, fallback)


def _count_impressions(impressions: torch.Tensor, observation: dict[str, torch.Tensor], slate: torch.Tensor,
                       offset: torch.Tensor, served: torch.Tensor) -> None:  # fmt: skip
    """Adds one impression per item shown once on a served user's slate, at ``offset`` (the day's block)."""
    ids = observation["candidate_ids"].gather(1, slate) + offset[:, None]
    weight = (shown_once(slate) & served[:, None]).to(torch.float64)
    impressions.index_add_(0, ids.reshape(-1), weight.reshape(-1))


def _observe(model: Any, state: dict[str, torch.Tensor], rows: torch.Tensor, full_observation: dict[str, torch.Tensor],
             full_info: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, Any]:  # fmt: skip
    """The present users' observation and ground truth, also written into the full batch's rows ``rows``."""
    observation = model.observe(state)
    oracle_slate, oracle_value, truth = model.oracle(state)
    for key, value in observation.items():
        full_observation[key][rows] = value
    full_info["oracle_slate"][rows] = oracle_slate
    full_info["oracle_value"][rows] = oracle_value
    full_info["candidate_utilities"][rows] = truth.utilities
    return observation, oracle_value, truth


def _any_process(flags: torch.Tensor, shard: Shard | None) -> list[bool]:
    """Each of ``flags`` ([F] bool) or-ed over the processes of a split run."""
    counts = flags.to(torch.int64)
    if shard is not None:
        shard.sum_(counts)
    return [bool(v) for v in counts.tolist()]


def merge_runs(run: ArmRun, shard: Shard | None) -> ArmRun | None:
    """The whole arm from every process's block (on the first process; None on the others): the users'
    tables in rank order and the impressions summed (counts, exact in float64)."""
    import torch.distributed as dist

    if shard is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return run
    blocks: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else []
    dist.gather_object((run.counters, run.pre, run.impressions), blocks if dist.get_rank() == 0 else None, dst=0)
    if dist.get_rank() != 0:
        return None
    impressions = None if run.impressions is None else sum(b[2] for b in blocks)
    return ArmRun(
        counters=np.concatenate([b[0] for b in blocks]), pre=np.concatenate([b[1] for b in blocks]),
        impressions=impressions, steps=run.steps, seconds=run.seconds,
    )


def _feedback(model: Any, step_info: dict[str, torch.Tensor], rows: torch.Tensor, users: int, step: int) -> dict:
    """The step's info for every user of the block (:func:`_spread`), and under catalog churn the arrivals of the
    catalog's step ``step``: every user's, present or gone, and the same in every process (a shared learner
    forgets the same ids everywhere)."""
    feedback = {key: _spread(value, rows, users) for key, value in step_info.items() if key != "item_arrived"}
    catalog = getattr(model, "catalog", None)
    if catalog is not None:
        arrived = torch.as_tensor(catalog.arrived_mask(step), device=rows.device)
        feedback["item_arrived"] = arrived[None].expand(users, -1)
    return feedback


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
