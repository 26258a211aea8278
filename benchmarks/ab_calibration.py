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

With ``--agent popular`` (or ``popular-ctr``: a recommender that learns one table from all its users) the
users of an arm are not independent, and each A/A test is analysed as the A/B runner analyses it
(:mod:`metarec.abtest.replicates`): ``--per-test`` independent replicates, each with its own learner serving
``users`` users, the replicate being the unit. Every learner of every test steps in one batch (a popularity
table per block of users, ``PopularRecommender(groups=...)``), so ``--replicates`` tests cost one simulation
per arm. It then prints ``fpr_fixed`` (primary metric, fixed horizon), ``fpr_familywise`` (any metric after
the report's correction), ``fpr_sequential`` (primary metric, daily looks), each with its binomial 95%
interval, and ``power_observed`` / ``power_predicted`` for a planted effect on the replicate values (the
noncentral t power of the paired test at the A/A replicates' sd).

Usage: ``python benchmarks/ab_calibration.py --replicates 1000`` or
``python benchmarks/ab_calibration.py --agent popular --replicates 1000 --per-test 5 --users 100 --days 3``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy import optimize
from scipy import stats as scipy_stats

import metarec  # noqa: F401  (registers the environments)
from metarec.abtest import stats
from metarec.abtest.analysis import correct, effect_of, look_statistics
from metarec.abtest.config import MIN_REPLICATES, ABTestConfig
from metarec.abtest.metrics import METRICS, per_user
from metarec.abtest.replicates import replicate_effect, replicate_sequential, replicate_values
from metarec.abtest.runner import run_abtest
from metarec.abtest.simulate import ArmRun, simulate_arm
from metarec.agents.base import slate_size_of
from metarec.agents.baselines.bandits import num_items_of
from metarec.agents.baselines.popularity import PopularRecommender
from metarec.agents.registry import register_recommender
from metarec.allocator import tune_allocator
from metarec.config import load_yaml_config, validate_config

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
    parser.add_argument("--per-test", type=int, default=MIN_REPLICATES,
                        help="replicates per A/A test, for a recommender that learns across users")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    start = time.perf_counter()
    if args.agent in SHARED:
        print(json.dumps(shared_state_calibration(args, start)))
        return

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


#: Recommenders that learn one table from all their users, and the target each ranks by.
SHARED = {"popular": "reward", "popular-ctr": "click"}


def grouped(agent: str, groups: int) -> str:
    """Registers ``agent`` as ``groups`` independent learners, one per block of users; returns its name."""
    name = f"{agent}@{groups}"
    register_recommender(name, lambda env, generator: PopularRecommender(
        slate_size_of(env), num_items_of(env, agent), generator, target=SHARED[agent], groups=groups))
    return name


def binomial_ci(hits: int, trials: int) -> list[float]:
    interval = scipy_stats.binomtest(hits, trials).proportion_ci(0.95)
    return [float(interval.low), float(interval.high)]


def paired_t_power(delta: float, sd: float, replicates: int, alpha: float) -> float:
    """Power of the two-sided paired t test on ``replicates`` differences of sd ``sd`` against ``delta``."""
    df, ncp = replicates - 1, delta / (sd / np.sqrt(replicates))
    critical = scipy_stats.t.isf(alpha / 2, df)
    right, left = scipy_stats.nct.sf(critical, df, ncp), scipy_stats.nct.cdf(-critical, df, ncp)
    return float(right + np.nan_to_num(left))  # scipy's far tail can be NaN where it is ~0


def shared_state_calibration(args: argparse.Namespace, start: float) -> dict:
    """A/A tests of a learner that shares state across users, analysed by replicates (see the docstring)."""
    tests, per, n, days, alpha = args.replicates, args.per_test, args.users, args.days, args.alpha
    seeds = np.random.SeedSequence(args.seed).generate_state(3)
    users_seed, a1, a2 = (int(x) for x in seeds)
    name = grouped(args.agent, tests * per)
    pools = [simulate_arm("metarec/DriftingUsers-v0", DEFAULT_ENV_KWARGS, name, None, tests * per * n, days, 0,
                          users_seed, agent_seed, agent_seed).counters.reshape(tests, per, n, days, -1)
             for agent_seed in (a1, a2)]  # paired: the same users, each arm its own learners  # fmt: skip
    config = validate_config(ABTestConfig, {
        "arms": {"control": args.agent, "b": args.agent}, "aa": True, "users": n, "days": days, "alpha": alpha,
        "replicates": per, "primary_metric": args.metric, "env_kwargs": DEFAULT_ENV_KWARGS})  # fmt: skip
    rng = np.random.default_rng(args.seed)
    hits = {"fixed": 0, "familywise": 0, "sequential": 0}
    differences = []
    for i in range(tests):
        replicates = [{"control": _run(pools[0][i, r]), "b": _run(pools[1][i, r])} for r in range(per)]
        effects: dict = {"b": {}}
        family = []
        for metric in METRICS:
            try:
                effect = replicate_effect(config, metric, replicates, "b")
            except ValueError:  # undefined in this test (a ratio with no denominator)
                continue
            effects["b"][metric] = {}
            family.append(("b", metric, effect.p_value))
            if metric == args.metric:
                hits["fixed"] += effect.p_value < alpha
        correct(config, effects, family)
        hits["familywise"] += any(e["significant"] for e in effects["b"].values())
        looks = replicate_sequential(config, replicates, rng, draws=args.draws)["b"]
        hits["sequential"] += looks["crossed_day"] is not None
        differences.append(replicate_values(args.metric, replicates, "b") - replicate_values(args.metric, replicates,
                                                                                            "control"))  # fmt: skip
    differences = np.array(differences)  # [tests, per]
    sd = float(np.std(differences, ddof=1))
    delta = _planted_effect(sd, per, alpha)
    planted = differences + delta
    rejections = int(sum(scipy_stats.ttest_1samp(row, 0.0).pvalue < alpha for row in planted))
    return {
        "benchmark": "ab_calibration", "agent": args.agent, "tests": tests, "replicates_per_test": per,
        "users_per_replicate": n, "days": days, "metric": args.metric, "alpha": alpha, "unit": "replicate",
        **{f"fpr_{kind}": count / tests for kind, count in hits.items()},
        **{f"fpr_{kind}_ci95": binomial_ci(count, tests) for kind, count in hits.items()},
        "planted_effect": delta, "power_predicted": paired_t_power(delta, sd, per, alpha),
        "power_observed": rejections / tests, "power_observed_ci95": binomial_ci(rejections, tests),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def _run(counters: np.ndarray) -> ArmRun:
    return ArmRun(counters=counters, pre=counters[:, :0], impressions=None, steps=0)


def _planted_effect(sd: float, replicates: int, alpha: float, power: float = 0.8) -> float:
    """The effect the paired t test on ``replicates`` differences detects with ``power``."""
    high = 10 * sd / np.sqrt(replicates)  # a noncentrality of 10: power about 1 at any level of interest
    return float(optimize.brentq(lambda d: paired_t_power(d, sd, replicates, alpha) - power, 1e-12 * high, high))


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
