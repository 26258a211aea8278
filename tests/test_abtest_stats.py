"""A/B-test statistics: known answers against SciPy or by hand, interval coverage and error rates on
simulated experiments, and named errors for bad inputs."""

import math

import numpy as np
import pytest
from scipy import stats

from metarec.abtest.stats import (
    Effect,
    adjust_p_values,
    cuped,
    cuped_theta,
    minimum_detectable_effect,
    msprt,
    msprt_sequence,
    power,
    ratio_effect,
    required_sample_size,
    srm_check,
    welch_effect,
)

EXPERIMENTS = 2000
# 95% coverage over 2000 experiments has a Monte-Carlo sd of 0.005: [0.93, 0.97] is about 4 sd either side.
COVERAGE = (0.93, 0.97)


def covers(interval: tuple[float, float], value: float) -> bool:
    return interval[0] <= value <= interval[1]


# ---------------------------------------------------------------------------------------------------------------------
# welch_effect


def test_welch_matches_scipy_and_hand_lift() -> None:
    rng = np.random.default_rng(0)
    t, c = rng.normal(10.5, 2.0, 300), rng.normal(10.0, 3.0, 200)
    effect = welch_effect(t, c, alpha=0.1, metric="watch_time")
    reference = stats.ttest_ind(t, c, equal_var=False)
    low, high = reference.confidence_interval(0.9)
    assert isinstance(effect, Effect)
    assert effect.metric == "watch_time"
    assert (effect.n_treatment, effect.n_control) == (300, 200)
    assert effect.absolute == pytest.approx(t.mean() - c.mean())
    assert effect.absolute_ci == pytest.approx((low, high))
    assert effect.p_value == pytest.approx(reference.pvalue)
    assert effect.relative == pytest.approx(t.mean() / c.mean() - 1)
    var = t.var(ddof=1) / 300 / c.mean() ** 2 + t.mean() ** 2 * c.var(ddof=1) / 200 / c.mean() ** 4
    half = stats.norm.ppf(0.95) * math.sqrt(var)
    assert effect.relative_ci == pytest.approx((effect.relative - half, effect.relative + half))


def test_welch_paired_matches_ttest_rel() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(5.0, 2.0, 100)
    t, c = base + 0.3 + rng.normal(0, 0.5, 100), base + rng.normal(0, 0.5, 100)
    effect = welch_effect(t, c, paired=True)
    reference = stats.ttest_rel(t, c)
    assert effect.p_value == pytest.approx(reference.pvalue)
    assert effect.absolute_ci == pytest.approx(tuple(reference.confidence_interval(0.95)))
    # pairing removes the shared user effect, so the interval is far narrower than the unpaired one
    unpaired = welch_effect(t, c)
    assert np.diff(effect.absolute_ci)[0] < 0.5 * np.diff(unpaired.absolute_ci)[0]
    assert np.diff(effect.relative_ci)[0] < 0.5 * np.diff(unpaired.relative_ci)[0]


@pytest.mark.parametrize("paired", [False, True])
def test_welch_intervals_cover_at_95_percent(paired: bool) -> None:
    rng = np.random.default_rng(2)
    mean_t, mean_c = 10.4, 10.0
    hits_abs = hits_rel = 0
    for _ in range(EXPERIMENTS):
        if paired:
            shared = rng.normal(0.0, 2.0, 60)
            t = mean_t + shared + rng.normal(0.0, 1.0, 60)
            c = mean_c + shared + rng.normal(0.0, 1.0, 60)
        else:
            t, c = rng.normal(mean_t, 1.0, 40), rng.normal(mean_c, 3.0, 60)
        effect = welch_effect(t, c, paired=paired)
        hits_abs += covers(effect.absolute_ci, mean_t - mean_c)
        hits_rel += covers(effect.relative_ci, mean_t / mean_c - 1)
    assert COVERAGE[0] <= hits_abs / EXPERIMENTS <= COVERAGE[1]
    assert COVERAGE[0] <= hits_rel / EXPERIMENTS <= COVERAGE[1]


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_welch_constant_metric_and_zero_control() -> None:
    same = welch_effect(np.ones(5), np.ones(5))
    assert same.absolute == 0.0 and same.p_value == 1.0
    zero = welch_effect(np.array([1.0, 2.0]), np.array([-1.0, 1.0]))
    assert math.isnan(zero.relative) and all(math.isnan(v) for v in zero.relative_ci)


# ---------------------------------------------------------------------------------------------------------------------
# ratio_effect


