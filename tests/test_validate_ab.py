"""``metarec validate-ab``: the lift two policies' logs show, the lift the simulator calibrated on the control's
logs alone predicts, and the fit's use of impressions that the prediction rests on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp

from metarec.calibration.logs import Logs
from metarec.cli import main

pytest.importorskip("pandas")
pytest.importorskip("sklearn")


def impressions(ctr: np.ndarray, users: int, rows_per_user: int, seed: int) -> Logs:
    """A log of single-item slates, each item shown uniformly at random and clicked with its rate ``ctr``."""
    rng = np.random.default_rng(seed)
    n = users * rows_per_user
    user = np.repeat(np.arange(users), rows_per_user)
    item = rng.integers(0, len(ctr), n)
    click = (rng.random(n) < ctr[item]).astype(np.float32)
    return Logs(user, item, np.arange(n, dtype=np.float64), np.full(n, np.nan, np.float32), click,
                np.arange(users), np.arange(len(ctr)), None, None)  # fmt: skip


def item_pull(calibration) -> np.ndarray:
    """log of each item's mean exp(utility + appeal) over the fitted population (see item_ctr_correction)."""
    world, spread = calibration.world, calibration.config.population.cluster_spread
    v = world["item_embedding"].astype(np.float64)
    terms = np.log(world["cluster_weight"])[:, None] + world["cluster_centre"] @ v.T + 0.5 * spread**2 * (v**2).sum(1)
    return world["item_quality"] + world["item_appeal"] + logsumexp(terms, axis=0)


def test_items_draw_clicks_as_their_shrunk_click_through_rates_say():
    from metarec.calibration.fit import FitConfig, calibrate

    ctr = np.where(np.arange(40) < 20, 0.02, 0.005)  # two groups of items, 4x apart
    logs = impressions(ctr, users=300, rows_per_user=400, seed=0)
    config = FitConfig(num_candidates=20, epochs=5, refit_steps=50)
    fitted = calibrate(logs, config)
    about = fitted.fit["ctr_from_impressions"]
    assert about["items_shown"] == 40 and about["click_rate"] == pytest.approx(logs.click.mean())
    pull = item_pull(fitted)
    gap = pull[:20].mean() - pull[20:].mean()
    assert gap == pytest.approx(np.log(4), abs=0.25), gap  # 3,000 rows an item: little shrinkage
    assert about["rate_rel_error_after"] < 0.02  # the simulator's random slates click each item at its rate
    # without it, the softmax over clicks alone spreads the items by their click counts' noise as well
    plain = calibrate(logs, config.model_copy(update={"ctr_from_impressions": False}))
    assert plain.fit["ctr_from_impressions"] is None
    within = [np.std(item_pull(c)[:20]) for c in (fitted, plain)]
    assert within[0] < within[1], within


def test_items_rates_are_matched_where_slates_are_clicked_often():
    from metarec.calibration.fit import FitConfig, calibrate

    # half the rows clicked: the items of a simulated slate compete for its one click, so an item's rate is not
    # proportional to its pull; the rounds on the simulator's own slates match the rates all the same
    ctr = np.where(np.arange(40) < 20, 0.6, 0.3)
    fitted = calibrate(impressions(ctr, users=200, rows_per_user=300, seed=4),
                       FitConfig(num_candidates=20, epochs=5, refit_steps=50))  # fmt: skip
    about = fitted.fit["ctr_from_impressions"]
    assert about["rate_rel_error_after"] < min(0.01, about["rate_rel_error_before"] / 3), about


def test_items_shown_a_few_times_weigh_little_in_the_prior():
    from metarec.calibration.fit import FitConfig, calibrate

    # six items shown twice and clicked once each, one shown thirty times and never clicked, the rest shown often
    rng = np.random.default_rng(7)
    item = np.r_[np.repeat(np.arange(6), 2), np.full(30, 6), rng.integers(7, 30, 3000)]
    click = np.r_[np.tile([1.0, 0.0], 6), np.zeros(30), (rng.random(3000) < 0.05)].astype(np.float32)
    n = len(item)
    user = rng.integers(0, 60, n)
    logs = Logs(user, item, np.arange(n, dtype=np.float64), np.full(n, np.nan, np.float32), click, np.arange(60),
                np.arange(30), None, None)  # fmt: skip
    fitted = calibrate(logs, FitConfig(num_candidates=20, epochs=3, refit_steps=20))
    about = fitted.fit["ctr_from_impressions"]
    assert about["prior_strength_rows"] is None or about["prior_strength_rows"] >= 1
    assert np.isfinite(fitted.world["item_quality"]).all()
    pull = item_pull(fitted)
    assert abs(pull[:6].mean() - pull[7:].mean()) < 1.0  # half the rows clicked, in two rows: barely above the rest


