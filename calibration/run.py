"""``metarec calibrate``: split logs by time, calibrate on the past, compare simulated users with the future."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarec.calibration.fidelity import compare, popularity_scores, ranking_metrics
from metarec.calibration.fit import Calibration, FitConfig, calibrate, slate_click_rate
from metarec.calibration.logs import Logs, check_holdout_users, load_logs, time_split
from metarec.calibration.report import write_fidelity_report
from metarec.envs.calibrated import save_population
from metarec.io import json_safe, write_json


def _seen(logs: Logs, users: np.ndarray) -> np.ndarray:
    """``[len(users), num_items]``: which items each of ``users`` has in ``logs``."""
    row = np.full(logs.num_users, -1, dtype=np.int64)
    row[users] = np.arange(len(users))
    mine = row[logs.user] >= 0
    seen = np.zeros((len(users), logs.num_items), dtype=bool)
    seen[row[logs.user[mine]], logs.item[mine]] = True
    return seen


def repeat_rate(logs: Logs) -> float:
    """Share of events whose user had already chosen the same item."""
    pairs = logs.user.astype(np.int64) * logs.num_items + logs.item
    return 1.0 - len(np.unique(pairs)) / max(len(pairs), 1)


def simulate_future(calibration: Calibration, train: Logs, future: Logs, seed: int = 0) -> dict[str, np.ndarray]:
    """Simulated counterparts of the ``future`` events: each user with a training history chooses as
    many new items as they really did, by the calibrated choice model over the items they have not
    consumed (Gumbel top-k: choices without repeats), in the order of their real events; each choice
    gets a simulated rating (satisfaction through the training ratings' quantiles). Where the training
    logs show users choosing an item again, choices are drawn with replacement instead."""
    generator = torch.Generator().manual_seed(seed)
    users, per_user = np.unique(future.user, return_counts=True)
    scores = torch.from_numpy(calibration.scores(users).astype(np.float32))
    if repeat_rate(train) > 0.01:  # users come back to items: choices with replacement
        most = int(per_user.max())
        probs = torch.softmax(scores.double(), dim=1)
        ranked = torch.multinomial(probs, most, replacement=True, generator=generator).numpy()
    else:  # each item once per user (ratings logs): Gumbel top-k over the items not yet consumed
        seen = torch.from_numpy(_seen(train, users))
        gumbel = -torch.log(-torch.log(torch.rand(scores.shape, generator=generator).clamp_min(1e-12)))
        keys = (scores + gumbel).masked_fill(seen, -torch.inf)
        most = int(min(per_user.max(), calibration.item_factors.shape[0]))
        ranked = keys.topk(most, dim=1).indices.numpy()  # [U, most], best first
    order = np.lexsort((future.timestamp, future.user))
    user_sorted = future.user[order]
    rank = np.arange(len(order)) - np.searchsorted(user_sorted, user_sorted)
    row = np.searchsorted(users, user_sorted)
    item = ranked[row, np.minimum(rank, most - 1)]
    utility = scores.numpy()[row, item]
    noise = calibration.config.population.engagement_noise
    out = {"user": user_sorted, "item": item, "timestamp": future.timestamp[order]}
    if calibration.rating_quantiles is not None:
        satisfaction = 1.0 / (1.0 + np.exp(-(utility + noise * torch.randn(len(utility), generator=generator).numpy())))
        # the same link on the training events sets satisfaction's quantiles against the ratings'
        train_utility = np.sum(calibration.user_factors[train.user] * calibration.item_factors[train.item], axis=1)
        train_utility += calibration.item_bias[train.item]
        train_satisfaction = 1.0 / (1.0 + np.exp(-train_utility))
        levels = np.quantile(train_satisfaction, np.linspace(0, 1, 101))
        where = np.interp(satisfaction, levels, np.linspace(0, 1, 101))
        out["rating"] = np.interp(where, np.linspace(0, 1, 101), calibration.rating_quantiles)
    return out


def clicked(logs: Logs) -> Logs:
    """The rows of ``logs`` that were clicked (chosen): the events fidelity is measured on."""
    return logs if np.all(logs.click > 0) else logs.subset(logs.click > 0)


def evaluate_fidelity(calibration: Calibration, train: Logs, test: Logs, seed: int = 0) -> tuple[dict, dict]:
    """Fidelity numbers of ``calibration`` on the held-out ``test`` logs, and the arrays to plot.

    Events are clicked rows: impressions nobody clicked (``click`` 0) are neither held-out events,
    next-item targets nor a user's history, nor counted in popularity or repeats. The logged click
    rate (share of slates, the rows of one user and timestamp, with a click) is reported on its own:
    ``logged_click_rate_train`` and ``logged_click_rate_holdout`` (None for logs without rows of
    ``click`` 0), beside ``click_rate_calibrated``, what the simulator was set to give random slates."""
    rates = {name: slate_click_rate(part) for name, part in (("train", train), ("holdout", test))}
    unclicked = int(np.sum(test.click <= 0))
    train, test = clicked(train), clicked(test)
    known = check_holdout_users(train, test)
    future = test.subset(known)
    if future.num_events == 0:
        raise ValueError("holdout: no held-out event belongs to a user with training history")
    simulated = simulate_future(calibration, train, future, seed)
    topic = calibration.world["item_topic"]
    num_topics = int(topic.max()) + 1

    def side(user: np.ndarray, item: np.ndarray, stamp: np.ndarray, rating: np.ndarray | None) -> dict[str, Any]:
        values: dict[str, Any] = {
            "user": user,
            "item": item,
            "timestamp": stamp,
            "num_items": train.num_items,
            "num_users": train.num_users,
            "topic": topic[item],
            "num_topics": num_topics,
        }
        if rating is not None:
            values["rating"] = rating
        return values

    has_ratings = calibration.rating_quantiles is not None and np.isfinite(future.rating).any()
    real = side(future.user, future.item, future.timestamp, future.rating if has_ratings else None)
    sim = side(simulated["user"], simulated["item"], simulated["timestamp"], simulated.get("rating"))
    fidelity: dict[str, Any] = compare(real, sim)
    # next-item prediction: each user's first held-out item
    order = np.lexsort((future.timestamp, future.user))
    users, first = np.unique(future.user[order], return_index=True)
    target = future.item[order][first]
    seen = _seen(train, users)
    if repeat_rate(train) > 0.01:  # users come back to items: a consumed item may be next again
        seen[:] = False
    model = ranking_metrics(calibration.scores(users), seen, target, k=10)
    counts = np.bincount(train.item, minlength=train.num_items).astype(np.float64)
    popular = ranking_metrics(popularity_scores(counts, len(users)), seen, target, k=10)
    fidelity.update(
        {
            "recall@10_sim": model["recall@10"],
            "ndcg@10_sim": model["ndcg@10"],
            "recall@10_popularity": popular["recall@10"],
            "ndcg@10_popularity": popular["ndcg@10"],
            "holdout_events": int(future.num_events),
            "holdout_events_dropped_unknown_users": int(test.num_events - future.num_events),
            "holdout_users": len(users),
            "holdout_impressions_without_click": unclicked,
            "logged_click_rate_train": None if rates["train"] is None else rates["train"]["click_rate"],
            "logged_click_rate_holdout": None if rates["holdout"] is None else rates["holdout"]["click_rate"],
            "click_rate_calibrated": calibration.fit.get("no_click", {}).get("click_rate"),
        }
    )
    plots = {
        "popularity": (
            np.bincount(future.item, minlength=train.num_items),
            np.bincount(simulated["item"], minlength=train.num_items),
        )
    }
    if has_ratings:
        plots["rating"] = (future.rating, simulated["rating"])
    return fidelity, plots


def run_calibration(
    logs_path: str | Path,
    format: str,
    out: str | Path,
    items: str | Path | None = None,
    holdout_frac: float = 0.2,
    fit_config: FitConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Loads, splits, calibrates, saves the population and writes ``fidelity.json`` and the report;
    ``progress`` reports each phase on stderr, and the fit's gradient steps as bars."""
    started = time.perf_counter()
    out = Path(out)
    def say(text: str) -> None:
        if progress:
            print(f"calibrate: {text} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    logs = load_logs(logs_path, format, items=items)
    train, test = time_split(logs, holdout_frac)
    say(f"{logs.num_events:,} events of {logs.num_users:,} users and {logs.num_items:,} items; fitting "
        f"{train.num_events:,}, holding out {test.num_events:,}")  # fmt: skip
    fit_config = fit_config or FitConfig()
    calibration = calibrate(train, fit_config, progress=progress)
    fit_seconds = time.perf_counter() - started
    fitted = np.unique(clicked(train).user)  # users with a clicked training row: the ones with fitted factors
    users = {"user_id": train.user_ids[fitted], "interest": calibration.user_factors[fitted]}
    population = save_population(out / "population", calibration.config, calibration.world, calibration.fit, users)
    say(f"population written to {population}; measuring its fidelity on the held-out events")
    fidelity, plots = evaluate_fidelity(calibration, train, test, seed=fit_config.seed)
    fidelity["calibration_seconds"] = round(fit_seconds, 2)
    fidelity["total_seconds"] = round(time.perf_counter() - started, 2)
    fidelity["num_clusters"] = calibration.fit["num_clusters"]
    fidelity["ou_noise"] = calibration.fit["drift"]["ou_noise"]
    out.mkdir(parents=True, exist_ok=True)
    write_json(fidelity, out / "fidelity.json")
    write_fidelity_report(out, fidelity, plots, title=f"Calibration fidelity: {Path(logs_path).name}")
    return {"population": str(population), "fidelity": json_safe(fidelity)}
