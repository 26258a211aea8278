"""Catalog churn: new items arrive and old ones retire, on the catalog's own clock.

With ``catalog.churn_rate = r`` > 0, each of the catalog's ``M`` slots holds its item for a geometric
lifetime: at every step the item retires with probability ``h = r / population.steps_per_day``, and a new
item drawn from the catalog's prior takes the slot (a topic uniformly, an embedding around that topic's
centre with ``topic_spread``, quality, length and appeal as the world draws them). So ``M * h`` items arrive
per step on average, a share ``r`` of the catalog per simulated day, and an item's expected life is
``1 / h`` steps.

The timeline belongs to the world, not to the users: step ``t``'s arrivals are drawn from a generator
keyed by the catalog's seed and ``t`` alone (:func:`arrivals`), so every policy, every process of a sharded
run and every resume from a checkpoint meets the same new items at the same time (common random numbers),
and no user's draw moves. Items present at ``t = 0`` have ages from the lifetime's stationary law, so the
catalog starts as one that has been churning for ever.

Catalog ids are slots: a new item reuses its predecessor's id. The environment says which ids took a new
item (``info["item_arrived"]``), and whatever keeps per-item state (a popularity table, pooled item
statistics) starts the id afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from metarec.envs.drifting.params import SimulatorConfig

#: Keys churn's generators apart from the world's (``make_world`` seeds with the catalog seed alone).
CHURN_STREAM = 0x6368726E
#: Key of the initial ages' generator (the arrivals of step ``t`` use ``t`` itself, ``t >= 1``).
AGE_STREAM = 0

ITEM_KEYS = ("item_embedding", "item_topic", "item_quality", "item_length", "item_appeal")


def retire_probability(config: SimulatorConfig) -> float:
    """``h``: the probability that an item retires at a step."""
    return config.catalog.churn_rate / config.population.steps_per_day


@dataclass(frozen=True)
class Arrivals:
    """The items that enter a catalog (or a batch of catalogs) at one step.

    Attributes:
        slots: ``[k]`` int64 catalog ids that take a new item, ascending.
        items: the new items' attributes, ``{key: [k, ...]}`` for every key of :data:`ITEM_KEYS`.
    """

    slots: np.ndarray
    items: dict[str, np.ndarray]


def unit(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to unit norm along its last axis (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def draw_items(
    rng: np.random.Generator, catalog: Any, topic_centre: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``count`` items from the catalog's prior, drawn in this order: topics (uniform), embeddings around their
    topic's centre (``topic_spread``), qualities (``quality_std``) and lengths (uniform in the length range),
    as float64 arrays. The world's items (:func:`~metarec.envs.drifting.model.make_world`) and churn's new
    items are both these draws."""
    topic = rng.integers(0, topic_centre.shape[0], count)
    noise = rng.standard_normal((count, topic_centre.shape[1]))
    embedding = unit(topic_centre[topic] + catalog.topic_spread * noise)
    quality = catalog.quality_std * rng.standard_normal(count)
    length = rng.uniform(catalog.min_length, catalog.max_length, count)
    return topic, embedding, quality, length


def arrivals(config: SimulatorConfig, topic_centre: np.ndarray, step: int, offset: int = 0) -> Arrivals:
    """The items that arrive at ``step`` (``>= 1``) in the catalog of ``config`` (its ids shifted by
    ``offset``, the catalog's place in a concatenated world), drawn from the catalog's churn stream."""
    cat = config.catalog
    rng = np.random.default_rng([cat.seed, CHURN_STREAM, step])
    slots = np.flatnonzero(rng.random(cat.num_items) < retire_probability(config))
    k = slots.shape[0]
    topic, embedding, quality, length = draw_items(rng, cat, topic_centre, k)
    appeal = cat.appeal_std * rng.standard_normal(k) if cat.appeal_std > 0 else np.zeros(k)
    items = {
        "item_embedding": embedding.astype(np.float32),
        "item_topic": topic.astype(np.int64),
        "item_quality": quality.astype(np.float32),
        "item_length": length.astype(np.float32),
        "item_appeal": appeal.astype(np.float32),
    }
    return Arrivals((slots + offset).astype(np.int64), items)