def test_items_alike_in_their_rates_are_shrunk_together():
    from metarec.calibration.fit import FitConfig, calibrate

    logs = impressions(np.full(30, 0.01), users=100, rows_per_user=100, seed=1)  # about 3 clicks an item
    fitted = calibrate(logs, FitConfig(num_candidates=20, epochs=20, refit_steps=50))
    about = fitted.fit["ctr_from_impressions"]
    assert about["pull_sd_before"] > 0.5 and about["pull_sd_after"] < 0.25 * about["pull_sd_before"], about


def test_observed_lift_is_the_ratio_of_rates_with_users_resampled():
    from metarec.calibration.validate_ab import observed_lift

    control = impressions(np.full(10, 0.05), users=200, rows_per_user=50, seed=2)
    treatment = impressions(np.full(10, 0.075), users=200, rows_per_user=50, seed=3)
    lift = observed_lift(control, treatment, bootstrap=500, alpha=0.05, seed=0)
    assert lift["lift"] == pytest.approx(treatment.click.mean() / control.click.mean() - 1)
    low, high = lift["ci"]
    assert low < lift["lift"] < high and low < 0.5 < high and high - low < 0.6
    assert observed_lift(control, treatment, bootstrap=500, alpha=0.05, seed=0) == lift  # seeded


def _write_log(path: Path, agent: str, seed: int) -> None:
    import pandas as pd

    from metarec.calibration.offline import collect

    rows = collect("metarec/DriftingUsers-v0", 20, 1, seed=seed, agent=agent,
                   env_kwargs={"catalog": {"num_items": 60}})["impressions"]  # fmt: skip
    frame = pd.DataFrame({key: rows[key] for key in ("user", "item", "timestamp", "click")})
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ab_logs")
    _write_log(folder / "control.csv", "random", 0)
    _write_log(folder / "treatment.csv", "popular-ctr", 1)
    return folder / "control.csv", folder / "treatment.csv"


