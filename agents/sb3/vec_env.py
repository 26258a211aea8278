"""An SB3 ``VecEnv`` over a native metarec vector env: SB3 sees one environment per simulated user."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from metarec.envs.vector import recommender_observation, recommender_space


class SB3VecEnv(VecEnv):
    """An SB3 ``VecEnv`` over a native metarec vector env: SB3 sees one environment per simulated user.

    Observations are dicts of numpy arrays ``[B, ...]``, rewards float32 ``[B]``, dones bool ``[B]``. The
    native env resets finished users in the same step (``SAME_STEP`` autoreset), which is what SB3 expects: the
    returned observation is the new user's first, and the finished user's ``info`` holds
    ``terminal_observation``, ``TimeLimit.truncated`` (truncated and not terminated) and ``episode``
    (``r`` return, ``l`` length, ``t`` seconds since creation, as SB3's ``Monitor`` writes it, so SB3 logs
    ``rollout/ep_rew_mean`` unwrapped). Every ``info`` also carries the env's per-user step info (``clicked``,
    ``engagement``, ...) as Python scalars, for :class:`RecommenderMetricsCallback`.

    The users share one vector environment and one random generator: ``seed(s)`` seeds the next ``reset`` with
    ``s`` (SB3's per-env seeds ``s + i`` collapse to the first), ``get_attr`` reads the shared environment, and
    ``set_attr`` / ``env_method`` apply to the whole batch, so they refuse a subset of ``indices``.

    An env with compact observations (``compact_observation=True``) steps on indices, and SB3 sees the full
    observation (expanded here), whose space it is built with: SB3's policies and rollout buffer take features.

    Args:
        vector_env: a metarec vector env, e.g. ``gym.make_vec(id, num_envs=B,
            vectorization_mode="vector_entry_point")``, in its default ``SAME_STEP`` autoreset mode.
    """

    def __init__(self, vector_env: VectorEnv) -> None:
        mode = vector_env.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(f"vector_env: expected the SAME_STEP autoreset mode (autoreset=True), got {mode}")
        self.venv = vector_env
        super().__init__(vector_env.num_envs, recommender_space(vector_env), vector_env.single_action_space)
        self.keys = list(self.observation_space.spaces)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._created = time.time()

    def reset(self) -> VecEnvObs:
        if any(options != self._options[0] for options in self._options):
            raise ValueError("options: the users share one vector environment; set the same options for all")
        observation, info = self.venv.reset(seed=self._seeds[0], options=self._options[0] or None)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = self._per_user(info)
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self._numpy(observation)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape((self.num_envs, *self.action_space.shape))

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        observation, reward, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        rewards = _array(reward).astype(np.float32)
        terminated, truncated = _array(terminated), _array(truncated)
        dones = terminated | truncated
        infos = self._per_user(info)
        self._returns += rewards
        self._lengths += 1
        if dones.any():
            final = self._numpy(info["final_obs"])
            elapsed = round(time.time() - self._created, 6)
            for b in np.flatnonzero(dones):
                infos[b]["terminal_observation"] = {key: final[key][b] for key in self.keys}
                infos[b]["TimeLimit.truncated"] = bool(truncated[b] and not terminated[b])
                infos[b]["episode"] = {"r": float(self._returns[b]), "l": int(self._lengths[b]), "t": elapsed}
            self._returns[dones] = 0.0
            self._lengths[dones] = 0
        return self._numpy(observation), rewards, dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = self._attribute(attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._require_whole_batch(indices, "set_attr")
        setattr(self.venv.unwrapped, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list:
        self._require_whole_batch(indices, "env_method")
        result = self._attribute(method_name)(*method_args, **method_kwargs)
        return [result for _ in range(self.num_envs)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        # The users are rows of one batch, not gym.Env instances: no gym.Wrapper can wrap one of them.
        return [False for _ in self._get_indices(indices)]

    def _attribute(self, name: str) -> Any:
        """``name`` on the vector env given, else on the native env under its wrappers."""
        try:
            return getattr(self.venv, name)
        except AttributeError:
            return getattr(self.venv.unwrapped, name)

    def _require_whole_batch(self, indices: VecEnvIndices, method: str) -> None:
        if indices is not None and sorted(set(self._get_indices(indices))) != list(range(self.num_envs)):
            raise ValueError(
                f"indices: the {self.num_envs} users share one vector environment, so {method} applies to all "
                f"of them; got {indices!r}"
            )

    def _numpy(self, observation: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        observation = recommender_observation(self.venv, observation)
        # Copies: on CPU, numpy() shares memory with the simulator's state, which no caller may write to.
        return {key: np.array(_array(observation[key])) for key in self.keys}

    def _per_user(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """The batched step info as one dict per user (scalars as Python numbers, rows as numpy arrays)."""
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, value in info.items():
            per_user = isinstance(value, torch.Tensor | np.ndarray) and value.ndim > 0
            per_user = per_user and value.shape[0] == self.num_envs
            if key.startswith("_") or key == "final_obs" or not per_user:
                continue
            column = _array(value)
            for user_info, entry in zip(infos, column.tolist() if column.ndim == 1 else column, strict=True):
                user_info[key] = entry
        return infos


def _array(value: Any) -> np.ndarray:
    """A numpy view of a vector env's output: its torch tensors (on any device), or numpy as it is (an env made
    with ``gym.make_vec``'s default numpy backend)."""
    return value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
