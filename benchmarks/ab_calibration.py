"""Are the A/B statistics right? Runs many A/A tests, and tests with a planted effect, on simulated users.

Replicates are batched: each arm's users of all replicates step as one population (users are independent,
so replicate r is users [r n, (r + 1) n) of each pool). Three pools of ``replicates x users`` users:

* A — the control users (environment seed s1, recommender seed a1);
* B, independent — other users (seed s2, recommender seed a2): an A/A test with users randomised to arms;
* B, paired — A's users and random streams (seed s1) under the same recommender with another seed (a2):
  an A/A test in the paired design.

Prints one JSON line:

* ``fpr_fixed`` — share of paired A/A tests whose fixed-horizon test of the primary metric rejects at alpha
  (``fpr_fixed_independent``: the same for the independent design);
* ``fpr_sequential`` — share of paired A/A tests that cross the group-sequential bound at any daily look
  (peeking every day), each replicate computing its own bounds from its own data;
* ``power_observed`` / ``power_predicted`` — with a planted effect: every treatment user's primary metric
  raised by delta, the minimum detectable effect at 80% power for ``users`` per arm by the power calculator
  (independent design, sd of the metric over pool A); observed is the share of such tests that reject;
* ``paired_ci_ratio`` — width of the paired design's interval of the primary metric over the independent
  design's, at equal users per arm (``--ratio-users``), on the default A/B config (``--config``, the demo's
  three arms), averaged over its treatments (``paired_ci_ratio_aa``: the same from the A/A replicates above,
  where both arms run the random recommender and so share only the users and the random streams).

Usage: ``python benchmarks/ab_calibration.py --replicates 1000``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import metarec  # noqa: F401  (registers the environments)
from metarec.abtest import stats
from metarec.abtest.analysis import effect_of, look_statistics
from metarec.abtest.config import ABTestConfig
from metarec.abtest.metrics import per_user
from metarec.abtest.runner import run_abtest
from metarec.abtest.simulate import simulate_arm
from metarec.allocator import tune_allocator
from metarec.config import load_yaml_config

DEFAULT_ENV_KWARGS = {"population": {"session_budget": 20.0, "steps_per_day": 10}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--users", type=int, default=200, help="users per arm in each replicate")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--agent", default="random", help="the recommender of every arm (per-user state only)")
    parser.add_argument("--metric", default="engagement", help="the primary metric")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--draws", type=int, default=50_000, help="Monte Carlo draws of each replicate's bounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default="configs/abtest_demo.yaml", help="A/B config of paired_ci_ratio")
    parser.add_argument("--ratio-users", type=int, default=20_000, help="users per arm for paired_ci_ratio")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    start = time.perf_counter()

    r, n, days, alpha = args.replicates, args.users, args.days, args.alpha
    seeds = np.random.SeedSequence(args.seed).generate_state(4)
    s1, s2, a1, a2 = (int(x) for x in seeds)

    def pool(env_seed: int, agent_seed: int) -> np.ndarray:
        run = simulate_arm(
            "metarec/DriftingUsers-v0",
            DEFAULT_ENV_KWARGS,
            args.agent,
            None,
            r * n,
            days,
            0,
            env_seed,
            agent_seed,
            agent_seed,
        )
        return run.counters.reshape(r, n, days, -1)

    a, b_independent, b_paired = pool(s1, a1), pool(s2, a2), pool(s1, a2)

    rejections = {"paired": 0, "independent": 0, "sequential": 0, "planted": 0}
    widths = {"paired": [], "independent": []}
    values_a = np.asarray(per_user(args.metric, a.reshape(r * n, days, -1))[0], dtype=float)
    sd = float(np.std(values_a, ddof=1))
    delta = stats.minimum_detectable_effect(n, sd, alpha=alpha, power=0.8)
    power_predicted = stats.power(delta, sd, n, alpha=alpha)
    rng = np.random.default_rng(args.seed)
    for i in range(r):
        paired = effect_of(args.metric, b_paired[i], a[i], paired=True, alpha=alpha)
        independent = effect_of(args.metric, b_independent[i], a[i], paired=False, alpha=alpha)
        rejections["paired"] += paired.p_value < alpha
        rejections["independent"] += independent.p_value < alpha
        widths["paired"].append(paired.absolute_ci[1] - paired.absolute_ci[0])
        widths["independent"].append(independent.absolute_ci[1] - independent.absolute_ci[0])

        estimate, se, correlation = look_statistics(args.metric, b_paired[i], a[i], paired=True)
        bounds = stats.group_sequential_bounds(correlation, alpha, rng=rng, draws=args.draws)
        z = np.where(se > 0, estimate / np.where(se > 0, se, 1.0), 0.0)
        rejections["sequential"] += bool(np.any(np.abs(z) >= bounds))

        treated = np.asarray(per_user(args.metric, b_independent[i])[0], dtype=float) + delta
        control = np.asarray(per_user(args.metric, a[i])[0], dtype=float)
        rejections["planted"] += stats.welch_effect(treated, control, alpha=alpha).p_value < alpha

    ratio = config_ci_ratio(args.config, args.ratio_users)
    print(
        json.dumps(
            {
                "benchmark": "ab_calibration",
                "replicates": r,
                "users_per_arm": n,
                "days": days,
                "agent": args.agent,
                "metric": args.metric,
                "alpha": alpha,
                "fpr_fixed": rejections["paired"] / r,
                "fpr_fixed_independent": rejections["independent"] / r,
                "fpr_sequential": rejections["sequential"] / r,
                "planted_effect": delta,
                "power_observed": rejections["planted"] / r,
                "power_predicted": power_predicted,
                "paired_ci_ratio": ratio,
                "paired_ci_ratio_aa": float(np.mean(widths["paired"]) / np.mean(widths["independent"])),
                "ratio_config": args.config,
                "ratio_users_per_arm": args.ratio_users,
                "wall_seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


def config_ci_ratio(path: str, users: int) -> float:
    """Mean over the treatments of (paired interval width) / (independent interval width) of the primary
    metric, for the A/B config at ``path`` with ``users`` users per arm in both designs."""
    config = load_yaml_config(ABTestConfig, path)
    widths = {}
    for design, total in (("paired", users), ("independent", users * len(config.arms))):
        variant = ABTestConfig.model_validate(
            {**config.model_dump(), "design": design, "users": total, "sequential": False, "allocation": None}
        )
        effects = run_abtest(variant, quiet=True)["effects"]
        widths[design] = {
            arm: e[config.primary_metric]["ci"][1] - e[config.primary_metric]["ci"][0] for arm, e in effects.items()
        }
    return float(np.mean([widths["paired"][arm] / widths["independent"][arm] for arm in widths["paired"]]))


if __name__ == "__main__":
    main()
