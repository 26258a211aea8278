"""The analysis of an A/B test run as independent replicates: the replicate is the unit, not the user.

A recommender that learns across users (a popularity table, pooled item statistics, a meta-learned arm that
logs its own item statistics) makes its arm's users dependent: what one user's clicks teach it changes what
every later user sees, so per-user t intervals, which assume independent users, are too narrow. The test is
then run ``replicates`` times, each replicate with its own users and its own copy of every arm's learner
serving all ``users`` users (splitting users among replicates would weaken a pooling learner). Each arm's
value in a replicate (the mean or ratio over its users) is one observation:

* effects compare the arms' replicate values with a t test on ``replicates - 1`` degrees of freedom (paired by
  replicate in the paired design, whose arms share each replicate's users; Welch in the independent design);
* the assumption is that replicates are independent and their values close to normal: each averages every
  user of the replicate, and :data:`~metarec.abtest.config.MIN_REPLICATES` or more give a t interval that
  holds its level (``benchmarks/ab_calibration.py`` measures the false-positive rate with a pooling control);
* daily monitoring of the primary metric uses each look's t statistic mapped to the normal scale (so the
  group-sequential bounds of :func:`~metarec.abtest.stats.group_sequential_bounds` apply) and the looks'
  correlation estimated over the replicates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metarec.abtest import stats
from metarec.abtest.analysis import (
    arm_value,
    correct,
    coverage,
    effect_dict,
    guardrails,
    metric_defined,
    monitored,
    safe_effect,
    standardised,
)
from metarec.abtest.config import ABTestConfig
from metarec.abtest.metrics import METRICS
from metarec.abtest.simulate import ArmRun


def replicate_values(metric: str, replicates: list[dict[str, ArmRun]], arm: str,
                     days: slice = slice(None)) -> np.ndarray:  # fmt: skip
    """``[R]`` the arm's value of ``metric`` in each replicate, over ``days`` of the experiment."""
    return np.array([arm_value(metric, runs[arm].counters[:, days]) for runs in replicates], dtype=float)


def replicate_effect(config: ABTestConfig, metric: str, replicates: list[dict[str, ArmRun]], arm: str,
                     days: slice = slice(None)) -> stats.Effect:  # fmt: skip
    """The effect of ``arm`` over the control on ``metric``, the replicates being the observations."""
    treated = replicate_values(metric, replicates, arm, days)
    control = replicate_values(metric, replicates, config.control_arm, days)
    return stats.welch_effect(treated, control, alpha=config.alpha, paired=config.design == "paired", metric=metric)


def analyse_replicates(config: ABTestConfig, replicates: list[dict[str, ArmRun]]) -> dict[str, Any]:
    """The statistical part of ``results.json`` for ``replicates > 1`` (keys as
    :func:`~metarec.abtest.analysis.analyse` writes them)."""
    metrics = [m for m in METRICS if all(metric_defined(m, runs) for runs in replicates)]
    first = replicates[0]
    arms = {
        name: {"agent": (config.arms[config.control_arm] if config.aa else config.arms[name]).agent,
               "users": int(first[name].counters.shape[0]),
               "metrics": {m: float(np.mean(replicate_values(m, replicates, name))) for m in metrics}}
        for name in config.arms
    }  # fmt: skip
    effects: dict[str, dict[str, Any]] = {}
    family: list[tuple[str, str, float]] = []
    for arm in config.treatments:
        effects[arm] = {}
        for m in metrics:
            effect = safe_effect(lambda m=m, arm=arm: replicate_effect(config, m, replicates, arm))
            effects[arm][m] = {**effect_dict(effect), "cuped": False}
            if effect is not None:
                family.append((arm, m, effect.p_value))
    correct(config, effects, family)
    counts = [sum(int(runs[name].counters.shape[0]) for runs in replicates) for name in config.arms]
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 7]))
    return {
        "metrics": {m: {"description": METRICS[m].description, "kind": METRICS[m].kind,
                        "higher_is_better": METRICS[m].higher_is_better} for m in metrics},
        "arms": arms,
        "srm": {"p_value": 1.0, "flagged": False, "counts": counts,
                "expected_shares": [1 / len(counts)] * len(counts),
                "note": "replicates: every arm serves all users of every replicate"},
        "effects": effects,
        "guardrails": guardrails(config, effects),
        "per_day": replicate_per_day(config, replicates, metrics),
        "sequential": replicate_sequential(config, replicates, rng) if config.sequential else {},
        "coverage": {name: float(np.mean([coverage(runs[name].impressions) for runs in replicates]))
                     for name in config.arms if first[name].impressions is not None},
    }  # fmt: skip


