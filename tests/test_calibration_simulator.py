"""The calibrated simulator against its logs: it clicks random slates at the logged rate and satisfies clicks
as the logs' ratings say; fidelity counts clicked rows only; users without training events stay out of the
prior; population files take NaN statistics; the demo report copes with no meta-learner; a fit is
reproducible bit for bit."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import metarec  # noqa: F401
from metarec.calibration.fit import FitConfig, calibrate
from metarec.calibration.logs import Logs, load_logs, time_split
from metarec.calibration.run import evaluate_fidelity
from metarec.calibration.synthetic import simulate_logs, write_simulated_logs
from metarec.envs.calibrated import load_population, save_population

pytest.importorskip("sklearn")
pytest.importorskip("pandas")

# a known population (3 clusters in 8 dimensions) whose users click most random slates
KNOWN = {
    "catalog": {"num_items": 200, "embedding_dim": 8, "num_topics": 6, "seed": 5},
    "population": {
        "num_clusters": 3,
        "interest_scale": 3.0,
        "cluster_spread": 0.6,
        "consumption_pull": 0.0,
        "ou_reversion": 0.0,
        "ou_noise": 0.05,
        "shift_hazard": 0.0,
        "trend_rate": 0.0,
        "fatigue_rate": 0.0,
    },
}
FAST = {"embedding_dim": 8, "epochs": 10, "refit_steps": 300, "max_clusters": 4}


@pytest.fixture(scope="module")
def impressions(tmp_path_factory) -> dict:
    """An impression log of 300 users over 3 days under random slates: a row per shown item, ``click`` 1 for
    the clicked one (with its satisfaction as the rating), 0 for the others; and what the logs say."""
    columns = simulate_logs("metarec/DriftingUsers-v0", 300, 3, seed=0, env_kwargs=KNOWN, impressions=True)
    columns.pop("env")
    steps = columns.pop("user_steps")
    path = write_simulated_logs(columns, tmp_path_factory.mktemp("logs") / "impressions.csv")
    logs = load_logs(path, "csv")
    clicked = logs.click > 0
    return {
        "logs": logs,
        "click_rate": float(clicked.sum() / steps),  # every step is a slate of 5 rows
        "satisfaction": logs.rating[clicked],
    }


def step_random_slates(population: Path, users: int = 2000, steps: int = 40) -> dict[str, float]:
    """Click rate and the clicks' satisfaction of new users of ``population`` shown random slates."""
    from metarec.agents.registry import make_recommender

    env = gym.make_vec(
        "metarec/Calibrated-v0",
        num_envs=users,
        vectorization_mode="vector_entry_point",
        array_backend="torch",
        population=str(population),
        autoreset=False,
    )
    base = env.unwrapped
    agent = make_recommender("random", base, 0)
    observation, info = env.reset(seed=0)
    agent.reset()
    running = torch.ones(users, dtype=torch.bool)
    clicks, shown, satisfaction, engagement = 0, 0, [], 0.0
    for _ in range(steps):
        action = agent.act(observation, info)
        observation, reward, terminated, truncated, info = env.step(action)
        agent.observe(reward, terminated | truncated, info)
        clicked = info["clicked"] & running
        clicks, shown = clicks + int(clicked.sum()), shown + int(running.sum())
        satisfaction.append(info["satisfaction"][clicked].numpy())
        engagement += float(reward[running].sum())
        running &= ~(terminated | truncated)
    env.close()
    values = np.concatenate(satisfaction)
    return {
        "click_rate": clicks / shown,
        "satisfaction_mean": float(values.mean()),
        "satisfaction_median": float(np.median(values)),
        "engagement_per_click": engagement / clicks,
    }


