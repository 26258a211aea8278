"""``metarec calibrate LOGS``: fit a population to interaction logs and report its fidelity."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from metarec.calibration.fit import FitConfig
from metarec.calibration.run import run_calibration
from metarec.config import validate_config
from metarec.io import print_json
from metarec.runs import claim_out


def run(args: argparse.Namespace) -> int:
    values = {}
    for item in args.set or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        values[key.strip()] = yaml.safe_load(text)
    fit_config = validate_config(FitConfig, values, where="--set")
    claim_out(args.out, "calibrate", overwrite=args.overwrite)  # before the logs are read and fitted
    result = run_calibration(
        args.logs, args.format, args.out, items=args.items, holdout_frac=args.holdout_frac, fit_config=fit_config,
        progress=True,
    )
    if args.json:
        print_json(result, getattr(args, "json_stream", None))
        return 0
    f = result["fidelity"]
    print(f"population: {result['population']}  (gym.make('metarec/Calibrated-v0', population=...))")
    for key in ("rating_ks", "popularity_gini_real", "popularity_gini_sim", "recall@10_sim", "recall@10_popularity"):
        if f.get(key) is not None:
            print(f"  {key:<24}{f[key]:.4f}")
    print(f"report: {Path(args.out) / 'fidelity.html'}")
    return 0
