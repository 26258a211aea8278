"""Checks and multiple testing: the sample-ratio-mismatch test and p-values adjusted for testing several metrics or
arms at once (Holm-Bonferroni, Benjamini-Hochberg)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from metarec.abtest.stats.validation import check_probability

__all__ = ["adjust_p_values", "srm_check"]


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
    threshold = check_probability(threshold, "threshold")
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
