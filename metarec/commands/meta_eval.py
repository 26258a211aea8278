"""``metarec meta-eval RUN``: adaptation curves of a meta-train run on held-out populations."""

from __future__ import annotations

import argparse
from pathlib import Path

from metarec.io import print_json
from metarec.meta.eval_run import meta_eval


def run(args: argparse.Namespace) -> int:
    result = meta_eval(args.run, split=args.split, progress=True, seeds=args.seeds, robustness=args.robustness)
    if args.json:
        keys = ("split", "sessions", "methods", "best_meta_method", "meta_learner")
        keep = ("normalised_return", "ci95", "regret_after", "shift", "metrics", "populations", "item_cold_start")
        methods = {name: {key: m[key] for key in keep} for name, m in result["methods"].items()}
        extra = {key: result[key] for key in ("paired", "robustness") if key in result}
        print_json({**{k: result[k] for k in keys}, "methods": methods, **extra}, getattr(args, "json_stream", None))
    else:
        for name, m in result["methods"].items():
            curve = " ".join("  nan" if v is None else f"{v:5.2f}" for v in m["normalised_return"][:10])
            print(f"{name:>9}: {curve}")
        for name, entry in (result.get("robustness") or {}).get("methods", {}).items():
            if name in ("random", "oracle"):  # 0 and 1 under every perturbation: they normalise it
                continue
            changes = "; ".join(f"{p} {_signed(v['mean_change'])}" for p, v in entry.items())
            print(f"{name:>9} under perturbations (change of the mean over sessions 1-10): {changes}")
        written = Path(args.run) / f"eval_{args.split}.json"
        named = f"; the meta-learner named in the config: {result['meta_learner']}" if result["meta_learner"] else ""
        print(f"best meta method: {result['best_meta_method']}{named}; written to {written}")
    return 0


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"