def test_validate_ab_predicts_a_lift_beside_the_observed_one(logs, tmp_path, capsys):
    control, treatment = logs
    out = tmp_path / "out"
    argv = ["validate-ab", str(control), str(treatment), "--format", "csv", "--arms", "random,popular-ctr",
            "--out", str(out), "--set", "replicates=5", "--set", "fit.epochs=5", "--set", "fit.refit_steps=50",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((out / "validate_ab.json").read_text())
    observed, predicted = result["observed"], result["predicted"]
    assert observed["lift"] == pytest.approx(result["treatment"]["ctr"] / result["control"]["ctr"] - 1)
    assert observed["ci"][0] <= observed["lift"] <= observed["ci"][1]
    assert predicted["replicates"] == 5 and predicted["unit"] == "replicate" and predicted["days"] == 1
    assert predicted["ci"][0] <= predicted["lift"] <= predicted["ci"][1]
    assert predicted["lift"] == pytest.approx(predicted["ctr"]["treatment"] / predicted["ctr"]["control"] - 1)
    # each arm shows about as many slates as the treatment's log holds, in sessions as long as its users' were
    slates = result["treatment"]["slates"]
    assert predicted["slates_per_user"] == -(-slates // result["treatment"]["users"])
    assert predicted["session_length_probe"] <= predicted["slates_per_user"]
    assert all(0.5 * slates < n < 2 * slates for n in predicted["slates_per_replicate"].values())
    assert result["fit"]["slate_size"] == 5 and result["fit"]["num_candidates"] == 60
    assert set(result["agreement"]) == {"error", "observed_in_predicted_ci", "intervals_overlap", "same_sign"}
    assert (out / "population" / "population.json").is_file() and (out / "abtest" / "results.json").is_file()
    abtest = json.loads((out / "abtest" / "results.json").read_text())
    assert abtest["env"] == "metarec/Calibrated-v0" and abtest["shared_state_arms"] == ["treatment"]


def test_the_fit_halves_interval_is_centred_on_the_whole_logs_lift(logs, tmp_path, capsys):
    from scipy import stats

    control, treatment = logs
    argv = ["validate-ab", str(control), str(treatment), "--format", "csv", "--arms", "random,popular-ctr",
            "--out", str(tmp_path / "out"), "--set", "replicates=5", "--set", "fit.epochs=3", "--set",
            "fit.refit_steps=20", "--set", "fit_halves=10", "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    predicted, users = result["predicted"], result["control"]["users"]
    lifts = np.array(predicted["half_lifts"])
    assert len(lifts) == 10 and len(np.unique(lifts)) > 1 and "10 calibrations on halves" in predicted["interval"]
    half_width = stats.t.ppf(0.975, 9) * np.sqrt((users // 2) / (users - users // 2) * lifts.var(ddof=1))
    assert predicted["ci"] == pytest.approx([predicted["lift"] - half_width, predicted["lift"] + half_width])
    assert len(list((tmp_path / "out" / "halves").glob("*/population/population.json"))) == 10
    # again into the same folder with no refits: the earlier refits are gone, not mixed in
    argv[argv.index("fit_halves=10")] = "fit_halves=0"
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["predicted"]["half_lifts"] is None
    assert not (tmp_path / "out" / "halves").exists()


def test_half_of_the_users_are_distinct_users_with_every_row():
    from metarec.calibration.validate_ab import half_of_users

    logs = impressions(np.full(5, 0.3), users=7, rows_per_user=4, seed=5)
    drawn = half_of_users(logs, np.random.default_rng(0))
    assert drawn.num_users == 3 and drawn.num_events == 12 and np.array_equal(np.bincount(drawn.user), [4] * 3)
    originals = [int(logs.user[(logs.timestamp == drawn.timestamp[drawn.user == u][0])][0]) for u in range(3)]
    assert len(set(originals)) == 3 and originals == sorted(originals)  # without replacement, in their old order
    for u, original in enumerate(originals):
        mine, theirs = drawn.user == u, logs.user == original
        assert np.array_equal(drawn.item[mine], logs.item[theirs])
        assert np.array_equal(drawn.click[mine], logs.click[theirs])
    other = half_of_users(logs, np.random.default_rng(1))
    assert not np.array_equal(other.timestamp, drawn.timestamp)  # another draw, other users


def test_the_half_sample_interval_covers_a_mean_as_often_as_it_says():
    from metarec.calibration.validate_ab import half_sample_interval

    # the arithmetic: r / d = 2 / 3 for 5 users, t on 1 degree of freedom for two halves
    low, high = half_sample_interval(0.1, [0.0, 0.2], users=5, alpha=0.05)
    width = 12.706204736 * np.sqrt(2 / 3 * 0.02)
    assert (low, high) == pytest.approx((0.1 - width, 0.1 + width))
    assert np.isnan(half_sample_interval(0.1, [0.3], users=5, alpha=0.05)).all()
    # coverage of the mean of 200 skewed values by 20 halves, over 400 samples: 95% nominal
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(400):
        x = rng.exponential(1.0, 200)
        halves = [float(x[rng.choice(200, 100, replace=False)].mean()) for _ in range(20)]
        low, high = half_sample_interval(float(x.mean()), halves, 200, 0.05)
        covered += low <= 1.0 <= high
    assert 0.91 <= covered / 400 <= 0.99


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--arms", "random,nope"], "--arms: expected CONTROL,TREATMENT, two recommenders among"),
        (["--arms", "random"], "--arms: expected CONTROL,TREATMENT"),
        (["--set", "replicates=3"], "replicates: expected at least 5"),
        (["--set", "bootstrap=5"], "bootstrap"),
        (["--set", "fit.nope=1"], "fit.nope"),
        (["--set", "fit_halves=3"], "fit_halves: expected 0 or at least 10, got 3"),
        (["--set", "fit_bootstrap=10"], "fit_bootstrap: replaced by fit_halves (calibrations on halves of the users"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(logs, tmp_path, capsys, extra, message):
    control, treatment = logs
    out = tmp_path / "out"
    assert main(["validate-ab", str(control), str(treatment), "--format", "csv", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_missing_logs_and_logs_of_clicks_only_are_named(logs, tmp_path, capsys):
    control, _ = logs
    out = tmp_path / "out"
    assert main(["validate-ab", str(control), str(tmp_path / "none.csv"), "--format", "csv", "--out", str(out)]) == 2
    assert "treatment: no such file or directory" in capsys.readouterr().err and not out.exists()
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("user,item,timestamp,click\n1,2,10,1\n1,3,11,1\n2,2,12,1\n")
    assert main(["validate-ab", str(clicks), str(control), "--format", "csv", "--out", str(out)]) == 2
    assert "control: every row is a click; expected the rows the policy showed" in capsys.readouterr().err
    assert not out.exists()
    too_many = ["--set", "num_candidates=1000"]  # the logs hold 60 items
    assert main(["validate-ab", str(control), str(control), "--format", "csv", "--out", str(out), *too_many]) == 2
    assert "num_candidates: expected at most the logs' 60 items, got 1000" in capsys.readouterr().err
    assert not out.exists()


def test_slates_are_as_long_as_the_last_position_a_sampled_log_shows():
    import dataclasses

    from metarec.calibration.validate_ab import ValidateABConfig, logged_slates, longest_slate, slate_plan

    logs = impressions(np.full(5, 0.3), users=4, rows_per_user=6, seed=6)  # a row a slate
    assert longest_slate(logs) == 1
    positions = np.tile(np.arange(3), 8)  # rows sampled from slates of three
    sampled = dataclasses.replace(logs, position=positions)
    assert longest_slate(sampled) == 3
    config = ValidateABConfig()
    plan = slate_plan(sampled, config)
    assert plan == {"slate_size": 3, "num_candidates": 5, "rows_sampled": True}
    assert logged_slates(sampled, plan) == 24 / 3  # a slate is three rows
    whole = dataclasses.replace(sampled, timestamp=np.repeat(np.arange(8.0), 3))  # every slate there whole
    assert slate_plan(whole, config)["rows_sampled"] is False
    assert logged_slates(whole, plan | {"rows_sampled": False}) == 8
    with pytest.raises(ValueError, match="slate_size: 3 is more than the 2 candidates"):
        slate_plan(sampled, ValidateABConfig(num_candidates=2))
