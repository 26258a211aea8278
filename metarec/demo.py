"""``metarec demo``: what the simulator does, measured on every registered environment.

It evaluates the two reference agents (random, the myopic oracle) on fresh users of every
environment, shows how much of the gap a drift mechanism opens, and writes ``results.json``. Later
parts of metarec (meta-training, A/B tests, the report) extend this job.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from metarec.evaluation import evaluate
from metarec.registration import ENVIRONMENTS

# RecSim's interest-exploration users never leave (27,000-step horizon); the demo looks at 200 steps.
DEMO_ENV_KWARGS = {"metarec/RecSimInterestExploration-v0": {"max_steps": 200}}


def run_demo(out: str = "runs/demo", users: int = 4000, seed: int = 0, device: str = "cpu") -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    print(f"Evaluating random and oracle recommenders on {users} fresh users per environment ({device})")
    print(f"{'environment':<40}{'random':>18}{'oracle':>18}{'oracle/random':>15}")
    for entry in ENVIRONMENTS:
        kwargs = DEMO_ENV_KWARGS.get(entry.id)
        results = {
            a: evaluate(entry.id, a, users, seed=seed, device=device, env_kwargs=kwargs) for a in ("random", "oracle")
        }
        r, o = results["random"], results["oracle"]
        ratio = o["mean_return"] / r["mean_return"] if r["mean_return"] else float("nan")
        print(
            f"{entry.id:<40}{r['mean_return']:>11.2f} ±{r['ci95']:>5.2f}"
            f"{o['mean_return']:>11.2f} ±{o['ci95']:>5.2f}{ratio:>15.3f}"
        )
        rows.append({"env": entry.id, "random": r, "oracle": o})
    summary = {
        "users": users,
        "seed": seed,
        "device": device,
        "results": rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
    path = out_dir / "results.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"Wrote {path} in {summary['seconds']} s")
    return summary