def clicks(rng: np.random.Generator, users: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Heterogeneous users: 1 + Poisson(9) impressions each, a per-user click rate ~ Beta(a, b)."""
    impressions = 1 + rng.poisson(9, users)
    return rng.binomial(impressions, rng.beta(a, b, users)).astype(float), impressions.astype(float)


def test_ratio_with_unit_denominators_is_a_difference_of_means() -> None:
    rng = np.random.default_rng(3)
    t, c = rng.normal(1.0, 1.0, 400), rng.normal(0.8, 2.0, 300)
    effect = ratio_effect(t, np.ones(400), c, np.ones(300), alpha=0.05)
    se = math.sqrt(t.var(ddof=1) / 400 + c.var(ddof=1) / 300)
    diff = t.mean() - c.mean()
    assert effect.absolute == pytest.approx(diff)
    assert effect.absolute_ci == pytest.approx((diff - 1.959964 * se, diff + 1.959964 * se))
    assert effect.p_value == pytest.approx(2 * stats.norm.sf(abs(diff) / se))
    # paired: the standard error of the mean difference of the pairs
    paired = ratio_effect(t[:300], np.ones(300), c, np.ones(300), paired=True)
    se_paired = (t[:300] - c).std(ddof=1) / math.sqrt(300)
    assert np.diff(paired.absolute_ci)[0] == pytest.approx(2 * 1.959964 * se_paired)


def test_ratio_hand_computed_delta_variance() -> None:
    num, den = np.array([1.0, 0.0, 3.0, 2.0]), np.array([2.0, 1.0, 4.0, 3.0])
    ratio = 6.0 / 10.0
    lin = (num - ratio * den) / 2.5
    effect = ratio_effect(num, den, np.array([1.0, 1.0]), np.array([2.0, 2.0]))
    # the control arm has a constant ratio 0.5, so only the treatment arm contributes variance
    se = math.sqrt(lin.var(ddof=1) / 4)
    assert effect.absolute == pytest.approx(0.1)
    assert effect.absolute_ci == pytest.approx((0.1 - 1.959964 * se, 0.1 + 1.959964 * se))
    assert effect.relative == pytest.approx(0.2)


def test_ctr_delta_interval_covers_true_difference() -> None:
    rng = np.random.default_rng(4)
    true_diff = 2.4 / 20 - 2.0 / 20  # E[clicks]/E[impressions] is the mean click rate when they are independent
    hits_abs = hits_rel = 0
    for _ in range(EXPERIMENTS):
        effect = ratio_effect(*clicks(rng, 300, 2.4, 17.6), *clicks(rng, 300, 2.0, 18.0))
        hits_abs += covers(effect.absolute_ci, true_diff)
        hits_rel += covers(effect.relative_ci, 2.4 / 2.0 - 1)
    assert COVERAGE[0] <= hits_abs / EXPERIMENTS <= COVERAGE[1]
    assert COVERAGE[0] <= hits_rel / EXPERIMENTS <= COVERAGE[1]


def test_paired_ctr_interval_covers_and_is_narrower() -> None:
    rng = np.random.default_rng(5)
    users, hits, narrower = 300, 0, 0
    for _ in range(EXPERIMENTS // 2):
        impressions = (1 + rng.poisson(9, users)).astype(float)
        rate = rng.beta(2.0, 18.0, users)  # the same users' propensity under both arms
        num_t = rng.binomial(impressions.astype(int), np.minimum(rate * 1.2, 1)).astype(float)
        num_c = rng.binomial(impressions.astype(int), rate).astype(float)
        paired = ratio_effect(num_t, impressions, num_c, impressions, paired=True)
        hits += covers(paired.absolute_ci, 0.2 * 2.0 / 20)
        unpaired = ratio_effect(num_t, impressions, num_c, impressions)
        narrower += np.diff(paired.absolute_ci)[0] < np.diff(unpaired.absolute_ci)[0]
    assert 0.92 <= hits / (EXPERIMENTS // 2) <= 0.975
    assert narrower == EXPERIMENTS // 2


# ---------------------------------------------------------------------------------------------------------------------
# cuped


def test_cuped_reduces_variance_and_keeps_the_mean() -> None:
    rng = np.random.default_rng(6)
    pre = rng.normal(0.0, 1.0, 5000)
    metric = 5.0 + 0.8 * pre + rng.normal(0.0, 0.6, 5000)
    adjusted = cuped(metric, pre)
    assert cuped_theta(metric, pre) == pytest.approx(np.cov(metric, pre)[0, 1] / pre.var(ddof=1))
    assert adjusted.mean() == pytest.approx(metric.mean())
    assert adjusted.var() < 0.4 * metric.var()  # 1 - corr^2 = 0.36 / 1.0
    # an explicit theta and centre
    assert cuped(metric, pre, theta=0.5, pre_mean=1.0) == pytest.approx(metric - 0.5 * (pre - 1.0))


def test_cuped_pooled_theta_keeps_the_effect_and_narrows_it() -> None:
    rng = np.random.default_rng(7)
    pre = rng.normal(0.0, 1.0, 4000)
    metric = 5.0 + 0.8 * pre + rng.normal(0.0, 0.6, 4000)
    metric[:2000] += 0.1  # treatment: the first half
    adjusted = cuped(metric, pre)  # both arms together: one theta, one centre
    raw, cut = welch_effect(metric[:2000], metric[2000:]), welch_effect(adjusted[:2000], adjusted[2000:])
    assert covers(cut.absolute_ci, 0.1)
    assert np.diff(cut.absolute_ci)[0] < 0.7 * np.diff(raw.absolute_ci)[0]
    # per arm with the pooled theta and centre: the same numbers
    theta, centre = cuped_theta(metric, pre), pre.mean()
    per_arm = cuped(metric[:2000], pre[:2000], theta=theta, pre_mean=centre)
    assert per_arm == pytest.approx(adjusted[:2000])


# ---------------------------------------------------------------------------------------------------------------------
# srm_check and adjust_p_values


def test_srm_flags_52_48_and_not_a_fair_split() -> None:
    p_value, flagged = srm_check([10_400, 9_600], [0.5, 0.5])
    assert flagged and p_value == pytest.approx(stats.chi2.sf(32.0, 1))
    p_value, flagged = srm_check([10_050, 9_950], [1, 1])  # shares are normalised; chi2 = 2 * 50^2 / 10000
    assert not flagged and p_value == pytest.approx(stats.chi2.sf(0.5, 1))
    _, flagged = srm_check([5_000, 3_000, 2_000], [0.5, 0.3, 0.2])
    assert not flagged


def test_holm_and_bh_match_hand_computation() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.04, 0.06)
    assert adjust_p_values(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # sorted 0.005*4/1, 0.01*4/2, 0.03*4/3, 0.04*4/4, then the running minimum from the largest
    assert adjust_p_values(p, method="bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust_p_values([0.5, 0.9]) == pytest.approx([1.0, 1.0])


# ---------------------------------------------------------------------------------------------------------------------
# power


@pytest.mark.parametrize("rho", [None, 0.5])
def test_power_and_sample_size_are_inverse(rho: float | None) -> None:
    n = required_sample_size(0.2, 1.0, alpha=0.05, power=0.8, paired_correlation=rho)
    expected = (1.959964 + 0.841621) ** 2 * 2 * (1 - (rho or 0)) / 0.04
    assert n == math.ceil(expected)
    assert power(0.2, 1.0, n, paired_correlation=rho) == pytest.approx(0.8, abs=0.005)
    mde = minimum_detectable_effect(n, 1.0, paired_correlation=rho)
    assert required_sample_size(mde, 1.0, paired_correlation=rho) == n
    assert power(mde, 1.0, n, paired_correlation=rho) == pytest.approx(0.8, abs=1e-4)
    assert power(0.0, 1.0, n) == pytest.approx(0.05)


@pytest.mark.parametrize("rho", [None, 0.5])
def test_power_matches_simulation(rho: float | None) -> None:
    rng = np.random.default_rng(8)
    n = required_sample_size(0.2, 1.0, paired_correlation=rho)
    if rho is None:
        t, c = rng.normal(0.2, 1.0, (EXPERIMENTS, n)), rng.normal(0.0, 1.0, (EXPERIMENTS, n))
        se = np.sqrt(t.var(axis=1, ddof=1) / n + c.var(axis=1, ddof=1) / n)
        z = (t.mean(axis=1) - c.mean(axis=1)) / se
    else:
        # each arm is a shared user effect (variance rho) plus its own noise (1 - rho): sd 1, correlation rho
        shared = rng.normal(0.0, math.sqrt(rho), (EXPERIMENTS, n))
        noise = rng.normal(0.0, math.sqrt(1 - rho), (2, EXPERIMENTS, n))
        diffs = (0.2 + shared + noise[0]) - (shared + noise[1])
        z = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / math.sqrt(n))
    simulated = np.mean(np.abs(z) > stats.norm.ppf(0.975))
    assert simulated == pytest.approx(power(0.2, 1.0, n, paired_correlation=rho), abs=0.03)


# ---------------------------------------------------------------------------------------------------------------------
# msprt


def test_msprt_hand_computed() -> None:
    # sigma2 = tau2 = 1, n = 4, mean 1: Lambda = sqrt(1/5) exp(16 / 10)
    p_value, (low, high) = msprt(4.0, 4, 1.0, 1.0, alpha=0.05)
    assert p_value == pytest.approx(1 / (math.sqrt(0.2) * math.exp(1.6)))
    half = math.sqrt(2 * 5 / 16 * (math.log(20) + 0.5 * math.log(5)))
    assert (low, high) == pytest.approx((1 - half, 1 + half))

    # at the interval's ends Lambda_n(theta) is exactly 1/alpha
    def lam(theta: float) -> float:
        return math.sqrt(1 / 5) * math.exp(16 * (1 - theta) ** 2 / 10)

    assert lam(low) == pytest.approx(20.0) and lam(high) == pytest.approx(20.0)
    # the previous look can only tighten this one
    p2, ci2 = msprt(4.0, 4, 1.0, 1.0, previous=(0.1, (0.0, 1.5)))
    assert p2 == 0.1 and ci2 == pytest.approx((max(low, 0.0), 1.5))
    assert msprt(0.0, 4, 1.0, 1.0)[0] == 1.0


def test_msprt_sequence_is_the_running_msprt() -> None:
    rng = np.random.default_rng(9)
    sums = np.cumsum(rng.normal(0.3, 1.0, 50))
    ns = np.arange(1, 51)
    p_values, lows, highs = msprt_sequence(sums, ns, 1.0, 0.5)
    previous = None
    for k in range(50):
        previous = msprt(sums[k], k + 1, 1.0, 0.5, previous=previous)
        assert previous[0] == pytest.approx(p_values[k])
        assert previous[1] == pytest.approx((lows[k], highs[k]))
    assert np.all(np.diff(p_values) <= 0) and np.all(np.diff(highs - lows) <= 0)


def test_msprt_controls_false_positives_under_continuous_peeking() -> None:
    rng = np.random.default_rng(10)
    looks, alpha = 500, 0.05
    y = rng.normal(0.0, 1.0, (EXPERIMENTS, looks))  # no effect
    sums, ns = np.cumsum(y, axis=1), np.arange(1, looks + 1)
    p_values, lows, highs = msprt_sequence(sums, ns, sigma2=1.0, tau2=1.0, alpha=alpha)
    msprt_rate = np.mean(p_values[:, -1] <= alpha)
    # a fixed-horizon z-test looked at after every observation and stopped at the first "significant" one
    naive_rate = np.mean(np.any(np.abs(sums / np.sqrt(ns)) > stats.norm.ppf(1 - alpha / 2), axis=1))
    assert msprt_rate <= alpha + 0.015
    assert naive_rate > 3 * alpha
    # the always-valid interval contains the truth at every look at once
    assert np.mean(np.all((lows <= 0.0) & (highs >= 0.0), axis=1)) >= 1 - alpha - 0.015


def test_msprt_detects_a_real_effect() -> None:
    rng = np.random.default_rng(11)
    sums = np.cumsum(rng.normal(0.3, 1.0, (200, 500)), axis=1)
    p_values, _, _ = msprt_sequence(sums, np.arange(1, 501), 1.0, 0.1)
    assert np.mean(p_values[:, -1] <= 0.05) > 0.9


# ---------------------------------------------------------------------------------------------------------------------
# bad inputs

X = np.arange(5.0)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: welch_effect([], X), "treatment"),
        (lambda: welch_effect(X, [1.0]), "control"),
        (lambda: welch_effect(X, [1.0, np.nan]), "control"),
        (lambda: welch_effect(X, X, alpha=1.0), "alpha"),
        (lambda: welch_effect(X, X, alpha=0.0), "alpha"),
        (lambda: welch_effect(X, X[:4], paired=True), "control"),
        (lambda: welch_effect(np.ones((2, 2)), X), "treatment"),
        (lambda: ratio_effect(X, X[:4], X, X), "den_t"),
        (lambda: ratio_effect(X, X, X, np.zeros(5)), "den_c"),
        (lambda: ratio_effect(X, X, X[:4], X[:4], paired=True), "num_c"),
        (lambda: ratio_effect(X, X + 1, X, X + 1, alpha=-0.1), "alpha"),
        (lambda: cuped(X, X[:4]), "pre_period"),
        (lambda: cuped([], []), "metric"),
        (lambda: cuped(X, X, theta=math.inf), "theta"),
        (lambda: srm_check([10, -1], [0.5, 0.5]), "counts"),
        (lambda: srm_check([10, 10], [0.5, 0.3, 0.2]), "expected_shares"),
        (lambda: srm_check([10, 10], [0.5, 0.0]), "expected_shares"),
        (lambda: srm_check([10, 10], [0.5, 0.5], threshold=2), "threshold"),
        (lambda: adjust_p_values([]), "p"),
        (lambda: adjust_p_values([0.5, 1.5]), "p"),
        (lambda: adjust_p_values([0.5], method="bonferroni"), "method"),
        (lambda: required_sample_size(0.2, -1.0), "sd"),
        (lambda: required_sample_size(0.0, 1.0), "effect"),
        (lambda: required_sample_size(0.2, 1.0, power=1.0), "power"),
        (lambda: required_sample_size(0.2, 1.0, alpha=1.5), "alpha"),
        (lambda: required_sample_size(0.2, 1.0, paired_correlation=1.0), "paired_correlation"),
        (lambda: minimum_detectable_effect(0, 1.0), "n"),
        (lambda: minimum_detectable_effect(10, 0.0), "sd"),
        (lambda: power(0.1, -1.0, 10), "sd"),
        (lambda: power(0.1, 1.0, 2.5), "n"),
        (lambda: msprt(1.0, 0, 1.0, 1.0), "n"),
        (lambda: msprt(1.0, 3, -1.0, 1.0), "sigma2"),
        (lambda: msprt(1.0, 3, 1.0, 0.0), "tau2"),
        (lambda: msprt(1.0, 3, 1.0, 1.0, alpha=1.0), "alpha"),
        (lambda: msprt_sequence([], [], 1.0, 1.0), "diffs_sums"),
        (lambda: msprt_sequence([1.0, 2.0], [2, 1], 1.0, 1.0), "ns"),
        (lambda: msprt_sequence([1.0, 2.0], [1], 1.0, 1.0), "ns"),
    ],
)
def test_bad_inputs_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        call()


# ---------------------------------------------------------------------------------------------------------------------
# group-sequential bounds


def _independent_increments(looks: int) -> np.ndarray:
    n = np.arange(1, looks + 1)
    return np.sqrt(np.minimum.outer(n, n) / np.maximum.outer(n, n))


def test_group_sequential_single_look_is_the_fixed_test():
    from metarec.abtest.stats import group_sequential_bounds

    assert group_sequential_bounds(np.eye(1), alpha=0.05)[0] == pytest.approx(1.959964, abs=1e-6)


def test_group_sequential_first_bound_is_exact_and_bounds_fall():
    from metarec.abtest.stats import group_sequential_bounds, obrien_fleming_spending

    bounds = group_sequential_bounds(_independent_increments(5), alpha=0.05)
    spent = float(obrien_fleming_spending(0.2, 0.05))
    assert bounds[0] == pytest.approx(stats.norm.isf(spent / 2), rel=1e-12)
    assert np.all(np.diff(bounds) < 0) and 1.96 < bounds[-1] < 2.1


@pytest.mark.parametrize("correlation", ["increments", "cumulative-metric"])
def test_group_sequential_keeps_the_level_when_peeking_at_every_look(correlation):
    """Under the null, the chance that any of the looks crosses its bound is alpha (checked on draws
    independent of those the bounds were computed from)."""
    from metarec.abtest.stats import group_sequential_bounds

    looks = 10
    if correlation == "increments":
        corr = _independent_increments(looks)
    else:  # strongly correlated looks, as a cumulative per-user metric gives
        corr = 0.6 + 0.4 * np.eye(looks)
        corr = 0.5 * (corr + _independent_increments(looks))
    bounds = group_sequential_bounds(corr, alpha=0.05, rng=np.random.default_rng(1))
    z = np.random.default_rng(2).multivariate_normal(np.zeros(looks), corr, size=400_000)
    level = float(np.mean(np.any(np.abs(z) >= bounds, axis=1)))
    assert level == pytest.approx(0.05, abs=0.002)
    naive = float(np.mean(np.any(np.abs(z) >= 1.959964, axis=1)))
    assert naive > 0.09  # peeking with the fixed bound would inflate it


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"correlation": np.ones((2, 3))}, "correlation: expected a square"),
        ({"correlation": np.array([[1.0, 2.0], [2.0, 1.0]])}, "positive semi-definite"),
        ({"correlation": np.eye(2), "fractions": [0.6, 0.5]}, "fractions"),
        ({"correlation": np.eye(2), "draws": 10}, "draws"),
        ({"correlation": np.eye(2), "alpha": 1.5}, "alpha"),
    ],
)
def test_group_sequential_rejects_bad_input(kwargs, message):
    from metarec.abtest.stats import group_sequential_bounds

    with pytest.raises(ValueError, match=message):
        group_sequential_bounds(**kwargs)
