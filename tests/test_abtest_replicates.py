"""A/B tests whose arms learn across users: the replicate is the unit of analysis, and a design that cannot
give a valid interval is refused."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from metarec.abtest.analysis import arm_value
from metarec.abtest.config import MIN_REPLICATES, ABTestConfig
from metarec.abtest.runner import check_design, run_abtest, seeds_of, simulate
from metarec.config import validate_config

SHORT = {"population": {"session_budget": 8.0}, "catalog": {"num_items": 200}}


def config(**overrides) -> ABTestConfig:
    values = {"arms": {"control": "popular", "treatment": "linucb"}, "users": 60, "days": 2, "env_kwargs": SHORT,
              "replicates": MIN_REPLICATES, "torch_threads": 1}  # fmt: skip
    return validate_config(ABTestConfig, {**values, **overrides})


@pytest.mark.parametrize("arms", [{"control": "popular", "b": "linucb"}, {"control": "linucb", "b": "popular-ctr"}])
def test_an_arm_that_learns_across_users_needs_replicates(arms):
    with pytest.raises(ValueError, match=rf"replicates: arm '\w+' \(popular(-ctr)?\) learns one model from all its "
                       rf"users.*expected replicates >= {MIN_REPLICATES}.*got 1"):  # fmt: skip
        run_abtest(config(arms=arms, replicates=1), quiet=True)


def test_arms_with_per_user_state_need_no_replicates_and_aa_uses_the_control():
    assert check_design(config(arms={"control": "linucb", "b": "greedy"}, replicates=1)) == []
    assert check_design(config(arms={"control": "popular", "b": "greedy"})) == ["control"]
    assert check_design(config(arms={"control": "popular", "b": "greedy"}, aa=True)) == ["control", "b"]


def test_effects_are_t_tests_over_the_replicates(tmp_path):
    cfg = config(sequential=True)
    results = run_abtest(cfg, tmp_path, quiet=True)
    report = (tmp_path / "report.md").read_text()
    assert f"Unit of analysis: the replicate ({MIN_REPLICATES} independent copies" in report
    assert "control learn(s) one model from all users" in report
    assert results["unit"] == "replicate" and results["replicates"] == MIN_REPLICATES
    assert results["shared_state_arms"] == ["control"]
    replicates, seeds = simulate(cfg, quiet=True)
    assert len(replicates) == MIN_REPLICATES and len({s["env"]["control"] for s in seeds}) == MIN_REPLICATES
    treated = np.array([arm_value("engagement", runs["treatment"].counters) for runs in replicates])
    control = np.array([arm_value("engagement", runs["control"].counters) for runs in replicates])
    effect = results["effects"]["treatment"]["engagement"]
    expected = stats.ttest_rel(treated, control)
    assert effect["absolute"] == pytest.approx(float(np.mean(treated - control)))
    assert effect["p_value"] == pytest.approx(expected.pvalue)
    assert effect["ci"] == pytest.approx(list(expected.confidence_interval(0.95)))
    assert results["arms"]["control"]["metrics"]["engagement"] == pytest.approx(float(np.mean(control)))
    sequential = results["sequential"]["treatment"]
    assert len(sequential["z"]) == len(sequential["bounds"]) == cfg.days
    # the last look uses all days: its t statistic is the fixed-horizon one, mapped to the normal scale
    t_last = expected.statistic
    z_last = stats.norm.isf(stats.t.sf(abs(t_last), MIN_REPLICATES - 1)) * np.sign(t_last)
    assert sequential["z"][-1] == pytest.approx(z_last)


def test_the_first_replicate_is_the_test_without_replicates():
    cfg = config(arms={"control": "linucb", "b": "greedy"})
    assert seeds_of(cfg, 0) == seeds_of(cfg.model_copy(update={"replicates": 1}), 0)
    assert seeds_of(cfg, 1) != seeds_of(cfg, 0)
    (one,), _ = simulate(cfg.model_copy(update={"replicates": 1}), quiet=True)
    many, _ = simulate(cfg, quiet=True)
    for arm in cfg.arms:
        np.testing.assert_array_equal(one[arm].counters, many[0][arm].counters)
    assert not np.array_equal(many[0]["b"].counters, many[1]["b"].counters)  # other users, other learners


def test_grouped_popularity_keeps_one_independent_table_per_block_of_users():
    """``PopularRecommender(groups=2)``: what the first block of users teaches never reaches the second."""
    import gymnasium as gym
    import torch

    from metarec.agents.baselines.bandits import num_items_of
    from metarec.agents.baselines.popularity import PopularRecommender

    env = gym.make_vec(
        "metarec/DriftingUsers-v0", num_envs=8, vectorization_mode="vector_entry_point", array_backend="torch", **SHORT
    )
    base = env.unwrapped
    learners = [PopularRecommender(5, num_items_of(base, "popular"), torch.Generator().manual_seed(0), groups=2)
                for _ in range(2)]  # fmt: skip
    observation, info = env.reset(seed=0)
    first_block = torch.arange(8) < 4
    for _ in range(6):
        slates = [learner.act(observation, info) for learner in learners]
        assert torch.equal(slates[0][~first_block], slates[1][~first_block])  # the second block's table agrees
        observation, reward, terminated, truncated, info = env.step(slates[0])
        learners[0].observe(reward, terminated | truncated, info)
        learners[1].observe(torch.where(first_block, reward * 10 + 1, reward), terminated | truncated, info)
    tables = [learner.table.view(2, 2, -1) for learner in learners]  # [statistic, group, item]
    assert torch.equal(tables[0][:, 1], tables[1][:, 1]) and not torch.equal(tables[0][0, 0], tables[1][0, 0])
    assert int(tables[0][1, 0].sum()) == int(tables[0][1, 1].sum()) == 4 * 6 * 5  # users x steps x slate
    with pytest.raises(ValueError, match="groups: expected a positive integer"):
        PopularRecommender(5, 10, torch.Generator(), groups=0)


def test_an_ab_test_whose_users_go_non_finite_stops_loudly():
    """A population that overflows within a step stops the A/B simulation naming the quantity, instead of
    analysing NaN rewards (which once ended in 'Guardrails: pass')."""
    cfg = config(arms={"control": "random", "b": "linucb"}, replicates=1, users=20, days=1,
                 env_kwargs={**SHORT, "population": {"cluster_spread": 3e38}})  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"simulator: NaN or inf at env step 1 in reward"):
        run_abtest(cfg, quiet=True)


def test_independent_looks_use_the_two_sample_degrees_of_freedom() -> None:
    """The daily looks of the independent design map Welch's statistic with Welch's degrees of freedom
    (as the fixed-horizon test does), not ``replicates - 1``: with 5 against 5 replicates that halves the
    false-positive rate of the looks."""
    from scipy import stats as scipy_stats

    from metarec.abtest.replicates import welch_df

    rng = np.random.default_rng(0)
    for scale in (1.0, 3.0, 10.0):
        t, c = rng.normal(size=5), scale * rng.normal(size=5)
        expected = scipy_stats.ttest_ind(t, c, equal_var=False).df
        assert welch_df(t, c) == pytest.approx(expected, rel=1e-12)
        assert 4.0 <= welch_df(t, c) <= 8.0
    same = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert welch_df(same, same + 10) == pytest.approx(8.0)
    assert welch_df(np.ones(5), np.ones(5)) == 4.0


def test_independent_design_looks_map_welchs_t_on_welchs_degrees_of_freedom(tmp_path):
    cfg = config(sequential=True, design="independent")
    results = run_abtest(cfg, tmp_path, quiet=True)
    replicates, _ = simulate(cfg, quiet=True)
    treated = np.array([arm_value("engagement", runs["treatment"].counters) for runs in replicates])
    control = np.array([arm_value("engagement", runs["control"].counters) for runs in replicates])
    expected = stats.ttest_ind(treated, control, equal_var=False)
    assert results["effects"]["treatment"]["engagement"]["p_value"] == pytest.approx(expected.pvalue)
    z_last = stats.norm.isf(stats.t.sf(abs(expected.statistic), expected.df)) * np.sign(expected.statistic)
    assert results["sequential"]["treatment"]["z"][-1] == pytest.approx(z_last)
    assert expected.df > MIN_REPLICATES - 1
