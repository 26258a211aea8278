"""Distribution numbers of one log or two: value distributions (Kolmogorov-Smirnov), item popularity (Gini, head
share), user activity and interest drift; and the checks of the arrays they take."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

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


def check_codes(values: object, size: int, name: str) -> np.ndarray:
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


def check_same_length(name: str, array: np.ndarray, reference_name: str, reference: np.ndarray) -> None:
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
    return float(stats.ks_2samp(samples[0], samples[1], method="asymp").statistic)  # the p-value is not used


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
    codes = check_codes(user_codes, num_users, "user_codes")
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
    topic = check_codes(topic, num_topics, "topic")
    check_same_length("topic", topic, "user", user)
    check_same_length("timestamp", timestamp, "user", user)
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
