"""Offline datasets from simulated users (``metarec simulate-logs --format parquet|obd|obp|minari``).

Every shown item is an impression: the user, the slate (an id per user and step), the item's position in it
(0 first), its catalog id and candidate index, whether it was clicked, the engagement it earned (the step's
reward where it was clicked, else 0), the user's satisfaction with a click, the timestamp, the context the
logging recommender saw (the user's history window as the env observes it, flattened) and the logging
policy's propensity: the probability that it shows that item at that position. The propensity is known for a
uniformly random logging policy (``1 / N`` for ``N`` candidates) and for a deterministic one (1); for any other
(a bandit that explores, a policy that samples) it is NaN, and the formats that need it refuse such a policy.

* ``parquet``: one row per impression, the context and the catalog ids of the candidates offered with it
  (``offered``) as fixed-size list columns; the file's metadata (key
  ``metarec``) says how it was made.
* ``obd``: the Open Bandit Dataset's CSV layout (an index column, then ``timestamp``, ``item_id``,
  ``position`` from 1, ``click``, ``propensity_score``, ``user_feature_0`` (the user's id) and
  ``user-item_affinity_0 ..`` (the user's clicks of each item on earlier slates: one column per catalog item)),
  with ``item_context.csv`` beside it (``item_id``, ``item_feature_0 ..``: each item's candidate features as
  first shown, zeros for items never shown). ``load_logs(out, "obd")`` reads it back.
* ``obp``: Open Bandit Pipeline's bandit feedback dict (``n_rounds``, ``n_actions``, ``action``, ``position``,
  ``reward`` (the click), ``pscore``, ``context``, ``action_context``, ``len_list``, plus ``user``, ``timestamp``,
  ``engagement`` and ``offered``, the catalog ids of the round's candidates) as a NumPy ``.npz`` archive, never a
  pickle. A round is an impression; ``action_context`` holds each catalog item's candidate features as first shown
  (zeros for items never shown). ``dict(np.load(path))`` with ``n_rounds``, ``n_actions`` and ``len_list`` as ints
  is what OBP's estimators take.
* ``minari``: a Minari dataset (one episode per user: the observations, slates, rewards and step infos),
  written under the ``--out`` folder (Minari's ``MINARI_DATASETS_PATH``) with the id
  ``metarec/simulation-v0``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from metarec.calibration.synthetic import SECONDS_PER_DAY, SECONDS_PER_STEP, browse
from metarec.envs.vector import recommender_space

#: Each format and the ending its ``--out`` must have ("" for a folder).
OFFLINE_FORMATS = {"parquet": ".parquet", "obd": ".csv", "obp": ".npz", "minari": ""}
MINARI_ID = "metarec/simulation-v0"
OBD_ITEM_FILE = "item_context.csv"  # --format obd writes it beside --out
EPOCH = np.datetime64("2026-01-01T00:00:00", "us")  # the timestamps of the obd layout count from here


def check_offline_request(
    fmt: str, out: str | Path, env_id: str, agent: str, env_kwargs: dict | None = None
) -> Path:
    """``out``, after the checks made before any work: its ending matches ``fmt``, the env has catalog ids, the
    agent is one, and a format that needs the logging policy's propensities (obd, obp) gets a policy whose
    propensities are known (a ValueError naming ``out``, ``env`` or ``agent``)."""
    out, suffix = Path(out), OFFLINE_FORMATS[fmt]
    if suffix and out.suffix != suffix:
        raise ValueError(f"out: expected a name ending in {suffix} for --format {fmt}, got {out.name!r}")
    if fmt == "obd" and out.name == OBD_ITEM_FILE:
        raise ValueError(f"out: {OBD_ITEM_FILE} is the item file --format obd writes beside the log; expected "
                         "another name, such as all.csv")  # fmt: skip
    if not suffix and out.suffix:
        raise ValueError(f"out: --format minari writes a dataset folder; expected a name without a suffix, "
                         f"got {out.name!r}")  # fmt: skip
    needs = {"minari": ("minari", "pip install 'metarec[offline]'"), "parquet": ("pyarrow", "pip install pyarrow")}
    if fmt in needs:
        import importlib.util

        module, how = needs[fmt]
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"format {fmt}: needs {module} ({how})")
    import gymnasium as gym

    from metarec.agents.registry import make_recommender

    probe = gym.make_vec(env_id, num_envs=1, vectorization_mode="vector_entry_point", array_backend="torch",
                         autoreset=False, **(env_kwargs or {}))  # fmt: skip
    space = recommender_space(probe)
    if "candidate_ids" not in space.spaces:
        raise ValueError(f"env: {env_id} has no catalog ids in its observations; expected a DriftingUsers-family id")
    known = make_recommender(agent, probe.unwrapped, 0).slate_propensity(space["candidates"].shape[0])
    probe.close()
    if known is None and fmt in ("obd", "obp"):
        raise ValueError(_unknown_propensity(agent, fmt))
    return out


def _unknown_propensity(agent: str, fmt: str) -> str:
    return (f"agent: {agent}'s propensities are unknown (it explores or samples); --format {fmt} needs them: log "
            "with random or a deterministic recommender")  # fmt: skip


def collect(
    env_id: str, users: int, days: int, seed: int = 0, agent: str = "random", env_kwargs: dict | None = None,
    device: str = "cpu", episodes: bool = False, progress: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The impressions of ``users`` users over ``days`` days under ``agent`` (see the module docstring), with
    ``episodes`` also each user's steps (for Minari)."""
    rows: dict[str, list[np.ndarray]] = {k: [] for k in IMPRESSION_COLUMNS}
    steps: list[dict[str, Any]] = []
    slates, propensity, action_context, spaces, k = 0, math.nan, None, None, 0
    for env, recommender, t in browse(env_id, users, days, seed, agent, env_kwargs, device, progress):
        num_candidates = t.observation["candidates"].shape[1]
        known = recommender.slate_propensity(num_candidates)
        propensity = math.nan if known is None else known
        if action_context is None:
            action_context = np.zeros((int(env.model.num_items), t.observation["candidates"].shape[2]), np.float32)
            spaces = recommender_space(env), env.single_action_space
        if episodes:
            steps.append(_step_record(t))
        active = t.running.cpu().numpy()
        if not active.any():
            continue
        k = t.slate.shape[1]
        ids = t.observation["candidate_ids"].gather(1, t.slate).cpu().numpy()  # [B, K]
        position = t.info["chosen_position"].cpu().numpy()
        clicked = (position[:, None] == np.arange(k)[None, :]) & t.info["clicked"].cpu().numpy()[:, None]
        reward = t.reward.cpu().numpy()[:, None]
        satisfaction = t.info["satisfaction"].float().cpu().numpy()[:, None]
        seconds = t.day.double().cpu().numpy() * SECONDS_PER_DAY + t.step.double().cpu().numpy() * SECONDS_PER_STEP
        context = t.observation["history"].float().flatten(1).cpu().numpy()  # [B, D]
        users_active = np.flatnonzero(active)
        shown = t.observation["candidates"].float().gather(
            1, t.slate[:, :, None].expand(-1, -1, t.observation["candidates"].shape[2])).cpu().numpy()  # fmt: skip
        fresh = ~np.any(action_context[ids[active]], axis=-1)  # items shown for the first time (all-zero rows)
        action_context[ids[active][fresh]] = shown[active][fresh]
        grid = {
            "user": np.repeat(users_active, k),
            "slate": np.repeat(slates + np.arange(len(users_active)), k),
            "timestamp": np.repeat(seconds[active], k),
            "position": np.tile(np.arange(k), len(users_active)),
            "item": ids[active].reshape(-1),
            "candidate": t.slate.cpu().numpy()[active].reshape(-1),
            "click": clicked[active].reshape(-1).astype(np.int8),
            "engagement": np.where(clicked, reward, 0.0)[active].reshape(-1).astype(np.float32),
            "rating": np.where(clicked, satisfaction, np.nan)[active].reshape(-1).astype(np.float32),
            "propensity": np.full(len(users_active) * k, propensity, np.float32),
            "context": np.repeat(context[active], k, axis=0),
            "offered": np.repeat(t.observation["candidate_ids"].cpu().numpy()[active], k, axis=0),
        }
        for key, value in grid.items():
            rows[key].append(value)
        slates += len(users_active)
    table = {key: np.concatenate(value) for key, value in rows.items()}
    return {"impressions": table, "episodes": _episodes(steps, users) if episodes else None,
            "action_context": action_context, "spaces": spaces, "slate_size": int(k),
            "propensity_known": not math.isnan(propensity)}  # fmt: skip


