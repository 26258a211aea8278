"""``metarec meta-train`` and ``metarec meta-eval``: a run directory of meta-trained methods.

``meta-train CONFIG --out DIR`` trains every method of the config in turn on the training split
and writes::

    DIR/config.yaml             the validated config (what meta-eval reads back)
    DIR/methods/NAME.pt         each method's final weights (weights only)
    DIR/.metarec-run            the marker of a directory claimed by the run (see metarec.runs)
    DIR/checkpoints/last.pt     atomic checkpoint: finished methods and the one in progress, with the
                                config and a SHA-256 of it all (checked on --resume)
    DIR/tb/NAME/                TensorBoard scalars per method
    DIR/results.json            per-method updates, env steps, seconds, env-steps/s, params_sha256

A checkpoint is written every ``checkpoint_every`` updates, at the end of each method and on
SIGTERM/SIGINT; ``--resume`` continues from it and ends with the same parameters as an
uninterrupted run (CPU, same seed). ``params_sha256`` is the SHA-256 of every method's final
parameters, methods in config order and parameters in ``state_dict`` order, as raw little-endian
bytes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from metarec.io import atomic_save, write_json
from metarec.meta.config import MetaTrainConfig
from metarec.meta.gradient_rl import GradientMetaTrainer
from metarec.meta.incontext_train import InContextTrainer
from metarec.meta.rl2 import RL2Trainer
from metarec.meta.tasks import TaskDistribution
from metarec.parallel import (
    TrainingInterrupted,
    any_rank,
    group_size,
    rank,
    spawn_for_result,
    stop_requests,
    torchrun_group,
    world_size,
)
from metarec.runs import (
    load_checkpoint,
    params_sha256,
    prepare_run,
    restartable,
    save_checkpoint,
    summary_writer,
    write_config,
    write_hparams,
)


def _trainer(name: str, config: MetaTrainConfig) -> RL2Trainer | InContextTrainer | GradientMetaTrainer:
    assert isinstance(config.tasks, TaskDistribution)
    if name == "icl":
        return InContextTrainer(config.tasks, config.train_split, config.icl, config.sessions, config.seed,
                                config.device, config.item_stats)  # fmt: skip
    if name == "rl2":
        return RL2Trainer(config.tasks, config.train_split, config.rl2, config.sessions, config.seed, config.device,
                          config.item_stats)  # fmt: skip
    return GradientMetaTrainer(name, config.tasks, config.train_split, config.gradient, config.sessions,  # type: ignore[arg-type]
                               config.seed, config.device, config.item_stats)  # fmt: skip


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a trainer's statistic, as batched PPO tags it: losses and entropy under
    ``losses/``, the rest (reward per step, gradient norms) under ``charts/``; each method writes its own run
    (``tb/METHOD``), so methods share a chart."""
    return f"losses/{key}" if "loss" in key or key == "entropy" else f"charts/{key}"


