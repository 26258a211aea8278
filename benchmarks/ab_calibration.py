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
per arm (``--chunk C``: one per C tests, each batch with users and learners of its own, to bound the memory).
It then prints ``fpr_fixed`` (primary metric, fixed horizon), ``fpr_familywise`` (any metric after the
report's correction), ``fpr_sequential`` (primary metric, daily looks), each with its binomial 95% interval,
and ``power_observed`` / ``power_predicted`` for a planted effect on the replicate values (the noncentral t
power of the paired test at the A/A replicates' sd).

With ``--agent RUN/methods/rl2.pt`` (a meta-learned arm: RL², its memory per user, logging its own item
statistics pooled over its users, :class:`~metarec.meta.evaluate.LoggedItemStats`) the same, each learner with
its own item-statistics table (``LoggedItemStats(groups=...)``). Served greedily (the meta-train config's
``eval.rl2_greedy``, the default) RL² draws no random numbers, so the two arms of a paired A/A test, with the
same users, serve the same slates and their replicates are identical: such a test cannot reject and measures
nothing, and the benchmark refuses it. ``--design independent`` gives each arm its own users (Welch t on the
replicate values, as ``metarec abtest`` analyses the independent design; the power predicted by the noncentral t
of the two-sample test on ``2 (per-test - 1)`` df at the replicate values' sd).

Usage: ``python benchmarks/ab_calibration.py --replicates 1000`` or
``python benchmarks/ab_calibration.py --agent popular --replicates 1000 --per-test 5 --users 100 --days 3``
or ``python benchmarks/ab_calibration.py --agent RUN/methods/rl2.pt --design independent --replicates 1000
--per-test 5 --users 100 --days 3``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

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
from metarec.agents.base import Recommender, slate_size_of
from metarec.agents.baselines.bandits import num_items_of
from metarec.agents.baselines.popularity import PopularRecommender
from metarec.agents.registry import make_recommender, register_recommender, saved_kind
from metarec.allocator import tune_allocator
from metarec.config import load_yaml_config, validate_config
from metarec.meta.evaluate import LoggedItemStats, RL2Recommender
from metarec.meta.gradient_rl import AdaptingRecommender

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
    parser.add_argument("--chunk", type=int, default=None,
                        help="A/A tests of a recommender that learns across users simulated as one batch (all: "
                             "the default); fewer bound the memory")  # fmt: skip
    parser.add_argument("--design", choices=("paired", "independent"), default="paired",
                        help="A/A tests of a recommender that learns across users: both arms on the same users "
                             "(paired) or each arm on its own users (independent)")  # fmt: skip
    args = parser.parse_args()
    if args.chunk is not None and args.chunk < 1:
        parser.error(f"--chunk: expected a positive integer, got {args.chunk}")
    torch.set_num_threads(args.threads)
    tune_allocator()
    start = time.perf_counter()
    if args.agent in SHARED or saved_kind(args.agent) == "meta":
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
    """Registers ``agent`` (popular, popular-ctr or a meta-learned ``RUN/methods/rl2.pt``) as ``groups``
    independent learners, one per block of users; returns its name."""
    name = f"{agent}@{groups}"
    if agent in SHARED:
        register_recommender(name, lambda env, generator: PopularRecommender(
            slate_size_of(env), num_items_of(env, agent), generator, target=SHARED[agent], groups=groups))  # fmt: skip
    else:
        register_recommender(name, lambda env, generator: grouped_meta(agent, env, generator, groups))
    return name


def grouped_meta(agent: str, env: Any, generator: torch.Generator, groups: int) -> Recommender:
    """The meta-learned recommender ``agent`` loaded as the registry loads it (seeded by ``generator``'s seed),
    with one item-statistics table and one population memory per block of users. A gradient method that adapts
    one policy to a population is refused: it would pool every block."""
    served = make_recommender(agent, env, generator.initial_seed())
    inner = served.inner if isinstance(served, LoggedItemStats) else served
    if isinstance(inner, AdaptingRecommender) and not inner.per_user:
        raise ValueError(f"agent: {agent} adapts one policy to all its users; the calibration needs RL², icl or a "
                         "method trained with gradient.adapt: user")  # fmt: skip
    if isinstance(inner, RL2Recommender):
        inner.population = env.num_envs // groups  # each block's users are one population
    if isinstance(served, LoggedItemStats):
        served = LoggedItemStats(inner, served.num_items, env.device, groups=groups)
    return served


def binomial_ci(hits: int, trials: int) -> list[float]:
    interval = scipy_stats.binomtest(hits, trials).proportion_ci(0.95)
    return [float(interval.low), float(interval.high)]


def paired_t_power(delta: float, sd: float, replicates: int, alpha: float) -> float:
    """Power of the two-sided paired t test on ``replicates`` differences of sd ``sd`` against ``delta``."""
    return _t_power(delta / (sd / np.sqrt(replicates)), replicates - 1, alpha)


def two_sample_t_power(delta: float, sd: float, replicates: int, alpha: float) -> float:
    """Power of the two-sided two-sample t test, ``replicates`` values of sd ``sd`` per arm, against ``delta``
    (Welch's test at equal variances, its df taken at their upper value ``2 (replicates - 1)``)."""
    return _t_power(delta / (sd * np.sqrt(2 / replicates)), 2 * (replicates - 1), alpha)


def _t_power(ncp: float, df: int, alpha: float) -> float:
    critical = scipy_stats.t.isf(alpha / 2, df)
    right, left = scipy_stats.nct.sf(critical, df, ncp), scipy_stats.nct.cdf(-critical, df, ncp)
    return float(right + np.nan_to_num(left))  # scipy's far tail can be NaN where it is ~0


def shared_state_calibration(args: argparse.Namespace, start: float) -> dict:
    """A/A tests of a learner that shares state across users, analysed by replicates (see the docstring)."""
    tests, per, n, days, alpha = args.replicates, args.per_test, args.users, args.days, args.alpha
    paired = args.design == "paired"
    chunk = tests if args.chunk is None else args.chunk
    batches = [_pools(args, k, min(chunk, tests - first), paired) for k, first in enumerate(range(0, tests, chunk))]
    pools = [np.concatenate([batch[arm] for batch in batches]) for arm in (0, 1)]  # [tests, per, n, days, F]
    del batches
    if paired and np.array_equal(pools[0], pools[1]):
        raise SystemExit(
            f"agent: {args.agent} served the same slates in both arms of every paired A/A test (it draws no random "
            "numbers, a greedy policy say), so the arms are identical and the tests measure nothing; use "
            "--design independent"
        )
    config = validate_config(ABTestConfig, {
        "arms": {"control": args.agent, "b": args.agent}, "aa": True, "users": n if paired else 2 * n,
        "days": days, "alpha": alpha, "design": args.design, "replicates": per, "primary_metric": args.metric,
        "env_kwargs": DEFAULT_ENV_KWARGS})  # fmt: skip
    rng = np.random.default_rng(args.seed)
    hits = {"fixed": 0, "familywise": 0, "sequential": 0}
    values = []  # [tests, arm (b, control), per]: the primary metric's replicate values
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
        values.append([replicate_values(args.metric, replicates, arm) for arm in ("b", "control")])
    values = np.array(values)
    if paired:  # the paired t test on the differences, the planted effect added to every treatment replicate
        differences = values[:, 0] - values[:, 1]
        sd = float(np.std(differences, ddof=1))
        delta = _planted_effect(paired_t_power, sd, per, alpha)
        power_predicted = paired_t_power(delta, sd, per, alpha)
        p_values = [scipy_stats.ttest_1samp(row + delta, 0.0).pvalue for row in differences]
    else:  # Welch's test of the replicate values, as the independent design's analysis
        sd = float(np.std(values, ddof=1))  # every replicate value of both arms: one distribution in an A/A test
        delta = _planted_effect(two_sample_t_power, sd, per, alpha)
        power_predicted = two_sample_t_power(delta, sd, per, alpha)
        p_values = [scipy_stats.ttest_ind(b + delta, c, equal_var=False).pvalue for b, c in values]
    rejections = int(sum(p < alpha for p in p_values))
    return {
        "benchmark": "ab_calibration", "agent": args.agent, "design": args.design, "tests": tests,
        "replicates_per_test": per, "users_per_replicate": n, "days": days, "tests_per_batch": chunk,
        "metric": args.metric, "alpha": alpha, "unit": "replicate",
        **{f"fpr_{kind}": count / tests for kind, count in hits.items()},
        **{f"fpr_{kind}_ci95": binomial_ci(count, tests) for kind, count in hits.items()},
        "planted_effect": delta, "power_predicted": power_predicted,
        "power_observed": rejections / tests, "power_observed_ci95": binomial_ci(rejections, tests),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def _pools(args: argparse.Namespace, batch: int, tests: int, paired: bool) -> list[np.ndarray]:
    """Both arms' counters ``[tests, per, n, days, F]`` of the ``batch``-th batch of ``tests`` A/A tests, all their
    learners stepping as one batch. The first batch has the seeds of an unbatched run; the independent design's
    second arm draws its users from a seed of its own."""
    per, n = args.per_test, args.users
    users, a1, a2 = (int(x) for x in np.random.SeedSequence(args.seed if batch == 0 else [args.seed, batch])
                     .generate_state(3))  # fmt: skip
    users_b = users if paired else int(np.random.SeedSequence([args.seed, batch, 1]).generate_state(1)[0])
    name = grouped(args.agent, tests * per)
    return [simulate_arm("metarec/DriftingUsers-v0", DEFAULT_ENV_KWARGS, name, None, tests * per * n, args.days, 0,
                         env_seed, agent_seed, agent_seed).counters.reshape(tests, per, n, args.days, -1)
            for env_seed, agent_seed in ((users, a1), (users_b, a2))]  # each arm its own learners  # fmt: skip


def _run(counters: np.ndarray) -> ArmRun:
    return ArmRun(counters=counters, pre=counters[:, :0], impressions=None, steps=0)


def _planted_effect(power_of: Any, sd: float, replicates: int, alpha: float, power: float = 0.8) -> float:
    """The effect the test whose power ``power_of`` gives detects with ``power``."""
    high = 20 * sd / np.sqrt(replicates)  # a noncentrality of 10 or more: power about 1 at any level of interest
    return float(optimize.brentq(lambda d: power_of(d, sd, replicates, alpha) - power, 1e-12 * high, high))


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
