"""``metarec simulate-logs --format parquet|obd|obp|minari``: impression-level offline datasets with the logging
policy's propensities, readable by the tools each format is for."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from metarec.cli import main

pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

USERS, DAYS = 40, 2
COMMON = ["--users", str(USERS), "--days", str(DAYS), "--seed", "3", "--json"]


def simulate(tmp_path: Path, capsys, fmt: str, out: str, *extra: str) -> dict:
    assert main(["simulate-logs", "--format", fmt, "--out", str(tmp_path / out), *COMMON, *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    import pyarrow.parquet as pq

    from metarec.calibration.offline import collect, write_offline

    out = tmp_path_factory.mktemp("offline") / "impressions.parquet"
    data = collect("metarec/DriftingUsers-v0", USERS, DAYS, seed=3)
    write_offline("parquet", data, out, {"agent": "random"})
    return pq.read_table(out), data


def test_parquet_impressions_hold_one_slate_per_user_step_and_a_true_propensity(parquet):
    table, data = parquet
    frame = table.to_pandas()
    assert {"user", "slate", "timestamp", "position", "item", "candidate", "click", "engagement", "rating",
            "propensity", "context", "offered"} == set(frame.columns)  # fmt: skip
    about = json.loads(table.schema.metadata[b"metarec"])
    assert about["agent"] == "random" and about["impressions"] == len(frame)
    per_slate = frame.groupby("slate")
    assert (per_slate.size() == 5).all() and (per_slate["click"].sum() <= 1).all()
    assert per_slate["position"].apply(lambda p: sorted(p) == [0, 1, 2, 3, 4]).all()
    assert all(item in offered for item, offered in zip(frame["item"], frame["offered"], strict=True))
    assert (per_slate["user"].nunique() == 1).all() and (per_slate["timestamp"].nunique() == 1).all()
    clicked = frame["click"] == 1
    assert (frame.loc[~clicked, "engagement"] == 0).all() and (frame.loc[clicked, "engagement"] > 0).any()
    assert frame.loc[~clicked, "rating"].isna().all() and frame.loc[clicked, "rating"].between(0, 1).all()
    assert np.allclose(frame["propensity"], 1 / 20) and data["propensity_known"]
    assert len(frame["context"].iloc[0]) == 10 * 19  # the history window, flattened
    # the propensity is true: a uniformly random slate puts every candidate at the first position with 1 / N
    first = frame.loc[frame["position"] == 0, "candidate"].to_numpy()
    counts = np.bincount(first, minlength=20)
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_obp_bandit_feedback_is_npz_with_obps_schema_and_its_estimators_take_it(tmp_path, capsys):
    summary = simulate(tmp_path, capsys, "obp", "feedback.npz")
    with np.load(tmp_path / "feedback.npz", allow_pickle=False) as archive:  # plain arrays: no pickle
        feedback = {key: archive[key] for key in archive.files}
    for key in ("n_rounds", "n_actions", "len_list"):
        feedback[key] = int(feedback[key])
    n = feedback["n_rounds"]
    assert n == summary["impressions"] and feedback["len_list"] == 5
    assert feedback["action"].shape == feedback["position"].shape == feedback["reward"].shape == (n,)
    assert feedback["context"].shape == (n, 190) and feedback["action_context"].shape[0] == feedback["n_actions"]
    assert feedback["action"].max() < feedback["n_actions"] and set(np.unique(feedback["position"])) == set(range(5))
    assert np.allclose(feedback["pscore"], 1 / 20) and set(np.unique(feedback["reward"])) <= {0.0, 1.0}
    assert (feedback["offered"] == feedback["action"][:, None]).any(axis=1).all()
    obp = pytest.importorskip("obp.ope", reason="Open Bandit Pipeline (the offline extra) is not installed")
    # IPW of the logging policy itself (uniform over each round's 20 candidates, at every position) is the
    # logged click rate; the first 400 rounds keep the action distribution small
    part = {k: (v[:400] if isinstance(v, np.ndarray) and v.ndim and len(v) == n else v) for k, v in feedback.items()}
    part["n_rounds"] = 400
    action_dist = np.zeros((400, feedback["n_actions"], 5))
    action_dist[np.arange(400)[:, None], part["offered"], :] = 1 / 20
    ope = obp.OffPolicyEvaluation(bandit_feedback=part, ope_estimators=[obp.InverseProbabilityWeighting()])
    estimate = ope.estimate_policy_values(action_dist=action_dist)["ipw"]
    assert estimate == pytest.approx(part["reward"].mean())


def test_obd_layout_is_the_open_bandit_datasets(tmp_path, capsys):
    import pandas as pd

    summary = simulate(tmp_path, capsys, "obd", "obd.csv", "--agent", "oracle")
    frame = pd.read_csv(tmp_path / "obd.csv", index_col=0)
    assert list(frame.columns[:5]) == ["timestamp", "item_id", "position", "click", "propensity_score"]
    assert list(frame.columns[5:7]) == ["user_feature_0", "user-item_affinity_0"]  # the user's id, past clicks
    items = pd.read_csv(tmp_path / "item_context.csv", index_col=0)
    assert list(items.columns[:2]) == ["item_id", "item_feature_0"] and items["item_id"].tolist() == list(range(1000))
    assert len(frame) == summary["impressions"] and set(frame["position"]) == {1, 2, 3, 4, 5}
    assert (frame["propensity_score"] == 1.0).all()  # the oracle is deterministic
    assert pd.to_datetime(frame["timestamp"]).dt.tz is not None


def test_minari_dataset_loads_with_minari(tmp_path, capsys, monkeypatch):
    minari = pytest.importorskip("minari", reason="Minari (the offline extra) is not installed")
    summary = simulate(tmp_path, capsys, "minari", "dataset")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "dataset"))
    dataset = minari.load_dataset(summary["dataset_id"])
    assert dataset.total_episodes == USERS and dataset.total_steps == summary["slates"]
    episode = next(iter(dataset))
    steps = len(episode.actions)
    assert episode.actions.shape == (steps, 5) and episode.observations["candidates"].shape == (steps + 1, 20, 17)
    ended = episode.terminations | episode.truncations
    assert ended[-1] and not ended[:-1].any()
    # the last observation is the one the env gave after the user's last slate (fresh candidates), not a repeat
    assert not np.array_equal(episode.observations["candidate_ids"][-1], episode.observations["candidate_ids"][-2])
    clicked = episode.infos["clicked"]
    assert len(clicked) == steps + 1 and not clicked[0]  # the reset's info, then each step's
    assert ((episode.rewards > 0) == clicked[1:]).all()


def test_bad_offline_requests_are_refused_before_any_work(tmp_path, capsys):
    cases = [
        (["--format", "obp", "--out", str(tmp_path / "x.csv")], "out: expected a name ending in .npz for --format obp"),
        (["--format", "minari", "--out", str(tmp_path / "x.npz")], "expected a name without a suffix"),
        (["--format", "obp", "--agent", "linucb", "--out", str(tmp_path / "x.npz")],
         "agent: linucb's propensities are unknown"),
        (["--format", "generic", "--out", str(tmp_path / "x.npz")], "ending in .csv or .parquet"),
        (["--format", "minari", "--out", str(tmp_path / "m"), "--env", "metarec/RecSimInterestEvolution-v0"],
         "env: metarec/RecSimInterestEvolution-v0 has no catalog ids"),
        (["--format", "parquet", "--out", str(tmp_path / "x.parquet"), "--agent", "nope"], "agent: expected one of"),
        (["--format", "parquet", "--out", str(tmp_path / "x.parquet"), "--env-kwargs", '{"array_backend": "numpy"}'],
         "env_kwargs.array_backend: set by metarec"),
    ]  # fmt: skip
    for extra, message in cases:
        assert main(["simulate-logs", "--users", "5", "--days", "1", *extra]) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
