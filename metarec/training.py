"""``metarec train CONFIG``: one YAML file runs metarec's batched PPO or a stable-baselines3 algorithm.

A run directory holds::

    config.yaml          the resolved configuration (after --set overrides)
    checkpoints/last.pt  written atomically every ``checkpoint_every`` steps (batched PPO: weights,
                         optimizer, generators, the simulated users; SB3: last.zip)
    tb/                  TensorBoard events: charts/, losses/, eval/, hyper-parameters as text
    model.pt | model.zip the final policy (what ``--agent RUN_DIR`` loads)
    results.json         final evaluation on fresh users, with random and oracle on the same users

``--resume`` continues from ``checkpoints/last.pt``: a batched-PPO run killed at any point and resumed
ends with exactly the weights it would have had without the interruption (on CPU).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import torch
import yaml
from pydantic import Field, field_validator

from metarec.agents.base import Recommender
from metarec.agents.ppo import BatchedPPO, PolicyRecommender, PPOConfig
from metarec.config import FrozenConfig, load_yaml_config, validate_config
from metarec.io import atomic_save, atomic_write, atomic_write_text
from metarec.parallel import TrainingInterrupted, stop_requests

Algorithm = Literal["ppo", "sb3-ppo", "sb3-a2c", "sb3-recurrent-ppo", "sb3-dqn"]


class EvalConfig(FrozenConfig):
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
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("env")
    @classmethod
    def _known_env(cls, value: str) -> str:
        from metarec.registration import check_env_id

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


def hyperparameter_table(config: TrainConfig) -> str:
    """The configuration as a Markdown table (TensorBoard's text tab renders it)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix] = value

    walk("", config.model_dump())
    return "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in flat.items())


def reference_returns(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Random and oracle evaluated on the evaluation users (the ends of the normalised scale)."""
    from metarec.evaluation import evaluate

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


def train(
    config: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True, nproc: int = 1
) -> dict[str, Any]:
    """Runs ``config`` into the run directory ``out`` and returns its results (also in results.json).

    ``nproc > 1`` (``algo: ppo`` only) trains in that many processes on this machine, each stepping
    a block of the ``ppo.num_envs`` users (see :mod:`metarec.agents.ppo`); under ``torchrun`` the
    processes it started share the work the same way. SIGTERM to this process reaches them all: they
    checkpoint at the same update and stop.
    """
    from metarec.parallel import rank, spawn_for_result, torchrun_group, world_size

    world = world_size(nproc)
    if world > 1 and config.algo != "ppo":
        raise ValueError(f"nproc: only algo ppo (metarec's batched PPO) trains across processes, got {config.algo!r}")
    if world > 1 and config.ppo.num_envs % world:
        raise ValueError(f"ppo.num_envs: must divide among {world} processes, got {config.ppo.num_envs}")
    out = Path(out)
    checkpoint = out / "checkpoints" / "last.pt"
    if world > 1 and nproc == 1:  # started by torchrun: the first process checks and prepares the run
        torchrun_group(config.device, config.torch_threads)
        import torch.distributed as dist

        problem = None
        if rank() == 0:
            try:
                _prepare_run(config, out, resume)
            except ValueError as err:
                problem = str(err)
        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        if shared[0] is not None:
            raise ValueError(shared[0])
        return _train_batched_ppo(config, out, checkpoint if resume else None, progress)
    _prepare_run(config, out, resume)
    if nproc > 1:

        def stopped(signal_name: str) -> Exception:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True) if checkpoint.is_file() else {}
            return TrainingInterrupted(signal_name, int(saved.get("global_step", 0)), checkpoint)

        return spawn_for_result(_train_worker, (config.model_dump_json(), str(out), resume), nproc, config.device,
                                config.torch_threads, on_stop=stopped)  # fmt: skip
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    if config.algo == "ppo":
        return _train_batched_ppo(config, out, checkpoint if resume else None, progress)
    return _train_sb3(config, out, resume, progress)


def _prepare_run(config: TrainConfig, out: Path, resume: bool) -> None:
    """Checks that ``out`` may take the run (a new one, or the one being resumed, same config) and
    writes ``config.yaml``."""
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"out: {out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and (out / "config.yaml").is_file():
        saved = yaml.safe_load((out / "config.yaml").read_text())
        now = json.loads(config.model_dump_json())
        changed = sorted(k for k in now.keys() - RESUMABLE_CHANGES if saved.get(k) != now[k])
        if changed:
            raise ValueError(
                f"config: {', '.join(changed)} differs from the run {out} was started with; resume with the same values"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False), out / "config.yaml")


def _train_batched_ppo(config: TrainConfig, out: Path, resume_from: Path | None, progress: bool) -> dict[str, Any]:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from metarec.evaluation import evaluate
    from metarec.parallel import Shard, group_size, rank

    world, primary = group_size(), rank() == 0  # the first process writes the files
    shard = Shard.of_this_process(config.ppo.num_envs)
    if shard is None:
        env = make_vector_env(config, config.ppo.num_envs, ground_truth=False)
    else:
        env = make_vector_env(config, shard.size, ground_truth=False, shard=shard.env_rows())
    ppo = BatchedPPO(env, config.ppo, seed=config.seed, total_steps=config.total_steps)
    if resume_from is not None and resume_from.is_file():
        ppo.load_state_dict(torch.load(resume_from, map_location="cpu", weights_only=True))  # RNG states stay on CPU
    # Events the interrupted process logged after its checkpoint (steps > the checkpoint's) are dropped.
    resuming = resume_from is not None
    writer: Any = (
        SummaryWriter(str(out / "tb"), purge_step=ppo.global_step + 1 if resuming else None) if primary else NoWriter()
    )
    if ppo.global_step == 0:
        writer.add_text("hyperparameters", hyperparameter_table(config))
    references = reference_returns(config) if config.eval.users else None  # None off the first process
    started = time.perf_counter()
    start_step = ppo.global_step
    last_checkpoint = ppo.global_step
    bar = tqdm(total=config.total_steps, initial=ppo.global_step, unit="step", disable=not progress, smoothing=0.1)

    def evaluate_now() -> dict[str, Any] | None:
        result = evaluate(
            config.env,
            ppo.recommender(),
            config.eval.users,
            seed=config.eval.seed,
            device=config.device,
            env_kwargs=config.env_kwargs,
        )  # in a group: every process serves its block of the users; the first gets the result
        if result is None:
            return None
        writer.add_scalar("eval/mean_return", result["mean_return"], ppo.global_step)
        writer.add_scalar("eval/ci95", result["ci95"], ppo.global_step)
        writer.add_scalar("eval/click_rate", result["click_rate"], ppo.global_step)
        if references is not None:
            writer.add_scalar("eval/normalised_return", normalised(result["mean_return"], references), ppo.global_step)
        return result

    def on_update(rollout: dict[str, Any], stats: dict[str, float], rate: float) -> None:
        nonlocal last_checkpoint
        step = ppo.global_step
        previous = step - config.ppo.num_envs * config.ppo.rollout_steps
        returns = rollout["episode_returns"]
        if len(returns):
            writer.add_scalar("charts/episode_return", float(returns.mean()), step)
            writer.add_scalar("charts/episode_length", float(rollout["episode_lengths"].float().mean()), step)
        writer.add_scalar("charts/ctr", rollout["ctr"], step)
        writer.add_scalar("charts/engagement", rollout["engagement"], step)
        writer.add_scalar("charts/steps_per_second", rate, step)
        writer.add_scalar("charts/learning_rate", stats.pop("learning_rate"), step)
        for key, value in stats.items():
            writer.add_scalar(f"losses/{key}", value, step)
        bar.update(config.ppo.num_envs * config.ppo.rollout_steps)
        if len(returns):
            bar.set_postfix(ret=f"{float(returns.mean()):.2f}", refresh=False)
        # Evaluate when the step count crosses a multiple of every_steps (the same steps after a resume).
        if config.eval.every_steps and step // config.eval.every_steps > previous // config.eval.every_steps:
            evaluate_now()
        stopping = request["signal"] is not None
        if world > 1:  # every process stops at the same update
            from metarec.meta.runner import _any_rank

            stopping = _any_rank(stopping)
            request["signal"] = request["signal"] or ("SIGTERM" if stopping else None)
        if step - last_checkpoint >= config.checkpoint_every or step >= config.total_steps or stopping:
            state = ppo.state_dict()  # every process takes part (it gathers their users)
            if primary:
                atomic_save(state, out / "checkpoints" / "last.pt")
            writer.flush()
            last_checkpoint = step
        if stopping:
            bar.close()
            writer.close()
            raise TrainingInterrupted(str(request["signal"]), step, out / "checkpoints" / "last.pt")

    with stop_requests() as request:
        ppo.train(config.total_steps, on_update)
    bar.close()
    seconds = time.perf_counter() - started
    if primary:
        atomic_save({"config": json.loads(config.model_dump_json()), "policy": ppo.policy.state_dict()},
                     out / "model.pt")  # fmt: skip
    final = evaluate_now()
    writer.close()
    if final is None:  # not the first process
        return {}
    results = {
        "algo": config.algo,
        "env": config.env,
        "seed": config.seed,
        "env_steps": ppo.global_step,
        "train_seconds_this_process": seconds,
        "env_steps_per_s": (ppo.global_step - start_step) / seconds if seconds > 0 else None,
        "eval": final,
        "mean_return": final["mean_return"],
        "ci95": final["ci95"],
        "processes": world,
        "params_sha256": _params_sha256(ppo.policy.state_dict()),
    }
    if references is not None:
        results["references"] = {k: {"mean_return": v["mean_return"], "ci95": v["ci95"]} for k, v in references.items()}
        results["normalised_return"] = normalised(final["mean_return"], references)
    atomic_write_text(json.dumps(results, indent=2), out / "results.json")
    return results


def _train_worker(config_json: str, out: str, resume: bool) -> dict[str, Any]:
    checkpoint = Path(out) / "checkpoints" / "last.pt"
    config = TrainConfig.model_validate_json(config_json)
    return _train_batched_ppo(config, Path(out), checkpoint if resume else None, progress=False)


def _params_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the parameters in a canonical order (names sorted; float32 bytes on the CPU)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class NoWriter:
    """Stands in for TensorBoard's SummaryWriter in processes other than the first."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _check_same_spaces(run_dir: Path, config: TrainConfig, env: Any, spec_id: str) -> None:
    """A policy trained on another environment runs here only if it sees the same spaces (say, one
    trained on RecSim NG's port and evaluated on RecSim NG itself); else a ValueError naming both."""
    import gymnasium as gym

    trained = gym.make_vec(config.env, num_envs=1, vectorization_mode="vector_entry_point", **config.env_kwargs)
    same = (
        trained.single_observation_space == env.single_observation_space
        and trained.single_action_space == env.single_action_space
    )
    trained.close()
    if not same:
        raise ValueError(
            f"agent: {run_dir} was trained on {config.env}, whose observation or action space differs from {spec_id}'s"
        )


def load_recommender(run_dir: str | Path, env: Any) -> Recommender:
    """The trained policy of a run directory, as a recommender for the vector env ``env``."""
    run_dir = Path(run_dir)
    if (run_dir / "model.pt").is_file():
        saved = torch.load(run_dir / "model.pt", map_location=env.device, weights_only=True)
        config = validate_config(TrainConfig, saved["config"])
        spec_id = getattr(getattr(env, "spec", None), "id", None)
        if spec_id is not None and spec_id != config.env:
            _check_same_spaces(run_dir, config, env, spec_id)
        from metarec.agents.nn.networks import SlatePolicy

        single_item = bool(getattr(env, "single_item", False))
        policy = SlatePolicy(
            env.single_observation_space,
            1 if single_item else int(env.single_action_space.shape[0]),
            config.ppo.hidden,
            config.ppo.history_encoder,
        ).to(env.device)
        policy.load_state_dict(saved["policy"])
        policy.eval()
        recommender = PolicyRecommender(policy, single_item=single_item)
        recommender.name = f"ppo:{run_dir.name}"
        return recommender
    if (run_dir / "model.zip").is_file():
        return _load_sb3_recommender(run_dir, env)
    raise ValueError(f"agent: {run_dir} holds no trained model (model.pt or model.zip); is the run finished?")


# ---------------------------------------------------------------------------------------- stable-baselines3


def _sb3_algo(config: TrainConfig) -> str:
    return config.algo.removeprefix("sb3-")


def _train_sb3(config: TrainConfig, out: Path, resume: bool, progress: bool) -> dict[str, Any]:
    """SB3 through :class:`~metarec.agents.sb3.SB3VecEnv`. A resumed SB3 run restarts from the last
    checkpoint's weights, optimizer, step count and (DQN) replay buffer; the simulated users restart,
    so unlike batched PPO it is not step-for-step the uninterrupted run."""
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from torch.utils.tensorboard import SummaryWriter

    from metarec.agents.sb3 import ALGORITHMS, RecommenderMetricsCallback, SB3Recommender, SB3VecEnv, make_sb3_model
    from metarec.evaluation import evaluate

    algo = _sb3_algo(config)
    env = SB3VecEnv(make_vector_env(config, config.sb3.num_envs, ground_truth=False))
    checkpoint = out / "checkpoints" / "last.zip"
    replay = out / "checkpoints" / "replay.pkl"
    resumed = resume and checkpoint.is_file()
    if resumed:
        model = ALGORITHMS[algo][0].load(checkpoint, env=env, device=config.device, tensorboard_log=str(out / "tb"))
        if algo == "dqn" and replay.is_file():
            model.load_replay_buffer(replay)
    else:
        model = make_sb3_model(
            algo,
            env,
            seed=config.seed,
            policy_kwargs=config.sb3.policy_kwargs,
            algo_kwargs=config.sb3.algo_kwargs,
            tensorboard_log=str(out / "tb"),
            device=config.device,
        )
        with SummaryWriter(str(out / "tb" / "hparams")) as writer:
            writer.add_text("hyperparameters", hyperparameter_table(config))
    references = reference_returns(config)
    reference = (references["random"]["mean_return"], references["oracle"]["mean_return"])

    class Checkpoint(BaseCallback):
        """Saves the model (and DQN's replay buffer) atomically every ``checkpoint_every`` steps."""

        def __init__(self) -> None:
            super().__init__()
            self.last = model.num_timesteps

        def _on_step(self) -> bool:
            stopping = request["signal"] is not None
            if self.num_timesteps - self.last >= config.checkpoint_every or stopping:
                self.last = self.num_timesteps
                save_sb3(self.model, checkpoint)
                if algo == "dqn":
                    atomic_write(replay, self.model.save_replay_buffer)
            if stopping:
                raise TrainingInterrupted(str(request["signal"]), self.num_timesteps, checkpoint)
            return True

    started, start_step = time.perf_counter(), model.num_timesteps
    with stop_requests() as request:
        model.learn(
            max(config.total_steps - model.num_timesteps, 0),
            callback=CallbackList([RecommenderMetricsCallback(reference), Checkpoint()]),
            reset_num_timesteps=not resumed,
            tb_log_name="sb3",
            progress_bar=progress,
        )
    seconds = time.perf_counter() - started
    save_sb3(model, checkpoint)
    save_sb3(model, out / "model.zip")
    final = evaluate(
        config.env,
        SB3Recommender(model),
        config.eval.users,
        seed=config.eval.seed,
        device=config.device,
        env_kwargs=config.env_kwargs,
    )
    results = {
        "algo": config.algo,
        "env": config.env,
        "seed": config.seed,
        "env_steps": int(model.num_timesteps),
        "train_seconds_this_process": seconds,
        "env_steps_per_s": (model.num_timesteps - start_step) / seconds if seconds > 0 else None,
        "eval": final,
        "mean_return": final["mean_return"],
        "ci95": final["ci95"],
        "references": {k: {"mean_return": v["mean_return"], "ci95": v["ci95"]} for k, v in references.items()},
        "normalised_return": normalised(final["mean_return"], references),
    }
    atomic_write_text(json.dumps(results, indent=2), out / "results.json")
    return results


def save_sb3(model: Any, path: Path) -> None:
    """``model.save`` into ``path`` atomically."""
    atomic_write(path, model.save)


def _load_sb3_recommender(run_dir: Path, env: Any) -> Recommender:
    from metarec.agents.sb3 import ALGORITHMS, SB3Recommender

    config = validate_config(TrainConfig, yaml.safe_load((run_dir / "config.yaml").read_text()))
    spec_id = getattr(getattr(env, "spec", None), "id", None)
    if spec_id is not None and spec_id != config.env:
        raise ValueError(f"agent: {run_dir} was trained on {config.env}, not {spec_id}")
    model = ALGORITHMS[_sb3_algo(config)][0].load(run_dir / "model.zip", device=env.device)
    recommender = SB3Recommender(model)
    recommender.name = f"{config.algo}:{run_dir.name}"
    return recommender
