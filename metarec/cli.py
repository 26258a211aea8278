"""The ``metarec`` command: its parser. Each verb runs from its module in :mod:`metarec.commands`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
from collections.abc import Sequence

from metarec.config import config_path
from metarec.registration import ENVIRONMENTS


def build_parser() -> argparse.ArgumentParser:
    from metarec import __version__

    description = ("Simulated users whose preferences drift, recommenders tested against them, and meta-learned "
                   "recommenders that adapt to a new user or population. 'metarec COMMAND --help' for each.")
    parser = argparse.ArgumentParser(prog="metarec", description=description, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"metarec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    envs = sub.add_parser("envs", help="list the registered environment ids")
    envs.add_argument("--json", action="store_true", help=JSON_HELP)
    envs.set_defaults(func="metarec.commands.envs:run")

    ev = sub.add_parser("evaluate", help="run N fresh users for one episode each under an agent")
    ev.add_argument("--env", required=True, choices=[e.id for e in ENVIRONMENTS], metavar="ID", help=ENV_HELP)
    ev.add_argument("--agent", required=True, help="recommender name, training run directory or RUN/methods/METHOD.pt")
    ev.add_argument("--users", type=_positive_int, default=1000, help="new users, one episode each")
    ev.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    ev.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ev.add_argument("--env-kwargs", type=_json_object, default=None, metavar="JSON", help=ENV_KWARGS_HELP)
    ev.add_argument("--json", action="store_true", help=JSON_HELP)
    ev.add_argument(
        "--nproc", type=_positive_int, default=1,
        help="split the users across N processes on this machine (same result as one process)",
    )  # fmt: skip
    ev.set_defaults(func="metarec.commands.evaluate:run")

    tr = sub.add_parser("train", help="train a recommender from a YAML config (batched PPO or stable-baselines3)")
    tr.add_argument("config", help="a YAML file, e.g. configs/ppo_recsim_ie.yaml, or metarec:NAME (a shipped config)")
    tr.add_argument("--out", help="run directory (default runs/CONFIG_NAME)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument("--json", action="store_true", help=JSON_HELP)
    tr.add_argument(
        "--nproc", type=_positive_int, default=1,
        help="batched PPO: split the users across N processes on this machine (gloo on CPU, NCCL on GPUs)",
    )  # fmt: skip
    tr.set_defaults(func="metarec.commands.train:run")

    ab = sub.add_parser("abtest", help="run a simulated A/B test from a YAML config and write its report")
    ab.add_argument("config", help="a YAML file, e.g. configs/abtest_demo.yaml, or metarec:NAME (a shipped config)")
    ab.add_argument("--out", help="output directory (default runs/CONFIG_NAME)")
    ab.add_argument("--overwrite", action="store_true", help="write into a non-empty --out not made by abtest")
    ab.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    ab.add_argument("--quiet", action="store_true", help="no progress bars")
    ab.add_argument("--json", action="store_true", help=JSON_HELP)
    ab.add_argument(
        "--nproc", type=_positive_int, default=1,
        help="split the users across N processes on this machine (same results as one process)",
    )  # fmt: skip
    ab.set_defaults(func="metarec.commands.abtest:run")

    mt = sub.add_parser("meta-train", help="meta-train RL2, MAML, FOMAML, Reptile and baselines across populations")
    mt.add_argument("config", help="a YAML file, e.g. configs/meta_demo.yaml, or metarec:NAME (a shipped config)")
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
    mt.add_argument("--json", action="store_true", help=JSON_HELP)
    mt.set_defaults(func="metarec.commands.meta_train:run")

    me = sub.add_parser("meta-eval", help="adaptation curves of a meta-train run on held-out populations")
    me.add_argument("run", help="a meta-train run directory")
    me.add_argument(
        "--split", default="test", help="test, train or any split of the run's task distribution (default: test)"
    )
    me.add_argument("--seeds", type=_positive_int, help="evaluation seeds (default: the config's)")
    me.add_argument(
        "--robustness",
        action="store_true",
        help="also run the protocol under perturbed populations (choice temperature x1.5, position bias +0.1, "
        "drift x2), once more the time per perturbation",
    )
    me.add_argument("--json", action="store_true", help=JSON_HELP)
    me.set_defaults(func="metarec.commands.meta_eval:run")

    from metarec.calibration.logs import FORMATS
    from metarec.calibration.recommenders import STANDARD

    ca = sub.add_parser("calibrate", help="fit a user population to interaction logs and report its fidelity")
    ca.add_argument("logs", help="a log file or directory (MovieLens or the generic CSV/Parquet schema)")
    ca.add_argument("--format", required=True, choices=FORMATS, help="the logs' layout")
    ca.add_argument("--items", help="item file (titles, features); MovieLens directories bring their own")
    ca.add_argument("--holdout-frac", type=float, default=0.2, help="latest share of events held out (default 0.2)")
    ca.add_argument("--out", required=True, help="output directory (population/, fidelity.json, fidelity.html)")
    ca.add_argument("--overwrite", action="store_true", help="write into a non-empty --out not made by calibrate")
    ca.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fitting option (repeatable)")
    ca.add_argument("--json", action="store_true", help=JSON_HELP)
    ca.set_defaults(func="metarec.commands.calibrate:run")

    va = sub.add_parser(
        "validate", help="does the calibrated simulator rank standard recommenders as the logs' real future does?"
    )
    va.add_argument("logs", help="a log file or directory (MovieLens or the generic CSV/Parquet schema)")
    va.add_argument("--format", required=True, choices=FORMATS, help="the logs' layout")
    va.add_argument("--items", help="item file (titles, features); MovieLens directories bring their own")
    va.add_argument("--holdout-frac", type=float, default=0.2, help="latest share of events held out (default 0.2)")
    va.add_argument("--recommenders", default=",".join(STANDARD),
                    help=f"comma-separated, popularity among them (default {','.join(STANDARD)})")
    va.add_argument("--population", help="a population `metarec calibrate` fitted on these logs with the same "
                    "--holdout-frac, loaded instead of fitting again (checked to be this past's)")
    va.add_argument("--out", required=True, help="output directory (validation.json, validation.html, lifts.png)")
    va.add_argument("--overwrite", action="store_true", help="write into a non-empty --out not made by validate")
    va.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="an option of metarec.calibration.validate.ValidateConfig: k, max_steps, bootstrap, seed, "
                    "fit.KEY (as calibrate's --set), recommenders.KEY (repeatable)")
    va.add_argument("--json", action="store_true", help=JSON_HELP)
    va.set_defaults(func="metarec.commands.validate:run")

    vb = sub.add_parser(
        "validate-ab", help="predict a logged A/B test's lift from the control's logs alone, beside the observed lift"
    )
    vb.add_argument("control", help="the control policy's log: every row it showed, clicked or not")
    vb.add_argument("treatment", help="the treatment policy's log over the same period")
    vb.add_argument("--format", required=True, choices=FORMATS, help="the logs' layout")
    vb.add_argument("--items", help="item file (features), for both logs; MovieLens and obd folders bring their own")
    vb.add_argument("--arms", default="random,bts", help="the logged policies as metarec recommenders, "
                    "CONTROL,TREATMENT (default random,bts: the Open Bandit Dataset's A/B test)")  # fmt: skip
    vb.add_argument("--out", required=True, help="output directory (validate_ab.json, population/, abtest/)")
    vb.add_argument("--overwrite", action="store_true", help="write into a non-empty --out not made by validate-ab")
    vb.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="an option of metarec.calibration.validate_ab.ValidateABConfig: users, days, slate_size, "
                    "num_candidates, replicates, fit_halves, bootstrap, alpha, seed, fit.KEY "
                    "(repeatable)")  # fmt: skip
    vb.add_argument("--json", action="store_true", help=JSON_HELP)
    vb.set_defaults(func="metarec.commands.validate_ab:run")

    sl = sub.add_parser("simulate-logs", help="write simulated interaction logs in the generic schema")
    sl.add_argument("--env", default="metarec/DriftingUsers-v0", choices=[e.id for e in ENVIRONMENTS], metavar="ID",
                    help=ENV_HELP)  # fmt: skip
    sl.add_argument("--users", type=_positive_int, required=True, help="simulated users")
    sl.add_argument("--days", type=_positive_int, required=True, help="sessions per user, one a day")
    sl.add_argument("--out", required=True, help="the file to write (.csv or .parquet; .parquet, .csv, .npz for "
                    "parquet, obd, obp), or the dataset folder for minari")  # fmt: skip
    sl.add_argument("--format", default="generic", choices=("generic", "parquet", "obd", "obp", "minari"),
                    help="generic: clicks in the schema calibrate reads; parquet: every impression with its context "
                    "and propensity; obd: the Open Bandit Dataset's CSV; obp: Open Bandit Pipeline's bandit "
                    "feedback (.npz); minari: a Minari dataset, one episode a user")  # fmt: skip
    sl.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    sl.add_argument("--agent", default="random", help="the logging recommender (default random)")
    sl.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    sl.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    sl.add_argument("--env-kwargs", type=_json_object, default=None, metavar="JSON", help=ENV_KWARGS_HELP)
    sl.add_argument("--json", action="store_true", help=JSON_HELP)
    sl.set_defaults(func="metarec.commands.simulate_logs:run")

    ex = sub.add_parser("export", help="write a trained recommender as a file torch or onnxruntime runs alone")
    ex.add_argument("run", help="a metarec train run directory or a meta-train method, RUN/methods/METHOD.pt")
    ex.add_argument("--format", required=True, choices=("torch-export", "onnx", "state-dict"),
                    help="torch-export (.pt2), onnx (.onnx) or state-dict (.pt, the weights)")  # fmt: skip
    ex.add_argument("--out", required=True, help="the file to write, ending in .pt2, .onnx or .pt")
    ex.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ex.add_argument("--env", choices=[e.id for e in ENVIRONMENTS], metavar="ID",
                    help="the env whose observations it takes (default: the run's, else metarec/DriftingUsers-v0)")
    ex.add_argument("--env-kwargs", type=_json_object, default=None, metavar="JSON", help=ENV_KWARGS_HELP)
    ex.add_argument("--batch", type=_positive_int, default=8,
                    help="users in the example call (and in every call of RL² with a population memory)")
    ex.add_argument("--json", action="store_true", help=JSON_HELP)
    ex.set_defaults(func="metarec.commands.export:run")

    demo = sub.add_parser("demo", help="the main job: what metarec simulates, measured end to end")
    demo.add_argument("--out", default="runs/demo", help="output directory")
    demo.add_argument("--overwrite", action="store_true", help="write into a non-empty --out not made by demo")
    demo.add_argument("--users", type=_positive_int, default=4000,
                      help="users per environment evaluated (the A/B test takes up to 1,000 per arm)")  # fmt: skip
    demo.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    demo.add_argument("--meta-config", help="meta-train config (default metarec:meta_demo, the shipped "
                      "configs/meta_demo.yaml; 'none' skips it)")
    demo.add_argument("--json", action="store_true", help=JSON_HELP)
    demo.set_defaults(func="metarec.commands.demo:run")
    return parser


ENV_HELP = "an environment id (metarec envs lists them)"
SEED_HELP = "the seed of every random draw: the same seed gives the same run"
JSON_HELP = "print the result as one line of strict JSON on stdout; everything else goes to stderr"
ENV_KWARGS_HELP = (
    "the environment's keyword arguments as a JSON object, e.g. '{\"population\": {\"session_budget\": 8}}' "
    "or, for metarec/Calibrated-v0, '{\"population\": \"runs/calibrated/population\"}' (default: none)"
)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one that its text does not already give."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or "default" in text or no_default:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser: metarec's help format."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _json_object(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a number JSON allows")

    try:
        value = json.loads(text, parse_constant=refuse)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:60]!r} ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``metarec ARGV``. An expected failure is one line on stderr, no traceback, and an exit code:
    2 for bad input (arguments, configs, corrupt files), 1 where reading, writing or memory fails, 3 for
    a NaN guard that tripped."""
    import metarec  # noqa: F401  (registers the environments)
    from metarec.allocator import tune_allocator

    tune_allocator()  # big batches reuse freed memory instead of faulting in fresh pages each step
    parser = build_parser()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse: usage and an error line; keep the error line
        lines = captured.getvalue().strip().splitlines()
        if stop.code in (0, None) or not lines:
            sys.stderr.write(captured.getvalue())
            raise
        prog = lines[-1].partition(": error:")[0] or "metarec"
        print(f"{lines[-1]} (see {prog} --help)", file=sys.stderr)
        return 2
    sys.stderr.write(captured.getvalue())
    try:
        for key in ("config", "meta_config"):  # metarec:NAME names a shipped config
            if isinstance(getattr(args, key, None), str):
                setattr(args, key, str(config_path(getattr(args, key))))
        module, _, function = args.func.partition(":")
        command = getattr(importlib.import_module(module), function)  # imported when used: the CLI starts fast
        if not getattr(args, "json", False):
            return int(command(args))
        # --json: the one JSON line goes to stdout, and everything else the command (or a library it calls,
        # such as a progress bar) prints goes to stderr
        args.json_stream = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            return int(command(args))
    except Exception as err:
        failure = _expected_failure(err)
        if failure is None:  # a bug: its traceback
            raise
        code, message = failure
        print(f"metarec {args.command}: error: {message}", file=sys.stderr)
        return code


def _expected_failure(err: Exception) -> tuple[int, str] | None:
    """``(exit code, one-line message)`` of a failure bad input or the machine explains; None for a bug."""
    import pickle
    import zipfile
    import zlib

    import yaml

    from metarec.io import describe_os_error, one_line

    if isinstance(err, FloatingPointError):  # a NaN guard tripped: it says where; the last checkpoint is kept
        return 3, one_line(str(err))
    bad_input = (ValueError, yaml.YAMLError, zipfile.BadZipFile, EOFError, pickle.UnpicklingError, zlib.error)
    if isinstance(err, bad_input):
        return 2, one_line(str(err) or type(err).__name__)
    if isinstance(err, TypeError) and ("keyword argument" in str(err) or "positional argument" in str(err)):
        return 2, one_line(str(err))  # an argument an environment or algorithm does not take
    if isinstance(err, OSError):
        return 1, describe_os_error(err)
    if isinstance(err, ImportError):  # an optional extra that is not installed: the message says which
        return 1, one_line(str(err) or f"cannot import {err.name}")
    if isinstance(err, MemoryError):
        return 1, one_line(f"out of memory ({err or 'an allocation failed'}); try fewer users or smaller batches")
    return None


if __name__ == "__main__":
    sys.exit(main())
