"""Many user populations (meta-RL tasks) stepping as one batch: :class:`TaskBatchVectorEnv`.

A meta-batch of ``T`` tasks (each a :class:`~metarec.envs.drifting.params.SimulatorConfig`: its own
catalogue, interest clusters, choice model and drift) with ``U`` users each is one batch of
``B = T * U`` users. Rows are task-major: user ``b`` belongs to task ``b // U`` for the whole run
(a finished user is replaced by a new user of the same task), so ``tensor.reshape(T, U, ...)``
splits any batched quantity by task.

How it works: the tasks' worlds are concatenated, items and clusters renumbered by offsets, so
``candidate_ids`` are distinct across tasks, and every population parameter becomes a ``[T]`` table
gathered by each user's ``state["task"]``; the dynamics are those of
:class:`~metarec.envs.drifting.model.DriftingUsersModel` with ``[B]`` parameters in place of floats. There is
no Python loop over tasks in a step.

Tasks must agree on what shapes the spaces: ``num_candidates``, ``slate_size``, ``history_length``,
``catalog.embedding_dim`` and ``population.num_sessions``. Catalogues may differ in size and in their
number of topics (fatigue is kept over the largest number; a task never touches the topics it lacks).
The task a user belongs to is hidden from the policy, which must infer it from behaviour.

A task may be a :class:`~metarec.envs.fitted_task.FittedTask`: its world is the one fitted to logs, and its
users are drawn among a group of the users fitted there (the same uniform draw that picks a cluster picks one
of them), so a meta-batch can hold populations of real users' fitted factors.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from types import SimpleNamespace
from typing import Any

import numpy as np

from metarec.config import validate_config
from metarec.envs.core.backend import Array, Backend, Random, numpy_backend
from metarec.envs.core.choice import shown_mask
from metarec.envs.core.model import State
from metarec.envs.drifting.churn import CatalogTimeline
from metarec.envs.drifting.model import DriftingUsersModel, make_world, population_parameters
from metarec.envs.drifting.params import SimulatorConfig
from metarec.envs.fitted_task import FittedTask, user_pools
from metarec.envs.vector import UserSimVectorEnv

#: What every task of a batch must share: the shapes of its observations and actions, and the sessions per user.
SHAPE_FIELDS = ("num_candidates", "slate_size", "history_length", "catalog.embedding_dim")
SHARED_FIELDS = (*SHAPE_FIELDS, "population.num_sessions")


def check_tasks(tasks: Sequence[Any]) -> list[SimulatorConfig]:
    """Validated task configs (``SimulatorConfig`` or dicts) that can share a batch; errors name the
    task and the field."""
    if isinstance(tasks, SimulatorConfig | dict) or not isinstance(tasks, Sequence) or len(tasks) == 0:
        raise ValueError(f"tasks: expected a non-empty list of simulator configs, got {type(tasks).__name__}")
    configs = [
        t if isinstance(t, SimulatorConfig) else validate_config(SimulatorConfig, t, where=f"tasks[{i}]")
        for i, t in enumerate(tasks)
    ]
    for path in SHARED_FIELDS:
        field = attrgetter(path)
        first = field(configs[0])
        for i, config in enumerate(configs[1:], start=1):
            if field(config) != first:
                raise ValueError(
                    f"tasks[{i}].{path}: every task of a batch must have the same value (tasks[0] has {first}), "
                    f"got {field(config)}"
                )
    churning = [config.catalog.churn_rate > 0 for config in configs]
    if any(churning) and not all(churning):
        i = churning.index(not churning[0])
        raise ValueError(
            f"tasks[{i}].catalog.churn_rate: every task of a batch must have churn on (> 0) or off (0) alike, as "
            f"tasks[0] (it adds the candidates' age to the observation), got {configs[i].catalog.churn_rate}"
        )
    return configs


def record_item_stats(
    backend: Backend,
    table: Array,
    candidates: Array,
    slate: Array,
    chosen: Array,
    reward: Array,
    rows: Array | None = None,
) -> None:
    """Adds one step to an item statistics ``table`` ``[num_items, 3]`` (impressions, clicks,
    engagement); arguments as :func:`logged_events`."""
    xp = backend.xp
    shown_ids, ids, engagement = logged_events(backend, candidates, slate, chosen, reward, rows)
    table[:, 0].index_add_(0, shown_ids, xp.ones_like(shown_ids, dtype=xp.float32))
    table[:, 1].index_add_(0, ids, xp.ones_like(ids, dtype=xp.float32))
    table[:, 2].index_add_(0, ids, engagement)


def logged_events(
    backend: Backend, candidates: Array, slate: Array, chosen: Array, reward: Array, rows: Array | None = None
) -> tuple[Array, Array, Array]:
    """What one step logs: the catalog ids shown, the ids clicked and their engagement (float32).
    ``candidates`` ``[B, N]`` ids offered, ``slate`` ``[B, K]`` (a repeated candidate counts once),
    ``chosen`` ``[B]`` candidate index or -1, ``reward`` ``[B]``; only the users where ``rows``
    (``[B]`` bool) is True, when given."""
    xp = backend.xp
    shown = shown_mask(xp, slate)
    if rows is not None:
        shown = shown & rows[:, None]
        chosen = xp.where(rows, chosen, -1)
    shown_ids = backend.take_along(candidates, slate)[shown]
    clicked = chosen >= 0
    ids = backend.take_along(candidates, xp.clip(chosen, 0, None)[:, None])[:, 0][clicked]
    return shown_ids, ids, reward[clicked].float()


def item_stat_features(xp: Any, stats: Array) -> Array:
    """``[..., 3]`` candidate features from logged statistics ``[..., 3]``: smoothed CTR and engagement
    per impression (a weak prior of 10% CTR), and log1p of the impressions."""
    impressions = stats[..., 0]
    ctr = (stats[..., 1] + 1.0) / (impressions + 10.0)
    engagement = (stats[..., 2] + 1.0) / (impressions + 10.0)
    return xp.stack([ctr, engagement, xp.log1p(impressions)], axis=-1)


class TaskBatchModel(DriftingUsersModel):
    """:class:`DriftingUsersModel` over ``T`` tasks at once, ``users_per_task`` rows each (task-major)."""

    def __init__(
        self, tasks: Sequence[SimulatorConfig], backend: Backend, users_per_task: int, item_stats: bool = False
    ) -> None:
        self.tasks = check_tasks(tasks)
        self.num_tasks = len(self.tasks)
        self.users_per_task = users_per_task
        worlds = [t.pool.world if isinstance(t, FittedTask) else make_world(t) for t in self.tasks]
        items = np.array([w["item_embedding"].shape[0] for w in worlds])
        clusters = np.array([w["cluster_centre"].shape[0] for w in worlds])
        item_offset = np.concatenate([[0], np.cumsum(items)[:-1]])
        cluster_offset = np.concatenate([[0], np.cumsum(clusters)[:-1]])
        world = {
            key: np.concatenate([w[key] for w in worlds])
            for key in (
                "item_embedding",
                "item_topic",
                "item_quality",
                "item_length",
                "item_appeal",
                "cluster_centre",
                "trend_direction",
            )
        }
        world["item_order"] = np.concatenate(
            [w["item_order"] + off for w, off in zip(worlds, item_offset, strict=True)]
        )
        # per task [T, N]: where each stratum starts in the shared item_order, and its size
        world["stratum_start"] = np.stack(
            [w["stratum_start"] + off for w, off in zip(worlds, item_offset, strict=True)]
        )
        world["stratum_size"] = np.stack([w["stratum_size"] for w in worlds])
        world["cluster_offset"] = cluster_offset.astype(np.int64)
        world["num_clusters"] = clusters.astype(np.float32)
        world.update(user_pools(self.tasks, cluster_offset))
        self._topic_centres = [w.get("topic_centre") for w in worlds]
        self._item_offsets = [int(off) for off in item_offset]
        super().__init__(self.tasks[0], backend, world=world)
        self.num_topics = max(t.catalog.num_topics for t in self.tasks)
        self.topics = backend.asarray(np.arange(self.num_topics))
        self.task_params = self._parameter_tables(backend)
        self.row_task = backend.asarray(np.repeat(np.arange(self.num_tasks), users_per_task))
        # What the recommender's own logs say of each item in its population (impressions, clicks,
        # engagement), when ``item_stats``: a feature a real system has, which the user state is not.
        self.item_stats = (
            backend.xp.zeros((self.num_items, 3), dtype=backend.xp.float32, device=backend.device)
            if item_stats
            else None
        )
        self.record_rows: Array | None = None  # [B] bool: whose steps are logged (None: everyone's)

    def catalog_timeline(self) -> CatalogTimeline | None:
        if self.tasks[0].catalog.churn_rate == 0:  # check_tasks: all tasks alike
            return None
        return CatalogTimeline(self.tasks, self._topic_centres, self._item_offsets)

    def step(self, rng: Random, state: State, slate: Array, truth: Any = None) -> tuple[State, Any]:
        new_state, outcome = super().step(rng, state, slate, truth)
        if self.item_stats is not None:  # logged before the next observation is made
            self.record(state["candidates"], slate, outcome.info["chosen_candidate"], outcome.reward)
            if "item_arrived" in outcome.info:  # a new item's log starts empty
                self.item_stats[outcome.info["item_arrived"][0]] = 0.0
        return new_state, outcome

    def record(self, candidates: Array, slate: Array, chosen: Array, reward: Array) -> None:
        """Adds a step to the item statistics: ``candidates`` ``[B, N]`` ids offered, ``slate`` ``[B, K]``
        (a repeated candidate counts once), ``chosen`` ``[B]`` candidate index or -1, ``reward`` ``[B]``."""
        if self.item_stats is not None:  # users who left are not served, so nothing of theirs is logged
            record_item_stats(self.backend, self.item_stats, candidates, slate, chosen, reward, self.record_rows)

    def observe(self, state: State) -> dict[str, Array]:
        observation = super().observe(state)
        if self.item_stats is not None:
            stats = self.backend.take_rows(self.item_stats, state["candidates"])  # [B, N, 3]
            extra = item_stat_features(self.backend.xp, stats)
            observation["candidates"] = self.backend.xp.concat([observation["candidates"], extra], axis=-1)
        return observation

    def observation_space(self) -> Any:
        space = super().observation_space()
        if self.item_stats is not None:
            from gymnasium import spaces

            n, f = space["candidates"].shape
            space = spaces.Dict({**space.spaces, "candidates": spaces.Box(-np.inf, np.inf, (n, f + 3), np.float32)})
        return space

    def _parameter_tables(self, backend: Backend) -> SimpleNamespace:
        """Every population parameter, and what the dynamics derive from it, as a ``[T]`` float32 table
        (position weights ``[T, K]``): :func:`~metarec.envs.drifting.model.population_parameters` of each task,
        stacked, so the derivations are written once."""
        host = numpy_backend()
        per_task = [vars(population_parameters(t.population, self.slate_size, host)) for t in self.tasks]
        return SimpleNamespace(
            **{
                key: backend.asarray(np.stack([np.asarray(p[key], dtype=np.float32) for p in per_task]))
                for key in per_task[0]
            }
        )

    def _params_of(self, task: Array | None) -> Any:
        if task is None:
            raise ValueError("state: a task batch needs each user's 'task'")
        be = self.backend
        return SimpleNamespace(**{k: be.take_rows(v, task) for k, v in vars(self.task_params).items()})

    # -- users of given tasks -----------------------------------------------------------------
    def _draw_users(self, rng: Random, num_users: int, task: Array | None = None) -> tuple[Array, Array]:
        xp, be, w = self.xp, self.backend, self.world
        task = self._tasks_or_rows(task, num_users)
        count = be.take_rows(w["num_clusters"], task)
        uniform = rng.uniform((num_users,))
        local = xp.minimum(xp.astype(xp.floor(uniform * count), xp.int64), xp.astype(count, xp.int64) - 1)
        cluster = be.take_rows(w["cluster_offset"], task) + local
        noise = rng.normal((num_users, self.config.catalog.embedding_dim))
        spread = be.take_rows(self.task_params.cluster_spread, task)
        anchor = be.take_rows(w["cluster_centre"], cluster) + spread[:, None] * noise
        if "pool_size" not in w:
            return cluster, anchor
        # a fitted task's user is one of its fitted users, picked by the same uniform draw as the cluster
        size = be.take_rows(w["pool_size"], task)
        fitted, none = size > 0, xp.zeros_like(local)
        last = xp.maximum(xp.astype(size, xp.int64) - 1, none)
        pick = xp.minimum(xp.astype(xp.floor(uniform * size), xp.int64), last)
        index = xp.where(fitted, be.take_rows(w["pool_start"], task) + pick, none)  # other tasks' rows: any user
        cluster = xp.where(fitted, be.take_rows(w["pool_cluster"], index), cluster)
        return cluster, xp.where(fitted[:, None], be.take_rows(w["pool_interest"], index), anchor)

    def _draw_candidates(self, rng: Random, num_users: int, task: Array | None = None) -> Array:
        xp, be, w = self.xp, self.backend, self.world
        task = self._tasks_or_rows(task, num_users)
        size = be.take_rows(w["stratum_size"], task)  # [B, N]
        offset = xp.astype(xp.floor(rng.uniform((num_users, self.num_candidates)) * size), xp.int64)
        offset = xp.minimum(offset, xp.astype(size, xp.int64) - 1)
        return be.take_rows(w["item_order"], be.take_rows(w["stratum_start"], task) + offset)

    def _tasks_or_rows(self, task: Array | None, num_users: int) -> Array:
        if task is not None:
            return task
        if num_users != self.num_tasks * self.users_per_task:
            raise ValueError(
                f"num_users: a batch of {self.num_tasks} tasks x {self.users_per_task} users has "
                f"{self.num_tasks * self.users_per_task} rows, got {num_users} without their tasks"
            )
        return self.row_task

    def initial_state(self, rng: Random, num_users: int, task: Array | None = None) -> State:
        task = self._tasks_or_rows(task, num_users)
        state = super().initial_state(rng, num_users, task)
        state["task"] = task
        return state


class TaskBatchVectorEnv(UserSimVectorEnv):
    """``users_per_task`` users of each of ``tasks`` as one native Gymnasium vector env on ``device``.

    Args:
        tasks: the populations (``SimulatorConfig`` or dicts), e.g. from
            :meth:`metarec.meta.tasks.TaskDistribution.sample`.
        users_per_task: rows per task; ``num_envs = len(tasks) * users_per_task``, task-major.
        device: as for ``metarec/DriftingUsers-v0``'s vector env.
        single_item: as for ``metarec/DriftingUsers-v0``'s vector env.
        ground_truth: as for ``metarec/DriftingUsers-v0``'s vector env.
        autoreset: as for ``metarec/DriftingUsers-v0``'s vector env.
        item_stats: append to each candidate's features what the recommender has logged of the item
            in this population so far (smoothed CTR and engagement per impression, log impressions),
            counted over all users of its task since the last full ``reset``. A population-level
            signal a production recommender has; the users' state stays hidden.
        shard: ``(full_batch, rows)``: these users are rows ``rows`` of a batch of ``full_batch`` users
            (another process steps the others); every random draw is made at the full size and these
            rows taken, so each user's trajectory is the one it has in the unsharded batch.
        keyed_resets: draw autoreset's new users for every row and keep the finished rows' (implied
            by ``shard``; a one-process run that a sharded one must equal sets it).

    ``info`` carries what DriftingUsers' does. :meth:`set_tasks` swaps in a new meta-batch (same
    ``T``, ``U``) without rebuilding the env; call ``reset`` after it.
    """

    config_class = SimulatorConfig
    model_class = TaskBatchModel

    def __init__(
        self,
        tasks: Sequence[Any],
        users_per_task: int,
        *,
        device: Any = "cpu",
        single_item: bool = False,
        ground_truth: bool = True,
        autoreset: bool = True,
        item_stats: bool = False,
        shard: tuple[int, Any] | None = None,
        keyed_resets: bool = False,
        render_mode: str | None = None,
    ) -> None:
        self.item_stats = item_stats
        if isinstance(users_per_task, bool) or not isinstance(users_per_task, int | np.integer) or users_per_task < 1:
            raise ValueError(f"users_per_task: expected a positive integer, got {users_per_task!r}")
        self.tasks = check_tasks(tasks)
        self.users_per_task = int(users_per_task)
        self.num_tasks = len(self.tasks)
        super().__init__(
            self.num_tasks * self.users_per_task,
            SimulatorConfig.model_validate(self.tasks[0].model_dump()),  # the fields (a fitted world is the model's)
            device=device,
            single_item=single_item,
            ground_truth=ground_truth,
            autoreset=autoreset,
            shard=shard,
            keyed_resets=keyed_resets,
            render_mode=render_mode,
        )

    def build_model(self, backend: Backend) -> TaskBatchModel:
        return TaskBatchModel(self.tasks, backend, self.users_per_task, self.item_stats)

    def step(self, actions: Any) -> tuple[dict, Any, Any, Any, dict]:
        if self.autoreset or self.model.item_stats is None or self._state is None:
            return super().step(actions)
        self.model.record_rows = ~self._finished
        result = super().step(actions)
        self._finished = self._finished | result[2] | result[3]
        return result

    def get_checkpoint(self) -> dict[str, Any]:
        checkpoint = super().get_checkpoint()
        if self.model.item_stats is not None:
            checkpoint["item_stats"] = self.model.item_stats.clone()
        checkpoint["finished"] = self._finished.clone()
        return checkpoint

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        mask = (options or {}).get("reset_mask")
        full = mask is None or self._state is None
        if full and self.model.item_stats is not None:
            self.model.item_stats.zero_()  # a full reset starts a new population: nothing logged yet
        result = super().reset(seed=seed, options=options)
        if full:
            self._finished = self.backend.xp.zeros((self.num_envs,), dtype=self.backend.xp.bool, device=self.device)
        else:  # the users in the mask are new
            fresh = (
                mask.to(self.device, bool) if hasattr(mask, "device") else self.backend.asarray(np.asarray(mask, bool))
            )
            self._finished = self._finished & ~fresh
        return result

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> tuple[dict, dict]:
        if self.model.item_stats is not None:
            self.model.item_stats.copy_(checkpoint["item_stats"])
        self._finished = checkpoint["finished"].to(self.device)
        return super().load_checkpoint(checkpoint)

    def set_tasks(self, tasks: Sequence[Any]) -> None:
        """Replaces the meta-batch by ``tasks`` (as many as before; shapes as before). Every user is
        new after the next ``reset``."""
        configs = check_tasks(tasks)
        if len(configs) != self.num_tasks:
            raise ValueError(f"tasks: this env holds {self.num_tasks} tasks, got {len(configs)}")
        check_tasks([self.tasks[0], *configs])
        self.tasks = configs
        self.model = self.build_model(self.backend)
        space = self.model.observation_space()
        if space != self.single_observation_space:  # candidate_ids' range follows the catalogues' size
            from metarec.envs.vector import batch_space_views

            self.single_observation_space = self.full_observation_space = space
            self.observation_space = batch_space_views(space, self.num_envs)
        self._state = None
        self._next_truth = None

    def task_of_rows(self) -> Array:
        """``[B]`` the task index of every row (task-major)."""
        return self.model.row_task
