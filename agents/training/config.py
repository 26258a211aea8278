"""The configuration of a training run (``metarec train CONFIG``) and what every trainer shares."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import torch
from pydantic import Field, field_validator, model_validator

from metarec.agents.evaluation import check_env_kwargs, evaluate
from metarec.agents.ppo import PPOConfig
from metarec.config import FrozenConfig, load_yaml_config, short_repr
from metarec.io import one_line
from metarec.registration import ENVIRONMENTS, check_env_id
from metarec.resources import MIN_BYTES_PER_ENV, memory_problem

Algorithm = Literal["ppo", "sb3-ppo", "sb3-a2c", "sb3-recurrent-ppo", "sb3-dqn"]


class TrainEvalConfig(FrozenConfig):
    """Evaluation on fresh users (one episode each), during and after training."""

    users: int = Field(2000, ge=2, description="Users per evaluation.")
    seed: int = Field(12345, ge=0, description="Seed of the evaluation users (apart from training's).")
    every_steps: int = Field(
        0, ge=0, description="Evaluate every this many env steps (0: only at the end)."
    )

    @field_validator("users")
    @classmethod
    def _users_fit(cls, value: int) -> int:
        return _fits_in_memory(value)


class SB3Config(FrozenConfig):
    """A stable-baselines3 run: users stepping through the SB3 VecEnv adapter, keyword arguments of
    the algorithm's constructor and of the slate policy."""

    num_envs: int = Field(8, ge=1, description="Users in SB3's VecEnv.")
    algo_kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. n_steps, batch_size.")
    policy_kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. hidden, history_encoder.")

    @field_validator("num_envs")
    @classmethod
    def _users_fit(cls, value: int) -> int:
        return _fits_in_memory(value)


def _fits_in_memory(users: int) -> int:
    problem = memory_problem(users, MIN_BYTES_PER_ENV)
    if problem is not None:
        raise ValueError(problem)
    return users


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

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        # the name only: whether this machine has the device is checked when the run starts (a config
        # written on a GPU machine still loads on a CPU one)
        try:
            torch.device(value)
        except (RuntimeError, TypeError):
            raise ValueError(f"expected a torch device such as 'cpu' or 'cuda', got {short_repr(value)}") from None
        return value

    @model_validator(mode="after")
    def _known_arguments(self) -> TrainConfig:
        problem = memory_problem(self.ppo.num_envs, MIN_BYTES_PER_ENV)
        if problem is not None:
            raise ValueError(f"ppo.num_envs: {problem}")
        check_env_kwargs(self.env, self.env_kwargs)
        if self.algo.startswith("sb3-"):
            check_algo_kwargs(self.algo.removeprefix("sb3-"), self.sb3.algo_kwargs)
        return self


# Keys a resumed run may change: they do not shape what is learned.
RESUMABLE_CHANGES = frozenset({"device", "torch_threads", "eval", "checkpoint_every"})


#: Keyword arguments of an SB3 algorithm that ``make_sb3_model`` sets from the config.
RUN_ALGO_ARGUMENTS = {
    "policy": "algo",
    "env": "env",
    "seed": "seed",
    "device": "device",
    "tensorboard_log": "the run directory",
    "policy_kwargs": "sb3.policy_kwargs",
}


def check_algo_kwargs(algo: str, algo_kwargs: dict[str, Any], where: str = "sb3.algo_kwargs") -> None:
    """A ValueError naming the first keyword of ``algo_kwargs`` that the SB3 algorithm's constructor does
    not take (checked where the ``sb3`` extra is installed)."""
    if not algo_kwargs:
        return
    try:
        from metarec.agents.sb3 import ALGORITHMS
    except ImportError:  # no sb3 extra: the run says so when it starts
        return
    if algo not in ALGORITHMS:
        return
    algorithm = ALGORITHMS[algo][0]
    params = inspect.signature(algorithm.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    public = sorted(name for name in known - set(RUN_ALGO_ARGUMENTS) if not name.startswith("_"))
    for key in algo_kwargs:
        if key in RUN_ALGO_ARGUMENTS:
            raise ValueError(f"{where}.{key}: set by the config's {RUN_ALGO_ARGUMENTS[key]}, not by {where}")
        if key not in known:
            raise ValueError(
                f"{where}.{str(key)[:40]}: unknown argument of {algorithm.__name__} (known: {', '.join(public)})"
            )


def check_env_builds(config: TrainConfig) -> None:
    """Builds the config's env once, for one user on the CPU, so that a bad value of ``env_kwargs`` is an
    error naming it before the run starts (not for envs of an optional extra: building those is slow)."""
    if any(e.id == config.env and e.extra is not None for e in ENVIRONMENTS):
        return
    try:
        env = make_vector_env(config.model_copy(update={"device": "cpu"}), 1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"env_kwargs: {config.env} cannot be built from them: {one_line(str(err))}") from None
    env.close()


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Reads a training config, applies ``--set`` overrides and validates it (errors name the key), and
    builds its env once (:func:`check_env_builds`), all before any work."""
    config = load_yaml_config(TrainConfig, path, overrides)
    check_env_builds(config)
    return config


def make_vector_env(config: TrainConfig, num_envs: int, **extra: Any) -> Any:
    env = gym.make_vec(
        config.env,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        device=config.device,
        array_backend="torch",
        **{**config.env_kwargs, **extra},
    )
    return env


def evaluated_step(out: Path, config: TrainConfig) -> int | None:
    """The step of the final evaluation ``out/results.json`` records, where it evaluated the users ``config``
    asks for (None otherwise): a finished run, resumed, has that evaluation in TensorBoard already."""
    try:
        results = json.loads((out / "results.json").read_text())
        same = (results["eval"]["users"], results["eval"]["seed"]) == (config.eval.users, config.eval.seed)
        return int(results["env_steps"]) if same else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def reference_returns(config: TrainConfig, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Random and oracle evaluated on the evaluation users (the ends of the normalised scale); ``progress``
    shows a bar for each on stderr."""
    return {
        name: evaluate(
            config.env,
            name,
            config.eval.users,
            seed=config.eval.seed,
            device=config.device,
            env_kwargs=config.env_kwargs,
            progress=f"evaluating {name}" if progress else None,
        )
        for name in ("random", "oracle")
    }


def normalised(value: float, references: dict[str, dict[str, Any]]) -> float | None:
    """``(value - random) / (oracle - random)``: 0 is random, 1 the myopic oracle. None where the oracle does
    not score above random (then the scale means nothing: see :func:`normalisation_note`)."""
    low, high = references["random"]["mean_return"], references["oracle"]["mean_return"]
    return (value - low) / (high - low) if high > low else None


def normalisation_note(references: dict[str, dict[str, Any]]) -> str | None:
    """Why a run has no normalised score, or None where it has one."""
    low, high = references["random"]["mean_return"], references["oracle"]["mean_return"]
    if high > low:
        return None
    return (f"undefined: the myopic oracle's return ({high:.4g}) is not above random's ({low:.4g}) on this env, "
            "so compare mean_return itself")  # fmt: skip


def step_note(done: int, asked: int, rollout: str) -> str | None:
    """What to tell a user whose run did other than the ``asked`` env steps (``done``), or None."""
    if done == asked:
        return None
    return f"ran {done:,} env steps ({asked:,} asked): training runs whole rollouts of {rollout} env steps"
