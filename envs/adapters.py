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
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from pydantic import BaseModel

from metarec.config import validate_config
from metarec.envs.core.backend import Backend, Random, RowSubsetRandom, numpy_backend, torch_backend
from metarec.envs.core.model import ChoiceModel, State, UserModel


def build_config(
    config_class: type[BaseModel], config: Any, overrides: dict[str, Any], single_item: bool = False
) -> Any:
    """A validated ``config_class`` from a config object or dict plus keyword overrides (nested
    dicts merge into the defaults). Errors name the field."""
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
    bad = (action < 0) | (action >= num_candidates)
    if bool(bad.any()):
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

    def build_model(self, backend: Backend) -> UserModel:
        """The user model this environment adapts, on ``backend``."""
        return self.model_class(self.config, backend)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if self.backend.name == "numpy":
            from metarec.envs.core.backend import NumpyRandom

            self._rng = NumpyRandom(self.np_random)
        elif seed is not None or self._rng is None:
            self._rng = self.backend.make_random(seed if seed is not None else int(self.np_random.integers(2**62)))
        self._state = self.model.initial_state(self._rng, 1)
        self._next_truth = None
        return self._observation(), self._truth({})

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
            return self._observation(), reward, terminated, truncated, self._truth(info)
        on_numpy = self.backend.name == "numpy"
        if not on_numpy:
            slate = self.backend.asarray(slate)
        self._state, outcome = self.model.step(self._rng, self._state, slate, self._next_truth)
        self._next_truth = None
        if on_numpy:  # every array is [1] (one user): .item() is its Python scalar
            info = {key: value.item() for key, value in outcome.info.items()}
            reward, terminated, truncated = outcome.reward.item(), outcome.terminated.item(), outcome.truncated.item()
        else:
            info = {key: self._scalar(value) for key, value in outcome.info.items()}
            reward, terminated, truncated = outcome.reward[0], outcome.terminated[0], outcome.truncated[0]
        if self.ground_truth:
            info["regret"] = self._oracle_value - info["expected_reward"]
        return self._observation(), float(reward), bool(terminated), bool(truncated), self._truth(info)

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
        return self.backend.to_numpy(value)[0].item()


def check_vector_arguments(num_envs: Any, render_mode: str | None) -> int:
    """``num_envs`` as an int, after the checks every metarec vector env makes of its arguments."""
    if render_mode is not None:
        raise ValueError(f"render_mode: this environment does not render, got {render_mode!r}")
    if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
        raise ValueError(f"num_envs: expected a positive integer, got {num_envs!r}")
    return int(num_envs)


def _where_rows(rows: Any, new: State, old: State) -> State:
    """``new``'s users where ``rows`` (``[B]`` bool), ``old``'s elsewhere."""
    import torch

    return {
        key: torch.where(rows.reshape(-1, *([1] * (value.dim() - 1))), new[key], value) for key, value in old.items()
    }


