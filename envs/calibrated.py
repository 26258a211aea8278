"""``metarec/Calibrated-v0``: DriftingUsers dynamics over a population and catalog fitted to logs.

A calibrated population is a directory written by ``metarec calibrate`` (or :func:`save_population`):

* ``population.json``: ``{"format": "metarec-population/2", "config": SimulatorConfig fields,
  "fit": {...how it was fitted...}}`` (format 1, written before fitted users were kept, still loads);
* ``world.npz``: the world arrays of :func:`metarec.envs.drifting.model.make_world` (item embeddings,
  topics, quality, length, appeal, cluster centres, trend directions, candidate strata), plus
  ``cluster_weight`` (the share of users in each interest cluster);
* ``users.npz`` (format 2, optional): the fitted users, ``user_id`` (the logs' labels, as text),
  ``interest`` (``[U, d]``, each user's fitted factors) and, in populations written since it was added,
  ``first_seen`` (``[U]``, each user's first timestamp in the logs the fit saw). ``users="fitted"`` draws new
  users among them instead of from the fitted mixture; meta-RL tasks can be drawn from groups of them
  (:mod:`metarec.meta.fitted_tasks`).

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
from metarec.envs.fitted_task import nearest_centre
from metarec.io import atomic_write, atomic_write_bytes, json_safe

FORMAT = "metarec-population/2"
READABLE_FORMATS = ("metarec-population/1", FORMAT)
USER_MODES = ("prior", "fitted")
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


def check_users(users: dict[str, np.ndarray], config: SimulatorConfig, where: str = "users") -> dict[str, np.ndarray]:
    """The fitted users' arrays (``user_id`` as text, ``interest`` ``[U, d]`` float32 and, where the fit kept
    it, ``first_seen`` ``[U]``, each user's first logged timestamp), or a ValueError naming the array and what
    was expected."""
    missing = [key for key in ("user_id", "interest") if key not in users]
    if missing:
        raise ValueError(f"{where}: missing array '{missing[0]}' (expected user_id [U] and interest [U, d])")
    interest = np.asarray(users["interest"])
    d = config.catalog.embedding_dim
    if interest.ndim != 2 or interest.shape[1] != d or interest.shape[0] < 1:
        raise ValueError(f"{where}['interest']: expected shape (U, {d}) with U >= 1, got {interest.shape}")
    if interest.dtype.kind not in "fiu" or not np.all(np.isfinite(interest)):
        raise ValueError(f"{where}['interest']: expected finite numbers")
    user_id = np.asarray(users["user_id"]).astype(str)
    if user_id.shape != (interest.shape[0],):
        raise ValueError(f"{where}['user_id']: expected shape ({interest.shape[0]},), got {user_id.shape}")
    out = {"user_id": user_id, "interest": interest.astype(np.float32)}
    if "first_seen" in users:
        first_seen = np.asarray(users["first_seen"])
        numbers = first_seen.dtype.kind in "fiu" and bool(np.all(np.isfinite(first_seen)))
        if first_seen.shape != user_id.shape or not numbers:
            raise ValueError(f"{where}['first_seen']: expected {user_id.shape[0]} finite timestamps (one per user)")
        out["first_seen"] = first_seen.astype(np.float64)
    return out


def save_population(
    path: str | Path,
    config: SimulatorConfig,
    world: dict[str, np.ndarray],
    fit: dict[str, Any] | None = None,
    users: dict[str, np.ndarray] | None = None,
) -> Path:
    """Writes a calibrated population directory (atomically per file) and returns it: ``users`` (``user_id``,
    ``interest``), where given, go to ``users.npz``. Non-finite numbers in ``fit`` are written as null."""
    path = Path(path)
    world = check_world(world, config)
    users = None if users is None else check_users(users, config)
    path.mkdir(parents=True, exist_ok=True)
    document = {"format": FORMAT, "config": config.model_dump(), "fit": json_safe(fit or {})}
    atomic_write(path / "world.npz", lambda tmp: np.savez(tmp, **world))
    if users is not None:
        atomic_write(path / "users.npz", lambda tmp: np.savez(tmp, **users))
    else:  # an earlier fit's users do not belong to this one
        (path / "users.npz").unlink(missing_ok=True)
    # last: a directory whose population.json is there was written whole
    atomic_write_bytes(json.dumps(document, indent=2, allow_nan=False).encode(), path / "population.json")
    return path


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError(f"expected an .npz archive, got one {type(loaded).__name__}")
        with loaded as arrays:
            return {key: arrays[key] for key in arrays.files}
    except Exception as err:
        # truncated, corrupt or not an .npz at all: numpy, zipfile, zlib and numpy's header parser say so in
        # many ways (ValueError, BadZipFile, EOFError, zlib.error, SyntaxError, TokenError, MemoryError, ...)
        if isinstance(err, OSError) and err.errno is not None:  # the file cannot be read: not its content
            raise
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        if "pickle" in reason:  # numpy's fallback for a file that is neither .npz nor .npy
            reason = "neither an .npz nor an .npy file"
        raise ValueError(f"population: {path} is not a readable .npz of {what} ({reason})") from None


def load_fitted_users(path: str | Path, config: SimulatorConfig) -> dict[str, np.ndarray] | None:
    """The fitted users of a calibrated population directory (``user_id``, ``interest``), None if it has none."""
    users_path = Path(path) / "users.npz"
    if not users_path.is_file():
        return None
    return check_users(_read_npz(users_path, "fitted users"), config, where=str(users_path))


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
    if found not in READABLE_FORMATS:
        expected = " or ".join(repr(f) for f in READABLE_FORMATS)
        raise ValueError(f"population: {document_path} has format {short_repr(found)}, expected {expected}")
    config = build_config(SimulatorConfig, document.get("config"), {})
    world = _read_npz(world_path, "world arrays")
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


def load_calibrated(
    population: str | Path | None, overrides: dict[str, Any], users: Any = "prior", where: str = "population"
) -> tuple[SimulatorConfig, dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray] | None]:
    """``(config, world, fit, fitted users or None)`` of a calibrated population directory with ``overrides``
    of its config (``population_fields`` for the population's fields, any other key a config field):
    what ``metarec/Calibrated-v0`` and a meta-RL task drawn from fitted users both build on. The catalogue's size
    and embedding dimension and the number of clusters are fixed by the fit; another ``num_candidates`` gets
    its own candidate strata. ``users`` is ``"prior"`` (no fitted users asked for), ``"fitted"`` (the
    directory must hold them) or a list of fitted users' indices (those users only). Errors name ``where`` and
    the field."""
    if population is not None and not isinstance(population, str | Path):
        raise ValueError(
            f"{where}: expected the directory of a calibrated population, got {type(population).__name__}; "
            "override the population's fields with population_fields={...}"
        )
    rows = _user_rows(users)
    overrides = dict(overrides)
    loaded, world, fit = load_population(population)
    fitted = None
    if rows is not None or users == "fitted":
        fitted = load_fitted_users(population, loaded)
        if fitted is None:
            raise ValueError(
                f"users: {short_repr(users)} needs the fitted users, and {population} has none (no users.npz: a "
                "population written before they were kept); calibrate again, or use users='prior'"
            )
        if rows is not None:
            count = len(fitted["interest"])
            if rows.max() >= count:
                raise ValueError(f"users: {population} has fitted users 0..{count - 1}, got index {int(rows.max())}")
            fitted = {key: value[rows] for key, value in fitted.items()}
    fields = overrides.pop("population_fields", None) or {}
    merged = build_config(SimulatorConfig, loaded, {**overrides, "population": fields})
    for field in ("num_items", "embedding_dim"):
        if getattr(merged.catalog, field) != getattr(loaded.catalog, field):
            raise ValueError(f"catalog.{field}: fixed by the calibrated population, cannot be overridden")
    if merged.population.num_clusters != loaded.population.num_clusters:
        raise ValueError("population.num_clusters: fixed by the calibrated population, cannot be overridden")
    if merged.num_candidates != loaded.num_candidates:
        world = {**world, **candidate_strata(merged.catalog.num_items, merged.num_candidates, merged.catalog.seed)}
    return merged, world, fit, fitted


def _user_rows(users: Any) -> np.ndarray | None:
    """The fitted users' indices a ``users`` list names (None for a mode), or a ValueError saying what was
    expected."""
    if isinstance(users, str) and users in USER_MODES:
        return None
    expected = f"one of {', '.join(USER_MODES)} or a list of fitted users' indices"
    if isinstance(users, str) or not isinstance(users, list | tuple | np.ndarray) or len(users) == 0:
        raise ValueError(f"users: expected {expected}, got {short_repr(users)}")
    if not all(isinstance(u, int | np.integer) and not isinstance(u, bool) and u >= 0 for u in users):
        raise ValueError(f"users: expected {expected} (integers >= 0), got {short_repr(users)}")
    rows = np.asarray(users, dtype=np.int64)
    if len(np.unique(rows)) != len(rows):
        raise ValueError(f"users: expected distinct indices, got {short_repr(users)}")
    return rows


class _Calibrated:
    """Shared by the single-user and vector classes: the population comes from a directory."""

    def _load(self, population: str | Path | None, config: Any, overrides: dict[str, Any]) -> Any:
        if config is not None:
            raise ValueError("config: Calibrated-v0 takes its config from population=DIR; pass field overrides instead")
        users = overrides.pop("users", "prior")
        merged, self._world, self.calibration, fitted = load_calibrated(population, overrides, users)
        self._fitted_interest = None if fitted is None else fitted["interest"]
        return merged

    def build_model(self, backend: Any) -> DriftingUsersModel:
        if self._fitted_interest is not None:
            return FittedUsersModel(self.config, backend, self._world, self._fitted_interest)
        return DriftingUsersModel(self.config, backend, world=self._world)


class FittedUsersModel(DriftingUsersModel):
    """DriftingUsers dynamics whose new users (and users whose interests shift) are drawn uniformly among the
    users fitted to the logs: the anchor is a fitted user's factors, the cluster the nearest fitted centre."""

    def __init__(
        self, config: SimulatorConfig, backend: Any, world: dict[str, np.ndarray], interest: np.ndarray
    ) -> None:
        super().__init__(config, backend, world=world)
        self.fitted_interest = backend.asarray(np.asarray(interest, dtype=np.float32))
        self.fitted_cluster = backend.asarray(nearest_centre(interest, world["cluster_centre"]))

    def _draw_users(self, rng: Any, num_users: int, task: Any = None) -> tuple[Any, Any]:
        index = rng.integers(int(self.fitted_interest.shape[0]), (num_users,))
        return self.backend.take_rows(self.fitted_cluster, index), self.backend.take_rows(self.fitted_interest, index)


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
    ``users`` (``"prior"``, the default: new users drawn from the fitted mixture; ``"fitted"``: drawn among
    the users fitted to the logs, which needs the population's ``users.npz``; a list of indices: drawn among
    those fitted users only, as a meta-RL task of a group of them is),
    ``population_fields`` (overrides of the population's fields, for instance ``{"num_sessions": 7}``)
    and keyword overrides of the other config fields; the catalog's size, embedding dimension and the
    number of clusters are fixed by the fit.

    ## Version History
    * v0: initial version; ``users="fitted"`` and lists of fitted users added later (the default draws users as
      before).
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
