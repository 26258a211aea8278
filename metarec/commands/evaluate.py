"""``metarec evaluate``: N fresh users for one episode each under a recommender."""

from __future__ import annotations

import argparse

from metarec.agents.evaluation import evaluate
from metarec.io import print_json


def run(args: argparse.Namespace) -> int:
    result = evaluate(args.env, args.agent, args.users, seed=args.seed, device=args.device, nproc=args.nproc,
                      env_kwargs=args.env_kwargs, progress="evaluate")  # fmt: skip
    if result is None:  # a process of a torchrun group other than the first: it prints nothing
        return 0
    if args.json:
        print_json(result, getattr(args, "json_stream", None))
    else:
        print(
            f"{result['env']}  agent={result['agent']}  users={result['users']}  "
            f"mean return {result['mean_return']:.3f} [{result['ci95'][0]:.3f}, {result['ci95'][1]:.3f}] (95% CI)  "
            f"length {result['mean_length']:.1f}  click rate {result['click_rate']:.3f}"
        )
    return 0
