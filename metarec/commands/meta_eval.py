"""``metarec meta-eval RUN``: adaptation curves of a meta-train run on held-out populations."""

from __future__ import annotations

import argparse
from pathlib import Path

from metarec.io import print_json
from metarec.meta.eval_run import meta_eval


def run(args: argparse.Namespace) -> int:
    result = meta_eval(args.run, split=args.split, progress=True, seeds=args.seeds)
    if args.json:
        keys = ("split", "sessions", "methods", "best_meta_method", "meta_learner")
        keep = ("normalised_return", "ci95", "regret_after", "shift", "metrics")
        methods = {name: {key: m[key] for key in keep} for name, m in result["methods"].items()}
        paired = {"paired": result["paired"]} if "paired" in result else {}
        print_json({**{k: result[k] for k in keys}, "methods": methods, **paired}, getattr(args, "json_stream", None))
    else:
        for name, m in result["methods"].items():
            curve = " ".join("  nan" if v is None else f"{v:5.2f}" for v in m["normalised_return"][:10])
            print(f"{name:>9}: {curve}")
        written = Path(args.run) / f"eval_{args.split}.json"
        named = f"; the meta-learner named in the config: {result['meta_learner']}" if result["meta_learner"] else ""
        print(f"best meta method: {result['best_meta_method']}{named}; written to {written}")
    return 0
