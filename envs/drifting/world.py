"""The fixed world of a DriftingUsers population (its catalog, clusters and trends, drawn from the catalog's seed)
and what the dynamics derive once from a population's parameters."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from metarec.envs.core.backend import Backend
from metarec.envs.core.finite import require_float32
from metarec.envs.drifting.churn import draw_items, unit
from metarec.envs.drifting.params import SimulatorConfig, UserPopulation


def make_world(config: SimulatorConfig) -> dict[str, np.ndarray]:
    """The fixed geometry of catalog and population, drawn from ``config.catalog.seed`` with numpy so
    that every backend and device sees the same world."""
    cat, pop = config.catalog, config.population
    rng = np.random.default_rng(cat.seed)
    d, t, m = cat.embedding_dim, cat.num_topics, cat.num_items

    topic_centre = unit(rng.standard_normal((t, d)))
    item_topic, item_embedding, item_quality, item_length = draw_items(rng, cat, topic_centre, m)

    cluster_topics = np.stack([rng.choice(t, pop.topics_per_cluster, replace=False) for _ in range(pop.num_clusters)])
    cluster_centre = pop.interest_scale * unit(topic_centre[cluster_topics].sum(axis=1))
    trend_direction = unit(rng.standard_normal((pop.num_clusters, d)))

    # Stratified candidate sampling: stratum s holds item_order[start[s] : start[s] + size[s]].
    bounds = (np.arange(config.num_candidates + 1) * m) // config.num_candidates
    item_order = rng.permutation(m)
    # drawn last, so that the rest of the world does not depend on whether appeal is on
    item_appeal = cat.appeal_std * rng.standard_normal(m) if cat.appeal_std > 0 else np.zeros(m)
    require_float32(item_quality, "catalog.quality_std", "item qualities (std x a normal draw)")
    require_float32(item_appeal, "catalog.appeal_std", "item appeals (std x a normal draw)")
    return {
        "item_embedding": item_embedding.astype(np.float32),
        "item_topic": item_topic.astype(np.int64),
        "item_quality": item_quality.astype(np.float32),
        "item_length": item_length.astype(np.float32),
        "cluster_centre": cluster_centre.astype(np.float32),
        "trend_direction": trend_direction.astype(np.float32),
        "item_order": item_order.astype(np.int64),
        "item_appeal": item_appeal.astype(np.float32),
        "topic_centre": topic_centre.astype(np.float32),  # what churn draws new items around
        "stratum_start": bounds[:-1].astype(np.int64),
        "stratum_size": np.diff(bounds).astype(np.float32),
    }


def population_parameters(population: UserPopulation, slate_size: int, backend: Backend) -> SimpleNamespace:
    """What the dynamics read of a population: its fields as Python floats, plus what is derived from
    them once: ``no_click_weight`` (scalar array), ``position_weight`` (``[K]``), ``revenue_scale``
    and ``drift_per_step``."""
    p = population
    return SimpleNamespace(
        **p.model_dump(),
        no_click_weight=backend.asarray(math.exp(min(p.no_click_utility / p.choice_temperature, 60.0)), np.float32),
        position_weight=backend.asarray(np.exp(-p.position_bias * np.arange(slate_size)), np.float32),
        # E[sigmoid(u + N(0, s^2))] ~ sigmoid(u / sqrt(1 + pi s^2 / 8)) (probit approximation).
        revenue_scale=1.0 / math.sqrt(1.0 + math.pi * p.engagement_noise**2 / 8.0),
        drift_per_step=p.trend_rate / p.steps_per_day,
    )
