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

The modules: :mod:`~metarec.abtest.stats.effects` (effects with intervals and p-values),
:mod:`~metarec.abtest.stats.variance` (CUPED), :mod:`~metarec.abtest.stats.checks` (sample-ratio mismatch,
multiple-testing correction), :mod:`~metarec.abtest.stats.power_analysis` (sample size, MDE, power),
:mod:`~metarec.abtest.stats.sequential` (mSPRT, group-sequential bounds) and
:mod:`~metarec.abtest.stats.validation` (argument checks they share).
"""

from metarec.abtest.stats.checks import adjust_p_values, srm_check
from metarec.abtest.stats.effects import Effect, ratio_effect, welch_effect
from metarec.abtest.stats.power_analysis import minimum_detectable_effect, power, required_sample_size
from metarec.abtest.stats.sequential import group_sequential_bounds, msprt, msprt_sequence, obrien_fleming_spending
from metarec.abtest.stats.variance import cuped, cuped_theta

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
