"""``metarec/Calibrated-v0``: DriftingUsers dynamics over a population and catalog fitted to logs.

A calibrated population is a directory written by ``metarec calibrate`` (or :func:`save_population`):

* ``population.json``: ``{"format": "metarec-population/1", "config": SimulatorConfig fields,
  "fit": {...how it was fitted...}}``;
* ``world.npz``: the world arrays of :func:`metarec.envs.drifting.model.make_world` (item embeddings,
  topics, quality, length, appeal, cluster centres, trend directions, candidate strata), plus
  ``cluster_weight`` (the share of users in each interest cluster).

It loads as just another population: the dynamics are :class:`~metarec.envs.drifting.model.DriftingUsersModel`'s.
The files are read with ``json`` and ``numpy.load(allow_pickle=False)``; nothing in them runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from metarec.config import short_repr
from metarec.envs.adapters import build_config
from metarec.envs.drifting.env import DriftingUsersEnv, DriftingUsersVectorEnv
from metarec.envs.drifting.model import DriftingUsersModel
from metarec.envs.drifting.params import SimulatorConfig
from metarec.io import atomic_write, atomic_write_bytes, json_safe

FORMAT = "metarec-population/1"
# world key -> (dtype kind, shape in terms of M items, d dims, C clusters, N candidates)
WORLD_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "item_embedding": ("f", ("M", "d")),
    "item_topic": ("i", ("M",)),
    "item_quality": ("f", ("M",)),
    "item_length": ("f", ("M",)),
    "item_appeal": ("f", ("M",)),
    "cluster_centre": ("f", ("C", "d")),
    "cluster_weight": ("f", ("C",)),
    "trend_direction": ("f", ("C", "d")),
    "item_order": ("i", ("M",)),
    "stratum_start": ("i", ("N",)),
    "stratum_size": ("f", ("N",)),
}


def candidate_strata(num_items: int, num_candidates: int, seed: int) -> dict[str, np.ndarray]:
    """The stratified candidate sampling tables of a catalog (as :func:`make_world` draws them)."""
    bounds = (np.arange(num_candidates + 1) * num_items) // num_candidates
    return {
        "item_order": np.random.default_rng(seed).permutation(num_items).astype(np.int64),
        "stratum_start": bounds[:-1].astype(np.int64),
        "stratum_size": np.diff(bounds).astype(np.float32),
    }


def check_world(world: dict[str, np.ndarray], config: SimulatorConfig, where: str = "world") -> dict[str, np.ndarray]:
    """The world arrays, cast to their dtypes, or a ValueError naming the array and what was expected."""
    sizes = {
        "M": config.catalog.num_items,
        "d": config.catalog.embedding_dim,
        "C": config.population.num_clusters,
        "N": config.num_candidates,
    }
    out = {}
    for key, (kind, dims) in WORLD_KEYS.items():
        if key not in world:
            raise ValueError(
                f"{where}: missing array '{key}' (expected shape {dims} = {tuple(sizes[x] for x in dims)})"
            )
        value = np.asarray(world[key])
        expected = tuple(sizes[x] for x in dims)
        if value.shape != expected:
            raise ValueError(f"{where}['{key}']: expected shape {expected} ({', '.join(dims)}), got {value.shape}")
        if kind == "f":
            if value.dtype.kind not in "fiu" or not np.all(np.isfinite(value)):
                raise ValueError(f"{where}['{key}']: expected finite numbers")
            value = value.astype(np.float32)
        else:
            if value.dtype.kind not in "iu":
                raise ValueError(f"{where}['{key}']: expected integers, got dtype {value.dtype}")
            value = value.astype(np.int64)
        out[key] = value
    if out["item_topic"].min() < 0 or out["item_topic"].max() >= config.catalog.num_topics:
        raise ValueError(f"{where}['item_topic']: expected topics in [0, {config.catalog.num_topics})")
    if np.any(out["item_length"] <= 0):
        raise ValueError(f"{where}['item_length']: expected positive lengths")
    weight = out["cluster_weight"]
    if np.any(weight < 0) or not np.isclose(weight.sum(), 1.0, atol=1e-4):
        raise ValueError(
            f"{where}['cluster_weight']: expected non-negative shares summing to 1, got sum {weight.sum()}"
        )
    if sorted(out["item_order"].tolist()) != list(range(sizes["M"])):
        raise ValueError(f"{where}['item_order']: expected a permutation of the {sizes['M']} items")
    return out


def save_population(
    path: str | Path, config: SimulatorConfig, world: dict[str, np.ndarray], fit: dict[str, Any] | None = None
) -> Path:
    """Writes a calibrated population directory (atomically per file) and returns it. Non-finite numbers
    in ``fit`` are written as null."""
    path = Path(path)
    world = check_world(world, config)
    path.mkdir(parents=True, exist_ok=True)
    document = {"format": FORMAT, "config": config.model_dump(), "fit": json_safe(fit or {})}
    atomic_write_bytes(json.dumps(document, indent=2, allow_nan=False).encode(), path / "population.json")
    atomic_write(path / "world.npz", lambda tmp: np.savez(tmp, **world))
    return path


def load_population(path: str | Path) -> tuple[SimulatorConfig, dict[str, np.ndarray], dict[str, Any]]:
    """``(config, world, fit)`` of a calibrated population directory; ValueErrors name the file and field."""
    if path is None:
        raise ValueError("population: expected the directory of a calibrated population (metarec calibrate --out DIR)")
    path = Path(path)
    document_path, world_path = path / "population.json", path / "world.npz"
    if not document_path.is_file() or not world_path.is_file():
        raise ValueError(f"population: {path} is not a calibrated population (expected population.json and world.npz)")
    try:
        document = json.loads(document_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"population: {document_path} is not valid JSON ({err})") from None
    found = document.get("format") if isinstance(document, dict) else type(document).__name__
    if found != FORMAT:
        raise ValueError(f"population: {document_path} has format {short_repr(found)}, expected {FORMAT!r}")
    config = build_config(SimulatorConfig, document.get("config"), {})
    try:
        loaded = np.load(world_path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError(f"expected an .npz archive, got one {type(loaded).__name__}")
        with loaded as arrays:
            world = {key: arrays[key] for key in arrays.files}
    except Exception as err:
        # truncated, corrupt or not an .npz at all: numpy, zipfile, zlib and numpy's header parser say so in
        # many ways (ValueError, BadZipFile, EOFError, zlib.error, SyntaxError, TokenError, MemoryError, ...)
        if isinstance(err, OSError) and err.errno is not None:  # the file cannot be read: not its content
            raise
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        if "pickle" in reason:  # numpy's fallback for a file that is neither .npz nor .npy
            reason = "neither an .npz nor an .npy file"
        raise ValueError(f"population: {world_path} is not a readable .npz of world arrays ({reason})") from None
    return config, check_world(world, config, where=str(world_path)), document.get("fit", {})


def with_population_fields(env_kwargs: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``env_kwargs`` with population ``fields`` (say ``num_sessions``) merged in, for any DriftingUsers-family
    id: into ``population`` where it is a dict of fields, into ``population_fields`` where ``population``
    is a calibrated population's directory (Calibrated-v0)."""
    kwargs = dict(env_kwargs)
    population = kwargs.get("population")
    if isinstance(population, str | Path):
        kwargs["population_fields"] = {**dict(kwargs.get("population_fields") or {}), **fields}
    else:
        kwargs["population"] = {**dict(population or {}), **fields}
    return kwargs


