"""``metarec meta-train CONFIG``: meta-train every method of a config across populations."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from metarec.io import print_json
from metarec.meta.config import load_meta_config
from metarec.meta.train import meta_train
from metarec.parallel import TrainingInterrupted


def run(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    config = load_meta_config(args.config, overrides)
    out = args.out or f"runs/{Path(args.config).stem}"
    try:
        results = meta_train(config, out, resume=args.resume, progress=not args.quiet, nproc=args.nproc)
    except TrainingInterrupted as stop:
        print(f"metarec meta-train: stopped by {stop}", file=sys.stderr)
        return 143 if stop.signal_name == "SIGTERM" else 130
    if os.environ.get("RANK", "0") != "0":  # under torchrun, one process speaks for the run
        return 0
    summary = {"out": str(out), "params_sha256": results["params_sha256"],
               "wall_seconds": round(results["wall_seconds"], 1),
               "methods": {k: v["updates"] for k, v in results["methods"].items()}}  # fmt: skip
    if args.json:
        print_json(summary, getattr(args, "json_stream", None))
        return 0
    methods = ", ".join(f"{name} ({updates} updates)" for name, updates in summary["methods"].items())
    print(f"meta-trained {methods} in {summary['wall_seconds']} s; params_sha256 {summary['params_sha256'][:12]}; "
          f"run: {out} (metarec meta-eval {out})")  # fmt: skip
    return 0
