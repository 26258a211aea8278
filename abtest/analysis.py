"""From the simulated arms to effects: per metric and arm, per day, corrected, CUPED-adjusted, monitored.

Every treatment arm is compared with the control on every metric (:data:`~metarec.abtest.metrics.METRICS`)
with :mod:`metarec.abtest.stats`: Welch (or paired) t intervals for mean metrics, delta-method intervals
for ratio metrics, p-values corrected across treatments x metrics. The primary metric is also monitored
at every day with group-sequential bounds, so peeking daily keeps the false-positive rate at alpha.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from metarec.abtest import stats
from metarec.abtest.config import ABTestConfig
from metarec.abtest.metrics import METRICS, C, per_user
from metarec.abtest.simulate import ArmRun


def effect_of(
    metric: str,
    treatment: np.ndarray,
    control: np.ndarray,
    paired: bool,
    alpha: float,
    covariates: tuple[np.ndarray, np.ndarray] | None = None,
    bootstrap: int = 0,
    rng: np.random.Generator | None = None,
) -> stats.Effect:
    """The effect on ``metric`` of a treatment over the control, from per-user counters (``[U, D', F]``
    each, summed over the days of interest by :func:`~metarec.abtest.metrics.per_user`).

    ``covariates`` (pre-period values of the metric for treatment and control users) CUPED-adjusts a
    mean metric with one theta and centre pooled over both arms. ``bootstrap`` > 0 replaces the t
    interval of the absolute effect of a mean metric by a percentile bootstrap interval.
    """
    num_t, den_t = per_user(metric, treatment)
    num_c, den_c = per_user(metric, control)
    if den_t is not None:
        return stats.ratio_effect(num_t, den_t, num_c, den_c, alpha=alpha, paired=paired, metric=metric)
    if covariates is not None:
        x_t, x_c = covariates
        pooled_y, pooled_x = np.concatenate([num_t, num_c]), np.concatenate([x_t, x_c])
        theta, centre = stats.cuped_theta(pooled_y, pooled_x), float(np.mean(pooled_x))
        num_t = stats.cuped(num_t, x_t, theta, centre)
        num_c = stats.cuped(num_c, x_c, theta, centre)
    effect = stats.welch_effect(num_t, num_c, alpha=alpha, paired=paired, metric=metric)
    if bootstrap > 0:
        low, high = _bootstrap_ci(num_t, num_c, paired, alpha, bootstrap, rng or np.random.default_rng(0))
        effect = stats.Effect(**{**effect.__dict__, "absolute_ci": (low, high)})
    return effect


def _bootstrap_ci(
    t: np.ndarray, c: np.ndarray, paired: bool, alpha: float, resamples: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(t) - mean(c) (``scipy.stats.bootstrap``)."""
    if paired:
        data: tuple[np.ndarray, ...] = (t - c,)

        def statistic(d: np.ndarray, axis: int) -> np.ndarray:
            return np.mean(d, axis=axis)
    else:
        data = (t, c)

        def statistic(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:  # type: ignore[misc]
            return np.mean(a, axis=axis) - np.mean(b, axis=axis)

    result = scipy_stats.bootstrap(
        data, statistic, n_resamples=resamples, confidence_level=1.0 - alpha, method="percentile",
        vectorized=True, batch=max(1, 20_000_000 // max(t.size, 1)), rng=rng,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _pre_covariate(metric: str, pre: np.ndarray) -> np.ndarray | None:
    """The pre-period value of a mean metric per user, or None (ratio metric, or no pre-period)."""
    if pre.shape[1] == 0 or METRICS[metric].kind != "mean":
        return None
    return np.asarray(per_user(metric, pre)[0], dtype=float)


def safe_effect(fn: Any) -> stats.Effect | None:
    """``fn()``, or None where the metric is undefined (e.g. a ratio with no denominator on a day)."""
    try:
        return fn()
    except ValueError:
        return None


def effect_dict(effect: stats.Effect | None) -> dict[str, Any]:
    if effect is None:
        nan = math.nan
        return {"absolute": nan, "ci": [nan, nan], "relative": nan, "relative_ci": [nan, nan], "p_value": nan}
    return {
        "absolute": effect.absolute,
        "ci": list(effect.absolute_ci),
        "relative": effect.relative,
        "relative_ci": list(effect.relative_ci),
        "p_value": effect.p_value,
    }


def arm_value(metric: str, counters: np.ndarray) -> float:
    """The arm's value of ``metric``: mean of the per-user value, or ratio of the per-user sums."""
    num, den = per_user(metric, counters)
    if den is None:
        return float(np.mean(num))
    total = float(np.sum(den))
    return float(np.sum(num)) / total if total > 0 else math.nan


def analyse(config: ABTestConfig, runs: dict[str, ArmRun]) -> dict[str, Any]:
    """The statistical part of ``results.json`` (see :func:`metarec.abtest.runner.run_abtest`)."""
    control = config.control_arm
    paired = config.design == "paired"
    alpha = config.alpha
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 7]))
    metrics = [m for m in METRICS if metric_defined(m, runs)]
    days = config.days

    arms = {
        name: {"agent": (config.arms[control] if config.aa else config.arms[name]).agent,
               "users": int(run.counters.shape[0]),
               "metrics": {m: arm_value(m, run.counters) for m in metrics}}
        for name, run in runs.items()
    }

    effects: dict[str, dict[str, Any]] = {}
    family: list[tuple[str, str, float]] = []
    c_run = runs[control]
    for arm in config.treatments:
        t_run = runs[arm]
        effects[arm] = {}
        for m in metrics:
            covariates = None
            if config.cuped and config.pre_period_days > 0:
                x_t, x_c = _pre_covariate(m, t_run.pre), _pre_covariate(m, c_run.pre)
                covariates = None if x_t is None or x_c is None else (x_t, x_c)
            effect = safe_effect(lambda m=m, cov=covariates, t_run=t_run: effect_of(
                m, t_run.counters, c_run.counters, paired, alpha, cov, config.bootstrap, rng))
            effects[arm][m] = {**effect_dict(effect), "cuped": covariates is not None}
            if effect is not None:
                family.append((arm, m, effect.p_value))
    correct(config, effects, family)
    return {
        "metrics": {m: {"description": METRICS[m].description, "kind": METRICS[m].kind,
                        "higher_is_better": METRICS[m].higher_is_better} for m in metrics},
        "arms": arms,
        "srm": srm(config, runs),
        "effects": effects,
        "guardrails": guardrails(config, effects),
        "per_day": per_day(config, runs, metrics),
        "sequential": sequential(config, runs, rng) if config.sequential and days > 0 else {},
        "coverage": {name: coverage(run.impressions) for name, run in runs.items() if run.impressions is not None},
    }


def correct(config: ABTestConfig, effects: dict[str, dict[str, Any]], family: list[tuple[str, str, float]]) -> None:
    """Adds ``p_adjusted`` and ``significant`` to every effect: the p-values of ``family`` (arm, metric, p)
    corrected together by ``config.correction``; NaN and not significant where there was no effect."""
    if family:
        raw = np.array([p for _, _, p in family])
        adjusted = raw if config.correction == "none" else stats.adjust_p_values(raw, config.correction)
        for (arm, m, _), p in zip(family, adjusted, strict=True):
            effects[arm][m]["p_adjusted"] = float(p)
            effects[arm][m]["significant"] = bool(p <= config.alpha)
    for arm in effects:
        for m in effects[arm]:
            effects[arm][m].setdefault("p_adjusted", math.nan)
            effects[arm][m].setdefault("significant", False)


def metric_defined(metric: str, runs: dict[str, ArmRun]) -> bool:
    """Whether every arm measured ``metric`` (novelty needs a catalogue, regret and ndcg the ground truth)."""
    spec = METRICS[metric]
    if spec.kind == "mean":
        return True
    if spec.numerator == "diversity" and not any(run.counters[..., C["diversity"]].any() for run in runs.values()):
        return False  # one item per slate: no pairs to be diverse
    return all(np.any(per_user(metric, run.counters)[1] > 0) for run in runs.values()) and (
        spec.numerator not in ("novelty",) or all(run.impressions is not None for run in runs.values())
    )


def coverage(impressions: np.ndarray) -> float:
    """Effective share of the catalogue shown: exp(entropy of impressions over items) / items."""
    counts = impressions.sum(0)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))) / counts.size)