IMPRESSION_COLUMNS = ("user", "slate", "timestamp", "position", "item", "candidate", "click", "engagement",
                      "rating", "propensity", "context", "offered")  # fmt: skip


def _step_record(t: Any) -> dict[str, Any]:
    return {
        "observation": {key: value.cpu().numpy() for key, value in t.observation.items()},
        "after": {key: value.cpu().numpy() for key, value in t.after.items()},
        "action": t.action.cpu().numpy(),
        "reward": t.reward.cpu().numpy(),
        "running": t.running.cpu().numpy(),
        "terminated": t.terminated.cpu().numpy(),
        "truncated": t.truncated.cpu().numpy(),
        "clicked": t.info["clicked"].cpu().numpy(),
        "chosen_position": t.info["chosen_position"].cpu().numpy(),
    }


def _episodes(steps: list[dict[str, Any]], users: int) -> list[dict[str, Any]]:
    """One episode per user, as Minari stores it: the observation before each of its steps and the one after
    its last (n + 1), its actions as the env took them, rewards, terminations and truncations (n), and the infos
    of the reset and of each step (n + 1: no click before the first slate)."""
    out = []
    for u in range(users):
        mine = [s for s in steps if s["running"][u]]
        observations = {key: np.stack([s["observation"][key][u] for s in mine] + [mine[-1]["after"][key][u]])
                        for key in mine[0]["observation"]}  # fmt: skip
        out.append({
            "observations": observations,
            "actions": np.stack([s["action"][u] for s in mine]),
            "rewards": np.array([s["reward"][u] for s in mine], np.float64),
            "terminations": np.array([bool(s["terminated"][u]) for s in mine]),
            "truncations": np.array([bool(s["truncated"][u]) for s in mine]),
            "infos": {"clicked": np.array([False] + [bool(s["clicked"][u]) for s in mine]),
                      "chosen_position": np.array([-1] + [int(s["chosen_position"][u]) for s in mine])},
        })  # fmt: skip
    return out


