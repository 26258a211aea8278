"""``metarec validate-ab CONTROL TREATMENT``: a real A/B test's logs, one per arm. The simulator is calibrated on the
control's logs alone and runs the same test; its predicted lift in click-through rate, with an interval that counts
the learners' own randomness (independent replicates), is set beside the lift observed in the logs."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from metarec.config import apply_overrides, short_repr, validate_config
from metarec.io import json_safe, print_json, write_json
from metarec.runs import check_out, claim_out, made_by

#: The arms' names in the simulated test.
CONTROL, TREATMENT = "control", "treatment"


def _arms(text: str) -> tuple[str, str]:
    from metarec.agents.registry import RECOMMENDERS

    names = tuple(name.strip() for name in text.split(","))
    if len(names) != 2 or any(name not in RECOMMENDERS for name in names):
        raise ValueError(
            f"--arms: expected CONTROL,TREATMENT, two recommenders among {', '.join(sorted(RECOMMENDERS))} standing "
            f"for the logged policies; got {short_repr(text)}"
        )
    return names[0], names[1]


def run(args: argparse.Namespace) -> int:
    from metarec.abtest.config import MIN_REPLICATES, ABTestConfig
    from metarec.calibration.validate_ab import ValidateABConfig, check_fit_halves

    started = time.perf_counter()
    config = validate_config(ValidateABConfig, apply_overrides({}, args.set or []), where="--set")
    agents = _arms(args.arms)
    check_fit_halves(config)
    if config.replicates < MIN_REPLICATES:
        raise ValueError(
            f"replicates: expected at least {MIN_REPLICATES} (independent copies of the simulated test: an arm that "
            f"learns across users makes its users dependent), got {config.replicates}"
        )
    for which, path in (("control", args.control), ("treatment", args.treatment)):
        if not Path(path).exists():
            raise ValueError(f"{which}: no such file or directory {str(path)!r}")
    validate_config(ABTestConfig, _abtest(config, agents, {}, 2, 1))  # its own checks, before any work
    check_out(args.out, "validate-ab", overwrite=args.overwrite)
    logs, plan = _read(args, config)  # and the logs', before anything is written
    made_here = made_by(args.out, "validate-ab")
    out = claim_out(args.out, "validate-ab", overwrite=args.overwrite)
    for refits in ("halves", "bootstrap"):  # an earlier run's refits (also of older versions), not to mix with
        if made_here and (out / refits).is_dir():
            shutil.rmtree(out / refits)
    result = _validate(args, config, agents, out, logs, plan, progress=not args.json)
    result["seconds"] = round(time.perf_counter() - started, 2)
    write_json(result, out / "validate_ab.json")
    if args.json:
        print_json(result, getattr(args, "json_stream", None))
        return 0
    observed, predicted = result["observed"], result["predicted"]
    print(f"{agents[1]} over {agents[0]}, click-through rate:")
    print(f"  observed in the logs     {_lift(observed)}")
    print(f"  predicted by simulation  {_lift(predicted)} ({predicted['replicates']} replicates)")
    within = result["agreement"]["observed_in_predicted_ci"]
    print(f"  observed within the predicted interval: {'yes' if within else 'no'}")
    print(f"results: {out / 'validate_ab.json'}; the simulated test's report: {out / 'abtest' / 'report.html'}")
    return 0


def _lift(part: dict[str, Any]) -> str:
    low, high = part["ci"]
    return f"{part['lift']:+.1%} [{low:+.1%}, {high:+.1%}]"


def _read(args: argparse.Namespace, config: Any) -> tuple[tuple[Any, Any], dict[str, Any]]:
    """Both logs, checked, and the simulated test's slates (ValueErrors name the log or the field)."""
    from metarec.calibration.logs import load_logs
    from metarec.calibration.validate_ab import check_impressions, slate_plan

    control = load_logs(args.control, args.format, items=args.items)
    treatment = load_logs(args.treatment, args.format, items=args.items)
    check_impressions(control, "control")
    check_impressions(treatment, "treatment")
    return (control, treatment), slate_plan(control, config)


def _abtest(config: Any, agents: tuple[str, str], env_kwargs: dict[str, Any], users: int, days: int,
            seed: int | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "name": "validate-ab",
        "env": "metarec/Calibrated-v0",
        "env_kwargs": env_kwargs,
        "arms": {CONTROL: {"agent": agents[0]}, TREATMENT: {"agent": agents[1]}},
        "control": CONTROL,
        "users": users,
        "days": days,
        "pre_period_days": 0,
        "primary_metric": "ctr",
        "alpha": config.alpha,
        "replicates": config.replicates,
        "seed": config.seed if seed is None else seed,
    }


