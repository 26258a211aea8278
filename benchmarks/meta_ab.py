"""A meta-learned recommender in A/B tests on pinned held-out populations (``configs/meta_ab.yaml``):
against popularity (control) and LinUCB, paired, by independent replicates. One JSON line.

    python benchmarks/meta_ab.py RUN [--config configs/meta_ab.yaml] [--out DIR]

``RUN`` is a ``metarec meta-train`` run directory; the meta-learner is ``RUN/methods/METHOD.pt``, METHOD
the config's ``meta_learner``. For each population the line gives every arm's relative effect on the
primary metric (engagement) with its 95% interval and adjusted p-value, and each guardrail's status;
``--out`` keeps each test's ``results.json`` and report in ``DIR/POPULATION_SEED/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import yaml

from metarec.abtest.config import ABTestConfig
from metarec.abtest.runner import run_abtest
from metarec.config import validate_config
from metarec.envs.fitted_task import task_env
from metarec.io import json_safe
from metarec.meta.config import MetaTrainConfig

KEYS = ("meta_learner", "split", "population_seeds", "users", "days", "replicates", "guardrails")


def load(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or set(config) != set(KEYS):
        raise SystemExit(f"config: expected the keys {', '.join(KEYS)} in {path}")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a meta-train run directory")
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "meta_ab.yaml"))
    parser.add_argument("--out", help="keep every test's results and report here (a new directory)")
    args = parser.parse_args()
    run, plan = Path(args.run), load(Path(args.config))
    meta = validate_config(MetaTrainConfig, yaml.safe_load((run / "config.yaml").read_text()))
    learner = run / "methods" / f"{plan['meta_learner']}.pt"
    if not learner.is_file():
        raise SystemExit(f"meta_learner: {learner} does not exist")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="meta_ab_"))
    started, tests = time.perf_counter(), {}
    for seed in plan["population_seeds"]:
        env, env_kwargs = task_env(meta.tasks.sample(plan["split"], 1, seed)[0])
        config = validate_config(
            ABTestConfig,
            {
                "name": f"{plan['meta_learner']} on {plan['split']} population {seed}",
                "env": env,
                "env_kwargs": env_kwargs,
                "arms": {"control": "popular", "linucb": "linucb", plan["meta_learner"]: str(learner)},
                "users": plan["users"],
                "days": plan["days"],
                "replicates": plan["replicates"],
                "guardrails": plan["guardrails"],
                "seed": meta.seed,
            },
        )
        results = run_abtest(config, out / str(seed), quiet=True)
        primary = config.primary_metric
        tests[str(seed)] = {
            "effects": {
                arm: {k: effects[primary][k] for k in ("relative", "relative_ci", "p_adjusted")}
                for arm, effects in results["effects"].items()
            },
            "guardrails": {
                arm: {metric: guard["status"] for metric, guard in rails.items()}
                for arm, rails in results["guardrails"].items()
            },
        }
    line = {
        "benchmark": "meta_ab",
        "run": str(run),
        "meta_learner": plan["meta_learner"],
        "split": plan["split"],
        "users": plan["users"],
        "days": plan["days"],
        "replicates": plan["replicates"],
        "populations": tests,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": platform.machine(),
    }
    print(json.dumps(json_safe(line), allow_nan=False))


if __name__ == "__main__":
    main()