def write_offline(fmt: str, data: dict[str, Any], out: Path, about: dict[str, Any]) -> dict[str, Any]:
    """Writes ``data`` (from :func:`collect`) in ``fmt`` to ``out``; returns what was written."""
    table = data["impressions"]
    if fmt in ("obd", "obp") and not data["propensity_known"]:
        raise ValueError(_unknown_propensity(about["agent"], fmt))
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"out": str(out), "format": fmt, "impressions": len(table["user"]),
               "slates": int(table["slate"].max() + 1) if len(table["slate"]) else 0, **about}  # fmt: skip
    if fmt == "parquet":
        _write_parquet(table, out, summary)
    elif fmt == "obd":
        _write_obd(table, data["action_context"], out)
    elif fmt == "obp":
        np.savez(out, **bandit_feedback(table, data["action_context"], data["slate_size"]))
    else:
        summary["dataset_id"] = MINARI_ID
        _write_minari(data, out, summary)
    return summary


def bandit_feedback(table: dict[str, np.ndarray], action_context: np.ndarray, slate_size: int) -> dict[str, Any]:
    """Open Bandit Pipeline's bandit feedback dict of the impressions (one round each)."""
    return {
        "n_rounds": np.int64(len(table["user"])),
        "n_actions": np.int64(len(action_context)),
        "action": table["item"].astype(np.int64),
        "position": table["position"].astype(np.int64),
        "reward": table["click"].astype(np.float64),
        "pscore": table["propensity"].astype(np.float64),
        "context": table["context"].astype(np.float64),
        "action_context": action_context.astype(np.float64),
        "len_list": np.int64(slate_size),
        "user": table["user"].astype(np.int64),
        "timestamp": table["timestamp"].astype(np.float64),
        "engagement": table["engagement"].astype(np.float64),
        "offered": table["offered"].astype(np.int64),
    }


