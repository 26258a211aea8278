"""How closely simulated interaction logs match real ones.

Every function takes plain NumPy arrays (item, user and topic codes as integers in ``[0, n)``), so it works the same
on a loaded dataset and on the output of a simulator:

* the distribution of per-event values (ratings or engagement): the two-sample Kolmogorov-Smirnov distance
  (``scipy.stats.ks_2samp``);
* item popularity: the Gini coefficient of interactions per item and the share of interactions that go to the head;
* user activity: events per user (mean, median, 90th percentile, share of one-event users);
* interest drift: how much a user's topic mix changes from one period of their history to the next;
* next-item prediction: recall@k and NDCG@k of a score matrix, and the popularity baseline's scores to compare with.

:func:`compare` puts the distribution numbers of a real and a simulated log side by side in one flat dict, with None
where a number cannot be computed, ready for ``json.dump`` and for
:func:`metarec.calibration.report.write_fidelity_report`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "activity_summary",
    "compare",
    "gini",
    "head_share",
    "ks_distance",
    "popularity_scores",
    "ranking_metrics",
    "topic_share_drift",
]

VALUE_KEYS = ("rating", "engagement")

# ---------------------------------------------------------------------------------------------------------------------
# validation


def _counts(values: object, name: str) -> np.ndarray:
    """``values`` as a non-empty 1-D float array of finite non-negative numbers, or a ValueError naming ``name``."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name}: expected finite non-negative counts")
    return array


def _codes(values: object, size: int, name: str) -> np.ndarray:
    """``values`` as a 1-D integer array with every entry in ``[0, size)``, or a ValueError naming ``name``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected integer codes, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= size:
        raise ValueError(f"{name}: expected codes in [0, {size}), got values in [{low}, {high}]")
    return array


def _same_length(name: str, array: np.ndarray, reference_name: str, reference: np.ndarray) -> None:
    if array.shape[0] != reference.shape[0]:
        raise ValueError(
            f"{name}: expected the length of {reference_name} ({reference.shape[0]}), got {array.shape[0]}"
        )


# ---------------------------------------------------------------------------------------------------------------------
# distributions


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts, e.g. interactions per item with the items never chosen included.

    Uses the sorted-cumulative form ``G = 2 * sum_i i * x_(i) / (n * sum x) - (n + 1) / n`` over the counts sorted
    ascending (``i`` from 1), which is exact: ``[1, 1, 1, 1]`` gives 0, ``[0, 0, 0, 4]`` gives 0.75, and one item out
    of ``n`` taking everything gives ``1 - 1 / n``.

    Args:
        counts: Non-negative counts ``[n]``.

    Returns:
        The coefficient in ``[0, 1)``: 0 when every count is equal (all zeros included).

    Raises:
        ValueError: If ``counts`` is empty, not 1-D, negative or not finite.
    """
    x = np.sort(_counts(counts, "counts"))
    n, total = x.size, x.sum()
    if total == 0:
        return 0.0
    rank = np.arange(1, n + 1, dtype=float)
    return float(2.0 * np.dot(rank, x) / (n * total) - (n + 1) / n)


def head_share(counts: np.ndarray, head_fraction: float = 0.2) -> float:
    """Share of all interactions that go to the most popular ``head_fraction`` of the items.

    Args:
        counts: Non-negative counts per item ``[n]``.
        head_fraction: Fraction of the items in the head, in ``(0, 1]``; the head has ``ceil(head_fraction * n)``
            items, at least 1.

    Returns:
        The share in ``[0, 1]``; NaN when every count is 0.

    Raises:
        ValueError: If ``counts`` is invalid (see :func:`gini`) or ``head_fraction`` is outside ``(0, 1]``.
    """
    x = _counts(counts, "counts")
    if not 0.0 < head_fraction <= 1.0:
        raise ValueError(f"head_fraction: expected a number in (0, 1], got {head_fraction}")
    total = x.sum()
    if total == 0:
        return math.nan
    # Rounding first keeps 0.1 * 30 = 3.0000000000000004 from becoming a head of 4 items.
    head = max(1, math.ceil(round(head_fraction * x.size, 9)))
    return float(np.partition(x, x.size - head)[x.size - head :].sum() / total)


