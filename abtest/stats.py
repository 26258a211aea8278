"""The statistics of a simulated A/B test: effects with intervals, variance reduction, checks, power, sequential tests.

Every metric is a per-user NumPy array (one value per user of an arm). Effects are reported as an
:class:`Effect`: the absolute difference treatment - control and the relative lift
treatment / control - 1, each with a two-sided ``1 - alpha`` interval, and a two-sided p-value.

What a library already does is delegated to it: Welch and paired t-tests (``scipy.stats.ttest_ind``,
``ttest_rel``), the chi-square goodness of fit for sample-ratio mismatch (``scipy.stats.chisquare``) and
Benjamini-Hochberg (``scipy.stats.false_discovery_control``). Written here are only what SciPy lacks:
delta-method intervals for lifts and ratio metrics, CUPED, Holm-Bonferroni, the normal-approximation
power formulas and the mixture sequential probability ratio test (mSPRT) of Johari et al. (2017),
"Peeking at A/B tests: why it matters, and what to do about it".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "Effect",
    "adjust_p_values",
    "cuped",
    "cuped_theta",
    "group_sequential_bounds",
    "minimum_detectable_effect",
    "msprt",
    "msprt_sequence",
    "obrien_fleming_spending",
    "power",
    "ratio_effect",
    "required_sample_size",
    "srm_check",
    "welch_effect",
]


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


# ---------------------------------------------------------------------------------------------------------------------
# validation


def _array(values: object, name: str, min_size: int = 2) -> np.ndarray:
    """``values`` as a finite 1-D float array of at least ``min_size`` entries, or a ValueError naming ``name``."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.size < min_size:
        raise ValueError(f"{name}: expected at least {min_size} values, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: expected finite values, got nan or inf")
    return array


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: expected the length of {name_a} ({a.size}), got {b.size}")


def _probability(value: float, name: str) -> float:
    """``value`` if it lies strictly inside (0, 1), else a ValueError naming ``name``."""
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}: expected a number in (0, 1), got {value}")
    return value


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name}: expected a positive finite number, got {value}")
    return value


def _correlation(rho: float | None) -> float:
    """The factor ``1 - rho`` of the paired variance (1 when unpaired)."""
    if rho is None:
        return 1.0
    rho = float(rho)
    if not -1.0 <= rho < 1.0:
        raise ValueError(f"paired_correlation: expected a number in [-1, 1) or None, got {rho}")
    return 1.0 - rho


def _z(alpha: float) -> float:
    """The two-sided normal critical value z_{1 - alpha/2}."""
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


# ---------------------------------------------------------------------------------------------------------------------
# effects


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
    half = _z(alpha) * math.sqrt(max(var, 0.0))
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
    alpha = _probability(alpha, "alpha")
    t = _array(treatment, "treatment")
    c = _array(control, "control")
    if paired:
        _same_length(t, c, "treatment", "control")
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
    alpha = _probability(alpha, "alpha")
    nt, dt = _array(num_t, "num_t"), _array(den_t, "den_t")
    nc, dc = _array(num_c, "num_c"), _array(den_c, "den_c")
    _same_length(nt, dt, "num_t", "den_t")
    _same_length(nc, dc, "num_c", "den_c")
    ratio_t, lin_t = _linearised(nt, dt, "den_t")
    ratio_c, lin_c = _linearised(nc, dc, "den_c")
    var_t = float(np.var(lin_t, ddof=1)) / lin_t.size
    var_c = float(np.var(lin_c, ddof=1)) / lin_c.size
    if paired:
        _same_length(lin_t, lin_c, "num_t", "num_c")
        cov = float(np.cov(lin_t, lin_c, ddof=1)[0, 1]) / lin_t.size
    else:
        cov = 0.0
    diff = ratio_t - ratio_c
    se = math.sqrt(max(var_t + var_c - 2.0 * cov, 0.0))
    half = _z(alpha) * se
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


# ---------------------------------------------------------------------------------------------------------------------
# variance reduction


def cuped_theta(metric: Sequence[float] | np.ndarray, pre_period: Sequence[float] | np.ndarray) -> float:
    """The CUPED coefficient theta = Cov(metric, pre) / Var(pre) (0 when the pre-period value is constant)."""
    y = _array(metric, "metric")
    x = _array(pre_period, "pre_period")
    _same_length(y, x, "metric", "pre_period")
    var_x = float(np.var(x, ddof=1))
    if var_x == 0.0:
        return 0.0
    return float(np.cov(y, x, ddof=1)[0, 1]) / var_x


