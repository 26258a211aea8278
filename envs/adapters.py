"""Thin Gymnasium adapters over a :class:`~metarec.envs.core.model.UserModel`.

* :class:`UserSimEnv` — one user, a ``gymnasium.Env``; numpy arrays in and out (what
  stable-baselines3 and ``check_env`` expect). Runs the model on the numpy backend by default (the
  fast path for one user) or on torch (``backend="torch"``: step-for-step the same as a vector env of
  one user with the same seed).
* :class:`UserSimVectorEnv` — ``B`` users, a native ``gymnasium.vector.VectorEnv`` on torch, on any
  device; observations, rewards and infos are torch tensors on that device.

Autoreset (vector env): ``AutoresetMode.SAME_STEP`` by default. When user ``b`` terminates or is
truncated, the same ``step`` call replaces them by a fresh user and returns the new user's first
observation; the last observation of the finished episode is in ``infos["final_obs"]`` (a dict of
tensors for the whole batch, valid where ``infos["_final_obs"]`` is True). With ``autoreset=False``
(``AutoresetMode.DISABLED``) finished users stay as they are until ``reset(options={"reset_mask":
mask})``.

Actions: a slate is ``K`` candidate indices in ``[0, N)`` (``MultiDiscrete``), or one index in the
single-item variants (``Discrete``). Any element of the action space is legal; a repeated index is
shown once (see :mod:`metarec.envs.core.choice`). Malformed actions raise ``ValueError`` naming the problem.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from pydantic import BaseModel

from metarec.config import validate_config
from metarec.envs.core.backend import Backend, NumpyRandom, Random, numpy_backend, torch_backend
from metarec.envs.core.finite import (
    confirmed_finite,
    finite_flag,
    host_finite_quick,
    non_finite_report,
    step_quantities,
)
from metarec.envs.core.model import State, UserModel
from metarec.envs.fitted_task import FittedTask


def build_config(
    config_class: type[BaseModel], config: Any, overrides: dict[str, Any], single_item: bool = False
) -> Any:
    """A validated ``config_class`` from a config object or dict plus keyword overrides (nested
    dicts merge into the defaults). Errors name the field."""
    if isinstance(config, FittedTask):  # its world and users are not in its fields
        raise ValueError(
            "config: a task of fitted users runs on metarec/Calibrated-v0 over its population "
            "(metarec.envs.fitted_task.task_env gives the env and its arguments)"
        )
    if isinstance(config, config_class):
        base = config.model_dump()
    elif config is None:
        base = {}
    elif isinstance(config, dict):
        base = dict(config)
    else:
        raise ValueError(f"config: expected a {config_class.__name__}, a dict or None, got {type(config).__name__}")
    for key, value in overrides.items():
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    if single_item:
        if base.get("slate_size", 1) != 1:
            raise ValueError(f"slate_size: single_item environments show one item, got {base['slate_size']}")
        base["slate_size"] = 1
    return validate_config(config_class, base)


def action_space_of(model: UserModel, single_item: bool) -> spaces.Space:
    if single_item:
        return spaces.Discrete(model.num_candidates)
    return spaces.MultiDiscrete(np.full(model.slate_size, model.num_candidates, dtype=np.int64))


def check_slates(action: Any, num_candidates: int, slate_size: int, batch: int | None, single_item: bool) -> Any:
    """Validates an action and returns it as an int64 slate array (``[B, K]``; ``[1, K]`` when
    ``batch`` is None). Raises ``ValueError`` naming the problem."""
    expected = (() if batch is None else (batch,)) + (() if single_item else (slate_size,))
    out_shape = (1 if batch is None else batch, 1 if single_item else slate_size)
    # Fast path for what the single-user env is usually given: a well-formed integer numpy array
    # (small: its range is checked in Python, cheaper than two numpy reductions).
    if type(action) is np.ndarray and action.dtype.kind in "iu" and action.shape == expected and action.size <= 64:
        flat = action.reshape(-1).tolist()
        if flat and (min(flat) < 0 or max(flat) >= num_candidates):
            bad = next(a for a in flat if a < 0 or a >= num_candidates)
            raise ValueError(f"action: candidate indices must lie in [0, {num_candidates}), got {bad}")
        return action.astype(np.int64, copy=False).reshape(out_shape)
    import torch

    in_range = f"candidate indices must lie in [0, {num_candidates})"

    is_tensor = isinstance(action, torch.Tensor)
    if not is_tensor:
        if isinstance(action, bool | np.bool_):
            raise ValueError(f"action: expected integer candidate indices, got a bool ({action!r})")
        action = np.asarray(action)
    if is_tensor:
        integer = not (action.dtype.is_floating_point or action.dtype.is_complex or action.dtype == torch.bool)
    else:
        integer = np.issubdtype(action.dtype, np.integer)
    if not integer:
        raise ValueError(f"action: expected integer candidate indices, got dtype {action.dtype}")
    if tuple(action.shape) != expected:
        form = "one candidate index" if single_item else f"a slate of {slate_size} candidate indices"
        if batch is not None:
            form += f" per user, shape {expected}"
        raise ValueError(f"action: expected {form}, got shape {tuple(action.shape)}")
    if action.numel() if is_tensor else action.size:
        # both bounds in one reduction (and one device sync)
        low, high = torch.stack(torch.aminmax(action)).tolist() if is_tensor else (action.min(), action.max())
        if low < 0 or high >= num_candidates:
            bad = (action < 0) | (action >= num_candidates)
            raise ValueError(f"action: {in_range}, got {int(action[bad].reshape(-1)[0])}")
    slate = action.to(torch.int64).contiguous() if is_tensor else action.astype(np.int64, copy=False)
    return slate.reshape(out_shape)


class UserSimEnv(gym.Env):
    """A Gymnasium environment of one simulated user over a :class:`UserModel`.

    Subclasses set ``config_class`` (a pydantic model of the environment's parameters) and
    ``model_class`` (built as ``model_class(config, backend)``); everything else is shared.

    Args:
        config: a ``config_class`` instance or dict; keyword ``overrides`` of its fields merge in.
        single_item: ``Discrete`` actions of one item instead of slates.
        ground_truth: put the oracle's slate, its value, true utilities and regret in ``info``.
        backend: ``"numpy"`` (fast for one user) or ``"torch"`` (step-for-step equal to a vector
            env of one user with the same seed).
    """

    metadata: dict[str, Any] = {"render_modes": []}
    config_class: type[BaseModel]
    model_class: type[UserModel]

    def __init__(
        self,
        config: Any = None,
        *,
        single_item: bool = False,
        ground_truth: bool = True,
        backend: str = "numpy",
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode: this environment does not render, got {render_mode!r}")
        self.config = build_config(self.config_class, config, overrides, single_item)
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend: expected 'numpy' or 'torch', got {backend!r}")
        self.backend: Backend = numpy_backend() if backend == "numpy" else torch_backend("cpu")
        self.model = self.build_model(self.backend)
        # the model's fused step for one user on numpy, where it has one (same trajectories, faster)
        self._one_user = self.model.one_user()
        self.single_item = single_item
        self.ground_truth = ground_truth
        self.observation_space = self.model.observation_space()
        self.action_space = action_space_of(self.model, single_item)
        self._rng: Random | None = None
        self._state: State | None = None
        self._next_truth: Any = None  # the ground truth of the current state, when already computed
        self._oracle_value = 0.0
        self._steps = 0  # steps since the last reset (for the NaN guard's report)

    def build_model(self, backend: Backend) -> UserModel:
        """The user model this environment adapts, on ``backend``."""
        return self.model_class(self.config, backend)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if self.backend.name == "numpy":
            self._rng = NumpyRandom(self.np_random)
        elif seed is not None or self._rng is None:
            self._rng = self.backend.make_random(seed if seed is not None else int(self.np_random.integers(2**62)))
        self._state = self.model.initial_state(self._rng, 1)
        self._next_truth = None
        self._steps = 0
        observation = self._observation()
        return observation, self._checked(None, self._truth({}))

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        if self._state is None or self._rng is None:
            raise RuntimeError("step() called before reset()")
        slate = check_slates(action, self.model.num_candidates, self.model.slate_size, None, self.single_item)
        if self._one_user is not None:
            self._state, reward, terminated, truncated, info = self._one_user.step(
                self._rng.generator, self._state, slate[0].tolist(), self._next_truth
            )
            self._next_truth = None
            if self.ground_truth:
                info["regret"] = self._oracle_value - info["expected_reward"]
            observation = self._observation()
            return observation, reward, terminated, truncated, self._checked(reward, self._truth(info))
        on_numpy = self.backend.name == "numpy"
        if not on_numpy:
            slate = self.backend.asarray(slate)
        self._state, outcome = self.model.step(self._rng, self._state, slate, self._next_truth)
        self._next_truth = None
        if on_numpy:  # every array is [1] (one user): .item() is its Python scalar
            # (a per-item entry, ``item_arrived`` [1, M], stays an array)
            info = {key: value.item() if value.ndim == 1 else value[0].copy() for key, value in outcome.info.items()}
            reward, terminated, truncated = outcome.reward.item(), outcome.terminated.item(), outcome.truncated.item()
        else:
            info = {key: self._scalar(value) for key, value in outcome.info.items()}
            reward, terminated, truncated = outcome.reward[0], outcome.terminated[0], outcome.truncated[0]
        if self.ground_truth:
            info["regret"] = self._oracle_value - info["expected_reward"]
        reward = float(reward)
        observation = self._observation()
        return observation, reward, bool(terminated), bool(truncated), self._checked(reward, self._truth(info))

    def _checked(self, reward: float | None, info: dict[str, Any]) -> dict[str, Any]:
        """``info``, after the NaN guard (:mod:`metarec.envs.core.finite`) on what a step (``reward``) or a reset
        (None) gave: the reward, the expected reward, the regret, the ground truth of the next decision and the
        model's guarded state. Raises ``FloatingPointError`` naming what is NaN or infinite."""
        state, keys = self._state, self.model.guarded_keys
        assert state is not None
        if reward is not None:
            self._steps += 1
        if self.backend.name == "numpy" and host_finite_quick(reward, info, state, keys):
            return info
        quantities = step_quantities(reward, info, state, keys)
        if not confirmed_finite(quantities, finite_flag(quantities)):
            raise FloatingPointError(non_finite_report(quantities, self._steps, per_user=False))
        return info

    def _observation(self) -> dict[str, np.ndarray]:
        assert self._state is not None
        if self._one_user is not None:
            return self._one_user.observe(self._state)
        # A copy: observations may be views of shared data (a frozen corpus), and users keep them.
        observation = self.model.observe(self._state)
        if self.backend.name == "numpy":
            return {key: value[0].copy() for key, value in observation.items()}
        return {key: np.array(self.backend.to_numpy(value)[0]) for key, value in observation.items()}

    def _truth(self, info: dict[str, Any]) -> dict[str, Any]:
        """Adds the ground truth of the next decision: true utilities, the oracle's slate and value."""
        if self.ground_truth:
            assert self._state is not None
            if self._one_user is not None:
                slate, self._oracle_value, utilities, self._next_truth = self._one_user.oracle(self._state)
                info.update(oracle_slate=slate, oracle_value=self._oracle_value, candidate_utilities=utilities)
                return info
            slate, value, truth = self.model.oracle(self._state)
            self._next_truth = truth
            to_np = self.backend.to_numpy
            info["oracle_slate"] = to_np(slate)[0]
            info["oracle_value"] = self._oracle_value = to_np(value)[0].item()
            info["candidate_utilities"] = to_np(truth.utilities)[0]
        return info

    def _scalar(self, value: Any) -> Any:
        row = self.backend.to_numpy(value)[0]
        return row.item() if row.ndim == 0 else np.array(row)