def ks_distance(real: np.ndarray, simulated: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs.

    Args:
        real: Values observed in the real log (any shape; flattened). NaNs are dropped.
        simulated: Values from the simulator (any shape; flattened). NaNs are dropped.

    Returns:
        ``scipy.stats.ks_2samp(real, simulated).statistic``, in ``[0, 1]``.

    Raises:
        ValueError: Naming the argument that holds no value once the NaNs are dropped.
    """
    samples = []
    for name, values in (("real", real), ("simulated", simulated)):
        array = np.asarray(values, dtype=float).ravel()
        array = array[~np.isnan(array)]
        if array.size == 0:
            raise ValueError(f"{name}: no values left after dropping NaNs")
        samples.append(array)
    return float(stats.ks_2samp(samples[0], samples[1]).statistic)


def activity_summary(user_codes: np.ndarray, num_users: int) -> dict[str, float]:
    """Events per user, over the users with at least one event.

    Users without an event are left out because a real log cannot contain them: counting the idle users of a
    simulated population would pull its numbers down for a reason the real log cannot show.

    Args:
        user_codes: User code of every event ``[E]``, in ``[0, num_users)``.
        num_users: Number of user codes.

    Returns:
        ``mean``, ``median`` and ``p90`` of the events per user, ``single_event_share`` (share of the users with
        exactly one event) and ``active_users`` (users with at least one event). The first four are NaN when there
        is no event.

    Raises:
        ValueError: If ``user_codes`` is not 1-D integer codes in ``[0, num_users)``.
    """
    codes = _codes(user_codes, num_users, "user_codes")
    per_user = np.bincount(codes, minlength=num_users)
    per_user = per_user[per_user > 0]
    if per_user.size == 0:
        return {
            "mean": math.nan,
            "median": math.nan,
            "p90": math.nan,
            "single_event_share": math.nan,
            "active_users": 0,
        }
    return {
        "mean": float(per_user.mean()),
        "median": float(np.median(per_user)),
        "p90": float(np.percentile(per_user, 90)),
        "single_event_share": float(np.mean(per_user == 1)),
        "active_users": int(per_user.size),
    }


def topic_share_drift(
    user: np.ndarray, topic: np.ndarray, timestamp: np.ndarray, num_topics: int, num_periods: int = 4
) -> float:
    """How much a user's topic mix changes from one period of their history to the next.

    Each user's events, in time order (ties keep the order of the log), are cut into ``num_periods`` consecutive
    chunks of equal count (sizes differ by at most one); users with fewer than ``num_periods`` events are skipped.
    Each chunk gives a topic-share vector, and consecutive chunks are compared by total-variation distance
    ``0.5 * |p - q|_1``. Cutting by event count rather than by calendar time keeps every chunk of a user equally
    informative, so light and heavy users are measured alike.

    Args:
        user: User code of every event ``[E]`` (any integers; they only group the events).
        topic: Topic code of every event ``[E]``, in ``[0, num_topics)``.
        timestamp: Time of every event ``[E]`` (numbers or datetime64).
        num_topics: Number of topic codes.
        num_periods: Chunks per user, at least 2.

    Returns:
        The mean distance over every qualifying user and consecutive pair of chunks, in ``[0, 1]``: 0 when no user's
        mix changes. NaN when no user has ``num_periods`` events.

    Raises:
        ValueError: If the arrays differ in length, ``topic`` has codes outside ``[0, num_topics)`` or
            ``num_periods < 2``.
    """
    if num_periods < 2:
        raise ValueError(f"num_periods: expected at least 2 periods to compare, got {num_periods}")
    user, timestamp = np.asarray(user), np.asarray(timestamp)
    if user.ndim != 1 or timestamp.ndim != 1:
        raise ValueError(f"user, timestamp: expected 1-D arrays, got shapes {user.shape} and {timestamp.shape}")
    topic = _codes(topic, num_topics, "topic")
    _same_length("topic", topic, "user", user)
    _same_length("timestamp", timestamp, "user", user)
    if user.size == 0:
        return math.nan

    # Sort by time, then stably by user: each user's events are contiguous and in time order.
    order = np.argsort(timestamp, kind="stable")
    order = order[np.argsort(user[order], kind="stable")]
    user, topic = user[order], topic[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    sizes = np.diff(np.r_[starts, user.size])
    group = np.repeat(np.arange(starts.size), sizes)  # [E]
    position = np.arange(user.size) - starts[group]

    qualifies = sizes >= num_periods
    if not qualifies.any():
        return math.nan
    keep = qualifies[group]
    compact = np.cumsum(qualifies) - 1  # index among the qualifying users
    users, group, position, topic = int(qualifies.sum()), compact[group[keep]], position[keep], topic[keep]
    chunk = position * num_periods // sizes[qualifies][group]

    cell = (group * num_periods + chunk) * num_topics + topic
    counts = np.bincount(cell, minlength=users * num_periods * num_topics)
    counts = counts.reshape(users, num_periods, num_topics).astype(float)
    shares = counts / counts.sum(axis=2, keepdims=True)  # [users, periods, topics]; no chunk is empty
    distance = 0.5 * np.abs(np.diff(shares, axis=1)).sum(axis=2)  # [users, periods - 1]
    return float(distance.mean())


# ---------------------------------------------------------------------------------------------------------------------
# next-item prediction


def ranking_metrics(
    scores: np.ndarray, seen: np.ndarray, target: np.ndarray, k: int = 10, chunk_size: int = 4096
) -> dict[str, float]:
    """Recall@k and NDCG@k of held-out next items under a score matrix, excluding the items already seen.

    Each user's top ``k`` is taken with ``np.argpartition`` (ties at the k-th score broken as it breaks them, which is
    deterministic for a given input), so that exactly ``k`` items are recommended. Items with a NaN score rank
    last. A target the user has already seen cannot be recommended and counts as a miss. The users are processed
    ``chunk_size`` rows at a time, so that besides the inputs only a few ``[chunk_size, M]`` arrays are allocated.

    Args:
        scores: Scores ``[U, M]``, higher meaning more likely to be the next item (may be a broadcast view).
        seen: Items each user interacted with before the target ``[U, M]``, bool.
        target: The held-out next item of each user ``[U]``; users with a negative target are skipped.
        k: Length of the recommended list; a list of all ``M`` items when ``k > M`` (the keys still say ``k``).
        chunk_size: Users processed at a time.

    Returns:
        ``recall@k``: share of the evaluated users whose target is in their top ``k``; ``ndcg@k``: mean of
        ``1 / log2(rank + 1)`` (rank 1-based) for hits and 0 for misses; ``users``: the evaluated users. Recall and
        NDCG are NaN when no user is evaluated.

    Raises:
        ValueError: Naming the argument, if the shapes do not match, ``seen`` is not bool, ``target`` is not
            integer or has an item ``>= M``, or ``k`` or ``chunk_size`` is below 1.
    """
    scores, seen, target = np.asarray(scores), np.asarray(seen), np.asarray(target)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected a 2-D array [users, items], got shape {scores.shape}")
    num_users, num_items = scores.shape
    if seen.shape != scores.shape:
        raise ValueError(f"seen: expected the shape of scores {scores.shape}, got {seen.shape}")
    if seen.dtype != np.bool_:
        raise ValueError(f"seen: expected a bool array, got dtype {seen.dtype}")
    if target.shape != (num_users,):
        raise ValueError(f"target: expected shape ({num_users},), got {target.shape}")
    if target.size and not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"target: expected integer item codes, got dtype {target.dtype}")
    if target.size and int(target.max()) >= num_items:
        raise ValueError(f"target: expected items below {num_items}, got {int(target.max())}")
    if k < 1:
        raise ValueError(f"k: expected at least 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected at least 1, got {chunk_size}")
    listed = min(k, num_items)
    dtype = scores.dtype if np.issubdtype(scores.dtype, np.floating) else np.float64
    discount = 1.0 / np.log2(np.arange(2, listed + 2))  # [listed]: 1 / log2(rank + 1)

    hits, gain, evaluated = 0, 0.0, 0
    for start in range(0, num_users, chunk_size):
        rows = np.flatnonzero(target[start : start + chunk_size] >= 0) + start
        if rows.size == 0:
            continue
        masked = scores[rows].astype(dtype, copy=False)  # [C, M]; indexing with rows already copies
        masked[seen[rows] | np.isnan(masked)] = -np.inf
        top = np.argpartition(masked, num_items - listed, axis=1)[:, num_items - listed :]  # [C, listed], unordered
        by_score = np.argsort(-np.take_along_axis(masked, top, axis=1), axis=1, kind="stable")
        ranked = np.take_along_axis(top, by_score, axis=1)  # [C, listed], best first
        match = ranked == target[rows, None]
        hit = match.any(axis=1) & ~seen[rows, target[rows]]
        hits += int(hit.sum())
        gain += float(discount[match[hit].argmax(axis=1)].sum())
        evaluated += rows.size
    if evaluated == 0:
        return {f"recall@{k}": math.nan, f"ndcg@{k}": math.nan, "users": 0}
    return {f"recall@{k}": hits / evaluated, f"ndcg@{k}": gain / evaluated, "users": evaluated}


def popularity_scores(train_item_counts: np.ndarray, num_users: int) -> np.ndarray:
    """The popularity baseline's scores: every user scores an item by its training count.

    Args:
        train_item_counts: Interactions per item in the training events ``[M]``.
        num_users: Number of users to score.

    Returns:
        A read-only broadcast view ``[num_users, M]`` of ``train_item_counts``: no ``num_users * M`` copy is made.

    Raises:
        ValueError: If ``train_item_counts`` is not 1-D or ``num_users`` is negative.
    """
    counts = np.asarray(train_item_counts)
    if counts.ndim != 1:
        raise ValueError(f"train_item_counts: expected a 1-D array, got shape {counts.shape}")
    if num_users < 0:
        raise ValueError(f"num_users: expected a non-negative number, got {num_users}")
    return np.broadcast_to(counts, (num_users, counts.size))


# ---------------------------------------------------------------------------------------------------------------------
# real vs simulated


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite."""
    value = float(value)
    return value if math.isfinite(value) else None


