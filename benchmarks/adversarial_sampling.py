"""RL² meta-trained with uniform and with adversarial population sampling, paired by training seed: the mean and
the worst decile of the held-out populations' normalised returns. One JSON line.

    python benchmarks/adversarial_sampling.py OUT [--config configs/meta_demo.yaml] [--seeds 5]
        [--set rl2.adversarial.temperature=0.05 ...]

For each training seed ``s`` it meta-trains RL² alone twice from the config (``methods=[rl2]``, ``seed=s``): once
as configured (uniform sampling of fresh populations) and once with ``rl2.adversarial`` (a pool of 256 training
populations by default; ``--set`` changes the sampler's fields). Both runs of a seed are evaluated by ``metarec
meta-eval`` on the same held-out populations (the test split, ``eval.seeds x eval.tasks`` of them, at least 40),
against random and the oracle only. A population's normalised return sums sessions 1-10; its worst decile is the
mean of the lowest tenth (:func:`metarec.meta.protocol_summary.population_summary`). The line gives, per arm, the
mean over seeds of each, and the paired difference (adversarial - uniform) with a 95% t interval over seeds.
Runs already in OUT (with their ``results.json``) are reused, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from metarec.io import json_safe
from metarec.meta.config import load_meta_config
from metarec.meta.eval_run import meta_eval
from metarec.meta.train import meta_train
from metarec.stats import mean_interval

ROOT = Path(__file__).resolve().parents[1]


def run_arm(config_path: Path, out: Path, seed: int, sampler: list[str] | None) -> dict:
    """Trains (unless already trained) and evaluates one arm of one seed; its RL² population summary."""
    overrides = ["methods=[rl2]", "meta_learner=rl2", f"seed={seed}"]
    if sampler is not None:
        fields = ", ".join(sampler)
        overrides.append(f"rl2.adversarial={{{fields}}}")
    config = load_meta_config(config_path, overrides)
    started = time.perf_counter()
    if not (out / "results.json").is_file():
        meta_train(config, out, progress=False, overwrite=False, resume=(out / "checkpoints").is_dir())
    train_seconds = time.perf_counter() - started
    result = meta_eval(out, "test", metrics=False, baselines=False)
    rl2 = result["methods"]["rl2"]
    return {
        "train_seconds": round(train_seconds, 1),
        "populations": len([v for seed in rl2["populations"]["normalised_return"] for v in seed]),
        "mean": rl2["populations"]["mean"],
        "worst_decile": rl2["populations"]["worst_decile"],
        "curve": [round(v, 4) for v in rl2["normalised_return"][:10]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="a directory for the runs (kept; runs found there are reused)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "meta_demo.yaml"))
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0 .. SEEDS-1")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a field of the adversarial sampler, e.g. temperature=0.05 (repeatable)")  # fmt: skip
    args = parser.parse_args()
    if args.seeds < 2:
        raise SystemExit(f"--seeds: expected at least 2 (a paired interval), got {args.seeds}")
    sampler = [item.replace("=", ": ", 1) for item in args.set]
    if any(": " not in item for item in sampler):
        raise SystemExit(f"--set: expected FIELD=VALUE, got {args.set}")
    out = Path(args.out)
    started = time.perf_counter()
    arms: dict[str, list[dict]] = {"uniform": [], "adversarial": []}
    for seed in range(args.seeds):
        arms["uniform"].append(run_arm(Path(args.config), out / f"uniform_{seed}", seed, None))
        arms["adversarial"].append(run_arm(Path(args.config), out / f"adversarial_{seed}", seed, sampler))
    line: dict = {
        "benchmark": "adversarial_sampling",
        "config": args.config,
        "sampler": args.set,
        "seeds": args.seeds,
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
    }
    for arm, runs in arms.items():
        line[arm] = {key: float(np.mean([r[key] for r in runs])) for key in ("mean", "worst_decile", "train_seconds")}
        line[arm]["per_seed"] = runs
    for key in ("mean", "worst_decile"):
        diff = np.array([a[key] - u[key] for a, u in zip(arms["adversarial"], arms["uniform"], strict=True)])
        mean, ci = mean_interval(diff[:, None])
        line[f"paired_{key}"] = {"difference": float(mean[0]), "ci95": [float(c) for c in np.ravel(ci)]}
    line["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(json_safe(line)))


if __name__ == "__main__":
    main()