def srm(config: ABTestConfig, runs: dict[str, ArmRun]) -> dict[str, Any]:
    """Sample-ratio check of users per arm against the intended shares."""
    counts = [int(runs[name].counters.shape[0]) for name in config.arms]
    shares = [config.shares()[name] for name in config.arms] if config.design == "independent" else [1.0] * len(counts)
    p_value, flagged = stats.srm_check(counts, shares)
    return {"p_value": p_value, "flagged": flagged, "counts": counts,
            "expected_shares": [s / sum(shares) for s in shares]}


def guardrails(config: ABTestConfig, effects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per treatment and guardrail metric: ``pass`` when the relative interval rules out a loss larger
    than ``max_drop``, ``fail`` when it rules out anything smaller, else ``inconclusive``."""
    out: dict[str, dict[str, Any]] = {}
    for arm, by_metric in effects.items():
        out[arm] = {}
        for rail in config.guardrails:
            if rail.metric not in by_metric:
                continue
            low, high = by_metric[rail.metric]["relative_ci"]
            if not METRICS[rail.metric].higher_is_better:  # a loss is an increase
                low, high = -high, -low
            if math.isnan(low):
                status = "inconclusive"
            elif high < -rail.max_drop:
                status = "fail"
            elif low >= -rail.max_drop:
                status = "pass"
            else:
                status = "inconclusive"
            out[arm][rail.metric] = {"status": status, "max_drop": rail.max_drop,
                                     "relative_ci": by_metric[rail.metric]["relative_ci"]}
    return out


def per_day(config: ABTestConfig, runs: dict[str, ArmRun], metrics: list[str]) -> dict[str, Any]:
    """Each arm's value and each treatment's effect on every metric, day by day."""
    control = runs[config.control_arm]
    paired = config.design == "paired"
    days = range(config.days)
    out: dict[str, Any] = {
        "days": [d + 1 for d in days],
        "arms": {name: {m: [arm_value(m, run.counters[:, d : d + 1]) for d in days] for m in metrics}
                 for name, run in runs.items()},
        "effects": {},
    }
    for arm in config.treatments:
        treated = runs[arm]
        out["effects"][arm] = {}
        for m in metrics:
            series: dict[str, list[float]] = {"absolute": [], "ci_low": [], "ci_high": [], "relative": []}
            for d in days:
                effect = safe_effect(lambda m=m, d=d, treated=treated: effect_of(
                    m, treated.counters[:, d : d + 1], control.counters[:, d : d + 1], paired, config.alpha))
                values = effect_dict(effect)
                series["absolute"].append(values["absolute"])
                series["ci_low"].append(values["ci"][0])
                series["ci_high"].append(values["ci"][1])
                series["relative"].append(values["relative"])
            out["effects"][arm][m] = series
    return out


def look_statistics(
    metric: str, treatment: np.ndarray, control: np.ndarray, paired: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The estimate, standard error and correlation of the effect on ``metric`` at each day's look,
    each look using every user's data up to that day (cumulative).

    Returns:
        ``(estimate [D], se [D], correlation [D, D])``.
    """
    influence = []
    estimates = []
    for counters in (treatment, control):
        cumulative = np.cumsum(counters, axis=1)  # [U, D, F]: sums through day d
        values, dens = [], []
        for d in range(counters.shape[1]):
            if METRICS[metric].numerator in ("sessions", "retained"):  # counted from the days themselves
                num, den = per_user(metric, counters[:, : d + 1])
            else:
                num, den = per_user(metric, cumulative[:, d : d + 1])
            values.append(np.asarray(num, dtype=float))
            dens.append(None if den is None else np.asarray(den, dtype=float))
        if dens[0] is None:
            stacked = np.stack(values, axis=1)
            estimates.append(stacked.mean(0))
            influence.append(stacked - stacked.mean(0))
        else:
            ratio = np.array([v.sum() / max(dn.sum(), 1e-300) for v, dn in zip(values, dens, strict=True)])
            lin = np.stack([(v - r * dn) / max(dn.mean(), 1e-300)
                            for v, dn, r in zip(values, dens, ratio, strict=True)], axis=1)
            estimates.append(ratio)
            influence.append(lin)
    estimate = estimates[0] - estimates[1]
    if paired:
        diff = influence[0] - influence[1]
        cov = np.atleast_2d(np.cov(diff, rowvar=False)) / diff.shape[0]
    else:
        cov = sum(np.atleast_2d(np.cov(x, rowvar=False)) / x.shape[0] for x in influence)
    se, correlation = standardised(cov)
    return estimate, se, correlation


def standardised(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The standard errors ``[D]`` and correlation ``[D, D]`` of looks whose covariance is ``cov``."""
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    scale = np.where(se > 0, se, 1.0)
    correlation = cov / np.outer(scale, scale)
    np.fill_diagonal(correlation, 1.0)
    return se, correlation


def monitored(config: ABTestConfig, alpha: float, method: str, estimate: np.ndarray, se: np.ndarray,
              correlation: np.ndarray, rng: np.random.Generator, df: float | None = None,
              draws: int = 200_000) -> dict[str, Any]:  # fmt: skip
    """One treatment's daily looks: z statistics against group-sequential bounds spending ``alpha``, and the
    repeated intervals. With ``df``, each look's statistic is a t on ``df`` degrees of freedom, mapped to the
    normal scale through its p-value (and the bounds back to the t scale for the intervals)."""
    bounds = stats.group_sequential_bounds(correlation, alpha, rng=rng, draws=draws)
    z = np.where(se > 0, estimate / np.where(se > 0, se, 1.0), 0.0)
    half = bounds * se
    if df is not None:
        z = scipy_stats.norm.isf(scipy_stats.t.sf(np.abs(z), df)) * np.sign(z)
        half = scipy_stats.t.isf(scipy_stats.norm.sf(bounds), df) * se
    crossed = np.nonzero(np.abs(z) >= bounds)[0]
    return {
        "metric": config.primary_metric,
        "method": method,
        "alpha": alpha,
        "z": z.tolist(),
        "bounds": bounds.tolist(),
        "ci_low": (estimate - half).tolist(),
        "ci_high": (estimate + half).tolist(),
        "crossed_day": int(crossed[0]) + 1 if crossed.size else None,
    }


def sequential(config: ABTestConfig, runs: dict[str, ArmRun], rng: np.random.Generator) -> dict[str, Any]:
    """Daily looks at the primary metric with group-sequential bounds (Lan-DeMets O'Brien-Fleming spending
    in calendar time) and the repeated confidence intervals estimate +- bound * se. Each treatment spends
    alpha / treatments (Bonferroni), so the chance that any arm crosses under the null stays at alpha."""
    out = {}
    control = runs[config.control_arm]
    alpha = config.alpha / len(config.treatments)
    for arm in config.treatments:
        estimate, se, correlation = look_statistics(
            config.primary_metric, runs[arm].counters, control.counters, config.design == "paired")
        method = "group-sequential, Lan-DeMets O'Brien-Fleming spending over days"
        out[arm] = monitored(config, alpha, method, estimate, se, correlation, rng)
    return out
