"""Power analysis: the two-sided two-sample z approximation with n users per arm (sample size, minimum detectable
effect, power), for independent arms or the same users under both (paired)."""

from __future__ import annotations

import math

from scipy import stats

from metarec.abtest.stats.validation import check_positive, check_probability, paired_variance_factor, z_critical

__all__ = ["minimum_detectable_effect", "power", "required_sample_size"]


def _diff_sd(sd: float, paired_correlation: float | None) -> float:
    """Standard deviation of one user's contribution to the difference: sqrt(2 sd^2 (1 - rho))."""
    return math.sqrt(2.0 * paired_variance_factor(paired_correlation)) * check_positive(sd, "sd")


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
    alpha = check_probability(alpha, "alpha")
    power = check_probability(power, "power")
    effect = abs(float(effect))
    if not (effect > 0 and math.isfinite(effect)):
        raise ValueError(f"effect: expected a non-zero finite number, got {effect}")
    scale = _diff_sd(sd, paired_correlation) * (z_critical(alpha) + float(stats.norm.ppf(power))) / effect
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
    alpha = check_probability(alpha, "alpha")
    power = check_probability(power, "power")
    if int(n) != n or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    return (z_critical(alpha) + float(stats.norm.ppf(power))) * _diff_sd(sd, paired_correlation) / math.sqrt(n)


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
    alpha = check_probability(alpha, "alpha")
    if int(n) != n or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    effect = float(effect)
    if not math.isfinite(effect):
        raise ValueError(f"effect: expected a finite number, got {effect}")
    shift = abs(effect) / (_diff_sd(sd, paired_correlation) / math.sqrt(n))
    z = z_critical(alpha)
    return float(stats.norm.cdf(shift - z) + stats.norm.cdf(-shift - z))