def test_the_calibrated_env_clicks_at_the_logged_rate_and_satisfies_as_the_ratings_say(impressions, tmp_path):
    logs = impressions["logs"]
    fitted = calibrate(logs, FitConfig(**FAST))
    path = save_population(tmp_path / "population", fitted.config, fitted.world, fitted.fit)
    simulated = step_random_slates(path)
    logged = impressions["satisfaction"]
    assert simulated["click_rate"] == pytest.approx(impressions["click_rate"], rel=0.2), simulated
    # satisfaction (and engagement: items last a minute) of a click in the range of the logged ratings
    assert np.quantile(logged, 0.25) < simulated["satisfaction_median"] < np.quantile(logged, 0.75), simulated
    assert simulated["satisfaction_median"] == pytest.approx(float(np.median(logged)), abs=0.05), simulated
    assert simulated["satisfaction_mean"] == pytest.approx(float(logged.mean()), abs=0.1), simulated
    assert simulated["engagement_per_click"] == pytest.approx(simulated["satisfaction_mean"], rel=1e-4)
    # a slate is the rows of one user and timestamp: 5 rows a step, one of them clicked on most steps
    no_click = fitted.fit["no_click"]
    assert no_click["identified"] and no_click["click_rate"] == pytest.approx(impressions["click_rate"], rel=1e-9)
    assert no_click["logged"]["row_click_rate"] < no_click["click_rate"] / 4
    # the fit's zero point (item quality near -log M) moved up to where satisfaction is the logs'
    assert fitted.fit["utility_offset"]["offset"] > 2.0
    assert np.array_equal(fitted.item_bias, fitted.world["item_quality"])  # utilities are the simulator's


def test_logs_of_choices_click_at_the_assumed_rate(impressions, tmp_path):
    from metarec.calibration.fit import slate_click_rate

    logs = impressions["logs"]
    choices = logs.subset(logs.click > 0)
    assert slate_click_rate(choices) is None  # nothing but clicks: the rate is not in the logs
    with pytest.raises(ValueError, match="assumed_click_rate"):
        FitConfig(assumed_click_rate=1.0)
    fitted = calibrate(choices, FitConfig(**FAST, assumed_click_rate=0.3))
    path = save_population(tmp_path / "population", fitted.config, fitted.world, fitted.fit)
    simulated = step_random_slates(path)
    assert simulated["click_rate"] == pytest.approx(0.3, rel=0.2), simulated
    logged = impressions["satisfaction"]
    assert np.quantile(logged, 0.25) < simulated["satisfaction_median"] < np.quantile(logged, 0.75), simulated
    assert not fitted.fit["no_click"]["identified"] and fitted.fit["no_click"]["click_rate"] == 0.3
    assert "assumed_click_rate" in fitted.fit["no_click"]["source"]
    assert load_population(path)[2]["no_click"]["click_rate"] == 0.3  # what was assumed is on file


def test_no_ratings_put_the_median_click_at_the_assumed_satisfaction(tmp_path):
    logs = grouped_logs(extra_users=0)
    config = FitConfig(embedding_dim=4, max_clusters=4, epochs=10, refit_steps=100)
    fitted = calibrate(logs, config)
    path = save_population(tmp_path / "population", fitted.config, fitted.world, fitted.fit)
    simulated = step_random_slates(path, steps=10)
    assert simulated["satisfaction_median"] == pytest.approx(0.5, abs=0.03), simulated
    assert simulated["click_rate"] == pytest.approx(0.5, rel=0.1), simulated
    offset = fitted.fit["utility_offset"]
    assert offset["satisfaction_median"] == 0.5 and "assumed_satisfaction" in offset["source"]
    # ratings on another scale are rescaled from their range: 1-3 stars, median m, is (m - 1) / 2
    stars = dataclasses.replace(logs, rating=np.where(logs.item % 2 == 0, 3.0, 1.0).astype(np.float32))
    rescaled = calibrate(stars, config).fit["utility_offset"]
    assert rescaled["satisfaction_median"] == pytest.approx(np.clip((np.median(stars.rating) - 1) / 2, 0.02, 0.98))
    assert rescaled["source"] == "median rating rescaled from [1, 3] to [0, 1]"


# ---------------------------------------------------------------------------------------------------------------------
# fidelity on clicked rows


