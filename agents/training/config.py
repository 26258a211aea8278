"""The configuration of a training run (``metarec train CONFIG``) and what every trainer shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
from pydantic import Field, field_validator

from metarec.agents.evaluation import evaluate
from metarec.agents.ppo import PPOConfig
from metarec.config import FrozenConfig, load_yaml_config
from metarec.registration import check_env_id

Algorithm = Literal["ppo", "sb3-ppo", "sb3-a2c", "sb3-recurrent-ppo", "sb3-dqn"]


class TrainEvalConfig(FrozenConfig):
    """Evaluation on fresh users (one episode each), during and after training."""

    users: int = Field(2000, ge=2, description="Users per evaluation.")
    seed: int = Field(12345, ge=0, description="Seed of the evaluation users (apart from training's).")
    every_steps: int = Field(
        0, ge=0, description="Evaluate every this many env steps (0: only at the end; batched PPO only)."
    )


class SB3Config(FrozenConfig):
    """A stable-baselines3 run: users stepping through the SB3 VecEnv adapter, keyword arguments of
    the algorithm's constructor and of the slate policy."""

    num_envs: int = Field(8, ge=1, description="Users in SB3's VecEnv.")
    algo_kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. n_steps, batch_size.")
    policy_kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. hidden, history_encoder.")


class TrainConfig(FrozenConfig):
    """One training run (a YAML file in ``configs/``)."""

    algo: Algorithm = Field(description="ppo (metarec's batched PPO) or sb3-ppo|sb3-a2c|sb3-recurrent-ppo|sb3-dqn.")
    env: str = Field(description="A registered metarec environment id.")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the environment.")
    total_steps: int = Field(gt=0, description="Environment steps over all users.")
    seed: int = Field(0, ge=0, description="Seeds weights, sampling and the training users.")
    device: str = Field("cpu", description="Torch device.")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads (None: torch's default).")
    checkpoint_every: int = Field(200_000, ge=1, description="Env steps between checkpoints.")
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    sb3: SB3Config = Field(default_factory=SB3Config)
    eval: TrainEvalConfig = Field(default_factory=TrainEvalConfig)

    @field_validator("env")
    @classmethod
    def _known_env(cls, value: str) -> str:
        return check_env_id(value)


# Keys a resumed run may change: they do not shape what is learned.
RESUMABLE_CHANGES = frozenset({"device", "torch_threads", "eval", "checkpoint_every"})


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Reads a training config, applies ``--set`` overrides and validates it (errors name the key)."""
    return load_yaml_config(TrainConfig, path, overrides)


def make_vector_env(config: TrainConfig, num_envs: int, **extra: Any) -> Any:
    env = gym.make_vec(
        config.env,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        device=config.device,
        **{**config.env_kwargs, **extra},
    )
    return env


def reference_returns(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Random and oracle evaluated on the evaluation users (the ends of the normalised scale)."""
    return {
        name: evaluate(
            config.env,
            name,
            config.eval.users,
            seed=config.eval.seed,
            device=config.device,
            env_kwargs=config.env_kwargs,
        )
        for name in ("random", "oracle")
    }


def normalised(value: float, references: dict[str, dict[str, Any]]) -> float:
    low, high = references["random"]["mean_return"], references["oracle"]["mean_return"]
    return (value - low) / (high - low) if high != low else float("nan")
