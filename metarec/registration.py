"""Every environment id of metarec, registered in one place (``import metarec`` runs this)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym


@dataclass(frozen=True)
class EnvEntry:
    """One registered id: where its classes live, its defaults and a one-line description."""

    id: str
    module: str
    single: str
    vector: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    extra: str | None = None  # the optional extra it needs (``pip install "metarec[EXTRA]"``), if any
    requires: tuple[str, ...] = ()  # keyword arguments that have no default (e.g. a population directory)


ENVIRONMENTS: tuple[EnvEntry, ...] = (
    EnvEntry(
        "metarec/DriftingUsers-v0",
        "metarec.envs.drifting.env",
        "DriftingUsersEnv",
        "DriftingUsersVectorEnv",
        "Flagship: slate of 5 from 20 candidates; consumption, random-walk, shift, trend drift and fatigue on.",
    ),
    EnvEntry(
        "metarec/DriftingUsersSingle-v0",
        "metarec.envs.drifting.env",
        "DriftingUsersEnv",
        "DriftingUsersVectorEnv",
        "DriftingUsers with one item per step (Discrete actions), for DQN-style agents.",
        {"single_item": True},
    ),
    EnvEntry(
        "metarec/DriftingUsersMultiSession-v0",
        "metarec.envs.drifting.env",
        "DriftingUsersEnv",
        "DriftingUsersVectorEnv",
        "DriftingUsers over up to 5 sessions per user; returning depends on satisfaction (retention).",
        {"population": {"num_sessions": 5}},
    ),
    EnvEntry(
        "metarec/RecSimInterestEvolution-v0",
        "metarec.envs.recsim.interest_evolution",
        "RecSimInterestEvolutionEnv",
        "RecSimInterestEvolutionVectorEnv",
        "Port of RecSim's interest_evolution: 10 candidates, slate 2, reward = watch time.",
    ),
    EnvEntry(
        "metarec/RecSimLongTermSatisfaction-v0",
        "metarec.envs.recsim.long_term_satisfaction",
        "RecSimLongTermSatisfactionEnv",
        "RecSimLongTermSatisfactionVectorEnv",
        "Port of RecSim's long_term_satisfaction (choc/kale): 10 candidates, slate 2, reward = engagement.",
    ),
    EnvEntry(
        "metarec/RecSimInterestExploration-v0",
        "metarec.envs.recsim.interest_exploration",
        "RecSimInterestExplorationEnv",
        "RecSimInterestExplorationVectorEnv",
        "Port of RecSim's interest_exploration: 10 candidates, slate 2, reward = clicks.",
    ),
    EnvEntry(
        "metarec/RecSimNGInterestEvolution-v0",
        "metarec.envs.recsim_ng.port",
        "RecSimNGInterestEvolutionEnv",
        "RecSimNGInterestEvolutionVectorEnv",
        "Port of RecSim NG's interest-evolution model: 2 topics, 100 documents, slate 2.",
    ),
    EnvEntry(
        "metarec/Calibrated-v0",
        "metarec.envs.calibrated",
        "CalibratedEnv",
        "CalibratedVectorEnv",
        "DriftingUsers over a population fitted to logs: population=DIR from metarec calibrate.",
        requires=("population",),
    ),
    EnvEntry(
        "metarec/RecSimNG-v0",
        "metarec.envs.recsim_ng.env",
        "RecSimNGEnv",
        "RecSimNGVectorEnv",
        "RecSim NG's own simulations (interest_evolution, ecosystem) run by RecSim NG; needs metarec[recsim-ng].",
        extra="recsim-ng",
    ),
)

CORE_ENVIRONMENTS: tuple[EnvEntry, ...] = tuple(e for e in ENVIRONMENTS if e.extra is None and not e.requires)
"""The ids that run on the core install with no required arguments."""


def check_env_id(value: str) -> str:
    """``value`` if it is a metarec environment id, else a ValueError listing the ids (for config validators)."""
    ids = [e.id for e in ENVIRONMENTS]
    if value not in ids:
        raise ValueError(f"expected one of {', '.join(ids)}")
    return value


ARRAY_BACKENDS = ("numpy", "torch")


@dataclass(frozen=True)
class VectorEntryPoint:
    """What ``gym.make_vec(id, num_envs, vectorization_mode="vector_entry_point", **kwargs)`` calls.

    metarec's vector envs step on torch. Through ``gym.make_vec`` they speak numpy by default on CPU, so
    Gymnasium's vector wrappers (``RecordEpisodeStatistics``, ``NormalizeReward``, ...) work unchanged: the env is
    wrapped in Gymnasium's ``ArrayConversion`` (torch to numpy, and actions back). ``array_backend="torch"``
    returns the torch tensors themselves, as metarec's own trainers take them, and is the default on a GPU
    ``device``, where a copy to numpy every step would cost more than the step.
    """

    module: str
    cls: str

    def __call__(self, num_envs: int, array_backend: str | None = None, **kwargs: Any) -> Any:
        import importlib

        if array_backend is not None and array_backend not in ARRAY_BACKENDS:
            raise ValueError(f"array_backend: expected 'numpy' or 'torch', got {array_backend!r}")
        env = getattr(importlib.import_module(self.module), self.cls)(num_envs, **kwargs)
        if array_backend is None:
            on_cpu = getattr(getattr(env, "device", None), "type", "cpu") == "cpu"
            array_backend = "numpy" if on_cpu else "torch"
        if array_backend == "torch":
            return env
        return numpy_vector_env(env)


def numpy_vector_env(env: Any) -> Any:
    """``env`` (torch) behind Gymnasium's ``ArrayConversion`` to numpy, whose outputs are copies: a plain
    conversion would share memory with the simulator's state, so writing to an observation would change it."""
    import numpy as np
    import torch
    from gymnasium.wrappers.vector import ArrayConversion

    def copied(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.copy()
        if isinstance(value, dict):
            return {key: copied(item) for key, item in value.items()}
        if isinstance(value, tuple):
            return tuple(copied(item) for item in value)
        return value

    class NumpyCopies(ArrayConversion):
        def step(self, actions: Any) -> Any:
            return copied(super().step(actions))

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            return copied(super().reset(seed=seed, options=options))

    return NumpyCopies(env, env_xp=torch, target_xp=np)


def register_envs() -> None:
    """Registers every id in :data:`ENVIRONMENTS` with Gymnasium (idempotent)."""
    for entry in ENVIRONMENTS:
        if entry.id in gym.registry:
            continue
        gym.register(
            id=entry.id,
            entry_point=f"{entry.module}:{entry.single}",
            vector_entry_point=VectorEntryPoint(entry.module, entry.vector),
            kwargs=dict(entry.kwargs),
            disable_env_checker=False,
        )
