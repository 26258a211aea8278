"""The information ladder of the adaptation protocol: what myopic planners that know part of the hidden
state score on a meta-train config's held-out split (``metarec.meta.ceiling``). One JSON line.

    python benchmarks/meta_ceiling.py [--config configs/meta_demo.yaml] [--split test] [--seeds N] [--set K=V ...]
                                      [--rungs NAME,NAME] [--posterior-samples S]

The rungs are those of ``metarec.meta.ceiling`` (told part of the hidden state) and the Bayesian rungs of
``metarec.meta.posterior_rung`` (told the population's parameters, learning the user, and item quality in
``posterior+learned quality``, from the responses); ``--rungs`` runs some of them.

Same populations, users and seeds as ``metarec meta-eval`` of a run of that config, so the rungs sit
on the same scale (random 0, oracle 1) as its methods; LinUCB is run alongside as the peer. ``--set``
takes the config overrides ``metarec meta-train`` takes, e.g. ``--set eval.users_per_task=640`` to see
another protocol.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from metarec.agents.registry import make_recommender
from metarec.commands.demo_report import SESSIONS_SHOWN
from metarec.io import json_safe
from metarec.meta.ceiling import ladder
from metarec.meta.config import load_meta_config
from metarec.meta.evaluate import adaptation_curves
from metarec.meta.posterior_rung import posterior_rungs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "meta_demo.yaml"))
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--seeds", type=int, default=None, help="evaluation seeds (default: the config's)")
    parser.add_argument(
        "--posterior-samples", type=int, default=32, help="posterior draws per user scoring the Bayesian rungs' slates"
    )
    parser.add_argument("--rungs", default=None, help="comma-separated rungs to run (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    config = load_meta_config(args.config, [*args.set, *([f"eval.seeds={args.seeds}"] if args.seeds else [])])
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    split = config.test_split if args.split == "test" else config.train_split
    methods = {**ladder(), **posterior_rungs(args.posterior_samples),
               "linucb": lambda env, seed: make_recommender("linucb", env, seed)}  # fmt: skip
    if args.rungs:
        wanted = args.rungs.split(",")
        unknown = sorted(set(wanted) - set(methods))
        if unknown:
            parser.error(f"--rungs: unknown {', '.join(unknown)}; expected some of {', '.join(methods)}")
        methods = {name: methods[name] for name in wanted}
    start = time.perf_counter()
    result = adaptation_curves(methods, config.tasks, split, config.sessions, config.eval, config.seed, config.device,
                      item_stats=config.item_stats)  # fmt: skip
    shown = [k - 1 for k in SESSIONS_SHOWN if k <= config.sessions]
    print(
        json.dumps(
            json_safe(
                {
                    "benchmark": "meta_ceiling",
                    "config": Path(args.config).name,
                    "overrides": args.set,
                    "posterior_samples": args.posterior_samples,
                    "split": split,
                    "seeds": config.eval.seeds,
                    "sessions": [k + 1 for k in shown],
                    "rungs": {
                        name: {
                            "normalised_return": [m["normalised_return"][i] for i in shown],
                            "ci95": [m["ci95"][i] for i in shown],
                        }
                        for name, m in result["methods"].items()
                        if name not in ("random", "oracle")
                    },
                    "wall_seconds": round(time.perf_counter() - start, 1),
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {config.device}",
                }
            ),
            allow_nan=False,
        )
    )


if __name__ == "__main__":
    main()