def meta_train(
    config: MetaTrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    nproc: int = 1,
    command: str = "meta-train",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Trains every method of ``config`` into ``out`` (see the module docstring).

    ``nproc > 1`` spawns that many processes on this machine (``torch.distributed``: gloo on CPU,
    NCCL on GPUs) that share each meta-batch's tasks and average the meta-gradients; the parameters
    equal a one-process run's up to floating-point summation order. Under ``torchrun`` (``WORLD_SIZE``
    set), the processes torchrun started join one group the same way. RL² shares its meta-batch's
    tasks the same way (see :mod:`metarec.meta.rl2`).

    ``out`` is claimed for ``command`` (see :func:`metarec.runs.claim_out`; the demo claims its
    ``meta/`` as its own): a run that never reached its first checkpoint starts again there, with or
    without ``resume``; ``overwrite`` lets a fresh run write into a non-empty directory.
    """
    out = Path(out)
    checkpoint_path = out / "checkpoints" / "last.pt"
    if resume and not checkpoint_path.is_file():
        if out.is_dir() and any(out.iterdir()) and not restartable(out, command):
            raise ValueError(f"--resume: no checkpoint at {checkpoint_path}")
        resume = False  # killed or failed before its first checkpoint: nothing to continue, start afresh
    first = os.environ.get("RANK", "0") == "0"  # under torchrun, the first process claims the directory
    # config.yaml: written by the first process that trains
    prepare_run(out, config, resume, write=False, command=command, checkpoint=checkpoint_path, overwrite=overwrite,
                create=first)  # fmt: skip
    world = world_size(nproc)
    if world > 1 and "rl2" in config.methods and config.rl2.tasks_per_batch % world:
        raise ValueError(f"rl2.tasks_per_batch: must divide among {world} processes, got {config.rl2.tasks_per_batch}")
    if world > 1 and "icl" in config.methods and config.icl.tasks_per_batch % world:
        raise ValueError(f"icl.tasks_per_batch: must divide among {world} processes, got {config.icl.tasks_per_batch}")
    gradient_methods = set(config.methods) - {"rl2", "icl", "scratch"}
    if world > 1 and gradient_methods and config.gradient.tasks_per_batch % world:
        raise ValueError(f"gradient.tasks_per_batch: must divide among {world} processes, got "
                         f"{config.gradient.tasks_per_batch}")  # fmt: skip
    if nproc > 1:
        _spawn(config, out, resume, nproc)
        return json.loads((out / "results.json").read_text())
    if world > 1:  # started by torchrun
        torchrun_group(config.device, config.torch_threads)
    return _meta_train(config, out, resume, progress)


def _spawn(config: MetaTrainConfig, out: Path, resume: bool, nproc: int) -> None:
    """Runs ``nproc`` worker processes; SIGTERM/SIGINT to this process is passed on to them, so they
    checkpoint and stop together, and then raises :class:`TrainingInterrupted` here."""

    def stopped(signal_name: str) -> Exception:
        checkpoint = out / "checkpoints" / "last.pt"
        try:
            saved = load_checkpoint(checkpoint) if checkpoint.is_file() else {}
        except ValueError:
            saved = {}
        step = int(((saved.get("current") or {}).get("state") or {}).get("global_step", 0))
        return TrainingInterrupted(signal_name, step, checkpoint)

    spawn_for_result(_worker, (config.model_dump_json(), str(out), resume), nproc, config.device,
                     config.torch_threads, on_stop=stopped)  # fmt: skip


def _worker(config_json: str, out: str, resume: bool) -> None:
    _meta_train(MetaTrainConfig.model_validate_json(config_json), Path(out), resume, progress=False)


class MetaTrainRun:
    """The methods of one meta-train run in ``out``, trained in turn, with one checkpoint file for all."""

    def __init__(self, config: MetaTrainConfig, out: Path, resume: bool, progress: bool) -> None:
        self.config, self.out, self.resume, self.progress = config, out, resume, progress
        self.world, self.primary = group_size(), rank() == 0  # the first process writes the files
        self.checkpoint_path = out / "checkpoints" / "last.pt"
        self.saved: dict[str, Any] = {"finished": {}, "current": None}
        if resume:
            self.saved = load_checkpoint(self.checkpoint_path, config)  # its digest and config are checked
        self.finished: dict[str, dict[str, Any]] = self.saved["finished"]
        self.request: dict[str, str | None] = {"signal": None}

    def checkpoint(self, entry: dict[str, Any] | None) -> None:
        """Saves the finished methods and ``entry`` (the method in progress, or None) atomically."""
        payload = {"finished": self.finished, "current": entry}
        if self.primary:
            save_checkpoint(payload, self.checkpoint_path, self.config)

    def train_method(self, name: str) -> None:
        """Trains method ``name`` (from its checkpoint when it was in progress) and saves its weights."""
        config = self.config
        trainer = _trainer(name, config)
        current = self.saved.get("current")
        seconds_before = 0.0
        if current is not None and current["name"] == name:
            trainer.load_state_dict(current["state"])
            seconds_before = float(current["seconds"])
        # on resume, events logged after the checkpoint (by the interrupted process) are dropped; a method that
        # trains nothing (scratch) writes no run
        writer = None
        if not trainer.done:
            writer = summary_writer(self.out / "tb" / name, self.primary, trainer.update if self.resume else None)
            if trainer.update == 0:  # the HParams tab: the config and the method, beside what each method logs
                metrics = ("charts/reward", "losses/policy_loss", "losses/meta_loss", "charts/reptile_step_norm")
                write_hparams(writer, config, metrics, extra={"method": name})
        totals = {"rl2": config.rl2.updates, "icl": config.icl.updates + config.icl.rl_updates, "scratch": 0}
        total = totals.get(name, config.gradient.meta_steps)
        bar = tqdm(total=total, initial=trainer.update, desc=name, unit="update", disable=not self.progress)
        start, steps_before = time.perf_counter(), trainer.global_step
        while not trainer.done:
            assert writer is not None
            for key, value in trainer.step().items():  # the method is the run (folder), not the tag
                writer.add_scalar(scalar_tag(key), value, trainer.update)
            bar.update(1)
            stop = self.request["signal"] is not None
            if self.world > 1:  # every process stops at the same update (the agreed flag, not this one's)
                stop = any_rank(stop)
            if stop or trainer.update % config.checkpoint_every == 0:
                entry = {"name": name, "state": trainer.state_dict(),
                         "seconds": seconds_before + time.perf_counter() - start}  # fmt: skip
                self.checkpoint(entry)
                writer.flush()
            if stop:
                bar.close()
                writer.close()
                raise TrainingInterrupted(str(self.request["signal"] or "SIGTERM"), trainer.global_step,
                                          self.checkpoint_path)  # fmt: skip
        bar.close()
        if writer is not None:
            writer.close()
        seconds = seconds_before + time.perf_counter() - start
        policy = trainer.policy
        if self.primary:
            atomic_save({"name": name, "policy": policy.state_dict()}, self.out / "methods" / f"{name}.pt")
        this_process = time.perf_counter() - start
        self.finished[name] = {
            "updates": trainer.update,
            "env_steps": trainer.global_step,
            "seconds": seconds,
            "env_steps_per_s": (trainer.global_step - steps_before) / this_process if this_process > 0 else None,
            "params": {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()},
        }
        pool = getattr(trainer, "pool", None)
        if pool is not None:  # what the adversarial sampler measured (metarec.meta.adversarial)
            self.finished[name]["adversarial"] = pool.summary()
        self.checkpoint(None)

    def run(self) -> dict[str, Any]:
        """Trains every method not finished yet and writes ``results.json``."""
        config, finished = self.config, self.finished
        if config.torch_threads and self.world == 1:
            torch.set_num_threads(config.torch_threads)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.primary and (not self.resume or not (self.out / "config.yaml").is_file()):
            write_config(self.out, config)
        started = time.perf_counter()
        with stop_requests() as request:
            self.request = request
            for name in config.methods:
                if name not in finished:
                    self.train_method(name)
        results = {
            "methods": {name: {k: v for k, v in info.items() if k != "params"} for name, info in finished.items()},
            "params_sha256": params_sha256(*(finished[name]["params"] for name in config.methods)),
            "wall_seconds": sum(float(finished[name]["seconds"]) for name in config.methods),
            "wall_seconds_this_process": time.perf_counter() - started,
            "seed": config.seed,
            "device": config.device,
            "processes": self.world,
        }
        if self.primary:
            write_json(results, self.out / "results.json")
        return results


def _meta_train(config: MetaTrainConfig, out: Path, resume: bool, progress: bool) -> dict[str, Any]:
    return MetaTrainRun(config, out, resume, progress).run()
