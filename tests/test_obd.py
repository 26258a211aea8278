"""The Open Bandit Dataset's layout, both ways (``load_logs(path, "obd")`` and ``simulate-logs --format obd``), and
``bts``, the Bernoulli Thompson sampling recommender that logged half of that dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from metarec.agents.base import UserDraws
from metarec.agents.baselines.popularity import BernoulliTSRecommender, gamma_draws
from metarec.cli import main

pytest.importorskip("pandas")

HEADER = ",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,user-item_affinity_0"
ROWS = [  # two segments (a|x and b|x); the second slate of a|x at 00:00:09 shows two items
    "0,2019-11-24 00:00:05.5+00:00,3,1,0,0.0125,a,x,0",
    "1,2019-11-24 00:00:07+00:00,1,2,1,0.0125,b,x,0",
    "2,2019-11-24 00:00:09+00:00,3,1,0,0.0125,a,x,0",
    "3,2019-11-24 00:00:09+00:00,2,2,1,0.0125,a,x,0",
]
ITEMS = [",item_id,item_feature_0,item_feature_1", "0,1,0.5,red", "1,2,-1.0,blue", "2,3,2.0,red"]


def write(folder: Path, rows: list[str], items: list[str] | None = ITEMS, header: str = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "all.csv").write_text("\n".join([header, *rows]) + "\n")
    if items is not None:
        (folder / "item_context.csv").write_text("\n".join(items) + "\n")
    return folder


def test_segments_are_users_and_item_categories_are_one_hot(tmp_path):
    from metarec.calibration.logs import load_logs

    logs = load_logs(write(tmp_path / "all", ROWS), "obd")
    assert list(logs.user_ids) == ["a|x", "b|x"] and list(logs.item_ids) == [3, 1, 2]
    assert logs.user.tolist() == [0, 1, 0, 0] and logs.item.tolist() == [0, 1, 0, 2]
    assert logs.click.tolist() == [0, 1, 0, 1] and not logs.has_ratings and logs.position.tolist() == [0, 1, 0, 1]
    assert logs.subset(logs.click > 0).position.tolist() == [1, 1]
    assert logs.timestamp[0] == pytest.approx(1574553605.5) and logs.timestamp[3] - logs.timestamp[0] == 3.5
    assert logs.feature_names == ("item_feature_0", "item_feature_1=blue", "item_feature_1=red")
    # rows of the item table by the log's item codes (3, 1, 2)
    assert logs.item_features.tolist() == [[2.0, 0, 1], [0.5, 0, 1], [-1.0, 1, 0]]
    same = load_logs(tmp_path / "all" / "all.csv", "obd")  # the file itself, the item file found beside it
    assert np.array_equal(same.item_features, logs.item_features)


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (HEADER.replace("user_feature_0,user_feature_1", "feature_0,feature_1"), ROWS,
         r"no user_feature_\* column; expected at least one \(the dataset has no user ids"),
        (HEADER, [ROWS[0].replace(",3,1,0,", ",3,0,0,")], r"column 'position', line 2: expected an integer >= 1"),
        (HEADER, [ROWS[0].replace("0.0125", "1.5")], r"column 'propensity_score', line 2: expected a probability"),
        (HEADER, [ROWS[0].replace(",3,1,0,", ",3,1,2,")], r"column 'click', line 2: expected 0 or 1, got '2'"),
        (HEADER, [ROWS[0].replace("a,x", ",x")], r"column 'user_feature_0', line 2: expected a user feature"),
        (HEADER.replace("item_id", "item"), ROWS, r"missing column 'item_id'"),
    ],
)  # fmt: skip
def test_bad_logs_name_the_file_column_and_line(tmp_path, header, rows, message):
    from metarec.calibration.logs import load_logs

    with pytest.raises(ValueError, match=message):
        load_logs(write(tmp_path / "all", rows, header=header), "obd")


def test_a_campaign_folder_holds_its_own_log(tmp_path):
    from metarec.calibration.logs import load_logs

    folder = tmp_path / "men"
    write(folder, ROWS)
    (folder / "all.csv").rename(folder / "men.csv")
    logs = load_logs(folder, "obd")
    assert logs.num_events == 4 and logs.feature_names[0] == "item_feature_0"


def test_bad_paths_and_item_files_are_named(tmp_path):
    from metarec.calibration.logs import load_logs

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: expected a directory holding empty.csv or all.csv"):
        load_logs(tmp_path / "empty", "obd")
    folder = write(tmp_path / "all", ROWS, items=[",item,item_feature_0", "0,1,0.5"])
    with pytest.raises(ValueError, match=r"item_context.csv: missing column 'item_id'"):
        load_logs(folder, "obd")
    write(folder, ROWS, items=[",item_id,item_feature_0", "0,1,0.5", "1,1,0.7"])
    with pytest.raises(ValueError, match=r"item 1 appears twice, on line 2 and line 3"):
        load_logs(folder, "obd")


def test_simulated_obd_logs_read_back_as_the_simulation_made_them(tmp_path, capsys):
    import pandas as pd

    from metarec.calibration.logs import load_logs
    from metarec.calibration.offline import collect

    users, days, seed = 12, 1, 5
    out = tmp_path / "random" / "all.csv"
    assert main(["simulate-logs", "--format", "obd", "--out", str(out), "--users", str(users), "--days", str(days),
                 "--seed", str(seed), "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    table = collect("metarec/DriftingUsers-v0", users, days, seed=seed)["impressions"]
    frame = pd.read_csv(out, index_col=0)
    assert len(frame) == summary["impressions"] == len(table["user"])
    assert frame.columns[5] == "user_feature_0" and frame.columns[-1] == "user-item_affinity_999"
    # the affinity columns count the user's clicks of each item on earlier slates
    affinity = frame.filter(like="user-item_affinity_").to_numpy()
    user, item, stamp = (frame[c].to_numpy() for c in ("user_feature_0", "item_id", "timestamp"))
    clicked = frame["click"].to_numpy() == 1
    assert affinity.sum() > 0
    for row in np.linspace(0, len(frame) - 1, 25).astype(int):
        earlier = clicked & (user == user[row]) & (stamp < stamp[row])
        assert np.array_equal(affinity[row], np.bincount(item[earlier], minlength=1000)), row
    logs = load_logs(out.parent, "obd")
    order = np.lexsort((table["position"], table["timestamp"], table["user"]))
    read = np.lexsort((frame["position"].to_numpy(), logs.timestamp, logs.user_ids[logs.user].astype(int)))
    assert np.array_equal(logs.user_ids[logs.user][read].astype(int), table["user"][order])
    assert np.array_equal(logs.item_ids[logs.item][read], table["item"][order])
    assert np.array_equal(logs.click[read], table["click"][order])
    assert np.allclose(logs.timestamp[read] - logs.timestamp.min(), table["timestamp"][order], atol=1e-5)
    assert logs.feature_names == tuple(f"item_feature_{j}" for j in range(17))
    # a second run refuses to overwrite the item file it would write beside --out
    (tmp_path / "random" / "all.csv").unlink()
    assert main(["simulate-logs", "--format", "obd", "--out", str(out), "--users", "2", "--days", "1"]) == 2
    assert "item_context.csv exists; pass --overwrite" in capsys.readouterr().err and not out.exists()
    clash = tmp_path / "other" / "item_context.csv"
    assert main(["simulate-logs", "--format", "obd", "--out", str(clash), "--users", "2", "--days", "1"]) == 2
    assert "out: item_context.csv is the item file --format obd writes beside the log" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [0.2, 1.0, 3.5, 250.0])
def test_gamma_draws_follow_the_gamma_distribution(shape):
    generator = torch.Generator().manual_seed(1)
    draws = gamma_draws(torch.full((4000, 5), shape, dtype=torch.float64), UserDraws(generator, 4000), 6)
    assert stats.kstest(draws.numpy().ravel(), stats.gamma(shape).cdf).pvalue > 1e-3


def test_bts_draws_each_candidate_from_its_beta_posterior_and_shows_the_highest():
    from metarec.parallel import EXACT_SCALE

    generator = torch.Generator().manual_seed(2)
    agent = BernoulliTSRecommender(2, 4, generator)
    agent.table[0] = torch.tensor([3, 0, 40, 0], dtype=torch.int64) * EXACT_SCALE  # clicks (fixed point)
    agent.table[1] = torch.tensor([10, 0, 100, 1000], dtype=torch.int64)  # impressions
    posteriors = [(4, 8), (1, 1), (41, 61), (1, 1001)]  # Beta(1 + clicks, 1 + impressions - clicks)
    ids = torch.arange(4).expand(5000, 4)
    scores = agent.score_draws(agent.successes[ids], agent.impressions[ids], UserDraws(generator, 5000))
    for item, (a, b) in enumerate(posteriors):
        assert stats.kstest(scores[:, item].numpy(), stats.beta(a, b).cdf).pvalue > 1e-3
    slate = agent.act({"candidate_ids": ids, "candidates": torch.zeros(5000, 4, 1)}, {})
    first = torch.bincount(slate[:, 0], minlength=4).double().numpy() / 5000
    # P(item i leads the slate) = P(its draw is the highest), by Monte Carlo from scipy's Beta
    sample = np.stack([stats.beta(a, b).rvs(400_000, random_state=np.random.default_rng(i))
                       for i, (a, b) in enumerate(posteriors)])  # fmt: skip
    expected = np.bincount(sample.argmax(axis=0), minlength=4) / 400_000
    assert np.all(np.abs(first - expected) < 4 * np.sqrt(expected * (1 - expected) / 5000) + 2e-3), (first, expected)
    assert expected[1] > 0.4 and expected[3] < 0.01  # the unseen item often leads; the item seen 1000 times never
