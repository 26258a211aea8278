"""The one mean-with-interval of metarec (evaluations, meta-eval curves and paired leads)."""

import numpy as np
import pytest
from scipy import stats

from metarec.stats import mean_and_half_width, mean_interval


def test_mean_interval_is_a_t_interval_per_column() -> None:
    values = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    mean, ci = mean_interval(values)
    assert mean == [2.0, 0.0]
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert ci[0] == pytest.approx([2.0 - half, 2.0 + half]) and ci[1] == [0.0, 0.0]


def test_the_interval_matches_scipy_and_leaves_out_nan() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(12, 3))
    values[[2, 7], 1] = np.nan  # a seed with no value in one column
    mean, half = mean_and_half_width(values, confidence=0.9)
    for column in range(3):
        kept = values[:, column][np.isfinite(values[:, column])]
        low, high = stats.t.interval(0.9, len(kept) - 1, loc=kept.mean(), scale=stats.sem(kept))
        assert mean[column] == pytest.approx(kept.mean())
        assert (mean[column] - half[column], mean[column] + half[column]) == pytest.approx((low, high))


def test_fewer_than_two_values_have_an_unbounded_interval() -> None:
    mean, half = mean_and_half_width(np.array([5.0]))
    assert float(mean) == 5.0 and np.isinf(half)
    means, intervals = mean_interval(np.array([[1.0, np.nan], [2.0, np.nan], [np.nan, 4.0]]))
    assert means[0] == 1.5 and means[1] == 4.0
    assert np.isinf(intervals[1]).all() and np.isfinite(intervals[0]).all()
