"""A meta-RL task of users fitted to logs: :class:`FittedTask`.

A task of :class:`~metarec.envs.task_batch.TaskBatchVectorEnv` is usually a
:class:`~metarec.envs.drifting.params.SimulatorConfig` whose catalogue and interest clusters are drawn from its
seed. A :class:`FittedTask` is one whose world was fitted to logs (``metarec calibrate``) and whose users are a
group of the users fitted there: every new user of the task (and every user whose interests shift) takes the
fitted factors of one of the group's users, drawn uniformly, and the cluster of the nearest fitted centre, as
``metarec/Calibrated-v0`` with ``users="fitted"`` does for one population. It is a ``SimulatorConfig`` in every
other respect (its fields are the fitted population's), so the code that reads tasks reads it unchanged; the
world and the users travel beside the fields, in :class:`FittedPool`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import PrivateAttr

from metarec.envs.drifting.params import SimulatorConfig


@dataclass(frozen=True, eq=False)
class FittedPool:
    """What a :class:`FittedTask` carries beside its fields: ``world`` (the arrays of the calibrated population
    in directory ``population``, as :func:`~metarec.envs.calibrated.load_calibrated` returns them) and the
    users its new users are drawn among: ``rows`` ``[P]`` (their indices among the population's fitted users),
    ``interest`` ``[P, d]`` (their fitted factors) and ``cluster`` ``[P]`` (the nearest fitted centre). ``name``
    says which source and group they are, for errors and reports. Compared by identity: two pools are the same
    only if they are one object."""

    name: str
    population: str
    rows: np.ndarray
    world: dict[str, np.ndarray]
    interest: np.ndarray
    cluster: np.ndarray

    @classmethod
    def of(
        cls, name: str, population: str, rows: np.ndarray, world: dict[str, np.ndarray], interest: np.ndarray,
        cluster: np.ndarray | None = None,
    ) -> FittedPool:  # fmt: skip
        """The pool of fitted users ``rows`` with factors ``interest`` in ``world``, each in the cluster of the
        nearest centre (``cluster``, where the caller has it already: :func:`nearest_centre` of ``interest``)."""
        interest = np.asarray(interest, dtype=np.float32)
        if interest.ndim != 2 or interest.shape[0] < 1:
            raise ValueError(f"{name}: expected at least one fitted user, got interests of shape {interest.shape}")
        if cluster is None:
            cluster = nearest_centre(interest, world["cluster_centre"])
        return cls(name, str(population), np.asarray(rows, dtype=np.int64), world, interest, cluster)


def nearest_centre(interest: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``[U]`` int64: the index of the centre (``[C, d]``) nearest to each fitted user's factors (``[U, d]``), the
    cluster a fitted user belongs to."""
    return ((interest[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1).astype(np.int64)


class FittedTask(SimulatorConfig):
    """A task whose world and users were fitted to logs (see the module docstring). Build one with
    :meth:`of`; ``pool`` holds the world and users."""

    _pool: FittedPool | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, config: SimulatorConfig, pool: FittedPool) -> FittedTask:
        """``config``'s fields with ``pool``'s world and users."""
        task = cls.model_validate(config.model_dump())
        task._pool = pool
        return task

    @property
    def pool(self) -> FittedPool:
        if self._pool is None:
            raise ValueError("task: a FittedTask needs its pool of fitted users; build it with FittedTask.of")
        return self._pool


def with_fields_of(task: SimulatorConfig, config: SimulatorConfig) -> SimulatorConfig:
    """``config``, carrying ``task``'s world and users where ``task`` is a :class:`FittedTask`: what a
    function that rebuilds a task's fields (say its number of sessions) returns."""
    return FittedTask.of(config, task.pool) if isinstance(task, FittedTask) else config


def user_pools(tasks: Sequence[SimulatorConfig], cluster_offset: np.ndarray) -> dict[str, np.ndarray]:
    """The fitted users of a task batch's :class:`FittedTask` s, concatenated (``pool_interest`` ``[P, d]``,
    ``pool_cluster`` ``[P]`` in the batch's cluster numbering, task ``t``'s clusters starting at
    ``cluster_offset[t]``), where each task's start (``pool_start`` ``[T]``) and how many it has (``pool_size``
    ``[T]``, 0 for a task whose users are drawn from its clusters); nothing for a batch without fitted tasks."""
    pools = [t.pool if isinstance(t, FittedTask) else None for t in tasks]
    if all(pool is None for pool in pools):
        return {}
    sizes = np.array([0 if pool is None else len(pool.interest) for pool in pools])
    return {
        "pool_interest": np.concatenate([pool.interest for pool in pools if pool is not None]),
        "pool_cluster": np.concatenate(
            [pool.cluster + off for pool, off in zip(pools, cluster_offset, strict=True) if pool is not None]
        ),
        "pool_start": np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        "pool_size": sizes.astype(np.float32),
    }


def task_env(task: SimulatorConfig) -> tuple[str, dict[str, Any]]:
    """The registered env id and keyword arguments of one population like ``task`` (what an A/B test of a
    held-out task runs on): ``metarec/DriftingUsers-v0`` with its fields, or, for a :class:`FittedTask`,
    ``metarec/Calibrated-v0`` over its fitted population with its fields, its users drawn among its group's."""
    values = task.model_dump()
    if not isinstance(task, FittedTask):
        return "metarec/DriftingUsers-v0", values
    fields = values.pop("population")
    kwargs = {**values, "population": task.pool.population, "population_fields": fields}
    return "metarec/Calibrated-v0", {**kwargs, "users": task.pool.rows.tolist()}