def _write_parquet(table: dict[str, np.ndarray], out: Path, summary: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {k: pa.array(v) for k, v in table.items() if v.ndim == 1}
    for key in ("context", "offered"):  # a fixed-size list per row
        value = table[key]
        columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(value.reshape(-1)), value.shape[1])
    arrow = pa.table(columns).replace_schema_metadata({"metarec": json.dumps(summary)})
    pq.write_table(arrow, out)


def _write_obd(table: dict[str, np.ndarray], action_context: np.ndarray, out: Path) -> None:
    """The impressions in the Open Bandit Dataset's ``all.csv`` layout, and ``item_context.csv`` beside it (see
    :mod:`metarec.calibration.logs.obd`, which reads both back). The user's only feature is their id; the
    affinity columns count the user's clicks of each item on earlier slates."""
    users, items = table["user"], table["item"]
    num_users = int(users.max()) + 1 if len(users) else 0
    num_items = len(action_context)
    stamps = np.char.add((EPOCH + (table["timestamp"] * 1e6).astype("timedelta64[us]")).astype(str), "+00:00")
    header = ["", "timestamp", "item_id", "position", "click", "propensity_score", "user_feature_0"]
    header += [f"user-item_affinity_{j}" for j in range(num_items)]
    counts = np.zeros((num_users, num_items), np.int32)  # clicks so far, by user and item
    with open(out, "w") as handle:
        handle.write(",".join(header) + "\n")
        for rows in _step_blocks(users, int(table["position"].max()) + 1 if len(users) else 1):
            affinity = counts[users[rows]]
            for r, row in enumerate(rows):
                handle.write(f"{row},{stamps[row]},{items[row]},{table['position'][row] + 1},{table['click'][row]},"
                             f"{table['propensity'][row]:.6g},{users[row]},"
                             + ",".join(map(str, affinity[r].tolist())) + "\n")  # fmt: skip
            clicked = rows[table["click"][rows] == 1]
            np.add.at(counts, (users[clicked], items[clicked]), 1)
    item_header = ["", "item_id"] + [f"item_feature_{j}" for j in range(action_context.shape[1])]
    with open(out.parent / OBD_ITEM_FILE, "w") as handle:
        handle.write(",".join(item_header) + "\n")
        for item, features in enumerate(action_context):
            handle.write(f"{item},{item}," + ",".join(f"{x:.6g}" for x in features) + "\n")


def _step_blocks(users: np.ndarray, slate_size: int) -> list[np.ndarray]:
    """The impressions' rows, one block per simulated step: a step lists its users in increasing order, so the
    next step begins where a slate's user is not above the one before."""
    slate_user = users[::slate_size]
    starts = np.flatnonzero(np.r_[True, slate_user[1:] <= slate_user[:-1]])
    ends = np.r_[starts[1:], len(slate_user)]
    return [np.arange(a * slate_size, b * slate_size) for a, b in zip(starts, ends, strict=True)]


def _write_minari(data: dict[str, Any], out: Path, summary: dict[str, Any]) -> None:
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    observation_space, action_space = data["spaces"]
    buffers = [EpisodeBuffer(id=u, **episode) for u, episode in enumerate(data["episodes"])]
    if (out / MINARI_ID).exists():  # --overwrite of a folder simulate-logs made: its dataset is written afresh
        shutil.rmtree(out / MINARI_ID)
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(out.resolve())  # Minari joins a relative one onto itself
    try:
        minari.create_dataset_from_buffers(
            MINARI_ID, buffers, observation_space=observation_space, action_space=action_space,
            algorithm_name=summary["agent"], description=json.dumps(summary), author="metarec simulate-logs",
            author_email="none", code_permalink="none",
        )  # fmt: skip
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous

