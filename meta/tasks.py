"""Task distributions for meta-RL: a prior over user populations, and named disjoint splits of it.

A *task* is one simulated world: a catalogue and a user population (a
:class:`~metarec.envs.drifting.params.SimulatorConfig`). A :class:`PopulationPrior` generates tasks:

* **interest-cluster structure**: the world seed (catalogue items and cluster centres), the number of
  clusters and their spread;
* **behaviour**: every other population parameter may be given a range (uniform, or log-uniform);
* **drift regime**: a named set of drift rates (e.g. ``static``, ``consumption``, ``shifting``), each
  a partial :class:`~metarec.envs.drifting.params.UserPopulation` applied over the sampled parameters;
* **domain**: a named catalogue (e.g. short clips vs long videos), a partial
  :class:`~metarec.envs.drifting.params.CatalogConfig`.

A :class:`TaskDistribution` names splits of the prior (``meta-train``, ``meta-test-regimes``, ...),
each a choice of regimes and domains with its own band of world seeds, so no two splits ever share an
interest-cluster structure. A split that holds out regimes or domains shares none of them with any
training split (the config is rejected otherwise). Sampling is reproducible from a seed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from metarec.config import FrozenConfig, validate_config
from metarec.envs.drifting.params import CatalogConfig, SimulatorConfig, UserPopulation
from metarec.envs.fitted_task import with_fields_of
from metarec.envs.task_batch import SHAPE_FIELDS
from metarec.meta.fitted_tasks import FittedSource, fitted_task, load_source
from metarec.parallel import group_size, rank

WORLD_SEED_BAND = 1_000_000  # split k draws world seeds from [k * band, (k + 1) * band)


class Range(FrozenConfig):
    """A closed interval to draw a number from: uniform, or uniform in log space (``log: true``)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"high: expected >= low ({self.low}), got {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"low: a log range needs low > 0, got {self.low}")
        return self

    def draw_int(self, rng: np.random.Generator) -> int:
        """An integer uniform over those in the range (for integer fields such as ``num_clusters``)."""
        low, high = math.ceil(self.low), math.floor(self.high)
        if high < low:
            raise ValueError(f"range [{self.low}, {self.high}] holds no integer")
        return int(rng.integers(low, high + 1))

    def draw(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))


_FLOAT_FIELDS = {name for name, f in UserPopulation.model_fields.items() if f.annotation is float}
_INT_FIELDS = {name for name, f in UserPopulation.model_fields.items() if f.annotation is int}


class PopulationPrior(FrozenConfig):
    """How tasks differ: ranges of population parameters, drift regimes and catalogue domains."""

    base: SimulatorConfig = Field(default_factory=SimulatorConfig, description="What every task starts from.")
    ranges: dict[str, Range] = Field(default_factory=dict, description="Population field -> range to draw from.")
    regimes: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {"default": {}}, description="Drift regime name -> population fields it sets."
    )
    domains: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"default": {}}, description="Domain name -> catalogue fields it sets."
    )

    @model_validator(mode="after")
    def _known_fields(self) -> PopulationPrior:
        for name in self.ranges:
            if name not in _FLOAT_FIELDS | _INT_FIELDS:
                known = ", ".join(sorted(_FLOAT_FIELDS | _INT_FIELDS))
                raise ValueError(f"ranges.{name}: expected a population field ({known})")
        if not self.regimes:
            raise ValueError("regimes: expected at least one drift regime")
        if not self.domains:
            raise ValueError("domains: expected at least one domain")
        population = self.base.population.model_dump()
        for regime, values in self.regimes.items():
            validate_config(UserPopulation, {**population, **values}, where=f"regimes.{regime}")
        catalog = self.base.catalog.model_dump()
        for domain, values in self.domains.items():
            validate_config(CatalogConfig, {**catalog, **values}, where=f"domains.{domain}")
        return self


class TaskSplit(FrozenConfig):
    """One split: the regimes and domains its tasks use, or the groups of fitted users they are drawn from,
    and what it holds out.

    World seeds (so interest-cluster structures and catalogues) come from the split's own band and never
    repeat in another split. A split that ``holds_out`` ``regimes`` (or ``domains``) must share none of
    them with any training split (one that holds nothing out). A split of fitted users (``fitted``: a source
    of the distribution's ``fitted``) draws its tasks from the source's ``groups``, under its ``regimes`` if
    it names any (else the fitted drift as it is), in the fitted catalogue; one that holds out ``users``
    shares no group with a training split of the same source. ``fitted: {A: [0, 1], B: [2]}`` draws from
    several sources, each ``(source, group)`` as likely (each task is one group of one source).
    """

    regimes: list[str] = Field(
        default_factory=list, description="Drift regimes of this split's tasks (a split of fitted users: optional)."
    )
    domains: list[str] = Field(
        default_factory=list, description="Catalogue domains of this split's tasks (not for a split of fitted users)."
    )
    fitted: str | dict[str, list[int]] | None = Field(
        None,
        description="A source of fitted users (a key of the distribution's `fitted`), with `groups`; or several, "
        "each with its groups: `{SOURCE: [GROUP, ...], ...}`.",
    )
    groups: list[int] = Field(default_factory=list, description="The source's groups this split's tasks come from.")
    holds_out: list[Literal["clusters", "regimes", "domains", "users"]] = Field(
        default_factory=list, description="What this split's tasks have that no training split has."
    )

    @model_validator(mode="after")
    def _kind(self) -> TaskSplit:
        if self.fitted is None:
            for key in ("regimes", "domains"):
                if not getattr(self, key):
                    raise ValueError(f"{key}: expected at least one (or `fitted: SOURCE` and its `groups`)")
            for key, value in (("groups", self.groups), ("holds_out", [h for h in self.holds_out if h == "users"])):
                if value:
                    raise ValueError(f"{key}: only a split of fitted users (`fitted: SOURCE`) has {key} {value}")
            return self
        if self.domains:
            raise ValueError("domains: a split of fitted users browses the fitted catalogue; leave domains out")
        self._check_groups()
        wrong = [h for h in self.holds_out if h not in ("users", "regimes")]
        if wrong:
            raise ValueError(f"holds_out: a split of fitted users can hold out users or regimes, got {wrong}")
        if "regimes" in self.holds_out and not self.regimes:
            raise ValueError("holds_out: holds out regimes, but the split names none (it runs the fitted drift)")
        return self

    def _check_groups(self) -> None:
        if isinstance(self.fitted, dict):
            if not self.fitted:
                raise ValueError("fitted: expected a source's name, or at least one SOURCE: [GROUP, ...]")
            if self.groups:
                raise ValueError("groups: a split of several sources lists each one's groups under `fitted`")
        for source, groups in self.sources.items():
            if not groups or len(set(groups)) != len(groups) or min(groups) < 0:
                raise ValueError(f"{self.groups_field(source)}: expected distinct group numbers >= 0 of "
                                 f"fitted.{source}, got {groups}")  # fmt: skip

    def groups_field(self, source: str) -> str:
        """Where this split lists ``source``'s groups: ``groups``, or ``fitted.SOURCE`` in a split of several."""
        return "groups" if isinstance(self.fitted, str) else f"fitted.{source}"

    @property
    def sources(self) -> dict[str, list[int]]:
        """``{source: groups}`` this split's tasks come from (empty for a split of the synthetic prior)."""
        if self.fitted is None:
            return {}
        return {self.fitted: list(self.groups)} if isinstance(self.fitted, str) else dict(self.fitted)

    @property
    def draws(self) -> list[tuple[str, int]]:
        """Every ``(source, group)`` a task of this split can be, each as likely."""
        return [(source, group) for source, groups in self.sources.items() for group in groups]


