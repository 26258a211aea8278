"""A/B test split across processes: wall time of one arm-set with 1 and with N processes, in one run.
One JSON line.

    python benchmarks/abtest_scaling.py [--config configs/abtest_demo.yaml] [--users 20000] [--days 5]
                                        [--nproc 2] [--device cpu]

Both runs use the same config and seed (they give the same results, which is checked here too); the
one-process run gets every core as threads, the N processes share them (``cores // N`` threads each).
The ratio says what splitting buys on the machine it runs on, the time of process start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from metarec.abtest.config import ABTestConfig
from metarec.abtest.runner import run_abtest
from metarec.config import load_yaml_config

SKIP = ("seconds", "wall_seconds", "processes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "abtest_demo.yaml"))
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    overrides = [f"users={args.users}", f"days={args.days}", f"device={args.device}", f"torch_threads={cores}"]
    config = load_yaml_config(ABTestConfig, args.config, overrides)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        one = run_abtest(config, Path(scratch) / "one", quiet=True)
        one_s = time.perf_counter() - start
        start = time.perf_counter()
        split = run_abtest(config, Path(scratch) / "split", quiet=True, nproc=args.nproc)
        split_s = time.perf_counter() - start
    assert split is not None and one is not None
    same = json.dumps({k: v for k, v in one.items() if k not in SKIP}, sort_keys=True) == json.dumps(
        {k: v for k, v in split.items() if k not in SKIP}, sort_keys=True
    )
    print(json.dumps({
        "benchmark": "abtest_scaling", "config": Path(args.config).name, "users": args.users, "days": args.days,
        "arms": len(config.arms), "device": args.device, "cores": cores, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "nproc": args.nproc,
        "seconds_1": round(one_s, 2), f"seconds_{args.nproc}": round(split_s, 2),
        "speedup": round(one_s / split_s, 3), "identical_results": same,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