def cuped(
    metric: Sequence[float] | np.ndarray,
    pre_period: Sequence[float] | np.ndarray,
    theta: float | None = None,
    pre_mean: float | None = None,
) -> np.ndarray:
    """CUPED (Deng et al. 2013): the metric less its part explained by a pre-experiment covariate.

    Returns ``metric - theta * (pre_period - pre_mean)``, which has the same mean as ``metric`` (when
    ``pre_mean`` is the covariate's mean) and less variance when the two are correlated.

    theta and the covariate mean must be the same for both arms, or the adjustment biases the effect.
    Either pass both arms together (concatenated) and split the result, or compute them once on the pooled
    users (:func:`cuped_theta`, ``np.mean``) and pass them to the call for each arm.

    Args:
        metric: Per-user metric during the experiment.
        pre_period: The same users' metric (or another covariate unaffected by treatment) before it.
        theta: Coefficient; by default :func:`cuped_theta` of these arrays.
        pre_mean: Centre of the covariate; by default the mean of ``pre_period``.

    Returns:
        The adjusted per-user metric, a float array like ``metric``.
    """
    y = _array(metric, "metric")
    x = _array(pre_period, "pre_period")
    _same_length(y, x, "metric", "pre_period")
    if theta is None:
        theta = cuped_theta(y, x)
    elif not math.isfinite(theta):
        raise ValueError(f"theta: expected a finite number or None, got {theta}")
    centre = float(np.mean(x)) if pre_mean is None else float(pre_mean)
    if not math.isfinite(centre):
        raise ValueError(f"pre_mean: expected a finite number or None, got {pre_mean}")
    return y - float(theta) * (x - centre)


# ---------------------------------------------------------------------------------------------------------------------
# checks and multiple testing


def srm_check(
    counts: Sequence[int] | np.ndarray,
    expected_shares: Sequence[float] | np.ndarray,
    threshold: float = 0.001,
) -> tuple[float, bool]:
    """Sample-ratio mismatch: a chi-square test of the users per arm against the intended split.

    Args:
        counts: Users assigned to each arm.
        expected_shares: Intended share of each arm (normalised to sum to 1).
        threshold: p-value below which the split is flagged; 0.001 is usual, since SRM is checked often.

    Returns:
        ``(p_value, flagged)``.
    """
    observed = np.asarray(counts, dtype=float)
    shares = np.asarray(expected_shares, dtype=float)
    if observed.ndim != 1 or observed.size < 2:
        raise ValueError(f"counts: expected a 1-D array of at least 2 arms, got shape {observed.shape}")
    if not np.all(np.isfinite(observed)) or np.any(observed < 0) or observed.sum() <= 0:
        raise ValueError(f"counts: expected non-negative counts with a positive total, got {observed.tolist()}")
    if shares.shape != observed.shape:
        raise ValueError(f"expected_shares: expected one share per arm ({observed.size}), got shape {shares.shape}")
    if not np.all(np.isfinite(shares)) or np.any(shares <= 0):
        raise ValueError(f"expected_shares: expected positive shares, got {shares.tolist()}")
    threshold = _probability(threshold, "threshold")
    expected = shares / shares.sum() * observed.sum()
    p_value = float(stats.chisquare(observed, expected).pvalue)
    return p_value, p_value < threshold