class TaskDistribution(FrozenConfig):
    """A prior and its named splits (e.g. ``meta-train``, ``meta-test-regimes``, ``meta-test-domain``)."""

    prior: PopulationPrior = Field(default_factory=PopulationPrior)
    fitted: dict[str, FittedSource] = Field(
        default_factory=dict, description="Sources of users fitted to logs, by name (see metarec.meta.fitted_tasks)."
    )
    splits: dict[str, TaskSplit] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> TaskDistribution:
        for name, split in self.splits.items():
            for kind, known in (("regimes", self.prior.regimes), ("domains", self.prior.domains)):
                for value in getattr(split, kind):
                    if value not in known:
                        raise ValueError(
                            f"splits.{name}.{kind}: {value!r} is not one of the prior's ({', '.join(known)})"
                        )
            if split.fitted is not None:
                self._check_source(name, split)
        training = {name: split for name, split in self.splits.items() if not split.holds_out}
        for name, split in self.splits.items():
            for kind in split.holds_out:
                if kind == "clusters":  # guaranteed by the seed bands
                    continue
                for other, train in training.items():
                    if kind == "users":
                        self._check_held_out_users(name, split, other, train)
                        continue
                    shared = sorted(set(getattr(split, kind)) & set(getattr(train, kind)))
                    if shared:
                        raise ValueError(
                            f"splits.{name}.{kind}: holds out {', '.join(shared)}, which training split {other!r} uses"
                        )
        return self

    def _check_held_out_users(self, name: str, split: TaskSplit, other: str, train: TaskSplit) -> None:
        for source, groups in split.sources.items():
            key = f"splits.{name}.{split.groups_field(source)}"
            for theirs, their_groups in train.sources.items():
                if theirs == source:
                    shared = sorted(set(groups) & set(their_groups))
                    if shared:
                        raise ValueError(f"{key}: holds out groups {shared} of fitted.{source}, which training split "
                                         f"{other!r} uses")  # fmt: skip
                elif os.path.abspath(self.fitted[source].population) == os.path.abspath(self.fitted[theirs].population):
                    raise ValueError(f"splits.{name}.fitted: holds out users of fitted.{source}, but training split "
                                     f"{other!r} draws users of the same population through fitted.{theirs}; hold out "
                                     "other groups of one source")  # fmt: skip

    def _check_source(self, name: str, split: TaskSplit) -> None:
        for source, groups in split.sources.items():
            if source not in self.fitted:
                known = ", ".join(self.fitted) or "none"
                raise ValueError(f"splits.{name}.fitted: {source!r} is not a source of fitted users ({known})")
            count = self.fitted[source].num_groups
            if count is not None and max(groups) >= count:
                raise ValueError(f"splits.{name}.{split.groups_field(source)}: fitted.{source} has groups "
                                 f"0..{count - 1}, got {max(groups)}")  # fmt: skip

    def sample(self, split: str, n: int, seed: int) -> list[SimulatorConfig]:
        """``n`` tasks of ``split``, reproducibly from ``seed`` (independent of the other splits' draws)."""
        if split not in self.splits:
            raise ValueError(f"split: expected one of {', '.join(self.splits)}, got {split!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive integer, got {n!r}")
        index = list(self.splits).index(split)
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        chosen = self.splits[split]
        if chosen.fitted is not None:
            return [self._fitted_task(rng, split, chosen) for _ in range(n)]
        return [self._task(rng, chosen, index) for _ in range(n)]

    def _fitted_task(self, rng: np.random.Generator, name: str, split: TaskSplit) -> SimulatorConfig:
        draws = split.draws
        source, group = draws[int(rng.integers(len(draws)))]
        regime = split.regimes[int(rng.integers(len(split.regimes)))] if split.regimes else None
        values = None if regime is None else self.prior.regimes[regime]
        return fitted_task(source, self.fitted[source], group, values, f"splits.{name}")

    def check_sources(self) -> None:
        """Reads every source of fitted users a split names and checks that its groups have users, and that the
        sources of one split can share a batch (the same candidates, slate, history and embedding dimension):
        what ``meta-train`` does before any work, so a missing population or an empty group stops it at once."""
        for name, split in self.splits.items():
            shapes: dict[str, tuple[Any, ...]] = {}
            for source, groups in split.sources.items():
                loaded = load_source(source, self.fitted[source])
                for group in groups:
                    loaded.pool(group, f"splits.{name}")
                shapes[source] = tuple(attrgetter(path)(loaded.config) for path in SHAPE_FIELDS)
            first = next(iter(shapes), None)
            for source, shape in shapes.items():
                if shape != shapes[first]:
                    raise ValueError(
                        f"splits.{name}.fitted.{source}: its tasks share batches with fitted.{first}'s, so they need "
                        f"the same {', '.join(SHAPE_FIELDS[:-1])} and {SHAPE_FIELDS[-1]} ({shapes[first]}), got {shape}"
                    )

    def resolved(self, base: Path) -> TaskDistribution:
        """This distribution with its fitted sources' paths made absolute, relative ones read from ``base`` (the
        directory of the file that holds it)."""
        if not self.fitted:
            return self
        return self.model_copy(update={"fitted": {k: v.resolved(base) for k, v in self.fitted.items()}})

    def _task(self, rng: np.random.Generator, split: TaskSplit, index: int) -> SimulatorConfig:
        prior = self.prior
        regime = split.regimes[int(rng.integers(len(split.regimes)))]
        domain = split.domains[int(rng.integers(len(split.domains)))]
        population = prior.base.population.model_dump()
        for name, value_range in prior.ranges.items():
            population[name] = value_range.draw_int(rng) if name in _INT_FIELDS else value_range.draw(rng)
        population.update(prior.regimes[regime])
        catalog = {**prior.base.catalog.model_dump(), **prior.domains[domain]}
        catalog["seed"] = index * WORLD_SEED_BAND + int(rng.integers(WORLD_SEED_BAND))
        values = {**prior.base.model_dump(), "population": population, "catalog": catalog}
        return validate_config(SimulatorConfig, values, where="task")


