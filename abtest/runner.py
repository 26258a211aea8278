"""``metarec abtest CONFIG``: simulate every arm, analyse, write ``results.json`` and the report.

``results.json`` holds, besides the statistics of :func:`metarec.abtest.analysis.analyse`, the
design, the config and its SHA-256 hash, the seeds of every arm's users and recommender, the users
per arm and the wall time. Non-finite numbers are written as ``null``.

``nproc > 1`` (or ``torchrun``) splits every arm's users across processes
(:mod:`metarec.abtest.simulate`); the results are exactly those of one process, and the first
process analyses them and writes the files.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarec.abtest.analysis import analyse
from metarec.abtest.config import MIN_REPLICATES, ABTestConfig
from metarec.abtest.metrics import C
from metarec.abtest.replicates import analyse_replicates
from metarec.abtest.report import write_report
from metarec.abtest.simulate import ArmRun, make_env, merge_runs, simulate_arm
from metarec.agents.registry import make_recommender
from metarec.io import json_safe, write_json
from metarec.parallel import Shard, group_size, in_group, rank, spawn_for_result, torchrun_group, world_size


def config_hash(config: ABTestConfig) -> str:
    """SHA-256 of the config's canonical JSON (sorted keys)."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def seeds_of(config: ABTestConfig, replicate: int = 0) -> dict[str, Any]:
    """Seeds of the assignment, of every arm's users (common to all arms in the paired design) and of
    every arm's recommender, derived from ``config.seed`` (and ``replicate`` after the first) with
    ``numpy.random.SeedSequence``: every replicate has its own users and learners."""
    names = list(config.arms)
    entropy = config.seed if replicate == 0 else [config.seed, replicate]
    children = np.random.SeedSequence(entropy).spawn(2 + 2 * len(names))

    def draw(seq: np.random.SeedSequence) -> int:
        return int(seq.generate_state(1, np.uint32)[0])

    if config.design == "paired":
        env = {name: draw(children[1]) for name in names}
    else:
        env = {name: draw(children[2 + i]) for i, name in enumerate(names)}
    agents = {name: draw(children[2 + len(names) + i]) for i, name in enumerate(names)}
    return {"assignment": draw(children[0]), "env": env, "agents": agents}


def users_per_arm(config: ABTestConfig, assignment_seed: int) -> dict[str, int]:
    """Paired: every user in every arm. Independent: users randomised to arms (a multinomial draw)."""
    if config.design == "paired":
        return {name: config.users for name in config.arms}
    shares = config.shares()
    counts = np.random.default_rng(assignment_seed).multinomial(config.users, [shares[n] for n in config.arms])
    for name, count in zip(config.arms, counts, strict=True):
        if count < 2:
            raise ValueError(f"users: arm {name!r} drew {count} users; expected at least 2 (raise users)")
    return {name: int(count) for name, count in zip(config.arms, counts, strict=True)}


def check_design(config: ABTestConfig) -> list[str]:
    """The arms whose recommender learns across users; a ValueError, before any simulation, when such an
    arm has too few replicates for a valid interval (see :data:`~metarec.abtest.config.MIN_REPLICATES`)."""
    env = make_env(config.env, config.env_kwargs, 2, config.pre_period_days + config.days, config.device)
    agents = {name: (config.arms[config.control_arm] if config.aa else config.arms[name]).agent for name in config.arms}
    built = {agent: make_recommender(agent, env, 0) for agent in set(agents.values())}
    env.close()
    sharing = [name for name, agent in agents.items() if built[agent].shares_state_across_users]
    if sharing and config.replicates < MIN_REPLICATES:
        raise ValueError(
            f"replicates: arm {sharing[0]!r} ({agents[sharing[0]]}) learns one model from all its users, so they "
            f"are not independent samples and a per-user interval would be too narrow; expected replicates >= "
            f"{MIN_REPLICATES} (independent copies of the test, each arm serving all {config.users} users), got "
            f"{config.replicates}"
        )
    return sharing