def _validate(args: argparse.Namespace, config: Any, agents: tuple[str, str], out: Path, logs: tuple[Any, Any],
              plan: dict[str, Any], progress: bool) -> dict[str, Any]:  # fmt: skip
    import numpy as np

    from metarec.abtest.config import ABTestConfig
    from metarec.abtest.runner import run_abtest
    from metarec.calibration.validate_ab import (
        agreement,
        fit_control,
        half_sample_interval,
        logged_slates,
        observed_lift,
        summary,
        traffic,
    )

    def say(text: str) -> None:
        if progress:
            print(f"validate-ab: {text}", file=sys.stderr, flush=True)

    control, treatment = logs
    observed = observed_lift(control, treatment, config.bootstrap, config.alpha, config.seed)
    say(f"observed lift {_lift(observed)}; calibrating on the control's {control.num_events:,} rows")
    fitted = fit_control(control, config, plan, out / "population", progress=progress, seed=config.seed)
    env_kwargs = fitted.pop("env_kwargs")
    sizes = traffic(config, treatment, env_kwargs, agents[0], plan)
    users, days, env_kwargs = sizes["users"], sizes["days"], sizes["env_kwargs"]
    ab = validate_config(ABTestConfig, _abtest(config, agents, env_kwargs, users, days))
    say(f"simulating the test: {users:,} users per arm, {days} days, {config.replicates} replicates")
    results = run_abtest(ab, out / "abtest", quiet=not progress)
    assert results is not None  # one process
    effect = results["effects"][TREATMENT]["ctr"]
    halves = None
    if config.fit_halves:
        halves = _fit_halves(control, config, plan, agents, (users, days, sizes["slates_per_user"]), out, say)
    predicted = {
        "lift": effect["relative"],
        "ci": effect["relative_ci"]
        if halves is None
        else half_sample_interval(effect["relative"], halves, int(np.unique(control.user).size), config.alpha),
        "interval": "replicates of the test on one calibration"
        if halves is None
        else f"the lift ± t·sd of {config.fit_halves} calibrations on halves of the control log's users "
        "(delete-d jackknife)",
        "simulation_ci": effect["relative_ci"],
        "half_lifts": halves,
        "p_value": effect["p_value"],
        "unit": results["unit"],
        "replicates": config.replicates,
        "users_per_arm": users,
        "days": days,
        "slates_per_user": sizes["slates_per_user"],
        "session_length_probe": sizes["session_length"],
        "logged_treatment_slates": logged_slates(treatment, plan),
        "ctr": {
            CONTROL: results["arms"][CONTROL]["metrics"]["ctr"],
            TREATMENT: results["arms"][TREATMENT]["metrics"]["ctr"],
        },
        "slates_per_replicate": {arm: results["slates"][arm] / config.replicates for arm in (CONTROL, TREATMENT)},
    }
    return json_safe({
        "control": {"logs": str(args.control), "agent": agents[0], **summary(control)},
        "treatment": {"logs": str(args.treatment), "agent": agents[1], **summary(treatment)},
        "format": args.format,
        "observed": observed,
        "predicted": predicted,
        "agreement": agreement(observed, predicted),
        "fit": fitted,
        "population": str(out / "population"),
        "abtest": {"config": ab.model_dump(mode="json"), "results": str(out / "abtest" / "results.json")},
        "config": config.model_dump(mode="json"),
    })  # fmt: skip


def _fit_halves(control: Any, config: Any, plan: dict[str, Any], agents: tuple[str, str],
                sizes: tuple[int, int, int], out: Path, say: Any) -> list[float]:  # fmt: skip
    """The simulated test's lift after each calibration on a random half of the control log's users (drawn without
    replacement); the ``b``-th fit and test seeded ``seed + 1 + b``."""
    import numpy as np

    from metarec.abtest.config import ABTestConfig
    from metarec.abtest.runner import run_abtest
    from metarec.calibration.validate_ab import fit_control, half_of_users
    from metarec.envs.calibrated import with_population_fields

    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 13]))
    lifts = []
    for b in range(config.fit_halves):
        say(f"calibration {b + 1} of {config.fit_halves} on half of the users")
        seed = config.seed + 1 + b
        fitted = fit_control(half_of_users(control, rng), config, plan, out / "halves" / f"{b:03d}" / "population",
                             seed=seed)  # fmt: skip
        users, days, per_user = sizes
        kwargs = with_population_fields(fitted["env_kwargs"], {"max_session_steps": per_user})
        ab = validate_config(ABTestConfig, _abtest(config, agents, kwargs, users, days, seed))
        results = run_abtest(ab, None, quiet=True)
        assert results is not None
        lifts.append(float(results["effects"][TREATMENT]["ctr"]["relative"]))
    return lifts
