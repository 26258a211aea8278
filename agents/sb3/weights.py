"""SB3 models loaded without running code from the files: weights only, never pickle.

SB3's own ``load`` and ``load_replay_buffer`` unpickle (cloudpickle) what a zip's ``data`` entry and a
``.pkl`` file hold, so a crafted file runs code. Here the model is built by the caller (from a validated
config) and only plain data comes from disk:

* :func:`load_sb3_weights`: the policy's (and optionally the optimizer's) state dicts from a zip that
  ``model.save`` wrote, through ``torch.load(..., weights_only=True)``;
* :func:`restore_sb3_counters`: step counters (``num_timesteps``, ...) read as plain JSON numbers from the
  zip's ``data`` entry, whose ``:serialized:`` values are never decoded;
* :func:`save_replay_buffer` / :func:`load_replay_buffer`: an off-policy replay buffer as plain arrays in an
  ``.npz`` file, read back with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer

from metarec.io import atomic_write

# Plain numbers SB3 keeps in a zip's ``data`` entry that say how far training got; nothing else is read.
COUNTERS = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_n_calls",
    "exploration_rate",
    "_current_progress_remaining",
)
# The arrays of a ReplayBuffer / DictReplayBuffer; observations may be dicts of arrays.
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _zip_entry(path: Path, entry: str, required: bool = True) -> bytes | None:
    """The bytes of ``entry`` in the zip ``path``; None if it is absent and not ``required``."""
    try:
        with zipfile.ZipFile(path) as archive:
            if entry not in archive.namelist():
                if required:
                    raise ValueError(f"agent: {path} holds no {entry} (not a model saved by stable-baselines3?)")
                return None
            return archive.read(entry)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"agent: {path} is not a readable zip file ({type(err).__name__}: {err})") from None


def _state_dict(path: Path, entry: str, device: torch.device, required: bool = True) -> dict[str, Any] | None:
    """``entry`` of the zip ``path`` loaded as a state dict by ``torch.load(weights_only=True)``."""
    data = _zip_entry(path, entry, required)
    if data is None:
        return None
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(
            f"agent: {path}: {entry} is not a plain torch state dict (torch.load with weights_only=True "
            f"refused it: {type(err).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"agent: {path}: {entry} is not a state dict (got {type(state).__name__})")
    return state


def _check_fits(path: Path, entry: str, module: torch.nn.Module, state: dict[str, Any]) -> None:
    """A one-line ValueError unless ``state`` has exactly ``module``'s keys and shapes."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [
        key
        for key in expected.keys() & state.keys()
        if not isinstance(state[key], torch.Tensor) or state[key].shape != expected[key].shape
    ]
    problems = [
        f"{label} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", sorted(wrong)))
        if keys
    ]
    if problems:
        raise ValueError(
            f"agent: {path}: the weights in {entry} do not fit the policy built from the run's config "
            f"({'; '.join(problems)})"
        )


def load_sb3_weights(model: BaseAlgorithm, path: str | Path, optimizer: bool = False) -> None:
    """Loads the ``policy.pth`` state dict of the SB3 zip ``path`` into ``model.policy`` (and, with
    ``optimizer``, ``policy.optimizer.pth`` into its optimizer, if the zip has one). Nothing is unpickled:
    a missing entry, or weights that do not fit, give a ValueError naming the file."""
    path = Path(path)
    state = _state_dict(path, "policy.pth", model.device)
    _check_fits(path, "policy.pth", model.policy, state)
    model.policy.load_state_dict(state)
    if not optimizer:
        return
    optimizer_state = _state_dict(path, "policy.optimizer.pth", model.device, required=False)
    if optimizer_state is None:
        return
    try:
        model.policy.optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"agent: {path}: policy.optimizer.pth does not fit the optimizer ({reason})") from None


def restore_sb3_counters(model: BaseAlgorithm, path: str | Path) -> dict[str, int | float]:
    """Sets ``model``'s step counters (:data:`COUNTERS` it has) from the zip's ``data`` entry, read as
    plain JSON; only numbers of the counters' own types are taken. Returns what was set."""
    path = Path(path)
    try:
        data = json.loads(_zip_entry(path, "data"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"agent: {path}: its data entry is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"agent: {path}: its data entry is not a JSON object")
    restored: dict[str, int | float] = {}
    for name in COUNTERS:
        if name not in data or not hasattr(model, name):
            continue
        value, current = data[name], getattr(model, name)
        kind = int if isinstance(current, int) and not isinstance(current, bool) else float
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and isinstance(value, float)):
            raise ValueError(f"agent: {path}: {name} in its data entry is not a number of type {kind.__name__}")
        restored[name] = kind(value)
        setattr(model, name, kind(value))
    return restored


def _buffer_arrays(buffer: ReplayBuffer) -> dict[str, np.ndarray]:
    """The buffer's arrays by name (``observations/KEY`` for dict observations); the rows not filled yet
    are left out (they are zeros in a new buffer)."""
    rows = buffer.buffer_size if buffer.full else buffer.pos
    arrays: dict[str, np.ndarray] = {}
    for name in BUFFER_ARRAYS:
        value = getattr(buffer, name, None)
        if isinstance(value, dict):
            arrays.update({f"{name}/{key}": array[:rows] for key, array in value.items()})
        elif value is not None:
            arrays[name] = value[:rows]
    return arrays


def save_replay_buffer(buffer: ReplayBuffer, path: str | Path) -> Path:
    """``buffer``'s contents as plain arrays in the ``.npz`` file ``path``, atomically."""
    arrays = {**_buffer_arrays(buffer), "pos": np.asarray(buffer.pos), "full": np.asarray(buffer.full)}
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def load_replay_buffer(buffer: ReplayBuffer, path: str | Path) -> None:
    """Fills ``buffer`` (a new one of the same shape) from what :func:`save_replay_buffer` wrote to
    ``path``, read with ``allow_pickle=False``; a file that does not fit gives a ValueError naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as saved:
            stored = {name: saved[name] for name in saved.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"agent: {path} is not a replay buffer of plain arrays ({err})") from None
    pos, full = stored.pop("pos", None), stored.pop("full", None)
    if pos is None or full is None or pos.shape != () or full.shape != () or not 0 <= int(pos) < buffer.buffer_size:
        raise ValueError(f"agent: {path}: pos or full is missing or out of range")
    rows = buffer.buffer_size if bool(full) else int(pos)
    targets = _buffer_arrays(buffer)
    if stored.keys() != targets.keys():
        raise ValueError(f"agent: {path} holds {sorted(stored)}, the replay buffer {sorted(targets)}")
    for name, array in stored.items():
        target = getattr(buffer, name.partition("/")[0])
        target = target[name.partition("/")[2]] if isinstance(target, dict) else target
        if array.shape != (rows, *target.shape[1:]) or array.dtype != target.dtype:
            raise ValueError(
                f"agent: {path}: {name} is {array.dtype}{list(array.shape)}, the replay buffer's "
                f"{target.dtype}{[rows, *target.shape[1:]]}"
            )
        target[:rows] = array
    buffer.pos, buffer.full = int(pos), bool(full)