def simulate(config: ABTestConfig, quiet: bool = False) -> tuple[list[dict[str, ArmRun]], list[dict[str, Any]]]:
    """Runs every arm of every replicate; returns the runs and the seeds used, one entry per replicate."""
    import torch.distributed as dist

    if config.torch_threads is not None and not dist.is_initialized():
        torch.set_num_threads(config.torch_threads)
    replicates = [simulate_replicate(config, r, quiet) for r in range(config.replicates)]
    return [runs for runs, _ in replicates], [seeds for _, seeds in replicates]


def simulate_replicate(config: ABTestConfig, replicate: int, quiet: bool) -> tuple[dict[str, ArmRun], dict[str, Any]]:
    """Runs every arm of one replicate. In a process group (see the module docstring) each process simulates
    its block of every arm's users, and the first gets the whole runs (the others get blocks)."""
    here = rank()
    seeds = seeds_of(config, replicate)
    users = users_per_arm(config, seeds["assignment"])
    control = config.control_arm
    runs = {}
    for name in config.arms:
        spec = config.arms[control] if config.aa else config.arms[name]
        shard = Shard.of_this_process(users[name])
        start = time.perf_counter()
        run = simulate_arm(
            config.env, config.env_kwargs, spec.agent, config.arms[control].agent, users[name], config.days,
            config.pre_period_days, seeds["env"][name], seeds["agents"][name], seeds["agents"][control],
            device=config.device, max_steps=config.max_steps,
            progress=None if quiet or here > 0 else f"arm {name}" + (f" ({replicate + 1}/{config.replicates})"
                                                                          if config.replicates > 1 else ""),
            shard=shard,
        )  # fmt: skip
        run.seconds = time.perf_counter() - start
        runs[name] = merge_runs(run, shard) or run
    return runs, seeds


def run_abtest(
    config: ABTestConfig, out: str | Path | None = None, quiet: bool = False, nproc: int = 1
) -> dict[str, Any] | None:
    """Simulates and analyses the test; with ``out``, writes ``results.json`` and the report there.

    ``nproc > 1`` runs it in that many processes on this machine (gloo on CPU, NCCL on GPUs); under
    ``torchrun`` the processes it started share the work. Only the first process returns the results
    (the others return None).
    """
    world = world_size(nproc)
    if nproc > 1:
        out = None if out is None else str(out)
        return spawn_for_result(_worker, (config.model_dump_json(), out, quiet), nproc, config.device,
                                config.torch_threads)  # fmt: skip
    if world > 1:
        torchrun_group(config.device, config.torch_threads)
    if in_group() and rank() > 0:
        check_design(config)
        simulate(config, quiet=True)
        return None
    start = time.perf_counter()
    sharing = check_design(config)
    replicates, seeds = simulate(config, quiet)
    results: dict[str, Any] = {
        "name": config.name,
        "design": config.design,
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
        "seed": config.seed,
        "seeds": seeds[0] if config.replicates == 1 else seeds,
        "replicates": config.replicates,
        "unit": "user" if config.replicates == 1 else "replicate",
        "shared_state_arms": sharing,
        "env": config.env,
        "days": config.days,
        "pre_period_days": config.pre_period_days,
        "control": config.control_arm,
        "primary_metric": config.primary_metric,
        "alpha": config.alpha,
        "correction": config.correction,
        "aa": config.aa,
        "steps": {name: sum(runs[name].steps for runs in replicates) for name in config.arms},
        # slates shown to the arm's users, over every replicate
        "slates": {name: int(sum(runs[name].counters[..., C["impressions"]].sum() for runs in replicates))
                   for name in config.arms},
    }
    simulated = time.perf_counter()
    results.update(analyse(config, replicates[0]) if config.replicates == 1 else analyse_replicates(config, replicates))
    results["seconds"] = {"simulation": {name: sum(runs[name].seconds for runs in replicates) for name in config.arms},
                          "analysis": time.perf_counter() - simulated}
    results["wall_seconds"] = time.perf_counter() - start
    results["processes"] = group_size()
    if out is not None:
        write_results(results, Path(out))
    return results


def _worker(config_json: str, out: str | None, quiet: bool) -> dict[str, Any] | None:
    results = run_abtest(ABTestConfig.model_validate_json(config_json), out, quiet)
    return None if results is None else json_safe(results)


def write_results(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """``results.json`` (atomically) and the report files in ``out``."""

    write_json(results, out / "results.json")
    files = write_report(results, out)
    return {"results.json": out / "results.json", **files}
