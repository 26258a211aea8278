"""The A/B test runner: config errors, the compacted simulation, paired and independent designs,
metrics against the ground truth, CUPED, the CLI and its report."""

from __future__ import annotations

import json
from html import escape as html_escape
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from metarec.abtest.config import ABTestConfig
from metarec.abtest.metrics import COUNTERS
from metarec.abtest.report import fmt, fmt_p
from metarec.abtest.runner import run_abtest, simulate, users_per_arm
from metarec.abtest.simulate import simulate_arm
from metarec.agents.baselines.popularity import PopularRecommender
from metarec.cli import main
from metarec.config import validate_config

SHORT = {"population": {"session_budget": 8.0}, "catalog": {"num_items": 200}}


def config(**overrides) -> ABTestConfig:
    values = {"arms": {"control": "random", "treatment": "oracle"}, "users": 400, "days": 3, "env_kwargs": SHORT}
    return validate_config(ABTestConfig, {**values, **overrides})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"userz": 10}, "userz: unknown field"),
        ({"control": "nobody"}, "control: expected one of the arms"),
        ({"allocation": {"control": 1, "treatment": 1}}, "allocation: only the independent design"),
        ({"design": "independent", "allocation": {"control": 1}}, "allocation: expected a share for each arm"),
        ({"guardrails": [{"metric": "happiness"}]}, "guardrails.0.metric"),
        ({"primary_metric": "clicks"}, "primary_metric"),
        ({"arms": {"only": "random"}}, "arms: expected at least two arms"),
        ({"env": "CartPole-v1"}, "env"),
        ({"env": "metarec/RecSimInterestEvolution-v0"}, "env: Value error, expected an environment whose users"),
        (
            {"design": "independent", "users": 30, "allocation": {"control": 1, "treatment": 3}},
            "users: expected at least 80 for this allocation",
        ),
        ({"days": 0}, "days"),
    ],
)
def test_bad_config_names_the_key(values, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        config(**values)


def test_compacted_simulation_equals_stepping_everyone():
    """Dropping users who left changes no one's trajectory: per-user, per-day counters equal a plain
    loop over the vector env that keeps stepping everyone (common random numbers by row)."""
    users, days, seed = 300, 3, 11
    run = simulate_arm("metarec/DriftingUsers-v0", SHORT, "oracle", None, users, days, 0, seed, 1, 2)
    env = gym.make_vec(
        "metarec/DriftingUsers-v0",
        num_envs=users,
        vectorization_mode="vector_entry_point",
        array_backend="torch",
        autoreset=False,
        population={"session_budget": 8.0, "num_sessions": days},
        catalog={"num_items": 200},
    )
    _, info = env.reset(seed=seed)
    engagement = np.zeros((users, days))
    steps = np.zeros((users, days))
    alive = torch.ones(users, dtype=torch.bool)
    while bool(alive.any()):
        session = env.unwrapped.state["session"].numpy()
        _, reward, terminated, truncated, info_next = env.step(info["oracle_slate"])
        index = np.nonzero(alive.numpy())[0]
        np.add.at(engagement, (index, session[index]), reward.numpy()[index])
        np.add.at(steps, (index, session[index]), 1.0)
        alive &= ~(terminated | truncated)
        info = info_next
    assert steps.sum() > users * 2  # users came back for more than one session
    np.testing.assert_allclose(run.counters[..., COUNTERS.index("impressions")], steps)
    np.testing.assert_allclose(run.counters[..., COUNTERS.index("engagement")], engagement, rtol=1e-6, atol=1e-5)


def test_paired_aa_is_exactly_null_and_reproducible():
    cfg = config(arms={"a": "oracle", "b": "oracle"})
    first = run_abtest(cfg, quiet=True)
    for effect in first["effects"]["b"].values():
        assert effect["absolute"] == 0.0
        assert effect["p_value"] == 1.0
    assert first["srm"]["p_value"] == 1.0 and not first["srm"]["flagged"]
    second = run_abtest(cfg, quiet=True)
    assert json.dumps(first["effects"]) == json.dumps(second["effects"])


def test_oracle_beats_random_on_the_ground_truth_metrics():
    results = run_abtest(config(), quiet=True)
    oracle, random = results["arms"]["treatment"]["metrics"], results["arms"]["control"]["metrics"]
    assert abs(oracle["regret"]) < 1e-5 < random["regret"]  # the oracle is the regret's reference
    for name in ("precision", "recall", "ndcg", "diversity"):
        assert 0.0 <= oracle[name] <= 1.0 and 0.0 <= random[name] <= 1.0
    assert oracle["ndcg"] > random["ndcg"] and oracle["precision"] > random["precision"]
    effect = results["effects"]["treatment"]["engagement"]
    assert effect["absolute"] > 0 and effect["significant"]
    assert effect["ci"][0] < effect["absolute"] < effect["ci"][1]
    assert 0.0 < results["coverage"]["treatment"] < results["coverage"]["control"] <= 1.0
    assert len(results["per_day"]["arms"]["control"]["engagement"]) == 3
    seq = results["sequential"]["treatment"]
    assert len(seq["bounds"]) == 3 and seq["crossed_day"] is not None


def test_independent_design_randomises_users_and_passes_srm():
    cfg = config(design="independent", users=900, allocation={"control": 1.0, "treatment": 2.0})
    results = run_abtest(cfg, quiet=True)
    counts = results["srm"]["counts"]
    assert sum(counts) == 900 and results["srm"]["expected_shares"] == pytest.approx([1 / 3, 2 / 3])
    assert not results["srm"]["flagged"]
    draws = {tuple(users_per_arm(cfg.model_copy(update={"seed": seed}), seed).values()) for seed in range(5)}
    assert len(draws) > 1  # a multinomial draw per seed, not a fixed split
    assert results["seeds"]["env"]["control"] != results["seeds"]["env"]["treatment"]


def test_pre_period_is_shared_in_paired_design_and_cuped_narrows_independent_intervals():
    (paired,), _ = simulate(config(pre_period_days=2, arms={"control": "popular", "treatment": "random"}), quiet=True)
    np.testing.assert_array_equal(paired["control"].pre, paired["treatment"].pre)
    assert paired["control"].pre.shape[1] == 2

    widths = {}
    for cuped in (False, True):
        cfg = config(
            design="independent",
            users=1200,
            pre_period_days=2,
            cuped=cuped,
            arms={"control": "random", "treatment": "random"},
        )
        effect = run_abtest(cfg, quiet=True)["effects"]["treatment"]["engagement"]
        assert effect["cuped"] is cuped
        widths[cuped] = effect["ci"][1] - effect["ci"][0]
    assert widths[True] < 0.95 * widths[False]  # pre- and in-experiment engagement correlate


def test_popular_learns_only_from_active_users():
    env = gym.make_vec(
        "metarec/DriftingUsers-v0", num_envs=8, vectorization_mode="vector_entry_point", array_backend="torch"
    ).unwrapped
    observation, info = env.reset(seed=0)
    agent = PopularRecommender(5, 1000, torch.Generator().manual_seed(0))
    slate = agent.act(observation, info)
    _, reward, terminated, truncated, info = env.step(slate)
    agent.observe(reward, terminated | truncated, {**info, "active": torch.zeros(8, dtype=torch.bool)})
    assert float(agent.impressions.sum()) == 0.0 and float(agent.successes.sum()) == 0.0


def test_cli_writes_results_and_a_report_with_its_numbers(tmp_path: Path, capsys):
    path = tmp_path / "ab.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "arms": {"control": "random", "treatment": "oracle"},
                "users": 300,
                "days": 2,
                "env_kwargs": SHORT,
                "guardrails": [{"metric": "retention"}],
            }
        )
    )
    out = tmp_path / "out"
    assert main(["abtest", str(path), "--out", str(out), "--quiet", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    results = json.loads((out / "results.json").read_text())
    effect = results["effects"]["treatment"]["engagement"]
    assert line["effects"]["treatment"]["absolute"] == effect["absolute"]
    markdown = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for text in (fmt(effect["absolute"]), fmt_p(effect["p_adjusted"]), results["config_hash"][:12]):
        assert text in markdown and html_escape(text) in html
    assert results["config"]["users"] == 300 and "NaN" not in (out / "results.json").read_text()
    assert list((out / "plots").glob("*.png"))

    bad = tmp_path / "bad.yaml"
    bad.write_text("arms: {a: random, b: random}\nusers: 10\ndays: 1\nseeed: 3\n")
    assert main(["abtest", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert "seeed: unknown field" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["linucb", "greedy"])
def test_per_user_bandits_skip_users_who_see_no_slate(name):
    """With ``info["active"]``, users outside it neither get a scored slate nor teach the agent."""
    from metarec.agents.registry import make_recommender

    env = gym.make_vec(
        "metarec/DriftingUsers-v0", num_envs=6, vectorization_mode="vector_entry_point", array_backend="torch"
    ).unwrapped
    observation, info = env.reset(seed=0)
    agent = make_recommender(name, env, 0)
    _, reward, terminated, truncated, step_info = env.step(agent.act(observation, info))
    agent.observe(reward, terminated | truncated, step_info)  # every user has per-user state now
    before = {k: v.clone() for k, v in vars(agent).items() if isinstance(v, torch.Tensor) and v.dim() >= 2}
    active = torch.tensor([True, False, True, False, False, False])
    observation, info = env.reset(seed=1)
    slate = agent.act(observation, {**info, "active": active})
    assert torch.equal(slate[~active], torch.arange(5).expand(4, 5))  # the placeholder slate
    _, reward, terminated, truncated, step_info = env.step(slate)
    step_info = {
        **step_info,
        "clicked": torch.ones(6, dtype=torch.bool),
        "chosen_position": torch.zeros(6, dtype=torch.int64),
    }  # a click for everyone
    agent.observe(torch.ones(6), terminated | truncated, {**step_info, "active": active})
    for key, value in before.items():
        after = getattr(agent, key)
        assert torch.equal(after[~active], value[~active]), key
        assert not torch.equal(after[active], value[active]), key


def test_shipped_abtest_configs_validate():
    from metarec.config import load_yaml_config

    configs = sorted(Path(__file__).parents[1].joinpath("configs").glob("abtest_*.yaml"))
    assert {c.name for c in configs} >= {"abtest_demo.yaml", "abtest_clickbait.yaml"}
    for path in configs:
        cfg = load_yaml_config(ABTestConfig, path)
        assert len(cfg.arms) >= 2
    assert len(load_yaml_config(ABTestConfig, configs[0].parent / "abtest_demo.yaml").arms) >= 3


def test_one_day_on_a_multi_session_env_counts_one_session_per_user():
    """days=1 overrides the env's own num_sessions: no user comes back into another user's row."""
    run = simulate_arm("metarec/DriftingUsersMultiSession-v0", SHORT, "random", None, 50, 1, 0, 3, 1, 2)
    assert run.counters.shape[:2] == (50, 1)
    assert np.all(run.counters[..., COUNTERS.index("impressions")] >= 1)


def test_sequential_monitoring_splits_alpha_over_treatments():
    results = run_abtest(config(arms={"control": "random", "a": "oracle", "b": "greedy"}), quiet=True)
    assert {arm: seq["alpha"] for arm, seq in results["sequential"].items()} == {"a": 0.025, "b": 0.025}


def test_policy_recommender_runs_only_for_active_users():
    from metarec.agents.nn.networks import SlatePolicy
    from metarec.agents.ppo import PolicyRecommender

    env = gym.make_vec(
        "metarec/DriftingUsers-v0", num_envs=6, vectorization_mode="vector_entry_point", array_backend="torch"
    ).unwrapped
    observation, info = env.reset(seed=0)
    torch.manual_seed(0)
    policy = SlatePolicy(env.single_observation_space, slate_size=5, hidden=16, history_encoder="gru")
    agent = PolicyRecommender(policy)
    full = agent.act(observation, info)
    active = torch.tensor([False, True, True, False, True, False])
    partial = agent.act(observation, {**info, "active": active})
    assert torch.equal(partial[active], full[active])  # the same slate for a user whoever else is there
    assert torch.equal(partial[~active], torch.arange(5).expand(3, 5))
