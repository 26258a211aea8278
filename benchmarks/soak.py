"""Soak test: step a vector env for many user-steps and watch the process's memory for growth.

Steps ``--users`` users of ``--env`` for ``--user-steps`` user-steps in total (autoreset on, so users
come and go), showing the myopic oracle's slates (ground truth on, the heaviest path), and samples
the resident set size (RSS) along the way. Growth is measured from the end of the warm-up (the first
10% of the steps, when the allocator reaches its working set) to the end. Prints one JSON line.

Usage: ``python benchmarks/soak.py --user-steps 100000000 --users 100000``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import gymnasium as gym
import torch

import metarec  # noqa: F401  (registers the environments)
from metarec.allocator import tune_allocator


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="metarec/DriftingUsers-v0")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--user-steps", type=int, default=100_000_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=50, help="RSS samples along the run")
    parser.add_argument("--no-tune-allocator", action="store_true", help="leave glibc's malloc thresholds alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = False if args.no_tune_allocator else tune_allocator()

    env = gym.make_vec(args.env, num_envs=args.users, vectorization_mode="vector_entry_point", device=args.device,
                       array_backend="torch")  # fmt: skip
    _, info = env.reset(seed=0)
    steps = max(1, args.user_steps // args.users)
    warmup = max(1, steps // 10)
    every = max(1, steps // args.samples)
    samples: list[tuple[int, float]] = []
    finite = True
    start = time.perf_counter()
    for step in range(1, steps + 1):
        _, reward, _, _, info = env.step(info["oracle_slate"])
        if step % every == 0 or step in (warmup, steps):
            finite &= bool(torch.isfinite(reward).all())
            samples.append((step, rss_mb()))
    seconds = time.perf_counter() - start
    after_warmup = [mb for s, mb in samples if s >= warmup]
    print(
        json.dumps(
            {
                "benchmark": "soak",
                "env": args.env,
                "users": args.users,
                "user_steps": steps * args.users,
                "device": args.device,
                "allocator_tuned": tuned,
                "user_steps_per_s": steps * args.users / seconds,
                "rss_mb_after_warmup": after_warmup[0],
                "rss_mb_end": after_warmup[-1],
                "rss_mb_max_after_warmup": max(after_warmup),
                "growth_mb": after_warmup[-1] - after_warmup[0],
                "growth_second_half_mb": after_warmup[-1] - after_warmup[len(after_warmup) // 2],
                "rss_mb_samples": [round(mb) for mb in after_warmup],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
                "rewards_finite": finite,
                "seconds": round(seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