def _relative_error(real: float | None, simulated: float | None) -> float | None:
    if real is None or simulated is None or real == 0:
        return None
    return abs(simulated - real) / abs(real)


def _value_ks(real: dict[str, Any], simulated: dict[str, Any]) -> dict[str, float | None]:
    """``<key>_ks`` for every value key in either log; None when the other log lacks it or a side has no value."""
    result: dict[str, float | None] = {}
    for key in VALUE_KEYS:
        if key not in real and key not in simulated:
            continue
        try:
            result[f"{key}_ks"] = ks_distance(real[key], simulated[key])
        except (KeyError, ValueError):
            result[f"{key}_ks"] = None
    return result


def _topic_drift(log: dict[str, Any], num_topics: int, name: str) -> float | None:
    if "topic" not in log or "timestamp" not in log:
        return None
    topic = np.asarray(log["topic"])
    num_topics = int(log.get("num_topics", num_topics))
    return _finite(
        topic_share_drift(log["user"], _codes(topic, num_topics, f"{name}['topic']"), log["timestamp"], num_topics)
    )


def _log_summary(log: dict[str, Any], name: str) -> dict[str, float | None]:
    """Popularity and activity numbers of one log (``name`` says which in error messages)."""
    item = _codes(log["item"], int(log["num_items"]), f"{name}['item']")
    user = _codes(log["user"], int(log["num_users"]), f"{name}['user']")
    _same_length(f"{name}['user']", user, f"{name}['item']", item)
    item_counts = np.bincount(item, minlength=int(log["num_items"]))
    activity = activity_summary(user, int(log["num_users"]))
    return {
        "popularity_gini": _finite(gini(item_counts)) if item.size else None,
        "head_share": _finite(head_share(item_counts)) if item.size else None,
        "activity_mean": _finite(activity["mean"]),
        "single_event_users": _finite(activity["single_event_share"]),
    }