def with_sessions(tasks: list[SimulatorConfig], sessions: int) -> list[SimulatorConfig]:
    """The tasks with ``population.num_sessions`` set to ``sessions`` (meta-RL episodes are a user's
    lifetime of sessions, the same number in every task of a batch)."""
    out = []
    for i, task in enumerate(tasks):
        values = task.model_dump()
        values["population"]["num_sessions"] = sessions
        out.append(with_fields_of(task, validate_config(SimulatorConfig, values, where=f"tasks[{i}]")))
    return out


def batch_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th meta-batch of a run seeded ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def task_batch(
    distribution: TaskDistribution, split: str, size: int, seed: int, index: int, sessions: int
) -> list[SimulatorConfig]:
    """Meta-batch ``index`` of a run: ``size`` tasks of ``split`` with ``sessions`` sessions per user,
    the same every time it is asked for (a resumed run sees the tasks it would have seen)."""
    return with_sessions(distribution.sample(split, size, batch_seed(seed, index)), sessions)


@dataclass(frozen=True)
class TaskShare:
    """One process's share of every meta-batch when meta-training is split across processes: tasks
    ``rank * local_tasks ..`` of the batch's ``tasks_per_batch``, whose users are the rows
    ``offset .. offset + local_users`` of the batch's ``total_users`` (task-major, as
    :class:`~metarec.envs.task_batch.TaskBatchVectorEnv` lays them out). One process has them all."""

    rank: int
    world: int
    tasks_per_batch: int
    users_per_task: int

    @classmethod
    def of_this_process(cls, tasks_per_batch: int, users_per_task: int, field: str) -> TaskShare:
        """The share of this process in the default ``torch.distributed`` group (all of it without
        one); ``field`` names the config key in the error when the tasks do not divide evenly."""
        world = group_size()
        if tasks_per_batch % world:
            raise ValueError(f"{field}: must divide among {world} processes, got {tasks_per_batch}")
        return cls(rank(), world, tasks_per_batch, users_per_task)

    @property
    def local_tasks(self) -> int:
        return self.tasks_per_batch // self.world

    @property
    def total_users(self) -> int:
        return self.tasks_per_batch * self.users_per_task

    @property
    def local_users(self) -> int:
        return self.local_tasks * self.users_per_task

    @property
    def offset(self) -> int:
        return self.rank * self.local_users

    def tasks(
        self, distribution: TaskDistribution, split: str, seed: int, index: int, sessions: int
    ) -> list[SimulatorConfig]:
        """This process's tasks of meta-batch ``index`` (:func:`task_batch`)."""
        batch = task_batch(distribution, split, self.tasks_per_batch, seed, index, sessions)
        return batch[self.rank * self.local_tasks : (self.rank + 1) * self.local_tasks]

    def env_shard(self) -> tuple[int, list[int]] | None:
        """The vector env's ``shard`` argument: ``(total_users, this process's rows)``, or None."""
        return None if self.world == 1 else (self.total_users, list(range(self.offset, self.offset + self.local_users)))

    def rows_of(self, device: str | torch.device) -> tuple[int, torch.Tensor] | None:
        """``(total_users, rows)`` on ``device`` for draws made for the whole batch, or None."""
        shard = self.env_shard()
        return None if shard is None else (shard[0], torch.tensor(shard[1], device=device))
