"""Simulated interaction logs in the generic schema (``metarec simulate-logs``).

Users of a DriftingUsers-family environment (its multi-session mode: one session a day) browse under
a logging recommender; every click becomes a row ``user, item, timestamp, rating, click``, where
``item`` is the catalog id, ``timestamp`` counts seconds (a day per session, a minute per step) and
``rating`` is the user's satisfaction in [0, 1]. With ``impressions=True`` every shown item is a row
instead (``click`` 1 for the clicked one, 0 for the others, no rating), all at the step's timestamp, so
a slate is the rows of one user and timestamp, as in an impression log. With the environment's ground
truth these logs are what the calibration tests recover a known population from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from metarec.agents.registry import make_recommender
from metarec.envs.calibrated import with_population_fields
from metarec.envs.vector import recommender_observation

SECONDS_PER_DAY = 86_400.0
SECONDS_PER_STEP = 60.0


@dataclass
class Step:
    """One step of every user under the logging recommender: what was observed before the slates, the slates
    ``[B, K]`` (and the action as the env took it), the reward and step info, which users were still there
    (``running``, before the step), each user's day and step within it, who finished with this step (``done``;
    ``terminated`` and ``truncated`` apart) and what was observed after it."""

    observation: dict[str, torch.Tensor]
    slate: torch.Tensor
    reward: torch.Tensor
    info: dict[str, Any]
    running: torch.Tensor
    day: torch.Tensor
    step: torch.Tensor
    done: torch.Tensor
    action: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    after: dict[str, torch.Tensor]


def browse(
    env_id: str,
    users: int,
    days: int,
    seed: int = 0,
    agent: str = "random",
    env_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> Iterator[tuple[Any, Any, Step]]:
    """``(env, recommender, step)`` for every step of ``users`` users of a DriftingUsers-family env over ``days``
    days (sessions) under the recommender ``agent``, until every user has left."""
    if users < 1:
        raise ValueError(f"users: expected a positive integer, got {users}")
    if days < 1:
        raise ValueError(f"days: expected a positive integer, got {days}")
    kwargs = with_population_fields(env_kwargs or {}, {"num_sessions": days})
    env = gym.make_vec(
        env_id,
        num_envs=users,
        vectorization_mode="vector_entry_point",
        device=device,
        autoreset=False,
        array_backend="torch",
        **kwargs,
    )
    base = env.unwrapped
    if "candidate_ids" not in base.single_observation_space.spaces:
        raise ValueError(f"env: {env_id} has no catalog ids in its observations; expected a DriftingUsers-family id")
    recommender = make_recommender(agent, base, seed)
    observation, info = env.reset(seed=seed)
    observation = recommender_observation(base, observation)  # logs see what recommenders see: full observations
    recommender.reset()
    running = torch.ones(users, dtype=torch.bool, device=base.device)
    limit = days * base.config.population.max_session_steps + days
    bar = tqdm(total=users, desc="simulate-logs", unit="user", leave=False, disable=not progress)
    for _ in range(limit):
        state = base.state
        day, step = state["session"].clone(), state["session_step"].clone()
        before = observation
        action = recommender.act(observation, info)
        observation, reward, terminated, truncated, info = env.step(action)
        observation = recommender_observation(base, observation)
        done = terminated | truncated
        recommender.observe(reward, done, info)
        slate = action if action.ndim == 2 else action[:, None]  # [B, K] candidate indices
        yield base, recommender, Step(before, slate, reward, info, running.clone(), day, step, done, action,
                                      terminated, truncated, observation)  # fmt: skip
        running &= ~done
        left = int(running.sum())
        bar.update(users - left - bar.n)
        if not left:
            break
    bar.close()
    env.close()


def simulate_logs(
    env_id: str,
    users: int,
    days: int,
    seed: int = 0,
    agent: str = "random",
    env_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    impressions: bool = False,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Columns ``user``, ``item``, ``timestamp``, ``rating``, ``click`` of every click of ``users``
    users over ``days`` days (sessions), or with ``impressions`` of every shown item (``click`` 0 and
    rating NaN where it was not clicked); also returns the environment under ``"env"`` and the number
    of user-steps taken under ``"user_steps"`` (for tests that compare with the ground truth)."""
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "item", "timestamp", "rating", "click")}
    steps, base = 0, None
    for env, _, t in browse(env_id, users, days, seed, agent, env_kwargs, device, progress):
        base = env  # returned: the tests read its ground truth
        rows = torch.arange(users, device=t.slate.device)
        ids, running, info = t.observation["candidate_ids"], t.running, t.info
        clicked = info["clicked"] & running
        if impressions and bool(running.any()):
            hit = (t.slate == info["chosen_candidate"][:, None]) & clicked[:, None]  # [B, K]
            shown = running[:, None].expand_as(t.slate)
            seconds = t.day.double() * SECONDS_PER_DAY + t.step.double() * SECONDS_PER_STEP
            rating = torch.where(hit, info["satisfaction"][:, None].float(), torch.nan)
            columns["user"].append(rows[:, None].expand_as(t.slate)[shown].cpu().numpy())
            columns["item"].append(ids.gather(1, t.slate)[shown].cpu().numpy())
            columns["timestamp"].append(seconds[:, None].expand_as(t.slate)[shown].cpu().numpy())
            columns["rating"].append(rating[shown].cpu().numpy())
            columns["click"].append(hit[shown].float().cpu().numpy())
        elif bool(clicked.any()):
            who = rows[clicked]
            chosen = info["chosen_candidate"][clicked]
            columns["user"].append(who.cpu().numpy())
            columns["item"].append(ids[clicked].gather(1, chosen[:, None])[:, 0].cpu().numpy())
            seconds = t.day[clicked].double() * SECONDS_PER_DAY + t.step[clicked].double() * SECONDS_PER_STEP
            columns["timestamp"].append(seconds.cpu().numpy())
            columns["rating"].append(info["satisfaction"][clicked].cpu().numpy())
            columns["click"].append(np.ones(len(who), dtype=np.float32))
        steps += int(running.sum())
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in columns.items()}
    order = np.lexsort((out["user"], out["timestamp"]))
    out = {k: v[order] for k, v in out.items()}
    out["user"] = out["user"].astype(np.int64)
    out["item"] = out["item"].astype(np.int64)
    out["rating"] = out["rating"].astype(np.float32)
    out["click"] = out["click"].astype(np.float32)
    return {**out, "env": base, "user_steps": steps}


def write_simulated_logs(columns: dict[str, np.ndarray], path: str | Path) -> Path:
    """Writes the columns of :func:`simulate_logs` as a CSV (or Parquet, by suffix) in the generic schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ("user", "item", "timestamp", "rating", "click")
    if path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame({k: columns[k] for k in names}).to_parquet(path, index=False)
        return path
    with open(path, "w") as handle:
        handle.write(",".join(names) + "\n")
        rating = np.char.mod("%.6f", columns["rating"].astype(np.float64))
        rating[~np.isfinite(columns["rating"])] = ""  # an impression without a click has no rating
        table = np.column_stack(
            [np.char.mod(fmt, columns[k].astype(np.float64)) for k, fmt in (("user", "%d"), ("item", "%d"))]
            + [np.char.mod("%.0f", columns["timestamp"].astype(np.float64)), rating]
            + [np.char.mod("%d", columns["click"].astype(np.float64))]
        )
        np.savetxt(handle, table, fmt="%s", delimiter=",")
    return path
