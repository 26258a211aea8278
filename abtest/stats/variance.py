"""Variance reduction: CUPED (Deng et al. 2013) with a pre-experiment covariate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from metarec.abtest.stats.validation import check_same_length, finite_array

__all__ = ["cuped", "cuped_theta"]


def cuped_theta(metric: Sequence[float] | np.ndarray, pre_period: Sequence[float] | np.ndarray) -> float:
    """The CUPED coefficient theta = Cov(metric, pre) / Var(pre) (0 when the pre-period value is constant)."""
    y = finite_array(metric, "metric")
    x = finite_array(pre_period, "pre_period")
    check_same_length(y, x, "metric", "pre_period")
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
    y = finite_array(metric, "metric")
    x = finite_array(pre_period, "pre_period")
    check_same_length(y, x, "metric", "pre_period")
    if theta is None:
        theta = cuped_theta(y, x)
    elif not math.isfinite(theta):
        raise ValueError(f"theta: expected a finite number or None, got {theta}")
    centre = float(np.mean(x)) if pre_mean is None else float(pre_mean)
    if not math.isfinite(centre):
        raise ValueError(f"pre_mean: expected a finite number or None, got {pre_mean}")
    return y - float(theta) * (x - centre)