def adjust_p_values(p: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    """p-values adjusted for testing several metrics or arms at once.

    Args:
        p: Raw p-values.
        method: ``"holm"`` (Holm-Bonferroni, controls the family-wise error rate) or ``"bh"``
            (Benjamini-Hochberg, controls the false discovery rate; ``scipy.stats.false_discovery_control``).

    Returns:
        Adjusted p-values in the order of ``p``; reject where adjusted p <= alpha.
    """
    values = np.asarray(p, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"p: expected a non-empty 1-D array, got shape {values.shape}")
    if not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"p: expected p-values in [0, 1], got {values.tolist()}")
    if method == "bh":
        return np.asarray(stats.false_discovery_control(values, method="bh"), dtype=float)
    if method != "holm":
        raise ValueError(f"method: expected 'holm' or 'bh', got {method!r}")
    m = values.size
    order = np.argsort(values, kind="stable")
    # the k-th smallest (k from 0) is multiplied by m - k; adjusted values never decrease along the order
    scaled = np.minimum(1.0, (m - np.arange(m)) * values[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


# ---------------------------------------------------------------------------------------------------------------------
# power (two-sided two-sample z approximation, n users per arm)


def _diff_sd(sd: float, paired_correlation: float | None) -> float:
    """Standard deviation of one user's contribution to the difference: sqrt(2 sd^2 (1 - rho))."""
    return math.sqrt(2.0 * _correlation(paired_correlation)) * _positive(sd, "sd")


def required_sample_size(
    effect: float,
    sd: float,
    alpha: float = 0.05,
    power: float = 0.8,
    paired_correlation: float | None = None,
) -> int:
    """Users per arm to detect a difference of means ``effect`` with probability ``power``.

    n = (z_{1-alpha/2} + z_{power})^2 * 2 sd^2 (1 - rho) / effect^2, rounded up; rho is the correlation of
    a user's metric under the two arms when the same users see both (``paired_correlation``), else 0.

    Args:
        effect: The difference to detect (its sign does not matter).
        sd: Standard deviation of the per-user metric in each arm.
        alpha: Two-sided level of the test.
        power: Wanted probability of rejecting when the difference is ``effect``.
        paired_correlation: rho for a paired design, or None for independent arms.
    """
    alpha = _probability(alpha, "alpha")
    power = _probability(power, "power")
    effect = abs(float(effect))
    if not (effect > 0 and math.isfinite(effect)):
        raise ValueError(f"effect: expected a non-zero finite number, got {effect}")
    scale = _diff_sd(sd, paired_correlation) * (_z(alpha) + float(stats.norm.ppf(power))) / effect
    # the small tolerance keeps an exact answer (e.g. from minimum_detectable_effect) from rounding up
    return max(1, math.ceil(scale**2 * (1.0 - 1e-12)))


def minimum_detectable_effect(
    n: int,
    sd: float,
    alpha: float = 0.05,
    power: float = 0.8,
    paired_correlation: float | None = None,
) -> float:
    """The smallest difference of means detected with probability ``power`` with ``n`` users per arm.

    MDE = (z_{1-alpha/2} + z_{power}) * sqrt(2 sd^2 (1 - rho) / n); the inverse of :func:`required_sample_size`.
    """
    alpha = _probability(alpha, "alpha")
    power = _probability(power, "power")
    if int(n) != n or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    return (_z(alpha) + float(stats.norm.ppf(power))) * _diff_sd(sd, paired_correlation) / math.sqrt(n)


def power(
    effect: float,
    sd: float,
    n: int,
    alpha: float = 0.05,
    paired_correlation: float | None = None,
) -> float:
    """Probability that a two-sided z-test at level ``alpha`` rejects when the difference of means is ``effect``.

    Both tails are counted: Phi(|effect|/se - z) + Phi(-|effect|/se - z), se = sqrt(2 sd^2 (1 - rho) / n).
    """
    alpha = _probability(alpha, "alpha")
    if int(n) != n or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    effect = float(effect)
    if not math.isfinite(effect):
        raise ValueError(f"effect: expected a finite number, got {effect}")
    shift = abs(effect) / (_diff_sd(sd, paired_correlation) / math.sqrt(n))
    z = _z(alpha)
    return float(stats.norm.cdf(shift - z) + stats.norm.cdf(-shift - z))


# ---------------------------------------------------------------------------------------------------------------------
# sequential testing: the mixture SPRT


def _msprt_step(
    diffs_sum: np.ndarray, n: np.ndarray, sigma2: float, tau2: float, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1/Lambda_n (capped at 1) and the interval {theta: Lambda_n(theta) < 1/alpha}, elementwise."""
    mean = diffs_sum / n
    spread = sigma2 + n * tau2
    # log Lambda_n = 0.5 log(sigma2 / spread) + n^2 tau2 mean^2 / (2 sigma2 spread)
    log_lr = 0.5 * np.log(sigma2 / spread) + n**2 * tau2 * mean**2 / (2.0 * sigma2 * spread)
    p_value = np.exp(-np.maximum(log_lr, 0.0))
    half = np.sqrt(2.0 * sigma2 * spread / (n**2 * tau2) * (math.log(1.0 / alpha) + 0.5 * np.log(spread / sigma2)))
    return p_value, mean - half, mean + half


def _msprt_args(sigma2: float, tau2: float, alpha: float) -> tuple[float, float, float]:
    return _positive(sigma2, "sigma2"), _positive(tau2, "tau2"), _probability(alpha, "alpha")


def msprt(
    diffs_sum: float,
    n: int,
    sigma2: float,
    tau2: float,
    alpha: float = 0.05,
    previous: tuple[float, tuple[float, float]] | None = None,
) -> tuple[float, tuple[float, float]]:
    """Always-valid p-value and confidence interval of a normal mean after ``n`` observations (mSPRT).

    Observations y_i ~ N(theta, sigma2), e.g. the difference of a treatment and a control user's metric
    (then sigma2 = Var(treatment) + Var(control)). With the mixing prior theta ~ N(0, tau2), the likelihood
    ratio of "theta != 0" against "theta = 0" after n observations with mean y is

        Lambda_n = sqrt(sigma2 / (sigma2 + n tau2)) * exp(n^2 tau2 y^2 / (2 sigma2 (sigma2 + n tau2))),

    and p_n = min over k <= n of min(1, 1/Lambda_k) stays valid however often it is looked at (Johari et al.
    2017). The interval is {theta: Lambda_n(theta) < 1/alpha}, y +- sqrt(2 sigma2 (sigma2 + n tau2) /
    (n^2 tau2) * (log(1/alpha) + log((sigma2 + n tau2) / sigma2) / 2)), intersected with earlier ones.

    Args:
        diffs_sum: Sum of the n observations so far.
        n: Observations so far.
        sigma2: Variance of one observation (known, or a fixed estimate).
        tau2: Variance of the mixing prior; about the squared size of effects one expects.
        alpha: Level; reject "theta = 0" once the p-value is <= alpha.
        previous: ``(p_value, ci)`` returned at the previous look, which this look's result can only
            tighten; None at the first look. :func:`msprt_sequence` does this for a whole sequence.

    Returns:
        ``(always_valid_p, (low, high))``.
    """
    sigma2, tau2, alpha = _msprt_args(sigma2, tau2, alpha)
    if int(n) != n or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    if not math.isfinite(diffs_sum):
        raise ValueError(f"diffs_sum: expected a finite number, got {diffs_sum}")
    p_value, low, high = (float(v) for v in _msprt_step(np.float64(diffs_sum), np.float64(n), sigma2, tau2, alpha))
    if previous is not None:
        previous_p, (previous_low, previous_high) = previous
        p_value, low, high = min(p_value, previous_p), max(low, previous_low), min(high, previous_high)
    return p_value, (low, high)


def msprt_sequence(
    diffs_sums: Sequence[float] | np.ndarray,
    ns: Sequence[int] | np.ndarray,
    sigma2: float,
    tau2: float,
    alpha: float = 0.05,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Running always-valid p-values and intervals of :func:`msprt` at every look.

    Args:
        diffs_sums: Cumulative sums of the observations at each look, along the last axis; leading axes
            are independent experiments.
        ns: Cumulative observation counts at each look (increasing), broadcastable to ``diffs_sums``.
        sigma2: Variance of one observation.
        tau2: Variance of the mixing prior.
        alpha: Level.

    Returns:
        ``(p_values, lows, highs)``, each shaped like ``diffs_sums``: the running minimum of 1/Lambda and the
        running intersection of the intervals.
    """
    sigma2, tau2, alpha = _msprt_args(sigma2, tau2, alpha)
    sums = np.asarray(diffs_sums, dtype=float)
    counts = np.asarray(ns, dtype=float)
    if sums.ndim == 0 or sums.shape[-1] == 0:
        raise ValueError(f"diffs_sums: expected at least one look, got shape {sums.shape}")
    if not np.all(np.isfinite(sums)):
        raise ValueError("diffs_sums: expected finite values, got nan or inf")
    if counts.ndim != 1 or counts.shape[-1] != sums.shape[-1]:
        raise ValueError(f"ns: expected one count per look ({sums.shape[-1]}), got shape {counts.shape}")
    if np.any(counts < 1) or np.any(counts != np.round(counts)) or np.any(np.diff(counts) <= 0):
        raise ValueError("ns: expected increasing positive integer counts")
    p_value, low, high = _msprt_step(sums, counts, sigma2, tau2, alpha)
    return (
        np.minimum.accumulate(p_value, axis=-1),
        np.maximum.accumulate(low, axis=-1),
        np.minimum.accumulate(high, axis=-1),
    )


# ---------------------------------------------------------------------------------------------------------------------
# sequential testing: group-sequential boundaries for a planned set of looks


def obrien_fleming_spending(fraction: np.ndarray | float, alpha: float = 0.05) -> np.ndarray:
    """Lan-DeMets O'Brien-Fleming-type alpha spending: 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)) of the type-I error
    spent by fraction ``t`` of the test (0 at t = 0, ``alpha`` at t = 1); little is spent early."""
    t = np.asarray(fraction, dtype=float)
    if np.any(t < 0) or np.any(t > 1):
        raise ValueError(f"fraction: expected values in [0, 1], got {t.tolist()}")
    with np.errstate(divide="ignore"):
        return np.where(t > 0, 2.0 * stats.norm.sf(_z(alpha) / np.sqrt(np.maximum(t, 1e-300))), 0.0)


def group_sequential_bounds(
    correlation: np.ndarray,
    alpha: float = 0.05,
    fractions: Sequence[float] | np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    draws: int = 200_000,
) -> np.ndarray:
    """Two-sided critical values of |z| at each of D planned looks, spending ``alpha`` over the looks.

    At look d the test rejects "no difference" when |Z_d| >= b_d. The bounds are chosen one look at a time so
    that, under the null hypothesis with (Z_1, ..., Z_D) ~ N(0, correlation), the chance of first crossing at
    look d equals alpha(t_d) - alpha(t_{d-1}) of the O'Brien-Fleming-type spending function
    (:func:`obrien_fleming_spending`); the chance of ever crossing is then ``alpha`` (Lan and DeMets 1983).
    Bound d depends only on the correlations among looks 1..d, which are known at look d, so peeking at every
    look keeps the false-positive rate at ``alpha``. The correlation of the looks comes from the data (for a
    cumulative metric it is not the independent-increments sqrt(n_i/n_j)), and the crossing probabilities are
    estimated from ``draws`` multivariate normal draws (Monte Carlo error of the total level about
    sqrt(alpha / draws)). ``mean_d +- b_d * se_d`` are repeated confidence intervals, valid simultaneously.

    Args:
        correlation: ``[D, D]`` correlation matrix of the looks' z statistics (positive semi-definite).
        alpha: Two-sided level over all looks.
        fractions: Spending scale t_d in (0, 1], increasing, last 1; default d / D (calendar time).
        rng: Generator of the Monte Carlo draws; default ``np.random.default_rng(0)`` (reproducible).
        draws: Monte Carlo draws.

    Returns:
        ``[D]`` bounds (``inf`` at a look that spends nothing).
    """
    alpha = _probability(alpha, "alpha")
    corr = np.asarray(correlation, dtype=float)
    if corr.ndim != 2 or corr.shape[0] != corr.shape[1] or corr.shape[0] == 0:
        raise ValueError(f"correlation: expected a square [D, D] matrix, got shape {corr.shape}")
    if not np.all(np.isfinite(corr)):
        raise ValueError("correlation: expected finite values, got nan or inf")
    looks = corr.shape[0]
    t = np.arange(1, looks + 1) / looks if fractions is None else np.asarray(fractions, dtype=float)
    if t.shape != (looks,) or np.any(np.diff(t) <= 0) or t[0] <= 0 or not math.isclose(t[-1], 1.0):
        raise ValueError(f"fractions: expected {looks} increasing values in (0, 1] ending at 1, got {t.tolist()}")
    if int(draws) != draws or draws < 1000:
        raise ValueError(f"draws: expected an integer >= 1000, got {draws}")
    rng = np.random.default_rng(0) if rng is None else rng
    # a symmetric square root that tolerates rank deficiency (e.g. two identical looks)
    values, vectors = np.linalg.eigh((corr + corr.T) / 2.0)
    if values.min() < -1e-6 * max(values.max(), 1.0):
        raise ValueError("correlation: expected a positive semi-definite matrix")
    root = vectors * np.sqrt(np.clip(values, 0.0, None))
    z = np.abs(rng.standard_normal((int(draws), looks)) @ root.T)
    spend = np.diff(obrien_fleming_spending(t, alpha), prepend=0.0)
    bounds = np.full(looks, np.inf)
    alive = np.ones(int(draws), dtype=bool)
    # the first look needs no simulation: P(|Z_1| >= b) = spend_1
    bounds[0] = float(stats.norm.isf(spend[0] / 2.0)) if spend[0] > 0 else np.inf
    alive &= z[:, 0] < bounds[0]
    for d in range(1, looks):
        crossings = round(float(spend[d]) * draws)
        candidates = np.sort(z[alive, d])[::-1]
        if 0 < crossings <= candidates.size:
            bounds[d] = candidates[crossings - 1]
            alive &= z[:, d] < bounds[d]
    return bounds
