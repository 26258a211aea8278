"""stable-baselines3 algorithms as runs of ``metarec train`` (``algo: sb3-...``): the SB3 extra."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from metarec.agents.base import Recommender
from metarec.agents.evaluation import evaluate
from metarec.agents.training.config import (
    TrainConfig,
    evaluated_step,
    make_vector_env,
    normalisation_note,
    normalised,
    reference_returns,
    step_note,
)
from metarec.config import validate_config
from metarec.io import atomic_write, write_json
from metarec.parallel import TrainingInterrupted, stop_requests
from metarec.runs import hyperparameter_table, log_evaluation, write_hparams


def sb3_algo(config: TrainConfig) -> str:
    return config.algo.removeprefix("sb3-")


def train_sb3(config: TrainConfig, out: Path, resume: bool, progress: bool) -> dict[str, Any]:
    """SB3 through :class:`~metarec.agents.sb3.SB3VecEnv`. A resumed SB3 run restarts from the last
    checkpoint's weights, optimizer, step count and (DQN) replay buffer, loaded as plain data into a model
    rebuilt from ``config`` (never SB3's pickle-based ``load``); the simulated users restart, so unlike
    batched PPO it is not step-for-step the uninterrupted run."""
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    from metarec.agents.sb3 import RecommenderMetricsCallback, SB3Recommender, save_replay_buffer

    algo = sb3_algo(config)
    checkpoint = out / "checkpoints" / "last.zip"
    replay = out / "checkpoints" / "replay.npz"
    resumed = resume and checkpoint.is_file()
    model = _sb3_model(config, out, checkpoint if resumed else None, replay)
    writer = model.logger.output_formats[0].writer
    logged_step = evaluated_step(out, config) if resumed else None  # a finished run, resumed, logged its evaluation
    references = reference_returns(config, progress)
    # the callback's normalised return only where the scale means something (the oracle above random)
    reference = (references["random"]["mean_return"], references["oracle"]["mean_return"])
    reference = reference if normalisation_note(references) is None else None

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
                    save_replay_buffer(self.model.replay_buffer, replay)
            if stopping:
                raise TrainingInterrupted(str(request["signal"]), self.num_timesteps, checkpoint)
            return True

    def evaluate_now(step: int, progress_name: str | None = None) -> dict[str, Any]:
        """The policy on the evaluation users, logged under ``eval/`` as batched PPO logs it."""
        result = evaluate(config.env, SB3Recommender(model), config.eval.users, seed=config.eval.seed,
                          device=config.device, env_kwargs=config.env_kwargs, progress=progress_name)  # fmt: skip
        if step != logged_step:
            log_evaluation(writer.add_scalar, result, normalised(result["mean_return"], references), step)
            writer.flush()
        return result

    class Evaluation(BaseCallback):
        """Evaluates every ``eval.every_steps`` env steps (when the count crosses a multiple), as batched PPO."""

        def __init__(self) -> None:
            super().__init__()
            self.last = model.num_timesteps

        def _on_step(self) -> bool:
            every = config.eval.every_steps
            crossed = every and self.num_timesteps // every > self.last // every
            if crossed and self.num_timesteps < config.total_steps:  # at the end, the final evaluation
                evaluate_now(self.num_timesteps)
            self.last = self.num_timesteps
            return True

    started, start_step = time.perf_counter(), model.num_timesteps
    with stop_requests() as request:
        model.learn(
            max(config.total_steps - model.num_timesteps, 0),
            callback=CallbackList([RecommenderMetricsCallback(reference), Evaluation(), Checkpoint()]),
            reset_num_timesteps=not resumed,
            progress_bar=progress,
        )
    seconds = time.perf_counter() - started
    save_sb3(model, checkpoint)
    if algo == "dqn":  # the buffer of the last checkpoint, for a resume with more steps
        save_replay_buffer(model.replay_buffer, replay)
    save_sb3(model, out / "model.zip")
    final = evaluate_now(int(model.num_timesteps), "final evaluation" if progress else None)
    model.logger.close()
    rate = (model.num_timesteps - start_step) / seconds if seconds > 0 else None
    results = _results(config, int(model.num_timesteps), seconds, rate, final, references)
    write_json(results, out / "results.json")
    return results


def _sb3_model(config: TrainConfig, out: Path, checkpoint: Path | None, replay: Path) -> Any:
    """The run's model: new, or from ``checkpoint`` (weights, optimizer, counters and DQN's replay buffer as
    plain data: nothing in the run directory is unpickled), logging TensorBoard into ``OUT/tb`` itself under
    batched PPO's tags (a resume drops what was logged after its checkpoint)."""
    from metarec.agents.sb3 import load_replay_buffer, load_sb3_weights, restore_sb3_counters, tensorboard_logger

    model = build_sb3_model(config, config.device)
    if checkpoint is not None:
        load_sb3_weights(model, checkpoint, optimizer=True)
        restore_sb3_counters(model, checkpoint)
        if sb3_algo(config) == "dqn" and replay.is_file():
            load_replay_buffer(model.replay_buffer, replay)
    resumed_at = None if checkpoint is None else int(model.num_timesteps)
    model.set_logger(tensorboard_logger(out / "tb", purge_after=resumed_at))
    if checkpoint is None:
        writer = model.logger.output_formats[0].writer
        writer.add_text("hyperparameters", hyperparameter_table(config))
        write_hparams(writer, config)
    return model


