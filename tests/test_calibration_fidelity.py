"""Fidelity metrics of simulated against real logs: hand-computed values, the chunked ranking metrics against a
full-sort reference, compare()'s keys and Nones, and the report's files and met / not-met lines."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from metarec.calibration.fidelity import (
    activity_summary,
    compare,
    gini,
    head_share,
    ks_distance,
    popularity_scores,
    ranking_metrics,
    topic_share_drift,
)
from metarec.calibration.report import targets, write_fidelity_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------------------------------------------------
# distributions


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([1, 1, 1, 1], 0.0),
        ([0, 0, 0, 4], 0.75),
        ([4, 0, 0, 0], 0.75),  # order does not matter
        ([1, 2, 3], 2 / 9),  # mean absolute difference 8/9 over twice the mean 2 * 2
        ([0, 0, 0, 0], 0.0),
        ([7], 0.0),
    ],
)
def test_gini_hand_computed(counts: list[int], expected: float) -> None:
    assert gini(np.array(counts)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("counts", [[], [1, -1], [1.0, math.nan], [[1, 2]]])
def test_gini_rejects_invalid_counts(counts: list) -> None:
    with pytest.raises(ValueError, match="counts"):
        gini(np.array(counts, dtype=float))


@pytest.mark.parametrize(
    ("counts", "fraction", "expected"),
    [
        ([10, 0, 0, 0, 0], 0.2, 1.0),
        ([1, 2, 3, 4, 10], 0.2, 0.5),  # top 1 of 5: 10 / 20
        ([1, 2, 3, 4, 10], 0.4, 0.7),  # top 2: (10 + 4) / 20
        ([1, 2, 3, 4, 10], 0.01, 0.5),  # at least one item
        ([1, 2, 3, 4, 10], 1.0, 1.0),
        ([1] * 30, 0.1, 0.1),  # 0.1 * 30 is 3 items, not 4
        ([5], 0.2, 1.0),
    ],
)
def test_head_share_hand_computed(counts: list[int], fraction: float, expected: float) -> None:
    assert head_share(np.array(counts), fraction) == pytest.approx(expected)


def test_head_share_edge_cases() -> None:
    assert math.isnan(head_share(np.zeros(4)))
    with pytest.raises(ValueError, match="head_fraction"):
        head_share(np.ones(4), 0.0)


def test_ks_distance_identical_shifted_and_nan() -> None:
    rng = np.random.default_rng(0)
    sample = rng.normal(size=2000)
    assert ks_distance(sample, sample.copy()) == 0.0
    assert ks_distance(sample, sample + 5.0) > 0.9
    assert ks_distance(np.array([0.0, 1.0, 2.0]), np.array([10.0, 11.0])) == 1.0
    assert ks_distance(np.array([1.0, math.nan, 2.0]), np.array([2.0, 1.0])) == 0.0


@pytest.mark.parametrize(("real", "simulated", "name"), [([], [1.0], "real"), ([1.0], [math.nan], "simulated")])
def test_ks_distance_empty_names_the_argument(real: list[float], simulated: list[float], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}:"):
        ks_distance(np.array(real), np.array(simulated))


def test_activity_summary_hand_computed() -> None:
    summary = activity_summary(np.array([0, 0, 0, 1, 2, 2]), num_users=4)  # user 3 is idle: left out
    assert summary == pytest.approx(
        {"mean": 2.0, "median": 2.0, "p90": 2.8, "single_event_share": 1 / 3, "active_users": 3}
    )
    empty = activity_summary(np.array([], dtype=np.int64), num_users=2)
    assert empty["active_users"] == 0 and math.isnan(empty["mean"])
    with pytest.raises(ValueError, match="user_codes"):
        activity_summary(np.array([0, 4]), num_users=4)


def test_topic_share_drift_constant_mix_is_zero_and_switching_is_positive() -> None:
    # User 0 alternates topics 0 and 1: every chunk of 2 events has shares (0.5, 0.5).
    # User 1 switches from topic 0 to topic 1 halfway: chunk shares 0, 0, 1, 1 of topic 1 -> distances 0, 1, 0.
    # User 2 has 3 events, fewer than the 4 periods: skipped.
    user = np.array([0] * 8 + [1] * 8 + [2] * 3)
    topic = np.array([0, 1] * 4 + [0] * 4 + [1] * 4 + [0, 1, 0])
    timestamp = np.r_[np.arange(8), np.arange(8), np.arange(3)].astype(float)
    shuffle = np.random.default_rng(1).permutation(user.size)  # the log order must not matter, only the time
    user, topic, timestamp = user[shuffle], topic[shuffle], timestamp[shuffle]

    constant = user == 0
    assert topic_share_drift(user[constant], topic[constant], timestamp[constant], num_topics=3) == 0.0
    switching = user == 1
    assert topic_share_drift(user[switching], topic[switching], timestamp[switching], num_topics=3) == pytest.approx(
        1 / 3
    )
    assert topic_share_drift(user, topic, timestamp, num_topics=3) == pytest.approx(1 / 6)
    assert topic_share_drift(user, topic, timestamp, num_topics=3, num_periods=2) == pytest.approx(0.5)


def test_topic_share_drift_nan_without_enough_events_and_errors() -> None:
    user, topic, timestamp = np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([1.0, 2.0, 3.0])
    assert math.isnan(topic_share_drift(user, topic, timestamp, num_topics=2))
    assert math.isnan(topic_share_drift(user[:0], topic[:0], timestamp[:0], num_topics=2))
    with pytest.raises(ValueError, match="topic"):
        topic_share_drift(user, np.array([0, 1, 2]), timestamp, num_topics=2)
    with pytest.raises(ValueError, match="num_periods"):
        topic_share_drift(user, topic, timestamp, num_topics=2, num_periods=1)
    with pytest.raises(ValueError, match="timestamp"):
        topic_share_drift(user, topic, timestamp[:2], num_topics=2)


# ---------------------------------------------------------------------------------------------------------------------
# next-item prediction


def _tiny_example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # item 0 seen: target 2 ranks 2nd
            [0.1, 0.2, 0.3, 0.4, 0.5],  # target 0 ranks 5th
            [0.5, 0.4, 0.3, 0.2, 0.1],  # target -1: skipped
            [0.5, 0.4, 0.3, 0.2, 0.1],  # target 0 ranks 1st
            [0.9, 0.1, 0.1, 0.1, 0.1],  # target 0 already seen: a miss
        ]
    )
    seen = np.zeros_like(scores, dtype=bool)
    seen[0, 0] = seen[4, 0] = True
    return scores, seen, np.array([2, 0, -1, 0, 0])


@pytest.mark.parametrize("chunk_size", [1, 2, 4096])
def test_ranking_metrics_hand_made(chunk_size: int) -> None:
    scores, seen, target = _tiny_example()
    at2 = ranking_metrics(scores, seen, target, k=2, chunk_size=chunk_size)
    assert at2 == pytest.approx({"recall@2": 2 / 4, "ndcg@2": (1 / np.log2(3) + 1.0) / 4, "users": 4})
    at5 = ranking_metrics(scores, seen, target, k=5, chunk_size=chunk_size)
    assert at5 == pytest.approx({"recall@5": 3 / 4, "ndcg@5": (1 / np.log2(3) + 1 / np.log2(6) + 1.0) / 4, "users": 4})
    at10 = ranking_metrics(scores, seen, target, k=10, chunk_size=chunk_size)  # k > M: every item listed
    assert at10 == pytest.approx({"recall@10": 3 / 4, "ndcg@10": at5["ndcg@5"], "users": 4})


def test_ranking_metrics_no_evaluated_user() -> None:
    scores, seen, _ = _tiny_example()
    result = ranking_metrics(scores, seen, np.full(5, -1), k=2)
    assert result["users"] == 0 and math.isnan(result["recall@2"])


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"seen": np.zeros((5, 4), dtype=bool)}, "seen"),
        ({"seen": np.zeros((5, 5), dtype=np.int8)}, "seen"),
        ({"target": np.array([0, 0, 0, 0])}, "target"),
        ({"target": np.array([0, 0, 5, 0, 0])}, "target"),
        ({"target": np.array([0.0, 0, 0, 0, 0])}, "target"),
        ({"scores": np.zeros(5)}, "scores"),
        ({"k": 0}, "k"),
    ],
)
def test_ranking_metrics_errors_name_the_argument(change: dict, name: str) -> None:
    scores, seen, target = _tiny_example()
    arguments = {"scores": scores, "seen": seen, "target": target, "k": 2, **change}
    with pytest.raises(ValueError, match=f"^{name}:"):
        ranking_metrics(**arguments)


def _reference_metrics(scores: np.ndarray, seen: np.ndarray, target: np.ndarray, k: int) -> tuple[float, float]:
    """Recall and NDCG by a full sort of every row (no ties in the scores)."""
    recall, ndcg, users = 0.0, 0.0, 0
    for row in range(scores.shape[0]):
        if target[row] < 0:
            continue
        users += 1
        ranking = [item for item in np.argsort(-scores[row]) if not seen[row, item]]
        if target[row] in ranking[:k]:
            rank = ranking.index(target[row]) + 1
            recall, ndcg = recall + 1, ndcg + 1 / np.log2(rank + 1)
    return recall / users, ndcg / users


def test_ranking_metrics_chunked_equals_unchunked_and_full_sort() -> None:
    rng = np.random.default_rng(2)
    num_users, num_items = 1500, 60
    scores = rng.random((num_users, num_items)).astype(np.float32)
    seen = rng.random((num_users, num_items)) < 0.3
    target = rng.integers(0, num_items, num_users)
    target[rng.random(num_users) < 0.1] = -1

    chunked = ranking_metrics(scores, seen, target, k=10, chunk_size=128)
    unchunked = ranking_metrics(scores, seen, target, k=10, chunk_size=num_users)
    assert chunked == unchunked
    assert chunked["users"] == int(np.sum(target >= 0))
    recall, ndcg = _reference_metrics(scores, seen, target, k=10)
    assert chunked["recall@10"] == pytest.approx(recall)
    assert chunked["ndcg@10"] == pytest.approx(ndcg)


def test_popularity_scores_is_a_view() -> None:
    counts = np.array([5, 1, 9, 3])
    scores = popularity_scores(counts, num_users=1000)
    assert scores.shape == (1000, 4)
    assert np.shares_memory(scores, counts)
    assert not scores.flags.writeable
    seen = np.zeros(scores.shape, dtype=bool)
    seen[:, 2] = True  # the most popular item is seen by everyone: item 0 leads
    result = ranking_metrics(scores, seen, np.zeros(1000, dtype=np.int64), k=1, chunk_size=300)
    assert result == {"recall@1": 1.0, "ndcg@1": 1.0, "users": 1000}


# ---------------------------------------------------------------------------------------------------------------------
# compare


def _log(rng: np.random.Generator, events: int, skew: float, values: str | None = "rating") -> dict:
    num_items, num_users = 50, 40
    popularity = np.arange(1, num_items + 1, dtype=float) ** -skew
    log = {
        "item": rng.choice(num_items, events, p=popularity / popularity.sum()),
        "user": rng.integers(0, num_users, events),
        "num_items": num_items,
        "num_users": num_users,
    }
    if values:
        log[values] = rng.integers(1, 6, events).astype(float)
    return log


BASE_KEYS = {
    "popularity_gini_real",
    "popularity_gini_sim",
    "popularity_gini_rel_error",
    "head_share_real",
    "head_share_sim",
    "activity_mean_real",
    "activity_mean_sim",
    "single_event_users_real",
    "single_event_users_sim",
}


def test_compare_keys_and_values() -> None:
    rng = np.random.default_rng(3)
    real, sim = _log(rng, 2000, 1.0), _log(rng, 2000, 0.5)
    for log in (real, sim):
        log["topic"], log["timestamp"], log["num_topics"] = rng.integers(0, 5, 2000), rng.random(2000), 5
    result = compare(real, sim)
    assert set(result) == BASE_KEYS | {"rating_ks", "topic_drift_real", "topic_drift_sim"}
    assert all(isinstance(value, float) and math.isfinite(value) for value in result.values())
    assert result["popularity_gini_real"] > result["popularity_gini_sim"]  # the real log is more skewed
    error = abs(result["popularity_gini_sim"] - result["popularity_gini_real"]) / result["popularity_gini_real"]
    assert result["popularity_gini_rel_error"] == pytest.approx(error)
    assert result["rating_ks"] < 0.1  # both ratings uniform on 1..5
    json.dumps(result, allow_nan=False)


def test_compare_none_for_what_cannot_be_computed() -> None:
    rng = np.random.default_rng(4)
    real, sim = _log(rng, 300, 1.0, values="engagement"), _log(rng, 300, 1.0, values=None)
    real["item"] = np.zeros(300, dtype=np.int64)
    real["num_items"] = 1  # one item: a real Gini of 0, so no relative error
    real["topic"], real["timestamp"] = rng.integers(0, 3, 300), rng.random(300)
    sim["topic"], sim["timestamp"] = np.zeros(2, dtype=np.int64), np.arange(2.0)  # no user with 4 events
    sim["user"], sim["item"] = sim["user"][:2], sim["item"][:2]
    result = compare(real, sim)
    assert set(result) == BASE_KEYS | {"engagement_ks", "topic_drift_real", "topic_drift_sim"}
    assert result["engagement_ks"] is None
    assert result["popularity_gini_real"] == 0.0 and result["popularity_gini_rel_error"] is None
    assert result["topic_drift_sim"] is None and isinstance(result["topic_drift_real"], float)
    json.dumps(result, allow_nan=False)

    without_topics = compare(_log(rng, 100, 1.0), _log(rng, 100, 1.0))
    assert set(without_topics) == BASE_KEYS | {"rating_ks"}
    with pytest.raises(ValueError, match=re.escape("simulated['item']")):
        compare(_log(rng, 100, 1.0), {**_log(rng, 100, 1.0), "num_items": 2})


# ---------------------------------------------------------------------------------------------------------------------
# report


def _fidelity(ks: float, gini_sim: float, recall_sim: float) -> dict:
    return {
        "rating_ks": ks,
        "popularity_gini_real": 0.6,
        "popularity_gini_sim": gini_sim,
        "popularity_gini_rel_error": abs(gini_sim - 0.6) / 0.6,
        "head_share_real": 0.7,
        "head_share_sim": None,
        "recall@10_sim": recall_sim,
        "recall@10_popularity": 0.1,
        "users": 12345,
    }


def _plots(rng: np.random.Generator) -> dict:
    return {
        "rating": (rng.integers(1, 6, 500), rng.integers(1, 6, 400)),
        "popularity": (rng.zipf(1.5, 80).astype(float), rng.zipf(2.0, 80).astype(float)),
    }


def test_report_files_self_contained(tmp_path: Path) -> None:
    paths = write_fidelity_report(tmp_path / "out", _fidelity(0.05, 0.63, 0.2), _plots(np.random.default_rng(5)))
    assert set(paths) == {"fidelity.md", "fidelity.html", "rating.png", "popularity.png"}
    for name in ("rating.png", "popularity.png"):
        assert paths[name].parent == tmp_path / "out"
        assert paths[name].read_bytes().startswith(PNG_MAGIC)
    html = paths["fidelity.html"].read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 2
    assert "<script" not in html.lower()
    assert "http://" not in html and "https://" not in html
    markdown = paths["fidelity.md"].read_text(encoding="utf-8")
    assert "(rating.png)" in markdown and "(popularity.png)" in markdown
    for text in (html, markdown):
        for number in ("0.05", "0.63", "0.7", "12,345", "—"):  # every number, None as "—"
            assert number in text


def test_report_says_met_and_not_met(tmp_path: Path) -> None:
    good = write_fidelity_report(tmp_path / "good", _fidelity(0.05, 0.63, 0.2))
    bad = write_fidelity_report(tmp_path / "bad", _fidelity(0.15, 0.45, 0.105))
    assert set(good) == {"fidelity.md", "fidelity.html"}
    for paths, status in ((good, "met"), (bad, "not met")):
        for name in ("fidelity.md", "fidelity.html"):
            text = paths[name].read_text(encoding="utf-8")
            assert f"Rating distribution: {status} —" in text
            assert f"Popularity Gini: {status} —" in text
            assert f"Recall@10 of the choice model vs popularity: {status} —" in text
    good_html = good["fidelity.html"].read_text(encoding="utf-8")
    assert "not met" not in good_html and "3 of 3 evaluated targets met" in good_html
    assert "0 of 3 evaluated targets met" in bad["fidelity.html"].read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("fidelity", "expected"),
    [
        ({"rating_ks": 0.1}, [True]),  # the bound is included
        ({"engagement_ks": 0.1001}, [False]),
        ({"rating_ks": None}, [None]),
        ({"popularity_gini_real": 0.5, "popularity_gini_sim": 0.55}, [True]),  # 10%: error computed here
        ({"popularity_gini_real": 0.0, "popularity_gini_sim": 0.1, "popularity_gini_rel_error": None}, [None]),
        ({"recall@10_sim": 0.11, "recall@10_popularity": 0.1}, [True]),
        ({"recall@10_sim": 0.109, "recall@10_popularity": 0.1}, [False]),
        ({"recall@10_sim": 0.0, "recall@10_popularity": 0.0}, [False]),
        ({"recall@10_sim": 0.3}, []),  # no popularity recall: no target
    ],
)
def test_targets_met(fidelity: dict, expected: list[bool | None]) -> None:
    assert [target.met for target in targets(fidelity)] == expected
