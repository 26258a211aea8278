"""``metarec demo``: what the simulator does, measured on every registered environment, and an A/B test.

It evaluates the two reference agents (random, the myopic oracle) on fresh users of every
environment, then runs a simulated A/B test (``configs/abtest_demo.yaml``'s three arms on fewer
users and days) with its report in ``OUT/abtest/``, and writes ``results.json``. Meta-training
(issue 4) will extend this job.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from metarec.abtest.runner import finite
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
    abtest = _demo_abtest(out_dir / "abtest", users, seed, device)
    summary = {
        "users": users,
        "seed": seed,
        "device": device,
        "results": rows,
        "abtest": abtest,
        "seconds": round(time.perf_counter() - started, 2),
    }
    path = out_dir / "results.json"
    path.write_text(json.dumps(finite(summary), indent=2, allow_nan=False))
    print(f"Wrote {path} in {summary['seconds']} s")
    return summary


def _demo_abtest(out: Path, users: int, seed: int, device: str) -> dict:
    """A paired A/B test of popularity (control) against LinUCB and a per-user greedy bandit, 14 days."""
    from metarec.abtest.config import ABTestConfig
    from metarec.abtest.runner import run_abtest
    from metarec.envs.population import validate_config

    config = validate_config(
        ABTestConfig,
        {
            "name": "demo A/B test",
            "env_kwargs": {"population": {"session_budget": 20.0, "steps_per_day": 10}},
            "arms": {"control": "popular", "linucb": "linucb", "greedy": "greedy"},
            "users": users,
            "days": 14,
            "guardrails": [{"metric": "retention", "max_drop": 0.01}],
            "seed": seed,
            "device": device,
        },
    )
    print(f"\nA/B test: popular (control) vs linucb vs greedy, {users} users x {config.days} days, paired")
    results = run_abtest(config, out, quiet=True)
    primary = config.primary_metric
    for arm, effects in results["effects"].items():
        e = effects[primary]
        print(
            f"  {arm:<8} {primary} {100 * e['relative']:+.2f}% "
            f"(95% CI {100 * e['relative_ci'][0]:+.2f}% to {100 * e['relative_ci'][1]:+.2f}%, "
            f"adjusted p {e['p_adjusted']:.2g})"
        )
    print(f"  report: {out / 'report.html'}")
    return {arm: effects[primary] for arm, effects in results["effects"].items()} | {"report": str(out / "report.html")}