def initial_birth(config: SimulatorConfig) -> np.ndarray:
    """``[M]`` int64 step at which each item present at ``t = 0`` arrived (``<= 0``): minus an age from
    the stationary law of a geometric lifetime, ``P(age = a) = h (1 - h)^a``."""
    h = retire_probability(config)
    rng = np.random.default_rng([config.catalog.seed, CHURN_STREAM, AGE_STREAM])
    return -(rng.geometric(h, config.catalog.num_items) - 1).astype(np.int64)


class CatalogTimeline:
    """The catalogs of one or more tasks (concatenated, ``offsets`` apart) under churn, step by step.

    :meth:`at` gives step ``t``'s arrivals once and keeps the last one, so the model that draws them
    in ``respond`` (for ``info``) and the one that applies them before the next observation share a draw.
    """

    def __init__(self, configs: list[SimulatorConfig], topic_centres: list[np.ndarray], offsets: list[int]) -> None:
        self.parts = [
            (config, centre, offset)
            for config, centre, offset in zip(configs, topic_centres, offsets, strict=True)
            if config.catalog.churn_rate > 0
        ]
        self.birth = np.concatenate(
            [initial_birth(c) if c.catalog.churn_rate > 0 else np.zeros(c.catalog.num_items, np.int64) for c in configs]
        )
        self._last: tuple[int, Arrivals] | None = None

    def at(self, step: int) -> Arrivals:
        """Arrivals at ``step`` (``>= 1``) across every churning catalog."""
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        parts = [arrivals(config, centre, step, offset) for config, centre, offset in self.parts]
        result = Arrivals(
            np.concatenate([p.slots for p in parts]),
            {key: np.concatenate([p.items[key] for p in parts]) for key in ITEM_KEYS},
        )
        self._last = (step, result)
        return result


class ChurningTables:
    """Keeps a model's item tables (its numpy world, the backend's copies and the lookup tables built from them)
    at the catalog step its users are at, and each item's arrival step (``item_birth``, on the backend).

    The tables are a function of the step alone: a step ahead applies the arrivals in between, a step behind (a
    reset, a checkpoint from earlier) replays them from the start.
    """

    def __init__(self, model: Any, timeline: CatalogTimeline) -> None:
        self.model, self.timeline = model, timeline
        self.initial = {key: model.world_numpy[key].copy() for key in ITEM_KEYS}
        self.birth = timeline.birth.copy()
        self.item_birth = model.backend.asarray(self.birth)
        self.clock = 0  # the catalog step the tables hold

    def sync(self, clock: int) -> None:
        """Brings the tables to catalog step ``clock``."""
        if clock == self.clock:
            return
        world = self.model.world_numpy
        if clock < self.clock:
            for key in ITEM_KEYS:
                world[key][...] = self.initial[key]
            self.birth[...] = self.timeline.birth
            start, changed = 1, [np.arange(self.birth.shape[0])]
        else:
            start, changed = self.clock + 1, []
        for step in range(start, clock + 1):
            arrived = self.timeline.at(step)
            for key in ITEM_KEYS:
                world[key][arrived.slots] = arrived.items[key]
            self.birth[arrived.slots] = step
            changed.append(arrived.slots)
        self.clock = clock
        rows = np.unique(np.concatenate(changed))
        if rows.shape[0]:
            self._upload(rows)

    def _upload(self, rows: np.ndarray) -> None:
        """Copies items ``rows`` of the numpy world into the backend's tables."""
        m = self.model
        be, w, d = m.backend, m.world_numpy, m.config.catalog.embedding_dim
        index = be.asarray(rows)
        for key in ITEM_KEYS:
            m.world[key][index] = be.asarray(w[key][rows])
        emb, length = w["item_embedding"][rows], w["item_length"][rows, None]
        m.candidate_table[index] = be.asarray(np.concatenate([emb, length], axis=1))
        m.history_table[index + 2, :d] = be.asarray(emb)
        self.item_birth[index] = be.asarray(self.birth[rows])

    def arrived_mask(self, step: int) -> np.ndarray:
        """``[M]`` bool: the catalog ids that take a new item at ``step``."""
        mask = np.zeros(self.birth.shape[0], dtype=bool)
        mask[self.timeline.at(step).slots] = True
        return mask
