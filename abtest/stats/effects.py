"""Treatment effects with intervals and p-values: differences of means (Welch or paired t) and of ratio metrics
(delta method), each with the relative lift and its delta-method interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from metarec.abtest.stats.validation import check_probability, check_same_length, finite_array, z_critical

__all__ = ["Effect", "ratio_effect", "welch_effect"]


@dataclass(frozen=True)
class Effect:
    """A treatment effect on one metric.

    Attributes:
        metric: Name of the metric.
        absolute: Treatment minus control (difference of means, or of ratios).
        absolute_ci: Two-sided ``1 - alpha`` interval of ``absolute``.
        relative: Relative lift, treatment / control - 1 (nan when the control value is 0).
        relative_ci: Delta-method ``1 - alpha`` interval of ``relative``.
        p_value: Two-sided p-value of "no difference".
        n_treatment: Users in the treatment arm.
        n_control: Users in the control arm.
    """

    metric: str
    absolute: float
    absolute_ci: tuple[float, float]
    relative: float
    relative_ci: tuple[float, float]
    p_value: float
    n_treatment: int
    n_control: int


def _relative(
    mean_t: float, mean_c: float, var_t: float, var_c: float, cov: float, alpha: float
) -> tuple[float, tuple[float, float]]:
    """Lift mean_t / mean_c - 1 and its delta-method z interval.

    ``var_t`` and ``var_c`` are the variances of the two estimates and ``cov`` their covariance (0 for
    independent arms): Var(t/c) ~ var_t/c^2 + t^2 var_c/c^4 - 2 t cov/c^3.
    """
    if mean_c == 0.0:
        return math.nan, (math.nan, math.nan)
    ratio = mean_t / mean_c
    var = var_t / mean_c**2 + ratio**2 * var_c / mean_c**2 - 2.0 * ratio * cov / mean_c**2
    half = z_critical(alpha) * math.sqrt(max(var, 0.0))
    return ratio - 1.0, (ratio - 1.0 - half, ratio - 1.0 + half)


def welch_effect(
    treatment: Sequence[float] | np.ndarray,
    control: Sequence[float] | np.ndarray,
    alpha: float = 0.05,
    paired: bool = False,
    metric: str = "mean",
) -> Effect:
    """Difference of means with a Welch t interval, or a paired t interval.

    Args:
        treatment: Per-user metric of the treatment arm.
        control: Per-user metric of the control arm.
        alpha: Two-sided level; intervals cover with probability ``1 - alpha``.
        paired: The same users under both arms, in the same order (``scipy.stats.ttest_rel``);
            otherwise two independent samples with unequal variances (``scipy.stats.ttest_ind``).
        metric: Name recorded in the result.

    Returns:
        The absolute difference with its t interval and p-value, and the relative lift with a
        delta-method z interval (using the covariance of the arms when paired).
    """
    alpha = check_probability(alpha, "alpha")
    t = finite_array(treatment, "treatment")
    c = finite_array(control, "control")
    if paired:
        check_same_length(t, c, "treatment", "control")
        result = stats.ttest_rel(t, c)
        cov = float(np.cov(t, c, ddof=1)[0, 1]) / t.size
    else:
        result = stats.ttest_ind(t, c, equal_var=False)
        cov = 0.0
    interval = result.confidence_interval(1.0 - alpha)
    mean_t, mean_c = float(np.mean(t)), float(np.mean(c))
    var_t, var_c = float(np.var(t, ddof=1)) / t.size, float(np.var(c, ddof=1)) / c.size
    relative, relative_ci = _relative(mean_t, mean_c, var_t, var_c, cov, alpha)
    # a constant metric gives a nan statistic: no evidence of a difference unless the means differ
    p_value = float(result.pvalue)
    if math.isnan(p_value):
        p_value = 1.0 if mean_t == mean_c else 0.0
    return Effect(
        metric=metric,
        absolute=mean_t - mean_c,
        absolute_ci=(float(interval.low), float(interval.high)),
        relative=relative,
        relative_ci=relative_ci,
        p_value=p_value,
        n_treatment=int(t.size),
        n_control=int(c.size),
    )


def _linearised(num: np.ndarray, den: np.ndarray, name: str) -> tuple[float, np.ndarray]:
    """The ratio sum(num)/sum(den) and the per-user values whose mean's variance is the ratio's (delta method)."""
    mean_den = float(np.mean(den))
    if mean_den == 0.0:
        raise ValueError(f"{name}: expected a non-zero total, got 0")
    ratio = float(np.sum(num)) / float(np.sum(den))
    return ratio, (num - ratio * den) / mean_den


def ratio_effect(
    num_t: Sequence[float] | np.ndarray,
    den_t: Sequence[float] | np.ndarray,
    num_c: Sequence[float] | np.ndarray,
    den_c: Sequence[float] | np.ndarray,
    alpha: float = 0.05,
    paired: bool = False,
    metric: str = "ratio",
) -> Effect:
    """Difference of ratio metrics such as CTR = sum(clicks) / sum(impressions), by the delta method.

    Users are the unit of randomisation, so the ratio's variance comes from per-user numerators and
    denominators: with R = sum(num)/sum(den), the linearised values l_i = (num_i - R den_i) / mean(den)
    have Var(R) ~ Var(l)/n. The difference gets a normal (z) interval and p-value.

    Args:
        num_t: Per-user numerators of the treatment arm (e.g. clicks).
        den_t: Per-user denominators of the treatment arm (e.g. impressions), same length as ``num_t``.
        num_c: Per-user numerators of the control arm.
        den_c: Per-user denominators of the control arm, same length as ``num_c``.
        alpha: Two-sided level; intervals cover with probability ``1 - alpha``.
        paired: The same users under both arms, in the same order: the covariance of the arms'
            linearised values enters the variance of the difference.
        metric: Name recorded in the result.

    Returns:
        The difference of ratios and the relative lift R_t / R_c - 1, each with a delta-method interval.
    """
    alpha = check_probability(alpha, "alpha")
    nt, dt = finite_array(num_t, "num_t"), finite_array(den_t, "den_t")
    nc, dc = finite_array(num_c, "num_c"), finite_array(den_c, "den_c")
    check_same_length(nt, dt, "num_t", "den_t")
    check_same_length(nc, dc, "num_c", "den_c")
    ratio_t, lin_t = _linearised(nt, dt, "den_t")
    ratio_c, lin_c = _linearised(nc, dc, "den_c")
    var_t = float(np.var(lin_t, ddof=1)) / lin_t.size
    var_c = float(np.var(lin_c, ddof=1)) / lin_c.size
    if paired:
        check_same_length(lin_t, lin_c, "num_t", "num_c")
        cov = float(np.cov(lin_t, lin_c, ddof=1)[0, 1]) / lin_t.size
    else:
        cov = 0.0
    diff = ratio_t - ratio_c
    se = math.sqrt(max(var_t + var_c - 2.0 * cov, 0.0))
    half = z_critical(alpha) * se
    # with no variance at all, the ratios differ for certain or not at all
    p_value = 1.0 if diff == 0.0 else 0.0
    if se > 0.0:
        p_value = float(2.0 * stats.norm.sf(abs(diff) / se))
    relative, relative_ci = _relative(ratio_t, ratio_c, var_t, var_c, cov, alpha)
    return Effect(
        metric=metric,
        absolute=diff,
        absolute_ci=(diff - half, diff + half),
        relative=relative,
        relative_ci=relative_ci,
        p_value=p_value,
        n_treatment=int(nt.size),
        n_control=int(nc.size),
    )