def test_fidelity_counts_clicked_rows_only(impressions):
    logs = impressions["logs"]
    choices = logs.subset(logs.click > 0)
    train, test = time_split(choices, 0.25)
    split = float(train.timestamp.max())
    shown_train, shown_test = logs.subset(logs.timestamp <= split), logs.subset(logs.timestamp > split)
    assert shown_test.num_events > 3 * test.num_events  # 4 impressions without a click for each click
    fitted = calibrate(train, FitConfig(**FAST))
    plain, _ = evaluate_fidelity(fitted, train, test, seed=0)
    shown, _ = evaluate_fidelity(fitted, shown_train, shown_test, seed=0)
    for key in ("holdout_events", "holdout_users", "recall@10_sim", "ndcg@10_sim", "recall@10_popularity"):
        assert shown[key] == plain[key], key
    assert shown["popularity_gini_real"] == plain["popularity_gini_real"]
    from metarec.calibration.fit import slate_click_rate

    assert plain["logged_click_rate_holdout"] is None and plain["holdout_impressions_without_click"] == 0
    assert shown["holdout_impressions_without_click"] == shown_test.num_events - test.num_events
    assert shown["logged_click_rate_holdout"] == pytest.approx(slate_click_rate(shown_test)["click_rate"])
    assert 0.8 < shown["logged_click_rate_train"] < 0.95


# ---------------------------------------------------------------------------------------------------------------------
# users without training events


def grouped_logs(extra_users: int, seed: int = 0) -> Logs:
    """300 users in 3 groups of taste, 30 events each, over 90 items (a group picks its own 30 items 80% of
    the time); ``extra_users`` more users in the user table without an event (as a time split leaves the
    users whose events are all held out)."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(300), 30)
    own = rng.random(len(users)) < 0.8
    items = np.where(own, 30 * (users % 3) + rng.integers(0, 30, len(users)), rng.integers(0, 90, len(users)))
    return Logs(
        user=users.astype(np.int64),
        item=items.astype(np.int64),
        timestamp=np.arange(len(users), dtype=np.float64),
        rating=np.full(len(users), np.nan, dtype=np.float32),
        click=np.ones(len(users), dtype=np.float32),
        user_ids=np.arange(300 + extra_users),
        item_ids=np.arange(90),
        item_features=None,
        item_text=None,
    )


def test_users_without_training_events_stay_out_of_the_prior():
    config = FitConfig(embedding_dim=4, max_clusters=5, epochs=20, refit_steps=200)
    alone, crowded = calibrate(grouped_logs(0), config), calibrate(grouped_logs(400), config)
    assert alone.fit["num_clusters"] == 3
    assert crowded.fit["num_clusters"] == alone.fit["num_clusters"]
    spread = alone.config.population.cluster_spread
    assert crowded.config.population.cluster_spread == pytest.approx(spread, rel=0.1)
    assert crowded.fit["fatigue"]["expected_repeat_rate"] == pytest.approx(alone.fit["fatigue"]["expected_repeat_rate"])
    assert crowded.fit["users"] == 300 and crowded.fit["users_without_events"] == 400
    assert not crowded.user_factors[300:].any()  # nothing was fitted to them


# ---------------------------------------------------------------------------------------------------------------------
# population files, the demo report, reproducibility


def test_a_population_with_nan_statistics_is_saved_with_nulls(tmp_path):
    rng = np.random.default_rng(0)
    one_each = Logs(  # one event per user: no user repeats a topic, or does not
        user=np.arange(200, dtype=np.int64),
        item=rng.integers(0, 40, 200).astype(np.int64),
        timestamp=np.arange(200, dtype=np.float64),
        rating=np.full(200, np.nan, dtype=np.float32),
        click=np.ones(200, dtype=np.float32),
        user_ids=np.arange(200),
        item_ids=np.arange(40),
        item_features=None,
        item_text=None,
    )
    fitted = calibrate(one_each, FitConfig(embedding_dim=4, max_clusters=2, epochs=3, refit_steps=10))
    assert math.isnan(fitted.fit["fatigue"]["repeat_topic_rate"])
    path = save_population(tmp_path / "population", fitted.config, fitted.world, fitted.fit)
    _, _, fit = load_population(path)
    assert fit["fatigue"]["repeat_topic_rate"] is None and fit["fatigue"]["fatigue_rate"] == 0.0
    extra = {"nested": [np.float32(np.inf), {"x": -math.inf}], "array": np.array([1.0, np.nan]), "n": np.int64(3)}
    _, _, fit = load_population(save_population(tmp_path / "other", fitted.config, fitted.world, extra))
    assert fit == {"nested": [None, {"x": None}], "array": [1.0, None], "n": 3}


def write_report(out: Path, best: str | None, curves: dict[str, list[float | None]]) -> str:
    """The demo report's markdown for a summary whose adaptation curves are ``curves``."""
    from metarec.commands.demo_report import write_demo_report

    out.mkdir(parents=True)
    return write_demo_report(out, demo_summary(best, curves))["report.md"].read_text()


