"""Simulator throughput: user-steps per second of a registered environment.

Prints one JSON line: env, users, steps, seconds, user_steps_per_s, device, api (+ diagnostics).

* ``--api vector``: the native vector env (``gym.make_vec(..., vectorization_mode="vector_entry_point")``)
  with ``--users`` users, stepped ``--steps`` times with uniformly random slates drawn on the device (four
  batches of them, taken in turn, so that at a million users the slates do not weigh on the peak memory).
* ``--api single``: one ``gym.make`` env (what stable-baselines3 steps), ``--steps`` steps with random
  legal actions pre-drawn in one array (RecSim's benchmark likewise times its random agent's steps),
  resetting whenever an episode ends (reset cost included, as in RecSim's benchmark).

The first steps warm up and are not timed; the median of ``--runs`` timed runs is reported. The allocator is
tuned as the ``metarec`` command tunes it (:mod:`metarec.allocator`; ``METAREC_TUNE_MALLOC=0`` measures without).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

import metarec  # noqa: F401
from metarec.allocator import tune_allocator


def bench_vector(
    env_id: str, users: int, steps: int, device: str, ground_truth: bool, runs: int, keyed_resets: bool = False,
    compact: bool = False,
) -> dict:  # fmt: skip
    extra = {"keyed_resets": True} if keyed_resets else {}
    if compact:
        extra["compact_observation"] = True
    env = gym.make_vec(
        env_id, num_envs=users, vectorization_mode="vector_entry_point", device=device, ground_truth=ground_truth,
        array_backend="torch", **extra,
    )  # fmt: skip
    env.reset(seed=0)
    n = env.single_action_space.nvec.max() if hasattr(env.single_action_space, "nvec") else env.single_action_space.n
    shape = env.action_space.shape
    generator = torch.Generator(device=env.device).manual_seed(0)

    def run(count: int) -> float:
        # a few batches of slates, taken in turn: the slates' memory stays small next to the users'
        actions = torch.randint(int(n), (min(count, 4), *shape), generator=generator, device=env.device)
        sync()
        start = time.perf_counter()
        for t in range(count):
            env.step(actions[t % actions.shape[0]])
        sync()
        return time.perf_counter() - start

    def sync() -> None:
        if env.device.type == "cuda":
            torch.cuda.synchronize()

    if env.device.type == "cuda":  # the peak of stepping (what is held already counts: env, state, actions)
        torch.cuda.reset_peak_memory_stats()
    run(min(10, steps))
    times = [run(steps) for _ in range(runs)]
    state_bytes = env.unwrapped.state_nbytes() if hasattr(env, "unwrapped") else env.state_nbytes()
    out = {
        "seconds": statistics.median(times),
        "runs_seconds": [round(t, 4) for t in times],
        "state_bytes_per_user": state_bytes / users,
    }
    if env.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_cuda_mb=round(peak / 2**20, 1), peak_cuda_bytes_per_user=round(peak / users, 1))
    return out


def bench_single(env_id: str, steps: int, runs: int, ground_truth: bool) -> dict:
    env = gym.make(env_id, ground_truth=ground_truth)
    env.reset(seed=0)
    space = env.action_space
    rng = np.random.default_rng(0)
    if isinstance(space, gym.spaces.Discrete):
        actions = rng.integers(0, space.n, steps)
    else:  # distinct candidates per slate, as RecSim's random agent draws them
        actions = np.argsort(rng.random((steps, int(space.nvec[0]))), axis=1)[:, : space.shape[0]]

    def run() -> tuple[float, int]:
        episodes = 0
        start = time.perf_counter()
        for t in range(steps):
            _, _, terminated, truncated, _ = env.step(actions[t])
            if terminated or truncated:
                env.reset()
                episodes += 1
        return time.perf_counter() - start, episodes

    run()
    results = [run() for _ in range(runs)]
    times = [r[0] for r in results]
    return {
        "seconds": statistics.median(times),
        "runs_seconds": [round(t, 4) for t in times],
        "episodes_per_run": results[0][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="metarec/DriftingUsers-v0")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--api", choices=("vector", "single"), default="vector")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--no-ground-truth",
        action="store_true",
        help="skip the oracle and true utilities in info (simulation only; RecSim computes none)",
    )
    parser.add_argument(
        "--keyed-resets",
        action="store_true",
        help="vector env: draw newcomers for every row each step (what a run split across processes does)",
    )
    parser.add_argument(
        "--compact-observation",
        action="store_true",
        help="vector env: observe indices into shared tables instead of per-user feature copies",
    )
    args = parser.parse_args()
    tuned = tune_allocator()
    if args.api == "single":
        users, result = 1, bench_single(args.env, args.steps, args.runs, not args.no_ground_truth)
    else:
        users = args.users
        result = bench_vector(
            args.env, users, args.steps, args.device, not args.no_ground_truth, args.runs, args.keyed_resets,
            args.compact_observation,
        )  # fmt: skip
    print(
        json.dumps(
            {
                "env": args.env,
                "users": users,
                "steps": args.steps,
                "seconds": round(result.pop("seconds"), 5),
                "user_steps_per_s": round(users * args.steps / statistics.median(result["runs_seconds"]), 1),
                "device": args.device if args.api == "vector" else "cpu",
                "api": args.api,
                "ground_truth": not args.no_ground_truth,
                "keyed_resets": bool(args.keyed_resets),
                "compact_observation": bool(args.compact_observation),
                "allocator_tuned": tuned,
                **result,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
