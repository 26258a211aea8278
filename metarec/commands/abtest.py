"""``metarec abtest CONFIG``: a simulated A/B test and its report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from metarec.abtest.config import ABTestConfig
from metarec.abtest.report import summary_table
from metarec.abtest.runner import run_abtest
from metarec.config import load_yaml_config
from metarec.io import print_json
from metarec.runs import claim_out


def run(args: argparse.Namespace) -> int:
    config = load_yaml_config(ABTestConfig, args.config, args.set or [])
    out = Path(args.out or f"runs/{Path(args.config).stem}")
    # before any simulation; under torchrun the first process claims it, the others only check
    claim_out(out, "abtest", overwrite=args.overwrite, create=os.environ.get("RANK", "0") == "0")
    results = run_abtest(config, out, quiet=args.quiet, nproc=args.nproc)
    if results is None:  # a process of a torchrun group other than the first: it prints nothing
        return 0
    if args.json:
        primary = config.primary_metric
        effects = {
            arm: {k: effects[primary][k] for k in ("absolute", "ci", "relative", "p_adjusted")}
            for arm, effects in results["effects"].items()
        }
        summary = {"out": str(out), "srm_flagged": results["srm"]["flagged"], "primary_metric": primary,
                   "effects": effects, "wall_seconds": results["wall_seconds"]}  # fmt: skip
        print_json(summary, getattr(args, "json_stream", None))
    else:
        print(summary_table(results))
        print(f"report: {out / 'report.html'}  ({results['wall_seconds']:.0f} s)")
    return 0
