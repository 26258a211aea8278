"""How much one rating strays from its item's quality: the spread fitted from the ratings (the population's
``engagement_noise``), the shrinkage of items' quality fitted by empirical Bayes, and how far a real sample's
rating KS can stray from an exactly right simulator."""

import numpy as np
import pytest

from metarec.calibration.fidelity import ks_distance
from metarec.calibration.fit import FitConfig, calibrate
from metarec.calibration.fit_utility import quality_from_ratings
from metarec.calibration.logs import Logs, time_split
from metarec.calibration.run import evaluate_fidelity, ks_sampling_p95, rating_ks_by_popularity, simulate_future

SMALL = {"epochs": 10, "embedding_dim": 4, "max_clusters": 2, "refit_steps": 50}


def rated_logs(values: np.ndarray, item: np.ndarray, users: int = 300, items: int | None = None) -> Logs:
    """Logs of chosen items whose ``rating`` column holds ``values``, spread over ``users`` users."""
    rng = np.random.default_rng(1)
    items = int(item.max()) + 1 if items is None else items
    return Logs(
        user=rng.integers(0, users, len(item)).astype(np.int64),
        item=item.astype(np.int64),
        timestamp=np.arange(len(item), dtype=np.float64),
        rating=values.astype(np.float32),
        click=np.ones(len(item), dtype=np.float32),
        user_ids=np.arange(users),
        item_ids=np.arange(items),
        item_features=None,
        item_text=None,
    )


def two_level_ratings(between: float, within: float, items: int = 300, seed: int = 0):
    """Items' true means ``N(0, between^2)``, each event's value its item's mean plus ``N(0, within^2)``; items are
    rated 3 to 60 times."""
    rng = np.random.default_rng(seed)
    truth = between * rng.standard_normal(items)
    item = np.repeat(np.arange(items), rng.integers(3, 61, items))
    return truth, item, truth[item] + within * rng.standard_normal(len(item))


def test_the_shrinkage_and_the_spread_of_one_rating_are_fitted_from_the_ratings():
    """Within-item spread twice the items' own: the fitted prior is worth about 4 ratings, and the two spreads
    stand in the ratio 2 (the ratings' logit transform is monotone, nearly linear here, and a ratio of spreads
    does not depend on its scale). The shrunk qualities are closer to the truth than the items' raw means."""
    truth, item, values = two_level_ratings(between=1.0, within=2.0)
    quality, about = quality_from_ratings(rated_logs(values, item), np.zeros(len(item)))
    assert about["prior_source"].startswith("fitted")
    assert 3.0 < about["prior_events"] < 5.0, about  # 3.5 measured
    ratio = about["within_item_sd"] / about["between_item_sd"]
    assert 1.7 < ratio < 2.3, about  # 1.86: the logit of the ratings' ranks has heavier tails than a normal
    raw, _ = quality_from_ratings(rated_logs(values, item), np.zeros(len(item)), prior_events=1e-9)

    def error(estimate: np.ndarray) -> float:  # on the truth's scale: fitted by least squares first
        slope, intercept = np.polyfit(estimate, truth, 1)
        return float(np.mean((intercept + slope * estimate - truth) ** 2))

    assert error(quality) < 0.9 * error(raw)
    _, fixed = quality_from_ratings(rated_logs(values, item), np.zeros(len(item)), prior_events=10.0)
    assert fixed["prior_events"] == 10.0 and fixed["prior_source"] == "set"


def test_items_that_differ_by_noise_alone_all_get_the_mean_quality():
    _, item, values = two_level_ratings(between=0.0, within=1.0)
    quality, about = quality_from_ratings(rated_logs(values, item), np.zeros(len(item)))
    assert about["prior_events"] == "infinite" or about["prior_events"] > 30, about
    assert np.std(quality) < 0.1 * about["within_item_sd"]


def test_degenerate_ratings_give_finite_qualities_and_say_why():
    """Every item rated one value over and over (no spread within items): each item's quality is its own mean and
    an unrated item gets the mean of all. Every item rated once: nothing measures the noise, the shrinkage is the
    default 10 ratings' worth. One value for everything: every item at the mean."""
    item = np.repeat(np.arange(5), 4)
    quality, about = quality_from_ratings(rated_logs(item % 5 + 1.0, item, items=6), np.zeros(len(item)))
    assert about["within_item_sd"] == 0.0 and about["prior_events"] == 0.0 and np.all(np.isfinite(quality))
    assert np.all(np.diff(quality[:5]) > 0) and quality[5] == pytest.approx(np.mean(quality[item]))
    once = np.arange(30)
    quality, about = quality_from_ratings(rated_logs(once % 5 + 1.0, once), np.zeros(30))
    assert about["within_item_sd"] is None and about["prior_events"] == 10.0 and "two rated" in about["prior_source"]
    assert np.all(np.isfinite(quality))
    quality, about = quality_from_ratings(rated_logs(np.full(20, 3.0), item), np.zeros(20))
    assert about["prior_events"] == "infinite" and np.ptp(quality) == 0.0

