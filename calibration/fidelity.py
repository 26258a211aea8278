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

from metarec.calibration.fidelity_distributions import (
    activity_summary,
    check_codes,
    check_same_length,
    gini,
    head_share,
    ks_distance,
    topic_share_drift,
)
from metarec.calibration.fidelity_ranking import popularity_scores, ranking_metrics

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
        topic_share_drift(log["user"], check_codes(topic, num_topics, f"{name}['topic']"), log["timestamp"], num_topics)
    )


def _log_summary(log: dict[str, Any], name: str) -> dict[str, float | None]:
    """Popularity and activity numbers of one log (``name`` says which in error messages)."""
    item = check_codes(log["item"], int(log["num_items"]), f"{name}['item']")
    user = check_codes(log["user"], int(log["num_users"]), f"{name}['user']")
    check_same_length(f"{name}['user']", user, f"{name}['item']", item)
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
