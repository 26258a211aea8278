"""``metarec train CONFIG``: a training run (batched PPO or stable-baselines3)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metarec.agents.training import load_config, train
from metarec.parallel import TrainingInterrupted


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set or [])
    out = args.out or f"runs/{Path(args.config).stem}"
    try:
        results = train(config, out, resume=args.resume, progress=not args.quiet, nproc=args.nproc)
    except TrainingInterrupted as stop:
        print(f"metarec train: stopped by {stop}", file=sys.stderr)
        return 143 if stop.signal_name == "SIGTERM" else 130  # 128 + the signal number, as a shell reports
    if not results:  # a process of a torchrun group other than the first: it prints nothing
        return 0
    summary = {k: results[k] for k in ("algo", "env", "env_steps", "mean_return", "ci95") if k in results}
    if "normalised_return" in results:
        summary["normalised_return"] = results["normalised_return"]
    print(json.dumps({**summary, "out": str(out)}))
    return 0
