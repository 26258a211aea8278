"""The ``metarec`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from metarec.registration import ENVIRONMENTS


def _cmd_envs(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([{"id": e.id, "description": e.description} for e in ENVIRONMENTS]))
        return 0
    width = max(len(e.id) for e in ENVIRONMENTS)
    for entry in ENVIRONMENTS:
        print(f"{entry.id:<{width}}  {entry.description}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from metarec.evaluation import evaluate

    result = evaluate(args.env, args.agent, args.users, seed=args.seed, device=args.device, nproc=args.nproc)
    if result is None:  # a process of a torchrun group other than the first: it prints nothing
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['env']}  agent={result['agent']}  users={result['users']}  "
            f"mean return {result['mean_return']:.3f} ± {result['ci95']:.3f} (95% CI)  "
            f"length {result['mean_length']:.1f}  click rate {result['click_rate']:.3f}"
        )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from metarec.parallel import TrainingInterrupted
    from metarec.training import load_config, train

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


def _cmd_abtest(args: argparse.Namespace) -> int:
    from metarec.abtest.config import ABTestConfig
    from metarec.abtest.report import summary_table
    from metarec.abtest.runner import run_abtest
    from metarec.config import load_yaml_config

    config = load_yaml_config(ABTestConfig, args.config, args.set or [])
    out = Path(args.out or f"runs/{Path(args.config).stem}")
    results = run_abtest(config, out, quiet=args.quiet, nproc=args.nproc)
    if results is None:  # a process of a torchrun group other than the first: it prints nothing
        return 0
    if args.json:
        primary = config.primary_metric
        print(
            json.dumps(
                {
                    "out": str(out),
                    "srm_flagged": results["srm"]["flagged"],
                    "primary_metric": primary,
                    "effects": {
                        arm: {k: effects[primary][k] for k in ("absolute", "ci", "relative", "p_adjusted")}
                        for arm, effects in results["effects"].items()
                    },
                    "wall_seconds": results["wall_seconds"],
                }
            )
        )
    else:
        print(summary_table(results))
        print(f"report: {out / 'report.html'}  ({results['wall_seconds']:.0f} s)")
    return 0


def _cmd_meta_train(args: argparse.Namespace) -> int:
    from metarec.meta.runner import load_meta_config, meta_train
    from metarec.parallel import TrainingInterrupted

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
    print(json.dumps({"out": str(out), "params_sha256": results["params_sha256"],
                      "wall_seconds": round(results["wall_seconds"], 1),
                      "methods": {k: v["updates"] for k, v in results["methods"].items()}}))  # fmt: skip
    return 0


def _cmd_meta_eval(args: argparse.Namespace) -> int:
    from metarec.meta.runner import meta_eval

    result = meta_eval(args.run, split=args.split, progress=not args.json, seeds=args.seeds)
    if args.json:
        keys = ("split", "sessions", "methods", "best_meta_method")
        methods = {name: {"normalized_return": m["normalized_return"], "ci95": m["ci95"], "shift": m["shift"]}
                   for name, m in result["methods"].items()}  # fmt: skip
        paired = {"paired": result["paired"]} if "paired" in result else {}
        print(json.dumps({**{k: result[k] for k in keys}, "methods": methods, **paired}))
    else:
        for name, m in result["methods"].items():
            curve = " ".join("  nan" if v is None else f"{v:5.2f}" for v in m["normalized_return"][:10])
            print(f"{name:>9}: {curve}")
        written = Path(args.run) / f"eval_{args.split}.json"
        print(f"best meta method: {result['best_meta_method']}; written to {written}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from metarec.demo import run_demo

    kwargs = {}
    if args.meta_config is not None:
        kwargs["meta_config"] = None if args.meta_config == "none" else args.meta_config
    run_demo(out=args.out, users=args.users, seed=args.seed, device=args.device, **kwargs)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import yaml

    from metarec.calibration.fit import FitConfig
    from metarec.calibration.run import run_calibration
    from metarec.config import validate_config

    values = {}
    for item in args.set or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        values[key.strip()] = yaml.safe_load(text)
    fit_config = validate_config(FitConfig, values, where="--set")
    result = run_calibration(
        args.logs, args.format, args.out, items=args.items, holdout_frac=args.holdout_frac, fit_config=fit_config
    )
    if args.json:
        print(json.dumps(result))
        return 0
    f = result["fidelity"]
    print(f"population: {result['population']}  (gym.make('metarec/Calibrated-v0', population=...))")
    for key in ("rating_ks", "popularity_gini_real", "popularity_gini_sim", "recall@10_sim", "recall@10_popularity"):
        if f.get(key) is not None:
            print(f"  {key:<24}{f[key]:.4f}")
    print(f"report: {Path(args.out) / 'fidelity.html'}")
    return 0


def _cmd_simulate_logs(args: argparse.Namespace) -> int:
    from metarec.calibration.simulate import simulate_logs, write_simulated_logs

    columns = simulate_logs(args.env, args.users, args.days, seed=args.seed, agent=args.agent, device=args.device)
    path = write_simulated_logs(columns, args.out)
    print(json.dumps({"out": str(path), "events": len(columns["user"]), "users": args.users, "days": args.days}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metarec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    envs = sub.add_parser("envs", help="list the registered environment ids")
    envs.add_argument("--json", action="store_true", help="print one JSON line")
    envs.set_defaults(func=_cmd_envs)

    ev = sub.add_parser("evaluate", help="run N fresh users for one episode each under an agent")
    ev.add_argument("--env", required=True, choices=[e.id for e in ENVIRONMENTS], metavar="ID")
    ev.add_argument("--agent", required=True, help="recommender name or training run directory")
    ev.add_argument("--users", type=_positive_int, default=1000)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ev.add_argument("--json", action="store_true", help="print one JSON line")
    ev.add_argument(
        "--nproc", type=_positive_int, default=1,
        help="split the users across N processes on this machine (same result as one process)",
    )  # fmt: skip
    ev.set_defaults(func=_cmd_evaluate)

    tr = sub.add_parser("train", help="train a recommender from a YAML config (batched PPO or stable-baselines3)")
    tr.add_argument("config", help="a YAML file, e.g. configs/ppo_recsim_ie.yaml")
    tr.add_argument("--out", help="run directory (default runs/CONFIG_NAME)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument(
        "--nproc", type=_positive_int, default=1,
        help="batched PPO: split the users across N processes on this machine (gloo on CPU, NCCL on GPUs)",
    )  # fmt: skip
    tr.set_defaults(func=_cmd_train)

    ab = sub.add_parser("abtest", help="run a simulated A/B test from a YAML config and write its report")
    ab.add_argument("config", help="a YAML file, e.g. configs/abtest_demo.yaml")
    ab.add_argument("--out", help="output directory (default runs/CONFIG_NAME)")
    ab.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    ab.add_argument("--quiet", action="store_true", help="no progress bars")
    ab.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    ab.add_argument(
        "--nproc", type=_positive_int, default=1,
        help="split the users across N processes on this machine (same results as one process)",
    )  # fmt: skip
    ab.set_defaults(func=_cmd_abtest)

    mt = sub.add_parser("meta-train", help="meta-train RL2, MAML, FOMAML, Reptile and baselines across populations")
    mt.add_argument("config", help="a YAML file, e.g. configs/meta_demo.yaml")
    mt.add_argument("--out", help="run directory (default runs/CONFIG_NAME)")
    mt.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    mt.add_argument("--device", help="torch device (overrides the config's)")
    mt.add_argument(
        "--nproc",
        type=_positive_int,
        default=1,
        help="processes sharing each meta-batch's tasks (torch.distributed: gloo on CPU, NCCL on GPUs)",
    )
    mt.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    mt.add_argument("--quiet", action="store_true", help="no progress bars")
    mt.set_defaults(func=_cmd_meta_train)

    me = sub.add_parser("meta-eval", help="adaptation curves of a meta-train run on held-out populations")
    me.add_argument("run", help="a meta-train run directory")
    me.add_argument("--split", choices=["test", "train"], default="test")
    me.add_argument("--seeds", type=_positive_int, help="evaluation seeds (default: the config's)")
    me.add_argument("--json", action="store_true", help="print one JSON line")
    me.set_defaults(func=_cmd_meta_eval)

    from metarec.calibration.logs import FORMATS

    ca = sub.add_parser("calibrate", help="fit a user population to interaction logs and report its fidelity")
    ca.add_argument("logs", help="a log file or directory (MovieLens or the generic CSV/Parquet schema)")
    ca.add_argument("--format", required=True, choices=FORMATS)
    ca.add_argument("--items", help="item file (titles, features); MovieLens directories bring their own")
    ca.add_argument("--holdout-frac", type=float, default=0.2, help="latest share of events held out (default 0.2)")
    ca.add_argument("--out", required=True, help="output directory (population/, fidelity.json, fidelity.html)")
    ca.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fitting option (repeatable)")
    ca.add_argument("--json", action="store_true", help="print one JSON line")
    ca.set_defaults(func=_cmd_calibrate)

    sl = sub.add_parser("simulate-logs", help="write simulated interaction logs in the generic schema")
    sl.add_argument("--env", default="metarec/DriftingUsers-v0", choices=[e.id for e in ENVIRONMENTS], metavar="ID")
    sl.add_argument("--users", type=_positive_int, required=True)
    sl.add_argument("--days", type=_positive_int, required=True, help="sessions per user, one a day")
    sl.add_argument("--out", required=True, help="a .csv or .parquet file")
    sl.add_argument("--agent", default="random", help="the logging recommender (default random)")
    sl.add_argument("--seed", type=int, default=0)
    sl.add_argument("--device", default="cpu")
    sl.set_defaults(func=_cmd_simulate_logs)

    demo = sub.add_parser("demo", help="the main job: what metarec simulates, measured end to end")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--users", type=_positive_int, default=4000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--meta-config", help="meta-train config (default configs/meta_demo.yaml; 'none' skips it)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    import metarec  # noqa: F401  (registers the environments)
    from metarec.allocator import tune_allocator

    tune_allocator()  # big batches reuse freed memory instead of faulting in fresh pages each step
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as err:
        print(f"metarec {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # a NaN guard tripped: say where, keep the last checkpoint
        print(f"metarec {args.command}: error: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
