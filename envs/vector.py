"""The vector adapter: ``B`` simulated users of a :class:`~metarec.envs.core.model.UserModel` as a native
``gymnasium.vector.VectorEnv`` on torch, on any device; observations, rewards and infos are torch tensors.
``gym.make_vec`` wraps it in Gymnasium's ``ArrayConversion`` to numpy on CPU unless ``array_backend="torch"``
(:class:`metarec.registration.VectorEntryPoint`).

Autoreset: ``AutoresetMode.SAME_STEP`` by default. When user ``b`` terminates or is truncated, the same
``step`` call replaces them by a fresh user and returns the new user's first observation; the last
observation of the finished episode is in ``infos["final_obs"]`` (a dict of tensors for the whole batch,
valid where ``infos["_final_obs"]`` is True). With ``autoreset=False`` (``AutoresetMode.DISABLED``) finished
users stay as they are until ``reset(options={"reset_mask": mask})``.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from pydantic import BaseModel

from metarec.config import short_repr
from metarec.envs.adapters import action_space_of, build_config, check_slates
from metarec.envs.core.backend import Backend, Random, RowSubsetRandom, torch_backend
from metarec.envs.core.finite import confirmed_finite, finite_flag, non_finite_report, step_quantities
from metarec.envs.core.model import ChoiceModel, State, UserModel
from metarec.resources import MIN_BYTES_PER_ENV, check_memory


def check_vector_arguments(num_envs: Any, render_mode: str | None, memory_limit_gib: float | None = None) -> int:
    """``num_envs`` as an int, after the checks every metarec vector env makes of its arguments: a batch
    that cannot fit in memory even at :data:`~metarec.resources.MIN_BYTES_PER_ENV` a user is refused
    before anything is allocated (limit: ``memory_limit_gib``, else ``$METAREC_MEMORY_LIMIT_GIB``, else
    this machine's memory)."""
    if render_mode is not None:
        raise ValueError(f"render_mode: this environment does not render, got {short_repr(render_mode)}")
    if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
        raise ValueError(f"num_envs: expected a positive integer, got {short_repr(num_envs)}")
    check_memory("num_envs", int(num_envs), MIN_BYTES_PER_ENV, limit_gib=memory_limit_gib)
    return int(num_envs)


def batch_space_views(space: spaces.Space, n: int) -> spaces.Space:
    """Gymnasium's ``batch_space(space, n)``, with the bounds of each batched ``Box`` (and of the ``Box`` a
    ``MultiDiscrete`` batches into) held as read-only broadcast views of one row's bounds instead of ``n``
    copies. Gymnasium tiles them: at a million users the spaces of ``DriftingUsers-v0`` alone held 5.7 GB
    of bounds and their flags, more than the users' state and observation together. Equal to
    ``batch_space``'s space; sampling and ``contains`` work as there."""
    if isinstance(space, spaces.Dict):
        batched = {key: batch_space_views(sub, n) for key, sub in space.items()}
        return spaces.Dict(batched, seed=deepcopy(space.np_random))
    if not isinstance(space, spaces.Box | spaces.MultiDiscrete):
        return batch_space(space, n)
    batched = batch_space(space, 1)  # a Box of [1, ...] bounds
    shape = (n, *batched.shape[1:])
    for name in ("low", "high", "bounded_below", "bounded_above"):
        setattr(batched, name, np.broadcast_to(getattr(batched, name), shape))
    batched._shape = shape
    return batched


def recommender_space(env: Any) -> spaces.Space:
    """The single-user observation space a recommender is built for on the vector env ``env``: the default
    (full) observation's, also where ``env`` returns compact observations, which are expanded
    (:meth:`UserSimVectorEnv.expand`) before a recommender sees them."""
    base = getattr(env, "unwrapped", env)
    return base.full_observation_space if getattr(base, "compact_observation", False) else env.single_observation_space


def recommender_observation(env: Any, observation: dict[str, Any]) -> dict[str, Any]:
    """``observation`` of the vector env ``env`` as a recommender sees it (of :func:`recommender_space`): expanded
    where ``env`` returns compact observations, as it is elsewhere."""
    base = getattr(env, "unwrapped", env)
    return base.expand(observation) if getattr(base, "compact_observation", False) else observation


def storages(values: Any) -> set[int]:
    """The addresses of the memory the tensors among ``values`` view (a view shares its base's)."""
    return {value.untyped_storage().data_ptr() for value in values if hasattr(value, "untyped_storage")}


def where_rows(rows: Any, new: State, old: State) -> State:
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
        compact_observation: bool = False,
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
        self.compact_observation = self._check_compact(compact_observation)
        #: the space of the default observation, which :meth:`expand` gives back from a compact one
        self.full_observation_space = self.model.observation_space()
        self.single_observation_space = (
            self.model.compact_observation_space() if self.compact_observation else self.full_observation_space
        )
        self.observation_space = batch_space_views(self.single_observation_space, self.num_envs)
        self.single_action_space = action_space_of(self.model, single_item)
        self.action_space = batch_space_views(self.single_action_space, self.num_envs)
        self._rng: Random | None = None
        self._state: State | None = None
        self._next_truth: ChoiceModel | None = None
        self._oracle_value: Any = None
        self._steps = 0  # steps since the last full reset (for the NaN guard's report)

    def _check_compact(self, compact: Any) -> bool:
        if not isinstance(compact, bool):
            raise ValueError(f"compact_observation: expected true or false, got {short_repr(compact)}")
        reason = getattr(self.model, "compact_observation_refused", "this environment has none")
        if compact and reason is not None:
            raise ValueError(f"compact_observation: {reason}; expected false")
        return compact

    def _observe(self, state: State) -> dict[str, Any]:
        return self.model.observe_compact(state) if self.compact_observation else self.model.observe(state)

    @property
    def observation_tables(self) -> dict[str, Any]:
        """With ``compact_observation``: the tables a compact observation indexes, shared by every user."""
        if not self.compact_observation:
            raise AttributeError("observation_tables: this env returns full observations (compact_observation=False)")
        return self.model.observation_tables()

    def expand(self, observation: dict[str, Any]) -> dict[str, Any]:
        """The default observation from a compact one (bit for bit); a full observation as it is. NumPy arrays
        (what ``gym.make_vec`` returns on a CPU unless ``array_backend="torch"``) come back as NumPy arrays."""
        if "candidates" in observation:
            return observation
        if not any(isinstance(value, np.ndarray) for value in observation.values()):
            return self.model.expand_observation(observation)
        on_device = {key: self.backend.asarray(value) for key, value in observation.items()}
        return {key: self.backend.to_numpy(value) for key, value in self.model.expand_observation(on_device).items()}

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
        return self._observe(self._state), self._truth({})

    def step(self, actions: Any) -> tuple[dict, Any, Any, Any, dict]:
        if self._state is None or self._rng is None:
            raise RuntimeError("step() called before reset()")
        import torch

        slate = check_slates(actions, self.model.num_candidates, self.model.slate_size, self.num_envs, self.single_item)
        slate = slate.to(self.device) if isinstance(slate, torch.Tensor) else self.backend.asarray(slate)
        # the ground truth the last call returned: the step reads the slate's columns of it and releases the rest,
        # and its utilities are checked below, with the step
        truth, self._next_truth = self._next_truth, None
        earlier_utilities = None if truth is None else truth.utilities
        # what the previous state's arrays are, for resets in place (keyed resets merge newcomers with a `where`)
        before = storages(self._state.values()) if self.autoreset and not self.keyed_resets else set()
        self._state, outcome = self.model.step(self._rng, self._state, slate, truth)
        del truth
        infos = dict(outcome.info)
        if self.ground_truth:
            infos["regret"] = self._oracle_value - infos["expected_reward"]
        observation = self._observe(self._state)
        done = outcome.terminated | outcome.truncated
        self._steps += 1
        # one device sync for both questions: did anyone finish, and is everything finite (the NaN guard:
        # reward, expected reward, regret, the model's guarded state and the ground truth the last call
        # returned, which the regret holds the oracle's value of; see metarec.envs.core.finite)
        quantities = step_quantities(outcome.reward, infos, self._state, self.model.guarded_keys)
        if earlier_utilities is not None:
            quantities.append(("info['candidate_utilities'] returned before this step", earlier_utilities))
        finite = torch.as_tensor(finite_flag(quantities), device=self.device)
        any_done, all_finite = torch.stack([done.any(), finite]).tolist()
        if not confirmed_finite(quantities, all_finite):
            raise FloatingPointError(non_finite_report(quantities, self._steps, self._report_users()))
        if self.autoreset and any_done:
            infos["final_obs"] = observation
            infos["_final_obs"] = done
            # arrays this step made that nothing returned shares memory with (the observation and info may hold some
            # of the state's) take the newcomers in place; the others are copied
            returned = (outcome.reward, outcome.terminated, outcome.truncated)
            shared = before | storages(observation.values()) | storages(infos.values()) | storages(returned)
            own = [key for key, value in self._state.items() if value.untyped_storage().data_ptr() not in shared]
            self._state = self._new_users(done, own)
            observation = self._observe_rows(observation, done)  # only the fresh users are observed
        elif self.autoreset and self.keyed_resets:
            # keyed resets draw newcomers every step, so the stream never depends on who finished (in
            # another process, say); nobody finished, so the draw is only made, not used
            self._keyed_fresh_users()
        return observation, outcome.reward, outcome.terminated, outcome.truncated, self._truth(infos)

    def _report_users(self) -> Any:
        """What the NaN guard's report calls the users: rows of the whole batch when sharded, else None."""
        return None if self.shard is None else np.asarray(self.shard[1], dtype=np.int64)

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

    def _new_users(self, done: Any, in_place: Sequence[str] = ()) -> State:
        """The state with the users where ``done`` replaced by fresh ones (see ``keyed_resets``); the arrays of
        ``in_place`` take them in place."""
        if not self.keyed_resets:
            return self.model.reset_users(self._rng, self._state, done, in_place)
        return where_rows(done, self._keyed_fresh_users(), self._state)

    def _keyed_fresh_users(self) -> State:
        """A fresh user for every row, each drawn as the whole batch's row would be."""
        import torch

        return self.model.fresh_users(self._rng, self._state, torch.arange(self.num_envs, device=self.device))

    def _observe_rows(self, observation: dict[str, Any], rows: Any) -> dict[str, Any]:
        """``observation`` with the users where ``rows`` observed anew (only they are observed)."""
        import torch

        index = torch.nonzero(rows)[:, 0]
        fresh = self._observe({key: value[index] for key, value in self._state.items()})
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
        return self._observe(self._state), self._truth({})
