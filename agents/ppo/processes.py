"""Checkpoints of PPO-trained learners that hold every process's users (shared by
:class:`~metarec.agents.ppo.trainer.BatchedPPO` and RL²)."""

from __future__ import annotations

from typing import Any

import torch


def this_process_users(saved: dict[str, Any], rank: int, world: int) -> Any:
    """This process's entry of a checkpoint's ``processes`` (see :func:`gather_from_processes`), after
    checking that the checkpoint was written by as many processes as this run has."""
    if "processes" not in saved:
        raise ValueError("--resume: this checkpoint was written by an older metarec (no 'processes'); start a new run")
    written = len(saved["processes"])
    if written != world:
        raise ValueError(
            f"--resume: the checkpoint holds {written} processes' users; resume with --nproc {written} "
            f"(this run has {world})"
        )
    return saved["processes"][rank]


def gather_from_processes(value: Any, world: int) -> list[Any]:
    """``value`` (its tensors copied to the CPU) from every process of the group, in rank order;
    ``[value]`` in one process."""

    def to_cpu(tree: Any) -> Any:
        if isinstance(tree, torch.Tensor):
            return tree.cpu()
        if isinstance(tree, dict):
            return {key: to_cpu(item) for key, item in tree.items()}
        return tree

    value = to_cpu(value)
    if world == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return values


def learner_state(learner: Any, users: dict[str, Any]) -> dict[str, Any]:
    """The part of a checkpoint every PPO-trained learner writes: weights, optimizer, generator, counters,
    return statistics, and every process's ``users`` (gathered in rank order)."""
    return {
        "policy": learner.policy.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "generator": learner.generator.get_state(),
        "global_step": learner.global_step,
        "update": learner.update,
        "processes": gather_from_processes(users, learner.world),
        "return_stats": learner.return_stats.state_dict(),
    }


def load_learner_state(learner: Any, saved: dict[str, Any]) -> Any:
    """Loads what :func:`learner_state` wrote into ``learner`` and returns this process's users."""
    users = this_process_users(saved, learner.rank, learner.world)
    learner.policy.load_state_dict(saved["policy"])
    learner.optimizer.load_state_dict(saved["optimizer"])
    learner.generator.set_state(saved["generator"])
    learner.global_step = int(saved["global_step"])
    learner.update = int(saved["update"])
    learner.return_stats.load_state_dict(saved["return_stats"])
    return users