def _results(
    config: TrainConfig, steps: int, seconds: float, rate: float | None, final: dict, references: dict
) -> dict[str, Any]:
    results = {
        "algo": config.algo,
        "env": config.env,
        "seed": config.seed,
        "env_steps": steps,
        "requested_env_steps": config.total_steps,
        "train_seconds_this_process": seconds,
        "env_steps_per_s": rate,
        "eval": final,
        "mean_return": final["mean_return"],
        "ci95": final["ci95"],
        "references": {k: {"mean_return": v["mean_return"], "ci95": v["ci95"]} for k, v in references.items()},
        "normalised_return": normalised(final["mean_return"], references),
    }
    if (note := normalisation_note(references)) is not None:
        results["normalisation"] = note
    rollout = "the algorithm's (n_steps x sb3.num_envs for on-policy ones)"
    if (note := step_note(steps, config.total_steps, rollout)) is not None:
        results["steps_note"] = note
    return results


def save_sb3(model: Any, path: Path) -> None:
    """``model.save`` into ``path`` atomically."""
    atomic_write(path, model.save)


def build_sb3_model(config: TrainConfig, device: str, tensorboard_log: str | None = None) -> Any:
    """A new SB3 model for ``config`` (algorithm, policy, seed, keyword arguments) on ``device``, built as
    training builds it, on training's users: what a run directory's weights are loaded into."""
    from metarec.agents.sb3 import SB3VecEnv, make_sb3_model

    users = make_vector_env(config.model_copy(update={"device": device}), config.sb3.num_envs, ground_truth=False)
    return make_sb3_model(
        sb3_algo(config),
        SB3VecEnv(users),
        seed=config.seed,
        policy_kwargs=config.sb3.policy_kwargs,
        algo_kwargs=config.sb3.algo_kwargs,
        tensorboard_log=tensorboard_log,
        device=device,
    )


def load_sb3_recommender(run_dir: Path, env: Any) -> Recommender:
    """The policy of an SB3 run directory: the model rebuilt from its validated ``config.yaml``, with the
    weights of ``model.zip``'s ``policy.pth`` (``weights_only``); nothing in the zip is unpickled."""
    from metarec.agents.sb3 import SB3Recommender, load_sb3_weights, restore_sb3_counters

    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"agent: {run_dir / 'config.yaml'} is missing: the SB3 model is rebuilt from it")
    config = validate_config(TrainConfig, yaml.safe_load((run_dir / "config.yaml").read_text()))
    spec_id = getattr(getattr(env, "spec", None), "id", None)
    if spec_id is not None and spec_id != config.env:
        raise ValueError(f"agent: {run_dir} was trained on {config.env}, not {spec_id}")
    model = build_sb3_model(config, str(env.device))
    load_sb3_weights(model, run_dir / "model.zip")
    restore_sb3_counters(model, run_dir / "model.zip")  # DQN's exploration rate, for sampled actions
    recommender = SB3Recommender(model)
    recommender.name = f"{config.algo}:{run_dir.name}"
    return recommender
