"""``metarec train CONFIG``: one YAML file runs metarec's batched PPO or a stable-baselines3 algorithm.

A run directory holds::

    config.yaml          the resolved configuration (after --set overrides)
    .metarec-run         the marker of a directory claimed by ``metarec train`` (see metarec.runs)
    checkpoints/last.pt  written atomically every ``checkpoint_every`` steps (batched PPO: weights,
                         optimizer, generators, the simulated users, with the config and a SHA-256 of
                         it all, checked on resume; SB3: last.zip)
    tb/                  TensorBoard events: charts/, losses/, eval/ (the same tags for batched PPO and SB3),
                         the hyper-parameters in the HParams tab and as text
    model.pt | model.zip the final policy (what ``--agent RUN_DIR`` loads)
    results.json         final evaluation on fresh users, with random and oracle on the same users

``--resume`` continues from ``checkpoints/last.pt``: a batched-PPO run killed at any point and resumed
ends with exactly the weights it would have had without the interruption (on CPU). A run killed before
its first checkpoint starts again in the same directory, with or without ``--resume``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from metarec.agents.base import Recommender
from metarec.agents.nn.networks import SlatePolicy
from metarec.agents.ppo import PolicyRecommender
from metarec.agents.training.batched import train_batched_ppo, train_worker
from metarec.agents.training.config import RESUMABLE_CHANGES, TrainConfig
from metarec.agents.training.sb3_run import load_sb3_recommender, train_sb3
from metarec.config import validate_config
from metarec.envs.vector import recommender_space
from metarec.parallel import TrainingInterrupted, rank, spawn_for_result, torchrun_group, world_size
from metarec.runs import load_checkpoint, prepare_run, restartable


def train(
    config: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True, nproc: int = 1
) -> dict[str, Any]:
    """Runs ``config`` into the run directory ``out`` and returns its results (also in results.json).

    ``nproc > 1`` (``algo: ppo`` only) trains in that many processes on this machine, each stepping
    a block of the ``ppo.num_envs`` users (see :mod:`metarec.agents.ppo`); under ``torchrun`` the
    processes it started share the work the same way. SIGTERM to this process reaches them all: they
    checkpoint at the same update and stop.
    """
    world = world_size(nproc)
    if world > 1 and config.algo != "ppo":
        raise ValueError(f"nproc: only algo ppo (metarec's batched PPO) trains across processes, got {config.algo!r}")
    if world > 1 and config.ppo.num_envs % world:
        raise ValueError(f"ppo.num_envs: must divide among {world} processes, got {config.ppo.num_envs}")
    out = Path(out)
    checkpoint = out / "checkpoints" / "last.pt"
    resume = _resumable(config, out, resume)
    if world > 1 and nproc == 1:  # started by torchrun: the first process checks and prepares the run
        torchrun_group(config.device, config.torch_threads)
        import torch.distributed as dist

        problem = None
        if rank() == 0:
            try:
                _prepare(config, out, resume)
            except ValueError as err:
                problem = str(err)
        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        if shared[0] is not None:
            raise ValueError(shared[0])
        return train_batched_ppo(config, out, checkpoint if resume else None, progress)
    _prepare(config, out, resume)
    if nproc > 1:

        def stopped(signal_name: str) -> Exception:
            try:
                saved = load_checkpoint(checkpoint) if checkpoint.is_file() else {}
            except ValueError:
                saved = {}
            return TrainingInterrupted(signal_name, int(saved.get("global_step", 0)), checkpoint)

        return spawn_for_result(train_worker, (config.model_dump_json(), str(out), resume), nproc, config.device,
                                config.torch_threads, on_stop=stopped)  # fmt: skip
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    if config.algo == "ppo":
        return train_batched_ppo(config, out, checkpoint if resume else None, progress)
    return train_sb3(config, out, resume, progress)


def _checkpoint_of(config: TrainConfig, out: Path) -> Path:
    return out / "checkpoints" / ("last.pt" if config.algo == "ppo" else "last.zip")


def _resumable(config: TrainConfig, out: Path, resume: bool) -> bool:
    """``resume``, except that a run which never reached its first checkpoint (killed, or failed at
    start) is started afresh: there is nothing to continue."""
    if resume and not _checkpoint_of(config, out).is_file() and (not out.exists() or restartable(out, "train")):
        return False
    return resume


def _prepare(config: TrainConfig, out: Path, resume: bool) -> None:
    """Claims ``out`` for the run (see :func:`metarec.runs.prepare_run`); a resumed run's config is checked
    against ``config.yaml`` or, where that is gone, the checkpoint's (stable-baselines3 checkpoints carry
    none, so there ``config.yaml`` must be there)."""
    unchecked = config.algo != "ppo" and _checkpoint_of(config, out).is_file()
    if resume and unchecked and not (out / "config.yaml").is_file():
        raise ValueError(
            f"--resume: {out / 'config.yaml'} is missing, so the run's config cannot be checked; restore it or "
            "start a new run in another --out"
        )
    checkpoint = _checkpoint_of(config, out) if config.algo == "ppo" else None
    prepare_run(out, config, resume, RESUMABLE_CHANGES, command="train", checkpoint=checkpoint)


def _check_same_spaces(run_dir: Path, config: TrainConfig, env: Any, spec_id: str) -> None:
    """A policy trained on another environment runs here only if it sees the same spaces (say, one
    trained on RecSim NG's port and evaluated on RecSim NG itself); else a ValueError naming both."""
    trained = gym.make_vec(
        config.env, num_envs=1, vectorization_mode="vector_entry_point", array_backend="torch", **config.env_kwargs
    )
    same = (
        recommender_space(trained) == recommender_space(env)
        and trained.single_action_space == env.single_action_space
    )
    trained.close()
    if not same:
        raise ValueError(
            f"agent: {run_dir} was trained on {config.env}, whose observation or action space differs from {spec_id}'s"
        )


def load_recommender(run_dir: str | Path, env: Any, seed: int = 0) -> Recommender:
    """The trained policy of a run directory, as a recommender for the vector env ``env`` (it samples with
    its own generator; ``seed`` is accepted for the registry's loader signature)."""
    run_dir = Path(run_dir)
    if (run_dir / "model.pt").is_file():
        saved = torch.load(run_dir / "model.pt", map_location=env.device, weights_only=True)
        config = validate_config(TrainConfig, saved["config"])
        spec_id = getattr(getattr(env, "spec", None), "id", None)
        if spec_id is not None and spec_id != config.env:
            _check_same_spaces(run_dir, config, env, spec_id)
        single_item = bool(getattr(env, "single_item", False))
        policy = SlatePolicy(
            recommender_space(env),
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
        return load_sb3_recommender(run_dir, env)
    raise ValueError(f"agent: {run_dir} holds no trained model (model.pt or model.zip); is the run finished?")
