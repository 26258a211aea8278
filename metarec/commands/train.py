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
    keys = ("algo", "env", "env_steps", "requested_env_steps", "mean_return", "ci95", "normalised_return",
            "normalisation")  # fmt: skip
    summary = {k: results[k] for k in keys if k in results}
    # said on stderr too, where a reader of the progress looks
    if "steps_note" in results:
        print(f"metarec train: {results['steps_note']}", file=sys.stderr)
    if "normalisation" in results:
        print(f"metarec train: normalised return {results['normalisation']}", file=sys.stderr)
    print(json.dumps({**summary, "out": str(out)}))
    return 0