@pytest.mark.parametrize("noise_from_ratings", [True, False])
def test_simulated_ratings_stray_from_their_items_as_the_logged_ones_do(noise_from_ratings):
    """Stars whose spread within an item is larger than the items' (a correlation of 0.4 between an event's
    rating and its item's mean): with the spread fitted, the simulator's ratings keep that correlation, and its
    engagement noise is the fitted spread; with the default noise (0.3) every rating is about its item's mean."""
    truth = 0.6 * np.random.default_rng(2).standard_normal(40)
    item = np.random.default_rng(3).permutation(np.repeat(np.arange(40), 100))
    stars = np.clip(np.round(3.0 + truth[item] + 1.3 * np.random.default_rng(4).standard_normal(len(item))), 1, 5)
    logs = rated_logs(stars, item, users=200)
    fitted = calibrate(logs, FitConfig(**SMALL, noise_from_ratings=noise_from_ratings))
    noise = fitted.config.population.engagement_noise
    spread = fitted.fit["quality_from_ratings"]["within_item_sd"]
    item_mean = np.bincount(item, weights=stars) / np.bincount(item)
    real = np.corrcoef(stars, item_mean[item])[0, 1]
    simulated = simulate_future(fitted, logs, logs, seed=0)
    sim = np.corrcoef(simulated["rating"], item_mean[simulated["item"]])[0, 1]
    assert 0.3 < real < 0.5, real
    said = fitted.fit["quality_from_ratings"]["engagement_noise"]
    assert said["value"] == pytest.approx(noise)
    if noise_from_ratings:
        assert noise == pytest.approx(spread) and noise > 1.0 and said["source"] == "the ratings' spread within items"
        assert abs(sim - real) < 0.1, (sim, real)
    else:
        assert noise == 0.3 and "default" in said["source"]
        assert sim > real + 0.25, (sim, real)


def test_a_few_repeated_ratings_do_not_set_the_noise():
    """Ten items rated twice, the rest once: 10 ratings beyond one per item are too few to say how ratings
    stray, and the simulator keeps its default noise."""
    rng = np.random.default_rng(8)
    item = np.r_[np.arange(10), np.arange(40)]
    logs = rated_logs(rng.integers(1, 6, len(item)).astype(float), rng.permutation(item), users=200, items=40)
    fitted = calibrate(logs, FitConfig(**SMALL))
    assert fitted.fit["quality_from_ratings"]["within_item_dof"] == 10
    assert fitted.config.population.engagement_noise == 0.3
    assert "fewer than 30" in fitted.fit["quality_from_ratings"]["engagement_noise"]["source"]


@pytest.mark.parametrize("size", [100, 400])
def test_the_sampling_bound_of_the_ks_is_kolmogorovs(size):
    """For a continuous distribution known exactly, 95% of samples of n values stay within 1.358 / sqrt(n)."""
    simulated = np.random.default_rng(5).standard_normal(200_000)
    bound = ks_sampling_p95(simulated, size, np.random.default_rng(6), resamples=400)
    assert bound == pytest.approx(1.358 / np.sqrt(size), rel=0.12)
    assert ks_sampling_p95(np.repeat([1.0, 2.0], 5000), size, np.random.default_rng(6)) < bound  # two values


def test_the_rating_ks_pools_draws_of_the_simulated_future():
    """The fidelity's rating KS is the real held-out ratings' distance to ``rating_draws`` simulated futures pooled
    (seeds from the fidelity's own onward); with one draw it is that draw's."""
    truth = 0.6 * np.random.default_rng(2).standard_normal(40)
    item = np.random.default_rng(3).permutation(np.repeat(np.arange(40), 60))
    stars = np.clip(np.round(3.0 + truth[item] + np.random.default_rng(4).standard_normal(len(item))), 1, 5)
    past, held = time_split(rated_logs(stars, item, users=100), 0.25)
    fitted = calibrate(past, FitConfig(**SMALL))
    known = held.subset(np.isin(held.user, past.user))
    for draws in (1, 5):
        fidelity, _ = evaluate_fidelity(fitted, past, held, seed=7, rating_draws=draws)
        pooled = np.concatenate([simulate_future(fitted, past, known, seed=7 + r)["rating"] for r in range(draws)])
        assert fidelity["rating_ks"] == pytest.approx(ks_distance(known.rating, pooled))
        assert fidelity["rating_ks_draws"] == draws
        items = np.concatenate([simulate_future(fitted, past, known, seed=7 + r)["item"] for r in range(draws)])
        quintiles = rating_ks_by_popularity(past, known, {"item": items, "rating": pooled})
        assert quintiles and all(fidelity[key] == value for key, value in quintiles.items())
    with pytest.raises(ValueError, match="rating_draws: expected at least 1"):
        evaluate_fidelity(fitted, past, held, rating_draws=0)
