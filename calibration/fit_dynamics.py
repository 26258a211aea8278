"""How interests move: drift as a random walk of users' re-fitted factors, and fatigue from how often a user's next
event repeats a topic (steps 3 and 4 of :mod:`metarec.calibration.fit`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from metarec.calibration.fit_config import FitConfig
from metarec.calibration.fit_interests import softmax_mf
from metarec.calibration.logs import Logs


def fit_drift(
    logs: Logs,
    vectors: torch.Tensor,
    bias: torch.Tensor,
    config: FitConfig,
    generator: torch.Generator,
    progress: bool = False,
    available: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Random-walk variance per step of users' factors (see the module docstring). Each of its two refits
    takes ``config.refit_steps`` gradient steps; ``progress`` shows them on stderr. ``available``: the fit's
    choice sets (:func:`~metarec.calibration.fit_interests.availability` of ``logs``), None for the whole
    catalogue."""
    counts = np.bincount(logs.user, minlength=logs.num_users)
    active = np.flatnonzero(counts >= config.min_events_for_drift)
    if len(active) < 10:
        return {"users": len(active), "ou_noise": 0.0, "note": "too few active users to estimate drift"}
    keep = np.isin(logs.user, active)
    user, item, time = logs.user[keep], logs.item[keep], logs.timestamp[keep]
    # rank of each event within its user's history (by time), and the user's event count
    order = np.lexsort((time, user))
    rank = np.empty(len(user), dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(user[order])) + 1]
    sizes = np.diff(np.r_[starts, len(user)])
    rank[order] = np.arange(len(user)) - np.repeat(starts, sizes)
    n = counts[user]
    late = rank >= n // 2
    coin = torch.rand(len(user), generator=generator).numpy() < 0.5
    # rows: 2 * user for one part, 2 * user + 1 for the other
    code = {u: k for k, u in enumerate(active)}
    dense = np.fromiter((code[u] for u in user), dtype=np.int64, count=len(user))
    if available is not None:  # the fit's choice sets, for the events kept here
        available = (available[0][torch.from_numpy(keep)], available[1])
    fitted = {}
    for name, part in (("time", late), ("random", coin)):
        rows = torch.from_numpy(2 * dense + part.astype(np.int64))
        factors, _, _, _ = softmax_mf(
            rows,
            torch.from_numpy(item),
            2 * len(active),
            logs.num_items,
            config,
            generator,
            items=(vectors, bias),
            steps=config.refit_steps,
            progress=f"calibrate: drift refit ({name} halves)" if progress else None,
            available=available,
        )
        fitted[name] = factors.numpy().reshape(len(active), 2, -1)
    moved = np.sum((fitted["time"][:, 1] - fitted["time"][:, 0]) ** 2, axis=1)
    noise = np.sum((fitted["random"][:, 1] - fitted["random"][:, 0]) ** 2, axis=1)
    # A factor fitted to a window estimates the interest's mean over it. For a random walk with
    # variance s² per event and dimension, the means of two consecutive windows of m events differ by
    # variance s² · 2m/3 per dimension (increment j weighs j/m, then (2m - j)/m): n/3 for n = 2m.
    lag = counts[active] / 3.0
    d = vectors.shape[1]
    per_event = max(float(np.sum(moved - noise)) / float(np.sum(lag)) / d, 0.0)
    # the estimation noise of a factor fitted to a whole history, per dimension: a half's error has
    # variance mean(noise) / 2d, and a whole history has twice the events
    factor_noise = float(np.mean(noise)) / (2 * d) / 2.0
    return {
        "users": len(active),
        "mean_squared_move": float(np.mean(moved)),
        "mean_squared_estimation_noise": float(np.mean(noise)),
        "mean_lag_events": float(np.mean(lag)),
        "factor_noise_variance": factor_noise,
        "ou_noise": math.sqrt(per_event),
    }


def topics_and_fatigue(logs: Logs, vectors: np.ndarray, config: FitConfig) -> tuple[np.ndarray, dict[str, Any]]:
    from sklearn.cluster import KMeans

    k = min(config.num_topics, logs.num_items)
    topic = KMeans(k, n_init=4, random_state=config.seed).fit_predict(vectors).astype(np.int64)
    order = np.lexsort((logs.timestamp, logs.user))
    user, item_topic = logs.user[order], topic[logs.item[order]]
    same_user = user[1:] == user[:-1]
    repeats = float(np.mean(item_topic[1:][same_user] == item_topic[:-1][same_user])) if same_user.any() else math.nan
    # expected repeat rate if each user's events were in random order: sum over topics of share^2
    table = np.zeros((logs.num_users, k))
    np.add.at(table, (user, item_topic), 1.0)
    totals = table.sum(1, keepdims=True)
    shares = np.divide(table, totals, out=np.zeros_like(table), where=totals > 0)
    weights = np.maximum(totals[:, 0] - 1.0, 0.0)  # pairs of consecutive events; users without events have none
    expected = float(np.sum(weights * np.sum(shares**2, axis=1)) / max(np.sum(weights), 1.0))
    ratio = repeats / expected if expected > 0 else math.nan
    # fewer repeats than the user's mix predicts is satiation: map the shortfall to a fatigue rate
    rate = 0.0 if not math.isfinite(ratio) else float(np.clip(1.0 - ratio, 0.0, 1.0))
    return topic, {"repeat_topic_rate": repeats, "expected_repeat_rate": expected, "ratio": ratio, "fatigue_rate": rate}
