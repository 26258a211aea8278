"""Sequential monitoring: the mixture sequential probability ratio test (mSPRT) of Johari et al. (2017), with
always-valid p-values and intervals, and group-sequential boundaries for a planned set of looks (Lan-DeMets
O'Brien-Fleming-type alpha spending)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from metarec.abtest.stats.validation import check_positive, check_probability, z_critical

__all__ = ["group_sequential_bounds", "msprt", "msprt_sequence", "obrien_fleming_spending"]


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
    return check_positive(sigma2, "sigma2"), check_positive(tau2, "tau2"), check_probability(alpha, "alpha")


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
        return np.where(t > 0, 2.0 * stats.norm.sf(z_critical(alpha) / np.sqrt(np.maximum(t, 1e-300))), 0.0)


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
    alpha = check_probability(alpha, "alpha")
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
