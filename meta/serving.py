"""Meta-learned methods of a meta-train run, served as recommenders (``--agent RUN/methods/METHOD.pt``).

Every method a run trained serves, in ``metarec evaluate`` and as an A/B arm, on a vector env whose
observations have the shapes of the run's tasks (its users are then one population, as in an A/B test);
each keeps adapting while it serves, as it does in meta-eval:

* ``rl2`` and ``icl``: their memory adapts to each user from their responses
  (:class:`~metarec.meta.evaluate.RL2Recommender`; ``icl`` always shows its most probable slate);
* ``maml``, ``fomaml``, ``reptile``, ``finetune``, ``scratch``: start from the saved θ and, after every window
  of ``gradient.rollout_steps`` steps, take one policy-gradient step, exactly as in meta-eval
  (:class:`~metarec.meta.gradient_rl.AdaptingRecommender`). With ``gradient.adapt: population`` the step is
  on that window of the users they served (``info["active"]``): the env's users are one task (a
  :class:`~metarec.envs.task_batch.TaskBatchVectorEnv` keeps its tasks, each adapted on its own users).
  What one user teaches the parameters changes what the others see, so an A/B test needs replicates for
  such an arm, and it serves in one process (the step pools every user). With ``gradient.adapt: user``
  every user has parameters of their own, stepped on their own window: users stay independent, and it
  serves across processes too.

When the run trained with item statistics and the env has none, the recommender logs its own
(:class:`~metarec.meta.evaluate.LoggedItemStats`). The registry of :mod:`metarec.agents.registry` loads these
through the entry point ``metarec.meta.serving:load_meta_recommender``. Weights load with
``torch.load(..., weights_only=True)``: tensors only, never pickled objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from gymnasium import spaces

from metarec.agents.base import Recommender, slate_size_of
from metarec.config import validate_config
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.envs.vector import recommender_space
from metarec.meta.config import MEMORY_METHODS, MetaTrainConfig
from metarec.meta.evaluate import LoggedItemStats, RL2Recommender
from metarec.meta.gradient_rl import AdaptingRecommender
from metarec.meta.policy import feedforward_policy
from metarec.meta.rl2 import RL2Config
from metarec.meta.tasks import TaskDistribution, task_batch
from metarec.meta.time_unit import TimeUnit, length_range
from metarec.parallel import group_size

STAT_FEATURES = 3  # what item statistics append to each candidate's features


def load_weights_into(policy: torch.nn.Module, weights: dict[str, torch.Tensor], run: Path, name: str) -> None:
    try:
        policy.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(
            f"run: {run}'s {name} weights do not fit the network this config builds ({first}); "
            "was it trained by another version of metarec? Train it again"
        ) from None


def load_method_weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    path = run / "methods" / f"{name}.pt"
    if not path.is_file():
        raise ValueError(f"run: {run} has no trained {name!r} ({path} is missing); finish meta-train first")
    return torch.load(path, map_location="cpu", weights_only=True)["policy"]


def load_meta_recommender(weights: str | Path, env: Any, seed: int) -> Recommender:
    """The method saved at ``RUN/methods/METHOD.pt`` of a meta-train run, serving the vector env ``env``
    with its random draws seeded by ``seed`` (see the module docstring). On a meta-eval env and seed it
    is the recommender meta-eval builds, so it gives meta-eval's numbers.

    Raises:
        ValueError: naming ``agent``, before any work: a path that is not a method file of a run, a
            method the run did not train, a missing file, an env whose slates, candidates or history
            differ from those of the run's tasks, or a gradient method split across processes.
    """
    weights = Path(weights)
    run, name = weights.parent.parent, weights.stem
    if weights.suffix != ".pt" or weights.parent.name != "methods" or not (run / "config.yaml").is_file():
        raise ValueError(f"agent: {weights} is not RUN/methods/METHOD.pt of a meta-train run")
    config = validate_config(MetaTrainConfig, yaml.safe_load((run / "config.yaml").read_text()))
    if name not in config.methods:
        raise ValueError(
            f"agent: {weights} names {name!r}, which {run} did not train (its methods: {', '.join(config.methods)})"
        )
    if not weights.is_file():
        raise ValueError(f"agent: {weights} is missing; {run} trains {name!r}: finish meta-train first")
    logs_stats = config.item_stats and getattr(getattr(env, "model", None), "item_stats", None) is None
    space, slate_size = served_space(config, env, f"{name} of {run}", logs_stats)
    split = group_size() > 1 or getattr(env, "shard", None) is not None
    if split and name not in MEMORY_METHODS and config.gradient.adapt == "population":
        raise ValueError(f"agent: {name} adapts one policy to all its users' data, so it serves in one process; "
                         "run it without --nproc, or meta-train it with gradient.adapt: user")  # fmt: skip
    if split and name in MEMORY_METHODS and memory_settings(config, name).population:
        raise ValueError(f"agent: {name}'s population memory reads every user of a population, so it serves in one "
                         "process; run it without --nproc")  # fmt: skip
    generator = torch.Generator(device=env.device).manual_seed(seed)
    recommender = build_method(config, run, name, load_method_weights(run, name), env, space, slate_size, generator)
    recommender.name = f"{name}:{run.name}"
    if logs_stats:
        recommender = LoggedItemStats(recommender, int(env.model.num_items), env.device)
    return recommender


def build_method(
    config: MetaTrainConfig,
    run: Path,
    name: str,
    weights: dict[str, torch.Tensor],
    env: Any,
    space: spaces.Dict,
    slate_size: int,
    generator: torch.Generator,
) -> Recommender:
    """Method ``name`` of the run with ``weights``, for ``env`` (observations of ``space``): RL² or the
    in-context recommender with its memory, or a gradient method adapting one policy per task of a task batch
    (else one for all users)."""
    tasks, users = (env.num_tasks, env.users_per_task) if isinstance(env, TaskBatchVectorEnv) else (1, env.num_envs)
    if name in MEMORY_METHODS:
        settings = memory_settings(config, name)
        policy = settings.make_policy(space, slate_size).to(env.device)
        load_weights_into(policy, weights, run, name)
        unit = None
        if settings.rescale_time:  # each population in the time unit of the catalogues it trained on
            assert isinstance(config.tasks, TaskDistribution)
            low, high = length_range(config.tasks, config.train_split, config.seed)
            unit = TimeUnit(low, high, space["history"].shape[1] - 3, config.item_stats, users)
        # the in-context recommender was trained to show its most probable slate, and always does
        greedy = config.eval.rl2_greedy or name == "icl"
        recommender = RL2Recommender(policy, generator, deterministic=greedy, population=users, time_unit=unit)
        recommender.name = name
        return recommender
    policy = feedforward_policy(space, slate_size, config.gradient.hidden).to(env.device)
    load_weights_into(policy, weights, run, name)
    return AdaptingRecommender(name, policy, config.gradient, tasks, users, slate_size, generator)


def memory_settings(config: MetaTrainConfig, name: str) -> RL2Config:
    """The settings of memory method ``name`` (``rl2`` or ``icl``)."""
    return config.rl2 if name == "rl2" else config.icl


def trained_space(config: MetaTrainConfig) -> tuple[spaces.Dict, int]:
    """The single-user observation space and the slate size of the run's tasks, from the env meta-train
    builds for them (candidates carry the item statistics when the run trained with them)."""
    if not isinstance(config.tasks, TaskDistribution):
        raise ValueError("agent: the run's config.yaml does not hold its task distribution; train it again")
    tasks = task_batch(config.tasks, config.train_split, 1, config.seed, 0, config.sessions)
    env = TaskBatchVectorEnv(tasks, 1, ground_truth=False, item_stats=config.item_stats)
    return env.single_observation_space, int(env.model.slate_size)


def served_space(config: MetaTrainConfig, env: Any, method: str, logs_stats: bool) -> tuple[spaces.Dict, int]:
    """The observation space the method's policy is built for on ``env`` and its slate size; a ValueError
    naming both values where ``env`` differs from the run's tasks. With ``logs_stats`` the env's candidates
    lack the item statistics, which the recommender appends itself."""
    trained, slate_size = trained_space(config)
    served = slate_size_of(env)
    if served != slate_size:
        shown = "one item per step" if served is None else f"slates of {served}"
        raise ValueError(f"agent: {method} was trained on slates of {slate_size}; this env takes {shown}")
    observed = getattr(recommender_space(env), "spaces", {})
    n, f = trained["candidates"].shape
    extra = STAT_FEATURES if logs_stats else 0
    if "candidates" not in observed or len(observed["candidates"].shape) != 2:
        raise ValueError(f"agent: {method} needs candidates of shape ({n}, {f - extra}); this env has none")
    served_n, served_f = observed["candidates"].shape
    if served_n != n:
        raise ValueError(f"agent: {method} was trained on {n} candidates per step; this env offers {served_n}")
    if served_f + extra != f:
        note = f", plus the {extra} item statistics it logs itself" if extra else ""
        raise ValueError(
            f"agent: {method} was trained on candidates of {f - extra} features{note}; this env's have {served_f}"
        )
    for key, box in trained.spaces.items():
        if key not in ("candidates", "candidate_ids") and (key not in observed or observed[key].shape != box.shape):
            has = f"shape {observed[key].shape}" if key in observed else "none"
            raise ValueError(f"agent: {method} was trained on {key} of shape {box.shape}; this env's has {has}")
    if not extra:
        return recommender_space(env), slate_size
    if "candidate_ids" not in observed:  # what its item statistics are kept by
        raise ValueError(f"agent: {method} logs item statistics by candidate_ids; this env has none")
    box = spaces.Box(-np.inf, np.inf, (n, f), np.float32)
    return spaces.Dict({**observed, "candidates": box}), slate_size