def compare(real: dict[str, Any], simulated: dict[str, Any]) -> dict[str, float | None]:
    """The fidelity numbers of a simulated log against a real one, in one flat dict.

    Each log is a dict with ``item`` and ``user`` codes ``[E]``, ``num_items`` and ``num_users``; optionally
    ``rating`` and/or ``engagement`` (a value per event ``[E]``), and ``topic`` ``[E]`` with ``timestamp`` ``[E]``
    and ``num_topics`` (inferred from the largest topic code of both logs when absent).

    Args:
        real: The real log.
        simulated: The simulated log.

    Returns:
        ``rating_ks`` and/or ``engagement_ks`` (for each value key in either log), ``popularity_gini_real``,
        ``popularity_gini_sim``, ``popularity_gini_rel_error`` (``|sim - real| / real``), ``head_share_real``,
        ``head_share_sim`` (top 20% of the items), ``activity_mean_real``, ``activity_mean_sim``,
        ``single_event_users_real``, ``single_event_users_sim`` (shares of the active users), and, when either log
        has topics and timestamps, ``topic_drift_real`` and ``topic_drift_sim`` (4 periods per user). A number that
        cannot be computed (a log without the key, no event, no user with 4 events, a real Gini of 0) is None,
        never NaN or infinite.

    Raises:
        ValueError: If a log's codes are out of range or its arrays differ in length.
    """
    result: dict[str, float | None] = dict(_value_ks(real, simulated))
    summaries = {"real": _log_summary(real, "real"), "sim": _log_summary(simulated, "simulated")}
    result["popularity_gini_real"] = summaries["real"]["popularity_gini"]
    result["popularity_gini_sim"] = summaries["sim"]["popularity_gini"]
    result["popularity_gini_rel_error"] = _relative_error(result["popularity_gini_real"], result["popularity_gini_sim"])
    for key in ("head_share", "activity_mean", "single_event_users"):
        for side in ("real", "sim"):
            result[f"{key}_{side}"] = summaries[side][key]

    logs = {"real": real, "sim": simulated}
    if any("topic" in log and "timestamp" in log for log in logs.values()):
        topics = [np.asarray(log["topic"]) for log in logs.values() if "topic" in log]
        inferred = max((int(t.max()) + 1 for t in topics if t.size), default=1)
        for side, log in logs.items():
            result[f"topic_drift_{side}"] = _topic_drift(log, inferred, "real" if side == "real" else "simulated")
    return result
