"""How far users' fitted factors carry into their future (``predictive_scale``): found on a nested time split of
the logs, and applied to the simulator's users and to what is measured in their units."""

import numpy as np
import pytest

from metarec.calibration.fit import FitConfig, calibrate
from metarec.calibration.fit_predictive import predictive_scale
from metarec.calibration.logs import Logs

SMALL = {"epochs": 10, "embedding_dim": 4, "max_clusters": 2, "refit_steps": 100}


def taste_logs(keep: float, seed: int = 0, users: int = 300, per_user: int = 40, items: int = 200) -> Logs:
    """Users choose items (with repeats) by a multinomial logit over the catalogue, ``taste_u . v_i + b_i``, one
    event per user per second. For the last fifth of the time each user's taste is ``keep`` times the old one
    plus fresh taste of the same spread: 1 keeps it, 0 makes a new person of the same id."""
    rng = np.random.default_rng(seed)
    d = SMALL["embedding_dim"]
    old, fresh = 1.5 * rng.standard_normal((users, d)), 1.5 * rng.standard_normal((users, d))
    vectors, bias = rng.standard_normal((items, d)), 0.5 * rng.standard_normal(items)
    step = np.tile(np.arange(per_user), users)
    user = np.repeat(np.arange(users), per_user)
    late = (step >= 0.8 * per_user)[:, None]
    taste = np.where(late, keep * old[user] + np.sqrt(1.0 - keep**2) * fresh[user], old[user])
    logits = taste @ vectors.T + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    item = (np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1) > rng.random((len(user), 1))).argmax(axis=1)
    return Logs(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        timestamp=step.astype(np.float64),
        rating=np.full(len(user), np.nan, dtype=np.float32),
        click=np.ones(len(user), dtype=np.float32),
        user_ids=np.arange(users),
        item_ids=np.arange(items),
        item_features=None,
        item_text=None,
    )


def test_the_scale_is_about_one_where_tastes_last_and_about_zero_where_users_become_someone_else():
    config = FitConfig(**SMALL)
    lasting = predictive_scale(taste_logs(1.0), taste_logs(1.0), config)
    forgotten = predictive_scale(taste_logs(0.0), taste_logs(0.0), config)
    assert lasting["source"] == forgotten["source"] == "nested time split"
    assert lasting["held_out_choices"] == 300 * 8  # the last 8 of each user's 40 events
    assert 0.8 < lasting["scale"] < 1.25 and not lasting["at_bound"]
    assert forgotten["scale"] < 0.15
    for found in (lasting, forgotten):  # the scale maximises the held-out likelihood on [0, 4]
        assert found["nll_scaled"] <= min(found["nll_as_fitted"], found["nll_items_only"]) + 1e-6
    assert lasting["nll_items_only"] - lasting["nll_scaled"] > 0.5  # tastes that last predict the future
    assert forgotten["nll_as_fitted"] - forgotten["nll_scaled"] > 0.5  # old tastes mislead about a new person


def test_where_users_do_not_come_back_to_items_their_earlier_items_are_no_alternative():
    logs = taste_logs(1.0)
    first = np.unique(logs.user * logs.num_items + logs.item, return_index=True)[1]
    once = logs.subset(np.isin(np.arange(logs.num_events), first))  # each user's first choice of each item
    late = once.timestamp > np.quantile(once.timestamp, 0.8)
    known = np.bincount(once.item[~late], minlength=once.num_items) > 0
    # a few late choices of an item the user chose before the split: under 1%, so users still do not repeat
    early_rows = np.flatnonzero(~late & (once.user < 20))[::7][:20]
    again = Logs(**{**vars(once), "user": np.r_[once.user, once.user[early_rows]],
                    "item": np.r_[once.item, once.item[early_rows]],
                    "timestamp": np.r_[once.timestamp, np.full(len(early_rows), once.timestamp.max())],
                    "rating": np.r_[once.rating, once.rating[early_rows]],
                    "click": np.r_[once.click, once.click[early_rows]]})  # fmt: skip
    found = predictive_scale(again, again, FitConfig(**SMALL))
    assert found["held_out_choices"] == int(np.sum(late & known[once.item]))  # the repeats are not scored
    assert 0.7 < found["scale"] < 1.3
    assert found["nll_scaled"] <= min(found["nll_as_fitted"], found["nll_items_only"]) + 1e-6


def test_calibrate_scales_the_users_and_their_drift_and_refits_the_items_bias_to_them():
    logs = taste_logs(0.5)
    found = calibrate(logs, FitConfig(**SMALL))
    fitted = calibrate(logs, FitConfig(**SMALL, predictive_scale=1.0))
    scale = found.fit["predictive_scale"]["scale"]
    assert 0.2 < scale < 0.9  # half the taste carries over
    assert fitted.fit["predictive_scale"] == {"scale": 1.0, "source": "predictive_scale (set)"}
    # the nested fit has its own generator: the main fit is the same, its users' factors times the scale
    np.testing.assert_allclose(found.user_factors, scale * fitted.user_factors, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(found.item_factors, fitted.item_factors)  # only the bias is refitted
    assert found.fit["drift"]["ou_noise"] == pytest.approx(scale * fitted.fit["drift"]["ou_noise"], rel=1e-6)
    assert found.fit["drift"]["factor_noise_variance"] == pytest.approx(
        scale**2 * fitted.fit["drift"]["factor_noise_variance"], rel=1e-6
    )
    # the prior is fitted to the scaled users
    assert found.config.population.interest_scale == pytest.approx(scale * fitted.config.population.interest_scale,
                                                                   rel=0.1)  # fmt: skip
    # users who act less on their factors act more on the items' bias: refitted to them, each item keeps its
    # share of the logged choices, where the fit's bias with the scaled users piles them on its favourites
    logged = np.bincount(logs.item, minlength=logs.num_items) / logs.num_events

    def share_error(factors, bias):
        logits = factors[logs.user] @ found.item_factors.T + bias[None, :]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return 0.5 * np.abs((p / p.sum(axis=1, keepdims=True)).mean(axis=0) - logged).sum()

    refitted, kept = share_error(found.user_factors, found.item_bias), share_error(found.user_factors, fitted.item_bias)
    assert refitted < 0.5 * kept and refitted < 0.03, (refitted, kept)
    assert found.fit["predictive_scale"]["corr_refitted_bias"] > 0.5 and "corr_refitted_bias" not in fitted.fit[
        "predictive_scale"]  # fmt: skip
    halved = calibrate(logs, FitConfig(**SMALL, predictive_scale=0.5))
    np.testing.assert_allclose(halved.user_factors, 0.5 * fitted.user_factors, rtol=1e-5, atol=1e-6)


def test_logs_that_cannot_tell_keep_the_factors_as_fitted_and_say_why():
    logs = taste_logs(1.0, users=10, per_user=40, items=20)  # 80 held-out choices, every item seen before
    few = predictive_scale(logs, logs, FitConfig(**SMALL))
    assert few == {"scale": 1.0, "source": "as fitted: 80 held-out choices by users and of items the early fit "
                   "knows (at least 100 are needed)"}  # fmt: skip
    same_time = Logs(**{**vars(logs), "timestamp": np.zeros(logs.num_events)})
    tied = predictive_scale(same_time, same_time, FitConfig(**SMALL))
    assert tied["scale"] == 1.0 and "share the last timestamp" in tied["source"]


@pytest.mark.parametrize(
    "field, value", [("predictive_scale", -0.1), ("predictive_holdout", 0.0), ("predictive_holdout", 1.0)]
)
def test_bad_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        FitConfig(**{field: value})