class UserSimVectorEnv(VectorEnv):
    """``num_envs`` simulated users stepping as one batch of torch tensors on ``device``.

    Subclasses set ``config_class`` and ``model_class`` as for :class:`UserSimEnv`, whose arguments
    this takes too (less ``backend``), plus ``num_envs``, ``device``, ``autoreset`` and ``shard``.

    ``shard=(full_batch, rows)`` makes these users rows ``rows`` of a batch of ``full_batch`` users
    (another process steps the others): every random draw is made at the full size and these rows
    taken, so each user's trajectory is the one it has in the whole batch. ``keyed_resets=True``
    (implied by ``shard``) draws, every step, a newcomer for every row and lets autoreset keep those
    of the rows that finished: the random stream then never depends on who finished (in this process
    or another), so a newcomer too is the one the whole batch would get.
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}
    config_class: type[BaseModel]
    model_class: type[UserModel]

    def __init__(
        self,
        num_envs: int,
        config: Any = None,
        *,
        device: Any = "cpu",
        single_item: bool = False,
        ground_truth: bool = True,
        autoreset: bool = True,
        shard: tuple[int, Any] | None = None,
        keyed_resets: bool = False,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        self.num_envs = check_vector_arguments(num_envs, render_mode)
        if shard is not None:
            full, rows = shard
            if len(rows) != self.num_envs or min(rows) < 0 or max(rows) >= full:
                raise ValueError(f"shard: expected {self.num_envs} rows in [0, {full}), got {len(rows)} rows")
        self.shard = shard
        self.keyed_resets = bool(keyed_resets) or shard is not None
        self.config = build_config(self.config_class, config, overrides, single_item)
        self.backend = torch_backend(device)
        self.device = self.backend.device
        self.model = self.build_model(self.backend)
        self.single_item = single_item
        self.ground_truth = ground_truth
        self.autoreset = autoreset
        self.metadata = {
            **type(self).metadata,
            "autoreset_mode": AutoresetMode.SAME_STEP if autoreset else AutoresetMode.DISABLED,
        }
        self.single_observation_space = self.model.observation_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.single_action_space = action_space_of(self.model, single_item)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rng: Random | None = None
        self._state: State | None = None
        self._next_truth: ChoiceModel | None = None
        self._oracle_value: Any = None
        self._steps = 0  # steps since the last full reset (for the NaN guard's report)

    def build_model(self, backend: Backend) -> UserModel:
        """The user model this environment adapts, on ``backend``."""
        return self.model_class(self.config, backend)

    def make_random(self, seed: int | None) -> Random:
        """The generator ``reset(seed=...)`` installs (its draws at the full batch's size when sharded)."""
        base = self.backend.make_random(seed)
        if self.shard is None:
            return base
        full, rows = self.shard
        return RowSubsetRandom(base, full, self.backend.asarray(np.asarray(rows, dtype=np.int64)))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is None and self._rng is None and self.shard is not None:
            raise ValueError("seed: a sharded env needs reset(seed=...) (every process must draw the same stream)")
        if seed is not None or self._rng is None:
            self._rng = self.make_random(seed)
        mask = (options or {}).get("reset_mask")
        if mask is not None and self._state is not None:
            mask = self.backend.asarray(np.asarray(mask, dtype=bool)) if not hasattr(mask, "device") else mask
            if tuple(mask.shape) != (self.num_envs,):
                raise ValueError(f"options['reset_mask']: expected shape ({self.num_envs},), got {tuple(mask.shape)}")
            self._state = self._new_users(mask.to(self.device, bool))
        else:
            self._state = self.model.initial_state(self._rng, self.num_envs)
        self._next_truth = None
        if mask is None:
            self._steps = 0
        return self.model.observe(self._state), self._truth({})

    def step(self, actions: Any) -> tuple[dict, Any, Any, Any, dict]:
        if self._state is None or self._rng is None:
            raise RuntimeError("step() called before reset()")
        import torch

        slate = check_slates(actions, self.model.num_candidates, self.model.slate_size, self.num_envs, self.single_item)
        slate = slate.to(self.device) if isinstance(slate, torch.Tensor) else self.backend.asarray(slate)
        self._state, outcome = self.model.step(self._rng, self._state, slate, self._next_truth)
        self._next_truth = None
        infos = dict(outcome.info)
        if self.ground_truth:
            infos["regret"] = self._oracle_value - infos["expected_reward"]
        observation = self.model.observe(self._state)
        done = outcome.terminated | outcome.truncated
        self._steps += 1
        # one device sync for both questions: did anyone finish, and is everything finite (the NaN guard)
        finite = torch.isfinite(outcome.reward).all()
        for key in self.model.guarded_keys:
            finite = finite & torch.isfinite(self._state[key]).all()
        any_done, all_finite = torch.stack([done.any(), finite]).tolist()
        if not all_finite:
            raise FloatingPointError(self._non_finite_report(outcome.reward))
        if self.autoreset and any_done:
            infos["final_obs"] = observation
            infos["_final_obs"] = done
            self._state = self._new_users(done)
            observation = self._observe_rows(observation, done)  # only the fresh users are observed
        elif self.autoreset and self.keyed_resets:
            # keyed resets draw newcomers every step, so the stream never depends on who finished (in
            # another process, say); nobody finished, so the draw is only made, not used
            self._keyed_fresh_users()
        return observation, outcome.reward, outcome.terminated, outcome.truncated, self._truth(infos)

    def _non_finite_report(self, reward: Any) -> str:
        """Where a NaN or inf arose: the quantity, the env step and the first users it hit."""
        import torch

        where = [("reward", reward)] + [(f"state['{k}']", self._state[k]) for k in self.model.guarded_keys]
        parts = []
        for name, value in where:
            bad = ~torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
            if bool(bad.any()):
                users = torch.nonzero(bad)[:8, 0].tolist()
                parts.append(f"{name} of {int(bad.sum())} users (first: {users})")
        return (
            f"simulator: NaN or inf at env step {self._steps} in {'; '.join(parts)}; the users' population "
            "parameters or the actions that reached them are the place to look"
        )

    def _truth(self, infos: dict[str, Any]) -> dict[str, Any]:
        if self.ground_truth:
            assert self._state is not None
            slate, value, truth = self.model.oracle(self._state)
            self._next_truth = truth
            infos["oracle_slate"] = slate
            infos["oracle_value"] = self._oracle_value = value
            infos["candidate_utilities"] = truth.utilities
        return infos

    @property
    def state(self) -> State:
        """The hidden state of every user (ground truth, for metrics and tests; never for policies)."""
        if self._state is None:
            raise RuntimeError("the environment has not been reset")
        return self._state

    def state_nbytes(self) -> int:
        """Bytes of simulator state held for all users."""
        return self.model.state_nbytes(self.state)

    def _new_users(self, done: Any) -> State:
        """The state with the users where ``done`` replaced by fresh ones (see ``keyed_resets``)."""
        if not self.keyed_resets:
            return self.model.reset_users(self._rng, self._state, done)
        return _where_rows(done, self._keyed_fresh_users(), self._state)

    def _keyed_fresh_users(self) -> State:
        """A fresh user for every row, each drawn as the whole batch's row would be."""
        import torch

        return self.model.fresh_users(self._rng, self._state, torch.arange(self.num_envs, device=self.device))

    def _observe_rows(self, observation: dict[str, Any], rows: Any) -> dict[str, Any]:
        """``observation`` with the users where ``rows`` observed anew (only they are observed)."""
        import torch

        index = torch.nonzero(rows)[:, 0]
        fresh = self.model.observe({key: value[index] for key, value in self._state.items()})
        return {key: value.index_copy(0, index, fresh[key]) for key, value in observation.items()}

    def get_checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue exactly from here: every user's state and the generator (of a
        sharded env: the whole batch's generator, which every shard holds alike, and these users)."""
        if self._state is None or self._rng is None:
            raise RuntimeError("the environment has not been reset")
        rng = self._rng.base if isinstance(self._rng, RowSubsetRandom) else self._rng
        return {
            "num_envs": self.num_envs,
            "state": {key: value.clone() for key, value in self._state.items()},
            "rng": rng.__getstate__(),
        }

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> tuple[dict, dict]:
        """Restores :meth:`get_checkpoint`'s output; returns the observation and ground-truth info
        of the restored users (as ``reset`` would)."""
        if checkpoint.get("num_envs") != self.num_envs:
            raise ValueError(f"checkpoint: saved for {checkpoint.get('num_envs')} users, this env has {self.num_envs}")
        rng = self.make_random(0)
        base = rng.base if isinstance(rng, RowSubsetRandom) else rng
        base.__setstate__({**checkpoint["rng"], "device": str(self.device)})
        self._rng = rng
        self._state = {key: value.to(self.device) for key, value in checkpoint["state"].items()}
        self._next_truth = None
        return self.model.observe(self._state), self._truth({})
