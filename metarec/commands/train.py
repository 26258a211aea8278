"""``metarec train CONFIG``: a training run (batched PPO or stable-baselines3)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metarec.agents.training import load_config, train
from metarec.io import print_json
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
    keys = ("algo", "env", "env_steps", "requested_env_steps", "mean_return", "ci95", "normalised_return",
            "normalisation")  # fmt: skip
    summary = {k: results[k] for k in keys if k in results}
    # said on stderr too, where a reader of the progress looks
    if "steps_note" in results:
        print(f"metarec train: {results['steps_note']}", file=sys.stderr)
    if "normalisation" in results:
        print(f"metarec train: normalised return {results['normalisation']}", file=sys.stderr)
    if args.json:
        print_json({**summary, "out": str(out)}, getattr(args, "json_stream", None))
        return 0
    normalised = summary.get("normalised_return")
    scale = "" if normalised is None else f", normalised {normalised:.3f} (random 0, oracle 1)"
    low, high = summary["ci95"]
    print(f"{summary['algo']} on {summary['env']}: mean return {summary['mean_return']:.3f} [{low:.3f}, {high:.3f}] "
          f"(95% CI){scale} after {summary['env_steps']:,} env steps; run: {out}")  # fmt: skip
    return 0
