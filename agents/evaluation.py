"""Evaluate a recommender on fresh simulated users: one episode per user, all users in one batch."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from metarec.agents import Recommender
from metarec.agents.metrics import RELEVANCE, Relevance, response_errors
from metarec.agents.registry import make_recommender
from metarec.config import short_repr
from metarec.envs.core.backend import torch_backend
from metarec.envs.vector import recommender_observation, recommender_space
from metarec.parallel import Shard, group_size, spawn_for_result, torchrun_group, world_size
from metarec.registration import VectorEntryPoint
from metarec.resources import MIN_BYTES_PER_ENV, bytes_per_user, check_memory
from metarec.stats import mean_and_half_width


def evaluate(
    env_id: str,
    agent: str | Recommender,
    users: int,
    seed: int = 0,
    device: str = "cpu",
    env_kwargs: dict[str, Any] | None = None,
    max_steps: int = 100_000,
    nproc: int = 1,
    memory_limit_gib: float | None = None,
    progress: str | None = None,
    metrics: bool = True,
) -> dict[str, Any] | None:
    """Runs ``users`` fresh users for one episode each and summarises their returns.

    The users step as one batch with autoreset off: a user who finishes stays finished and the
    recommender is told (``info["active"]``) to neither serve nor learn from them. ``nproc > 1``
    splits the users across that many processes on this machine (under ``torchrun``, across the
    processes it started): each steps a contiguous block, drawing every random number for all users
    (``shard``), and the per-user sums are gathered, so the result is exactly one process's. Only
    the first process returns it (the others return None). ``progress`` names a bar on stderr that counts the
    users who finished (shown by the first process only); None shows none. ``metrics`` False leaves out the
    ranking metrics against the ground truth and the prediction errors (they cost time; those keys are None).

    Returns:
        ``env``, ``agent``, ``users``, ``seed``, ``device``, ``mean_return``, ``ci95`` (the 95% Student-t
        interval of the mean return over users, ``[low, high]``), ``std_return``, ``mean_length``,
        ``click_rate``, ``mean_regret`` (per step, against the myopic oracle), ``engagement_per_step``, ``k``,
        ``precision_at_k``, ``recall_at_k``, ``f1_at_k``, ``ndcg_at_k`` (against each user's true preferences;
        None without ground truth: :mod:`metarec.agents.metrics`), ``prediction_mae`` and ``prediction_mse``
        (of a recommender that predicts its users' responses, else None), ``processes``.

    Raises:
        ValueError: before any work, for a bad argument, or for more users than fit in memory (see
            :func:`check_users_fit`; ``memory_limit_gib`` or ``$METAREC_MEMORY_LIMIT_GIB`` overrides the limit).
    """
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise ValueError(f"users: expected a positive integer, got {short_repr(users)}")
    torch_backend(device)  # a ValueError naming a device torch does not know or cannot reach
    check_users_fit(env_id, users, env_kwargs, memory_limit_gib)
    world = world_size(nproc)
    if nproc > 1:
        if not isinstance(agent, str):
            raise ValueError("agent: a run split across processes takes the recommender's name or run directory")
        args = (env_id, agent, users, seed, device, env_kwargs, max_steps, 1, memory_limit_gib, progress, metrics)
        return spawn_for_result(_evaluate_worker, args, nproc, device)
    if world > 1:
        torchrun_group(device)
    kwargs = dict(env_kwargs or {})
    shard = Shard.of_this_process(users)
    if shard is not None:
        kwargs["shard"] = shard.env_rows()
    try:
        env = gym.make_vec(
            env_id, num_envs=users if shard is None else shard.size, vectorization_mode="vector_entry_point",
            device=device, autoreset=False, array_backend="torch", **kwargs,
        )  # fmt: skip
    except TypeError as err:
        if shard is None or "shard" not in str(err):
            raise
        raise ValueError(f"nproc: {env_id} cannot be split across processes (it takes no shard)") from err
    base = env.unwrapped if hasattr(env, "unwrapped") else env
    recommender = make_recommender(agent, base, seed) if isinstance(agent, str) else agent
    recommender.place(shard)
    observation, info = env.reset(seed=seed)
    observation = recommender_observation(base, observation)
    recommender.reset()
    dev = base.device
    batch = base.num_envs
    ranking = Relevance(base) if metrics and hasattr(base, "model") and hasattr(base, "config") else None
    # per user (float64; exact sums of each user's own steps): return, steps, clicks, regret, engagement, the
    # ranking metrics of RELEVANCE, and the absolute and squared errors of predicted responses and their count
    sums = torch.zeros((batch, 5 + len(RELEVANCE) + 3), dtype=torch.float64, device=dev)
    ranked = predicted = 0
    running = torch.ones(batch, dtype=torch.bool, device=dev)
    first = shard is None or shard.offset == 0
    bar = tqdm(total=users, desc=progress, unit="user", leave=False, disable=progress is None or not first)
    for _ in range(max_steps):
        action = recommender.act(observation, {**info, "active": running})
        prediction = recommender.response_prediction() if metrics else None
        utility = info.get("candidate_utilities")
        relevance = None if ranking is None or utility is None else ranking(utility, action)
        observation, reward, terminated, truncated, info = env.step(action)
        observation = recommender_observation(base, observation)
        done = terminated | truncated
        zeros = torch.zeros_like(reward, device=dev)
        errors = (zeros, zeros, zeros) if prediction is None else response_errors(prediction, reward, info, batch)
        recommender.observe(reward, done, {**info, "active": running})
        regret = info.get("regret", zeros)
        step = torch.stack([reward.to(dev), torch.ones_like(reward, device=dev), info["clicked"].to(dev),
                            regret.to(dev), info.get("engagement", reward).to(dev),
                            *(zeros if relevance is None else relevance[key] for key in RELEVANCE),
                            *errors], dim=1).to(torch.float64)  # fmt: skip
        ranked, predicted = ranked or relevance is not None, predicted or prediction is not None
        sums += step * running[:, None]
        running &= ~done.to(dev)
        left = running.sum()  # users still present, in every process
        if shard is not None:
            shard.sum_(left)
        left = int(left)
        bar.update(users - left - bar.n)
        if not left:
            break
    else:
        bar.close()
        raise RuntimeError(f"evaluation did not finish within max_steps={max_steps}")
    bar.close()
    env.close()
    table = _gather_users(sums.cpu().numpy(), shard)
    if table is None:
        return None
    per_user, total_steps = table[:, 0], float(table[:, 1].sum())
    mean, half = (float(x) for x in mean_and_half_width(per_user))  # an infinite half-width for one user
    return {
        "env": env_id,
        "agent": recommender.name,
        "users": users,
        "seed": seed,
        "device": str(dev),
        "mean_return": mean,
        "ci95": [mean - half, mean + half],
        "std_return": float(np.std(per_user, ddof=1)) if users > 1 else 0.0,
        "mean_length": total_steps / users,
        "click_rate": float(table[:, 2].sum()) / total_steps,
        "mean_regret": float(table[:, 3].sum()) / total_steps,
        "engagement_per_step": float(table[:, 4].sum()) / total_steps,
        **_ranking_summary(table[:, 5 : 5 + len(RELEVANCE)], total_steps, ranking.k if ranked else None),
        **_prediction_summary(table[:, 5 + len(RELEVANCE) :] if predicted else None),
        "processes": group_size() if shard is not None else 1,
    }


#: Keyword arguments of an env that the runs (train, evaluate, abtest) set themselves, and what sets them.
RUN_ENV_ARGUMENTS = {
    "num_envs": "the number of users (users, ppo.num_envs, sb3.num_envs)",
    "device": "the run's device (the config's device, --device)",
    "vectorization_mode": "metarec",
    "shard": "--nproc",
    "array_backend": "metarec (its recommenders step on torch)",
}
#: Keyword arguments an env takes that its constructors do not declare by name.
EXTRA_ENV_ARGUMENTS = {"metarec/Calibrated-v0": ("population_fields", "users")}


def env_arguments(env_id: str) -> frozenset[str] | None:
    """The keyword arguments the vector env of ``env_id`` takes: the parameters of its constructors (along
    its classes, while they pass ``**kwargs`` on) and its config's fields. None where they cannot be
    known (keywords no class declares, or an optional extra that is not installed)."""
    entry = gym.spec(env_id).vector_entry_point
    if isinstance(entry, VectorEntryPoint):
        module, name = entry.module, entry.cls
    elif isinstance(entry, str):
        module, _, name = entry.partition(":")
    else:
        return None
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError:
        return None
    names, open_ended = set(EXTRA_ENV_ARGUMENTS.get(env_id, ())), True
    for klass in cls.__mro__:
        if not klass.__module__.startswith("metarec.") or not open_ended:
            break
        if "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters.values()
            names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
    config_class = getattr(cls, "config_class", None)
    if open_ended and config_class is None:
        return None
    if config_class is not None:
        names |= set(config_class.model_fields)
    return frozenset(names - {"self", "num_envs"})


def check_env_kwargs(env_id: str, env_kwargs: dict[str, Any], where: str = "env_kwargs") -> None:
    """A ValueError naming the first keyword of ``env_kwargs`` that ``env_id``'s vector env does not take
    (or that the run sets itself), with the ones it takes."""
    known = env_arguments(env_id)
    for key in env_kwargs:
        if key in RUN_ENV_ARGUMENTS:
            raise ValueError(f"{where}.{key}: set by {RUN_ENV_ARGUMENTS[key]}, not by {where}")
        if known is not None and key not in known:
            raise ValueError(
                f"{where}.{str(key)[:40]}: unknown argument of {env_id} "
                f"(known: {', '.join(sorted(known - set(RUN_ENV_ARGUMENTS)))})"
            )


#: Up to this many users, a batch is not worth estimating (a few MB at most in every metarec env).
PROBE_ABOVE_USERS = 4096


def check_users_fit(
    env_id: str, users: int, env_kwargs: dict[str, Any] | None = None, memory_limit_gib: float | None = None
) -> None:
    """A ValueError naming ``users`` when a batch of that many users of ``env_id`` would not fit in memory
    (:func:`metarec.resources.check_memory`), checked before the batch is built: first at the least any
    env holds per user, then (past :data:`PROBE_ABOVE_USERS`) from a one-user env's observation space."""
    check_memory("users", users, MIN_BYTES_PER_ENV, limit_gib=memory_limit_gib)
    if users <= PROBE_ABOVE_USERS:
        return
    probe = gym.make_vec(
        env_id, num_envs=1, vectorization_mode="vector_entry_point", device="cpu", array_backend="torch",
        **dict(env_kwargs or {}),
    )
    try:
        # a compact observation is expanded every step, so the full one is what a step holds
        each = bytes_per_user(recommender_space(probe))
    finally:
        probe.close()
    check_memory("users", users, each, limit_gib=memory_limit_gib)


def _ranking_summary(columns: np.ndarray, steps: float, k: int | None) -> dict[str, Any]:
    """The ranking metrics against the ground truth, per user-step (recall over the steps with a relevant
    candidate); None where the env gives no ground truth."""
    names = dict(zip(RELEVANCE, columns.sum(0), strict=True))
    if k is None:
        return {"k": None, **{f"{name}_at_k": None for name in ("precision", "recall", "f1", "ndcg")}}
    recall = names["recall"] / names["recall_steps"] if names["recall_steps"] else None
    return {"k": k, "precision_at_k": names["precision"] / steps, "recall_at_k": recall,
            "f1_at_k": names["f1"] / steps, "ndcg_at_k": names["ndcg"] / steps}  # fmt: skip


def _prediction_summary(columns: np.ndarray | None) -> dict[str, Any]:
    """MAE and MSE of a recommender's predicted responses (None for one that predicts nothing)."""
    if columns is None or not columns[:, 2].sum():
        return {"prediction_mae": None, "prediction_mse": None}
    count = float(columns[:, 2].sum())
    return {"prediction_mae": float(columns[:, 0].sum()) / count, "prediction_mse": float(columns[:, 1].sum()) / count}


def _gather_users(table: np.ndarray, shard: Shard | None) -> np.ndarray | None:
    """Every process's per-user rows in rank order, on the first process (None on the others)."""
    import torch.distributed as dist

    if shard is None:
        return table
    parts: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else []
    dist.gather_object(table, parts if dist.get_rank() == 0 else None, dst=0)
    return np.concatenate(parts) if dist.get_rank() == 0 else None


def _evaluate_worker(*args: Any) -> dict[str, Any] | None:
    return evaluate(*args)