class _Calibrated:
    """Shared by the single-user and vector classes: the population comes from a directory."""

    def _load(self, population: str | Path | None, config: Any, overrides: dict[str, Any]) -> Any:
        if config is not None:
            raise ValueError("config: Calibrated-v0 takes its config from population=DIR; pass field overrides instead")
        if population is not None and not isinstance(population, str | Path):
            raise ValueError(
                f"population: expected the directory of a calibrated population, got {type(population).__name__}; "
                "override the population's fields with population_fields={...}"
            )
        loaded, world, fit = load_population(population)
        self._world = world
        self.calibration = fit
        fields = overrides.pop("population_fields", None) or {}
        merged = build_config(SimulatorConfig, loaded, {**overrides, "population": fields})
        for field in ("num_items", "embedding_dim"):
            if getattr(merged.catalog, field) != getattr(loaded.catalog, field):
                raise ValueError(f"catalog.{field}: fixed by the calibrated population, cannot be overridden")
        if merged.population.num_clusters != loaded.population.num_clusters:
            raise ValueError("population.num_clusters: fixed by the calibrated population, cannot be overridden")
        if merged.num_candidates != loaded.num_candidates:
            self._world = {
                **world,
                **candidate_strata(merged.catalog.num_items, merged.num_candidates, merged.catalog.seed),
            }
        return merged

    def build_model(self, backend: Any) -> DriftingUsersModel:
        return DriftingUsersModel(self.config, backend, world=self._world)


class CalibratedEnv(_Calibrated, DriftingUsersEnv):
    """Users of a population fitted to logs (``metarec calibrate``), one at a time.

    ## Description
    DriftingUsers dynamics (see :class:`~metarec.envs.drifting.env.DriftingUsersEnv`) over the
    catalog and population in ``population=DIR``: item embeddings and quality from matrix
    factorisation of the logs, interest clusters from a mixture over user factors, and the choice,
    drift and fatigue rates estimated from them. ``gym.make("metarec/Calibrated-v0", population=DIR)``.

    ## Observation Space, Action Space, Rewards, Starting State, Episode End
    As DriftingUsers-v0, with the calibrated catalog's size and embedding dimension. New users join
    a cluster with the fitted cluster shares.

    ## Arguments
    ``population`` (required: a directory with ``population.json`` and ``world.npz``),
    ``population_fields`` (overrides of the population's fields, for instance ``{"num_sessions": 7}``)
    and keyword overrides of the other config fields; the catalog's size, embedding dimension and the
    number of clusters are fixed by the fit.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, population: str | Path | None = None, config: Any = None, **kwargs: Any) -> None:
        own = {k: kwargs.pop(k) for k in ("single_item", "ground_truth", "backend", "render_mode") if k in kwargs}
        merged = self._load(population, config, kwargs)
        super().__init__(merged, **own)


class CalibratedVectorEnv(_Calibrated, DriftingUsersVectorEnv):
    """``num_envs`` users of :class:`CalibratedEnv` as one batch of torch tensors on ``device``."""

    def __init__(self, num_envs: int, population: str | Path | None = None, config: Any = None, **kwargs: Any) -> None:
        own = {
            k: kwargs.pop(k)
            for k in (
                "single_item", "ground_truth", "device", "autoreset", "render_mode", "shard", "keyed_resets",
                "compact_observation",
            )
            if k in kwargs
        }
        merged = self._load(population, config, kwargs)
        super().__init__(num_envs, merged, **own)
