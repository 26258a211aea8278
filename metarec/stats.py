"""Small statistics written once: a mean with its Student-t interval.

The interval assumes the values are independent draws of one distribution (users of an evaluation, or
seeds of a meta-eval run); values that are NaN are left out, as when a seed has no normalised return.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def mean_and_half_width(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the first axis and the half-width of its ``confidence`` Student-t interval, per column.

    NaN values are left out of both; a column with fewer than two values has an infinite half-width.
    """
    values = np.asarray(values, dtype=float)
    n = np.sum(np.isfinite(values), axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty column: its mean is NaN
        mean = np.nanmean(values, axis=0)
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * np.nanstd(values, axis=0, ddof=1) / np.sqrt(n)
    return mean, np.where(n < 2, np.inf, half)


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[list[float], list[list[float]]]:
    """Mean over the first axis and its interval as ``[low, high]``, per column (plain floats)."""
    mean, half = mean_and_half_width(values, confidence)
    mean, half = np.atleast_1d(mean), np.atleast_1d(half)
    return mean.tolist(), [[float(m - h), float(m + h)] for m, h in zip(mean, half, strict=True)]
