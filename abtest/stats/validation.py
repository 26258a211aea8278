"""Argument checks shared by the A/B-test statistics, each a ValueError naming the argument, and the normal
critical value."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = [
    "check_positive",
    "check_probability",
    "check_same_length",
    "finite_array",
    "paired_variance_factor",
    "z_critical",
]


def finite_array(values: object, name: str, min_size: int = 2) -> np.ndarray:
    """``values`` as a finite 1-D float array of at least ``min_size`` entries, or a ValueError naming ``name``."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.size < min_size:
        raise ValueError(f"{name}: expected at least {min_size} values, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: expected finite values, got nan or inf")
    return array


def check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: expected the length of {name_a} ({a.size}), got {b.size}")


def check_probability(value: float, name: str) -> float:
    """``value`` if it lies strictly inside (0, 1), else a ValueError naming ``name``."""
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}: expected a number in (0, 1), got {value}")
    return value


def check_positive(value: float, name: str) -> float:
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name}: expected a positive finite number, got {value}")
    return value


def paired_variance_factor(rho: float | None) -> float:
    """The factor ``1 - rho`` of the paired variance (1 when unpaired)."""
    if rho is None:
        return 1.0
    rho = float(rho)
    if not -1.0 <= rho < 1.0:
        raise ValueError(f"paired_correlation: expected a number in [-1, 1) or None, got {rho}")
    return 1.0 - rho


def z_critical(alpha: float) -> float:
    """The two-sided normal critical value z_{1 - alpha/2}."""
    return float(stats.norm.ppf(1.0 - alpha / 2.0))