def replicate_per_day(config: ABTestConfig, replicates: list[dict[str, ArmRun]], metrics: list[str]) -> dict[str, Any]:
    """Each arm's value (mean over replicates) and each treatment's effect on every metric, day by day."""
    days = range(config.days)
    out: dict[str, Any] = {
        "days": [d + 1 for d in days],
        "arms": {name: {m: [float(np.mean(replicate_values(m, replicates, name, slice(d, d + 1)))) for d in days]
                        for m in metrics} for name in config.arms},
        "effects": {},
    }  # fmt: skip
    for arm in config.treatments:
        out["effects"][arm] = {}
        for m in metrics:
            series: dict[str, list[float]] = {"absolute": [], "ci_low": [], "ci_high": [], "relative": []}
            for d in days:
                values = effect_dict(safe_effect(
                    lambda m=m, d=d, arm=arm: replicate_effect(config, m, replicates, arm, slice(d, d + 1))))
                series["absolute"].append(values["absolute"])
                series["ci_low"].append(values["ci"][0])
                series["ci_high"].append(values["ci"][1])
                series["relative"].append(values["relative"])
            out["effects"][arm][m] = series
    return out


def replicate_looks(config: ABTestConfig, replicates: list[dict[str, ArmRun]], arm: str) -> np.ndarray:
    """``[R, D]`` the effect of ``arm`` on the primary metric at each day's look (all days so far), per
    replicate; in the independent design, ``[2, R, D]`` (treatment, control) instead."""
    looks = range(config.days)
    values = {
        name: np.array([[arm_value(config.primary_metric, runs[name].counters[:, : d + 1]) for d in looks]
                        for runs in replicates])
        for name in (arm, config.control_arm)
    }  # fmt: skip
    if config.design == "paired":
        return values[arm] - values[config.control_arm]
    return np.stack([values[arm], values[config.control_arm]])


def welch_df(treatment: np.ndarray, control: np.ndarray) -> float:
    """The Welch-Satterthwaite degrees of freedom of two independent samples' difference of means (between
    ``min(n) - 1`` and ``n_t + n_c - 2``; ``n - 1`` of the smaller sample when both variances are 0)."""
    v_t, v_c = np.var(treatment, ddof=1) / treatment.size, np.var(control, ddof=1) / control.size
    if v_t + v_c <= 0:
        return float(min(treatment.size, control.size) - 1)
    return float((v_t + v_c) ** 2 / (v_t**2 / (treatment.size - 1) + v_c**2 / (control.size - 1)))


def replicate_sequential(config: ABTestConfig, replicates: list[dict[str, ArmRun]], rng: np.random.Generator,
                         draws: int = 200_000) -> dict[str, Any]:  # fmt: skip
    """Daily looks at the primary metric over the replicates, with group-sequential bounds (as
    :func:`~metarec.abtest.analysis.sequential`, each treatment spending alpha / treatments). A look's t
    statistic on ``R - 1`` degrees of freedom (paired), or Welch's (independent), is mapped to the normal scale
    through its p-value, and the repeated intervals map the bounds back to the t scale."""
    out = {}
    alpha = config.alpha / len(config.treatments)
    count = len(replicates)
    for arm in config.treatments:
        looks = replicate_looks(config, replicates, arm)
        if config.design == "paired":
            estimate, cov = looks.mean(0), np.atleast_2d(np.cov(looks, rowvar=False)) / count
            df = float(count - 1)
        else:
            estimate = looks[0].mean(0) - looks[1].mean(0)
            cov = sum(np.atleast_2d(np.cov(x, rowvar=False)) / count for x in looks)
            df = welch_df(looks[0][:, -1], looks[1][:, -1])  # the two-sample statistic's, as the fixed test's
        se, correlation = standardised(cov)
        method = (f"group-sequential over {count} replicates (t on {df:.3g} df mapped to z), Lan-DeMets "
                  "O'Brien-Fleming spending over days")  # fmt: skip
        out[arm] = monitored(config, alpha, method, estimate, se, correlation, rng, df=df, draws=draws)
    return out