def demo_summary(best: str | None, curves: dict[str, list[float | None]]) -> dict:
    sessions = len(next(iter(curves.values())))
    return {
        "users": 10,
        "results": [
            {"env": "metarec/DriftingUsers-v0", "random": {"mean_return": 1.0}, "oracle": {"mean_return": 2.0}}
        ],
        "meta": {
            "adaptation": {
                "split": "meta-test",
                "sessions": list(range(1, sessions + 1)),
                "seeds": 2,
                "best_meta_method": best,
                "methods": {
                    name: {"normalised_return": curve, "ci95": [[None, None] if v is None else [v, v] for v in curve]}
                    for name, curve in curves.items()
                },
            }
        },
    }


BASELINES = {"random": [0.0, 0.0], "oracle": [1.0, 1.0], "finetune": [0.2, None], "linucb": [None, 0.1]}


def test_the_demo_report_without_a_meta_learner(tmp_path):
    text = write_report(tmp_path / "none", None, BASELINES)  # a meta config of baselines only
    assert "No meta-learner was evaluated" in text and "finetune" in text


def test_the_demo_report_with_missing_values(tmp_path):
    baselines = BASELINES  # None: a seed whose oracle did no better than random
    text = write_report(tmp_path / "missing", "rl2", {**baselines, "rl2": [None, 0.4]})
    assert "The best meta-learner is rl2" in text and "ahead of" not in text
    text = write_report(tmp_path / "ahead", "rl2", {**baselines, "rl2": [0.5, 0.6]})
    assert "In the first session it is ahead of finetune (0.2)." in text
    assert "Paired by seed" not in text  # an evaluation from before paired leads were reported


def test_the_demo_report_says_where_the_paired_lead_is_above_zero(tmp_path):
    from metarec.commands.demo_report import write_demo_report

    summary = demo_summary("rl2", {**BASELINES, "rl2": [0.5, 0.6]})
    summary["meta"]["adaptation"]["paired"] = {
        "method": "rl2",
        "against": {
            "finetune": {"difference": [0.3, 0.5], "ci95": [[0.1, 0.5], [0.2, 0.8]]},
            "linucb": {"difference": [0.0, 0.5], "ci95": [[-0.1, 0.1], [None, None]]},
        },
    }
    text = write_demo_report(tmp_path, summary)["report.md"].read_text()
    assert "within the first 2 sessions, against finetune in sessions 1-2; linucb in no session." in text


def test_session_ranges_read_as_a_person_would_write_them():
    from metarec.commands.demo_report import session_ranges

    assert session_ranges([1, 2, 3, 5, 7, 8]) == "sessions 1-3, 5 and 7-8"
    assert session_ranges([4]) == "session 4"
    assert session_ranges([]) == "no session"


def test_calibrate_is_reproducible_bit_for_bit():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 500, 8000)
    logs = Logs(
        user=users.astype(np.int64),
        item=((users % 7 * 40 + rng.integers(0, 60, len(users))) % 300).astype(np.int64),
        timestamp=np.arange(len(users), dtype=np.float64),
        rating=np.full(len(users), np.nan, dtype=np.float32),
        click=np.ones(len(users), dtype=np.float32),
        user_ids=np.arange(500),
        item_ids=np.arange(300),
        item_features=None,
        item_text=None,
    )
    config = FitConfig(epochs=2, max_clusters=2, refit_steps=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))  # sums over threads were what differed
    try:
        first, second = calibrate(logs, config), calibrate(logs, config)
    finally:
        torch.set_num_threads(threads)
    for name in ("user_factors", "item_factors", "item_bias"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    for key, value in first.world.items():
        assert np.array_equal(value, second.world[key]), key
    assert first.config == second.config
    assert json.dumps(first.fit, sort_keys=True, default=str) == json.dumps(second.fit, sort_keys=True, default=str)
    assert not torch.are_deterministic_algorithms_enabled()  # the setting is restored
