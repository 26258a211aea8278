"""The compact observation of ``DriftingUsers-v0``: indices into shared tables instead of per-user copies.

The default observation materialises every candidate's and every history entry's features
(``[B, N, d + 1]`` and ``[B, H, d + 3]`` float32: 2.1 GB at a million users, four times the users' state).
With ``compact_observation=True`` the vector env returns what those features are gathered from:

* ``candidate_ids`` ``[B, N]``: catalog ids (as in the default observation);
* ``history_ids`` ``[B, H]``: rows of the history table (0: before the first step, 1: a step without a click,
  ``2 + item``: the item consumed);
* ``history_engagement`` ``[B, H]``: the engagement of each history entry.

The tables (:func:`observation_tables`, the env's ``observation_tables``) are the same for every user and
fixed while the catalog is: a churning catalog is refused. :func:`expand_observation` turns a compact
observation back into the default one, bit for bit; a policy gathers the features where it needs them
(:class:`~metarec.agents.nn.networks.SlatePolicy` takes the tables), so rollouts store indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from metarec.envs.core.backend import Array

EMPTY = -2  # the model's history entry before the first step (metarec.envs.drifting.model.EMPTY)


def compact_observation_space(num_candidates: int, history_length: int, num_items: int) -> spaces.Dict:
    """The space of one user's compact observation."""
    return spaces.Dict(
        {
            "candidate_ids": spaces.Box(0, num_items - 1, (num_candidates,), np.int64),
            "history_ids": spaces.Box(0, num_items + 1, (history_length,), np.int64),
            "history_engagement": spaces.Box(0.0, np.inf, (history_length,), np.float32),
        }
    )


def observe_compact(state: dict[str, Array]) -> dict[str, Array]:
    """The compact observation of every user in ``state`` (the model's state dict)."""
    return {
        "candidate_ids": state["candidates"],
        "history_ids": state["history_item"] - EMPTY,
        "history_engagement": state["history_engagement"],
    }


def observation_tables(candidate_table: Array, history_table: Array) -> dict[str, Array]:
    """What :func:`expand_observation` gathers from: ``candidates`` ``[M, d + 1]`` (embedding, length) and
    ``history`` ``[M + 2, d + 3]`` (embedding or 0, engagement (0: filled in per user), consumed, valid)."""
    return {"candidates": candidate_table, "history": history_table}


def expand_observation(compact: dict[str, Any], tables: dict[str, Any]) -> dict[str, Any]:
    """The default observation from a compact one and the tables (torch tensors, any leading shape): what
    the env returns with ``compact_observation=False``, bit for bit."""
    ids, rows = compact["candidate_ids"], compact["history_ids"]
    candidates = tables["candidates"].index_select(0, ids.reshape(-1)).reshape(*ids.shape, -1)
    history = tables["history"].index_select(0, rows.reshape(-1)).reshape(*rows.shape, -1)
    history[..., -3] = compact["history_engagement"]
    return {"candidates": candidates, "candidate_ids": ids, "history": history}
