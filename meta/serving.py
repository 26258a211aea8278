"""Meta-learned methods of a meta-train run, served as recommenders (``--agent RUN/methods/rl2.pt``).

The registry of :mod:`metarec.agents.registry` loads them through the entry point
``metarec.meta.serving:load_meta_recommender``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from gymnasium import spaces

from metarec.config import validate_config
from metarec.meta.config import MetaTrainConfig
from metarec.meta.evaluate import LoggedItemStats, RL2Recommender


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


def load_meta_recommender(weights: str | Path, env: Any, seed: int) -> Any:
    """The RL² recommender saved at ``RUN/methods/rl2.pt`` of a meta-train run, for the vector env ``env``
    (one population, as in an A/B test): its memory adapts to each user from their responses and, when
    the run trained with item statistics, it logs its own (:class:`~metarec.meta.evaluate.LoggedItemStats`).
    The gradient methods adapt per population by policy-gradient steps and serve only in meta-eval."""
    weights = Path(weights)
    run, name = weights.parent.parent, weights.stem
    if not (run / "config.yaml").is_file() or weights.parent.name != "methods":
        raise ValueError(f"agent: {weights} is not RUN/methods/METHOD.pt of a meta-train run")
    if name != "rl2":
        raise ValueError(f"agent: {weights} is a {name!r} policy; only rl2 serves outside meta-eval so far")
    config = validate_config(MetaTrainConfig, yaml.safe_load((run / "config.yaml").read_text()))
    space = env.single_observation_space
    if config.item_stats:
        n, f = space["candidates"].shape
        space = spaces.Dict({**space.spaces, "candidates": spaces.Box(-np.inf, np.inf, (n, f + 3), np.float32)})
    slate_size = int(env.single_action_space.shape[0])
    policy = config.rl2.make_policy(space, slate_size).to(env.device)
    load_weights_into(policy, load_method_weights(run, name), run, name)
    generator = torch.Generator(device=env.device).manual_seed(seed)
    recommender = RL2Recommender(policy, generator, deterministic=config.eval.rl2_greedy)
    recommender.name = f"rl2:{run.name}"
    if config.item_stats:
        recommender = LoggedItemStats(recommender, int(env.model.num_items), env.device)
    return recommender
