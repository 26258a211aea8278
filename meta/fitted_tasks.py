"""Meta-RL tasks from users fitted to logs: a task distribution's ``fitted`` sources.

A source is a calibrated population with its fitted users (``metarec calibrate LOGS --out DIR`` writes one to
``DIR/population``). Its users are split into groups, and each group is a population meta-RL tasks are drawn
from (:class:`~metarec.envs.fitted_task.FittedTask`): the fitted catalogue, the fitted choice, drift and
fatigue rates, and new users who each take the fitted factors of one of the group's users. A split of the task
distribution names a source and its groups (``fitted: NAME``, ``groups: [...]``); held-out splits take groups
no training split uses (``holds_out: [users]``), so ``meta-train`` and ``meta-eval`` run on users fitted from
real logs, the evaluation on users the training never met.

Groups (``split_by``):

* ``random``: the users in a random order (seeded), cut into ``groups`` groups of (nearly) equal size;
* ``time``: the users in the order they first appear in the logs, cut likewise: group 0 came first, so
  holding out the last groups evaluates on the users who arrived last;
* ``cluster``: one group per fitted interest cluster, each user in the cluster of the nearest centre.

The population's files are read with ``json`` and ``numpy.load(allow_pickle=False)``; nothing in them runs.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from metarec.config import FrozenConfig, validate_config
from metarec.envs.calibrated import load_calibrated
from metarec.envs.drifting.params import SimulatorConfig
from metarec.envs.fitted_task import FittedPool, FittedTask, nearest_centre

DEFAULT_GROUPS = 4


class FittedSource(FrozenConfig):
    """Users fitted to logs, split into groups that are populations of meta-RL tasks (see the module
    docstring)."""

    population: str = Field(
        description="A calibrated population's directory with its fitted users (`metarec calibrate LOGS --out DIR` "
        "writes DIR/population); a relative path is read from the task distribution's file."
    )
    split_by: Literal["random", "time", "cluster"] = Field("random", description="How users are split into groups.")
    groups: int | None = Field(
        None,
        ge=2,
        description=f"Number of groups for `random` and `time` (default {DEFAULT_GROUPS}); `cluster` has one per "
        "fitted cluster.",
    )
    seed: int = Field(0, ge=0, description="Seeds the `random` split.")
    fields: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the population's config, as metarec/Calibrated-v0's keyword arguments "
        "(`population_fields: {...}` for the population's own fields).",
    )

    @model_validator(mode="after")
    def _groups(self) -> FittedSource:
        if self.split_by == "cluster" and self.groups is not None:
            raise ValueError("groups: a split by cluster has one group per fitted cluster; leave groups out")
        for key in ("users", "config", "population"):
            if key in self.fields:
                raise ValueError(f"fields.{key}: not a config override (expected config fields or population_fields)")
        return self

    @property
    def num_groups(self) -> int | None:
        """How many groups the split makes (None for ``cluster``: as many as the population has clusters)."""
        if self.split_by == "cluster":
            return None
        return self.groups or DEFAULT_GROUPS

    def resolved(self, base: Path) -> FittedSource:
        """This source with its population's path made absolute, a relative one read from ``base`` as it is
        written (``..`` taken lexically, links not followed)."""
        return self.model_copy(update={"population": os.path.abspath(base / Path(self.population).expanduser())})


class LoadedSource:
    """A source's population, fitted users and groups, loaded once (:func:`load_source`)."""

    def __init__(self, name: str, source: FittedSource) -> None:
        where = f"fitted.{name}.population"
        if not Path(source.population).is_dir():
            raise ValueError(f"{where}: {source.population} is not a directory (a calibrated population)")
        if not (Path(source.population) / "users.npz").is_file():
            raise ValueError(f"{where}: {source.population} keeps no fitted users (no users.npz: written before they "
                             "were kept); calibrate again")  # fmt: skip
        try:
            self.config, world, _, users = load_calibrated(source.population, source.fields, "fitted", where)
        except ValueError as err:  # name the source: an override of its fields where the files load without them
            overrides = bool(source.fields) and _loads(source.population)
            raise ValueError(f"{f'fitted.{name}.fields' if overrides else where}: {err}") from None
        if self.config.catalog.churn_rate != 0:
            raise ValueError(
                f"fitted.{name}.fields: a fitted catalogue does not churn; expected catalog.churn_rate 0, got "
                f"{self.config.catalog.churn_rate}"
            )
        assert users is not None  # load_calibrated asked for them
        interest = np.asarray(users["interest"], dtype=np.float32)  # as a pool holds them
        cluster = nearest_centre(interest, world["cluster_centre"])
        self.groups = split_users(name, source, users, cluster, self.config.population.num_clusters)
        self.pools = [
            FittedPool.of(f"fitted.{name} group {g}", source.population, rows, world, interest[rows], cluster[rows])
            if len(rows) else None
            for g, rows in enumerate(self.groups)
        ]  # fmt: skip
        self.name = name

    def pool(self, group: int, where: str) -> FittedPool:
        """Group ``group``'s pool; a ValueError naming ``where`` if the split has no such group or it is empty."""
        if not 0 <= group < len(self.pools):
            raise ValueError(f"{where}: fitted.{self.name} has groups 0..{len(self.pools) - 1}, got {group}")
        pool = self.pools[group]
        if pool is None:
            raise ValueError(f"{where}: group {group} of fitted.{self.name} has no users (no fitted user is nearest "
                             f"to cluster {group}); leave it out")  # fmt: skip
        return pool


