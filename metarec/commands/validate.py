"""``metarec validate LOGS``: calibrate on the past of a log and check that the simulator ranks standard
recommenders as the log's real future does."""

from __future__ import annotations

import argparse
from pathlib import Path

from metarec.calibration.logs import load_logs, time_split
from metarec.calibration.recommenders import STANDARD, check_recommenders
from metarec.calibration.run import saved_calibration
from metarec.calibration.validate import ValidateConfig, run_validation
from metarec.calibration.validate_report import write_validation_report
from metarec.config import apply_overrides, short_repr, validate_config
from metarec.io import json_safe, print_json, write_json
from metarec.runs import check_out, claim_out


def _config(overrides: list[str]) -> ValidateConfig:
    return validate_config(ValidateConfig, apply_overrides({}, overrides), where="--set")


def _recommenders(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in STANDARD]
    if unknown or len(set(names)) != len(names) or "popularity" not in names:
        raise ValueError(
            f"--recommenders: expected distinct names among {','.join(STANDARD)}, popularity one of them; "
            f"got {short_repr(text)}"
        )
    return names


def run(args: argparse.Namespace) -> int:
    config = _config(args.set or [])
    names = _recommenders(args.recommenders)
    check_recommenders(names)  # implicit installed, before any work
    if not 0 < args.holdout_frac < 1:
        raise ValueError(f"--holdout-frac: expected a share in (0, 1), got {args.holdout_frac}")
    if not Path(args.logs).exists():
        raise ValueError(f"logs: no such file or directory {str(args.logs)!r}")
    if args.population is not None:
        fitting = [item for item in args.set or [] if item.strip().startswith("fit.")]
        if fitting:
            raise ValueError(f"--set: {fitting[0].split('=')[0].strip()} sets the fit, but --population loads one "
                             "already made; drop it or the --population")  # fmt: skip
        check_out(args.out, "validate", overwrite=args.overwrite)
        # a readable population fitted on this past, before anything is written
        train, _ = time_split(load_logs(args.logs, args.format, items=args.items), args.holdout_frac)
        saved_calibration(args.population, train)
    out = claim_out(args.out, "validate", overwrite=args.overwrite)  # before the logs are read and fitted
    result = run_validation(
        args.logs, args.format, items=args.items, holdout_frac=args.holdout_frac, config=config, names=names,
        progress=True, population=args.population,
    )  # fmt: skip
    write_json(result, out / "validation.json")
    write_validation_report(out, json_safe(result))
    if args.json:
        print_json(result, getattr(args, "json_stream", None))
        return 0
    print(f"{'recommender':<18}{'real ndcg':>10}{'sim offline':>12}{'sim slates':>11}")
    for name, scores in result["recommenders"].items():
        row = (scores[key]["mean"] for key in ("ndcg", "sim_offline_ndcg", "sim_ndcg"))
        print(f"{name:<18}" + "".join(f"{value:>11.4f}" for value in row))
    for key, agreement in result["agreement"].items():
        print(f"Kendall's tau, real ndcg against {key}: {agreement['kendall_tau']:.2f}")
    print(f"report: {out / 'validation.html'}")
    return 0
