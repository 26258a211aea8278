"""metarec's batched PPO as a run: checkpoints every ``checkpoint_every`` steps, TensorBoard, evaluation
on fresh users, and an exact resume after a kill (on CPU)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from metarec.agents.evaluation import evaluate
from metarec.agents.ppo import BatchedPPO
from metarec.agents.training.config import (
    RESUMABLE_CHANGES,
    TrainConfig,
    evaluated_step,
    make_vector_env,
    normalisation_note,
    normalised,
    reference_returns,
    step_note,
)
from metarec.io import atomic_save, write_json
from metarec.parallel import Shard, TrainingInterrupted, any_rank, group_size, rank, stop_requests
from metarec.runs import (
    hyperparameter_table,
    load_checkpoint,
    log_evaluation,
    params_sha256,
    save_checkpoint,
    summary_writer,
    write_hparams,
)


class BatchedPPORun:
    """One batched-PPO run in ``out``: the trainer, its TensorBoard writer, checkpoints and evaluations."""

    def __init__(self, config: TrainConfig, out: Path, resume_from: Path | None, progress: bool) -> None:
        self.config, self.out = config, out
        self.world, self.primary = group_size(), rank() == 0  # the first process writes the files
        shard = Shard.of_this_process(config.ppo.num_envs)
        if shard is None:
            env = make_vector_env(config, config.ppo.num_envs, ground_truth=False)
        else:
            env = make_vector_env(config, shard.size, ground_truth=False, shard=shard.env_rows())
        self.ppo = ppo = BatchedPPO(env, config.ppo, seed=config.seed, total_steps=config.total_steps)
        if resume_from is not None and resume_from.is_file():
            # the digest and the saved config are checked first; RNG states load on the CPU
            ppo.load_state_dict(load_checkpoint(resume_from, config, RESUMABLE_CHANGES))
        # Events the interrupted process logged after its checkpoint (steps > the checkpoint's) are dropped.
        self.writer = summary_writer(out / "tb", self.primary, ppo.global_step if resume_from is not None else None)
        if ppo.global_step == 0:
            self.writer.add_text("hyperparameters", hyperparameter_table(config))
            write_hparams(self.writer, config)
        # a resumed run that had finished already logged its final evaluation at this step
        self.logged_step = evaluated_step(out, config) if resume_from is not None else None
        self.progress = progress
        # None off the first process
        self.references = reference_returns(config, progress) if config.eval.users else None
        self.start_step = self.last_checkpoint = ppo.global_step
        self.bar = tqdm(total=config.total_steps, initial=ppo.global_step, unit="step", disable=not progress,
                        smoothing=0.1)  # fmt: skip
        self.request: dict[str, str | None] = {"signal": None}

    def evaluate_now(self, progress: str | None = None) -> dict[str, Any] | None:
        """Evaluates the policy on fresh users and logs it (in a group, every process serves its block of
        the users and the first gets the result; the others get None). ``progress`` names its bar."""
        config, step = self.config, self.ppo.global_step
        result = evaluate(config.env, self.ppo.recommender(), config.eval.users, seed=config.eval.seed,
                          device=config.device, env_kwargs=config.env_kwargs, progress=progress)  # fmt: skip
        if result is None:
            return None
        if step != self.logged_step:  # a finished run, resumed, has its evaluation at this step in TensorBoard
            score = None if self.references is None else normalised(result["mean_return"], self.references)
            log_evaluation(self.writer.add_scalar, result, score, step)
        return result

    def log_update(self, rollout: dict[str, Any], stats: dict[str, float], rate: float) -> None:
        step, writer = self.ppo.global_step, self.writer
        returns = rollout["episode_returns"]
        if len(returns):
            writer.add_scalar("charts/episode_return", float(returns.mean()), step)
            writer.add_scalar("charts/episode_length", float(rollout["episode_lengths"].float().mean()), step)
            self.bar.set_postfix(ret=f"{float(returns.mean()):.2f}", refresh=False)
        writer.add_scalar("charts/ctr", rollout["ctr"], step)
        writer.add_scalar("charts/engagement", rollout["engagement"], step)
        writer.add_scalar("charts/steps_per_second", rate, step)
        writer.add_scalar("charts/learning_rate", stats.pop("learning_rate"), step)
        for key, value in stats.items():
            writer.add_scalar(f"losses/{key}", value, step)
        self.bar.update(self.config.ppo.num_envs * self.config.ppo.rollout_steps)

    def on_update(self, rollout: dict[str, Any], stats: dict[str, float], rate: float) -> None:
        """After each PPO update: log, evaluate on schedule, checkpoint on schedule or when asked to stop."""
        config, step = self.config, self.ppo.global_step
        previous = step - config.ppo.num_envs * config.ppo.rollout_steps
        self.log_update(rollout, stats, rate)
        # Evaluate when the step count crosses a multiple of every_steps (the same steps after a resume).
        every = config.eval.every_steps
        if every and step // every > previous // every and step < config.total_steps:  # the last: run() evaluates
            self.evaluate_now()
        stopping = self.request["signal"] is not None
        if self.world > 1:  # every process stops at the same update
            stopping = any_rank(stopping)
            self.request["signal"] = self.request["signal"] or ("SIGTERM" if stopping else None)
        if step - self.last_checkpoint >= config.checkpoint_every or step >= config.total_steps or stopping:
            state = self.ppo.state_dict()  # every process takes part (it gathers their users)
            if self.primary:
                save_checkpoint(state, self.out / "checkpoints" / "last.pt", config)
            self.writer.flush()
            self.last_checkpoint = step
        if stopping:
            self.bar.close()
            self.writer.close()
            raise TrainingInterrupted(str(self.request["signal"]), step, self.out / "checkpoints" / "last.pt")

    def run(self) -> dict[str, Any]:
        """Trains to ``total_steps``, saves ``model.pt``, evaluates and writes ``results.json``."""
        config, ppo = self.config, self.ppo
        started = time.perf_counter()
        with stop_requests() as request:
            self.request = request
            ppo.train(config.total_steps, self.on_update)
        self.bar.close()
        seconds = time.perf_counter() - started
        if self.primary:
            atomic_save({"config": json.loads(config.model_dump_json()), "policy": ppo.policy.state_dict()},
                        self.out / "model.pt")  # fmt: skip
        final = self.evaluate_now("final evaluation" if self.progress else None)
        self.writer.close()
        if final is None:  # not the first process
            return {}
        results = {
            "algo": config.algo,
            "env": config.env,
            "seed": config.seed,
            "env_steps": ppo.global_step,
            "requested_env_steps": config.total_steps,
            "train_seconds_this_process": seconds,
            "env_steps_per_s": (ppo.global_step - self.start_step) / seconds if seconds > 0 else None,
            "eval": final,
            "mean_return": final["mean_return"],
            "ci95": final["ci95"],
            "processes": self.world,
            "params_sha256": params_sha256(ppo.policy.state_dict()),
        }
        if self.references is not None:
            results["references"] = {k: {"mean_return": v["mean_return"], "ci95": v["ci95"]}
                                     for k, v in self.references.items()}  # fmt: skip
            results["normalised_return"] = normalised(final["mean_return"], self.references)
            if (note := normalisation_note(self.references)) is not None:
                results["normalisation"] = note
        rollout = f"ppo.num_envs x ppo.rollout_steps = {config.ppo.num_envs * config.ppo.rollout_steps:,}"
        if (note := step_note(ppo.global_step, config.total_steps, rollout)) is not None:
            results["steps_note"] = note
        write_json(results, self.out / "results.json")
        return results


def train_batched_ppo(config: TrainConfig, out: Path, resume_from: Path | None, progress: bool) -> dict[str, Any]:
    """Runs batched PPO into ``out`` (from the checkpoint ``resume_from`` when given) and returns its results."""
    return BatchedPPORun(config, out, resume_from, progress).run()


def train_worker(config_json: str, out: str, resume: bool) -> dict[str, Any]:
    checkpoint = Path(out) / "checkpoints" / "last.pt"
    config = TrainConfig.model_validate_json(config_json)
    return train_batched_ppo(config, Path(out), checkpoint if resume else None, progress=False)