def split_users(
    name: str, source: FittedSource, users: dict[str, np.ndarray], cluster: np.ndarray, num_clusters: int
) -> list[np.ndarray]:
    """The fitted users' indices in each group of ``source`` (see the module docstring)."""
    count = len(users["interest"])
    if source.split_by == "cluster":
        return [np.flatnonzero(cluster == c) for c in range(num_clusters)]
    groups = source.num_groups
    assert groups is not None
    if count < groups:
        raise ValueError(
            f"fitted.{name}.groups: {source.population} has {count} fitted users, fewer than {groups} groups"
        )
    if source.split_by == "random":
        order = np.random.default_rng(source.seed).permutation(count)
    else:
        if "first_seen" not in users:
            raise ValueError(
                f"fitted.{name}.split_by: 'time' needs each user's first timestamp, and {source.population} has none "
                "(a population written before it was kept); calibrate again, or split by random or cluster"
            )
        order = np.argsort(users["first_seen"], kind="stable")
    return [np.sort(rows) for rows in np.array_split(order, groups)]


@functools.lru_cache(maxsize=8)
def _load(name: str, source_json: str, stamp: tuple[tuple[int, int, int], ...]) -> LoadedSource:
    del stamp  # part of the key only: files changed since the last load are read again
    return LoadedSource(name, FittedSource.model_validate_json(source_json))


def load_source(name: str, source: FittedSource) -> LoadedSource:
    """``source`` loaded (cached while its files are unchanged: the same inode, size and modification time; a
    population written again replaces its files)."""
    source = source.model_copy(update={"population": os.path.abspath(source.population)})
    folder = Path(source.population)
    stamp = tuple(_file_stamp(folder / f) for f in ("population.json", "world.npz", "users.npz"))
    return _load(name, source.model_dump_json(), stamp)


def _file_stamp(path: Path) -> tuple[int, int, int]:
    if not path.is_file():
        return (-1, -1, -1)
    stat = path.stat()
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _loads(population: str) -> bool:
    """Whether the population's own files load (with its fitted users), no overrides applied."""
    try:
        load_calibrated(population, {}, "fitted")
    except ValueError:
        return False
    return True


def fitted_task(
    name: str, source: FittedSource, group: int, regime: dict[str, float] | None, where: str
) -> FittedTask:
    """A task of ``source``'s group ``group``, the population's fields updated by ``regime``'s."""
    loaded = load_source(name, source)
    pool = loaded.pool(group, where)
    config: SimulatorConfig = loaded.config
    if regime:
        values = config.model_dump()
        values["population"] = {**values["population"], **regime}
        config = validate_config(SimulatorConfig, values, where=where)
    return FittedTask.of(config, pool)

