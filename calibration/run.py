"""``metarec calibrate``: split logs by time, calibrate on the past, compare simulated users with the future."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarec.calibration.fidelity import compare, ks_distance, popularity_scores, ranking_metrics
from metarec.calibration.fit import Calibration, FitConfig, calibrate, slate_click_rate
from metarec.calibration.logs import Logs, check_holdout_users, load_logs, time_split, users_repeat
from metarec.calibration.report import write_fidelity_report
from metarec.envs.calibrated import load_fitted_users, load_population, save_population
from metarec.io import json_safe, write_json


def user_item_matrix(users: np.ndarray, user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
    """bool ``[len(users), num_items]``: which items each of ``users`` (codes) has among the events ``(user, item)``."""
    out = np.zeros((len(users), num_items), dtype=bool)
    if len(users) == 0 or len(user) == 0:
        return out
    row = np.full(int(max(users.max(), user.max())) + 1, -1, dtype=np.int64)
    row[users] = np.arange(len(users))
    mine = row[user] >= 0
    out[row[user[mine]], item[mine]] = True
    return out


def _seen(logs: Logs, users: np.ndarray) -> np.ndarray:
    """``[len(users), num_items]``: which items each of ``users`` has in ``logs``."""
    return user_item_matrix(users, logs.user, logs.item, logs.num_items)


def _choices(
    scores: torch.Tensor, most: int, seen: np.ndarray | None, generator: torch.Generator
) -> np.ndarray:
    """``[U, most]`` items each user chooses in turn by the calibrated choice model: with replacement where
    ``seen`` is None (users come back to items), else distinct items not in ``seen`` (Gumbel top-k)."""
    if seen is None:
        probs = torch.softmax(scores.double(), dim=1)
        return torch.multinomial(probs, most, replacement=True, generator=generator).numpy()
    gumbel = -torch.log(-torch.log(torch.rand(scores.shape, generator=generator).clamp_min(1e-12)))
    keys = (scores + gumbel).masked_fill(torch.from_numpy(seen), -torch.inf)
    return keys.topk(min(most, scores.shape[1]), dim=1).indices.numpy()  # best first


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_future(calibration: Calibration, train: Logs, future: Logs, seed: int = 0) -> dict[str, np.ndarray]:
    """Simulated counterparts of the ``future`` events: each user with a training history chooses as
    many new items as they really did, by the calibrated choice model over the items they have not
    consumed (Gumbel top-k: choices without repeats), in the order of their real events; each choice
    gets a simulated rating. Where the training logs show users choosing an item again, choices are drawn
    with replacement instead.

    The rating is the simulated satisfaction (``sigmoid(utility + noise)``) through a quantile link: its
    quantile among the satisfactions of the choices the calibrated users make in place of their *training*
    events (drawn the same way), mapped to the same quantile of the training ratings. Both sides of the link
    are choices of the model, so the fitted factors' optimism about the very events they were fitted to
    does not lower every simulated rating."""
    generator = torch.Generator().manual_seed(seed)
    repeats = users_repeat(train)
    users, per_user = np.unique(future.user, return_counts=True)
    scores = torch.from_numpy(calibration.scores(users).astype(np.float32))
    ranked = _choices(scores, int(per_user.max()), None if repeats else _seen(train, users), generator)
    most = ranked.shape[1]
    order = np.lexsort((future.timestamp, future.user))
    user_sorted = future.user[order]
    rank = np.arange(len(order)) - np.searchsorted(user_sorted, user_sorted)
    row = np.searchsorted(users, user_sorted)
    item = ranked[row, np.minimum(rank, most - 1)]
    utility = calibration.utilities(users)[row, item]  # satisfaction follows utility; the choice, utility + appeal
    noise = calibration.config.population.engagement_noise
    out = {"user": user_sorted, "item": item, "timestamp": future.timestamp[order]}
    if calibration.rating_quantiles is not None:
        satisfaction = _sigmoid(utility + noise * torch.randn(len(utility), generator=generator).numpy())
        # the link's reference: the model's choices in place of the training events, as many per user
        known, counts = np.unique(train.user, return_counts=True)
        known_scores = torch.from_numpy(calibration.scores(known).astype(np.float32))
        in_place = _choices(known_scores, int(counts.max()), None if repeats else np.zeros(known_scores.shape, bool),
                            generator)  # fmt: skip
        taken = np.arange(in_place.shape[1])[None, :] < counts[:, None]
        reference_utility = np.take_along_axis(calibration.utilities(known), in_place, axis=1)[taken]
        reference_noise = noise * torch.randn(len(reference_utility), generator=generator).numpy()
        reference = _sigmoid(reference_utility + reference_noise)
        levels = np.quantile(reference, np.linspace(0, 1, 101))
        where = np.interp(satisfaction, levels, np.linspace(0, 1, 101))
        out["rating"] = np.interp(where, np.linspace(0, 1, 101), calibration.rating_quantiles)
    return out


def rating_ks_by_popularity(
    train: Logs, future: Logs, simulated: dict[str, np.ndarray], min_events: int = 20,
    generator: np.random.Generator | None = None, resamples: int = 200,
) -> dict[str, float | None]:  # fmt: skip
    """Rating KS within each quintile of item popularity (the items' training events; quintile 1 the least
    popular): ``rating_ks_popularity_q1`` .. ``q5``, None where either side has fewer than ``min_events``.

    With a ``generator``, each also gets ``..._sampling_p95``: the KS that 95% of real samples of the quintile's
    size would stay under were the simulator exactly right (:func:`ks_sampling_p95`). A KS below it is within
    what so few real events can tell apart."""
    counts = np.bincount(train.item, minlength=train.num_items)
    edges = np.quantile(counts[counts > 0], [0.2, 0.4, 0.6, 0.8]) if np.any(counts > 0) else np.zeros(4)
    real_q = np.searchsorted(edges, counts[future.item], side="right")
    sim_q = np.searchsorted(edges, counts[simulated["item"]], side="right")
    out: dict[str, float | None] = {}
    for q in range(5):
        real, sim = future.rating[real_q == q], simulated["rating"][sim_q == q]
        real, sim = real[np.isfinite(real)], sim[np.isfinite(sim)]
        enough = min(len(real), len(sim)) >= min_events
        out[f"rating_ks_popularity_q{q + 1}"] = ks_distance(real, sim) if enough else None
        if generator is not None:
            out[f"rating_ks_popularity_q{q + 1}_sampling_p95"] = (
                ks_sampling_p95(sim, len(real), generator, resamples) if enough else None
            )
    return out


def ks_sampling_p95(
    simulated: np.ndarray, size: int, generator: np.random.Generator, resamples: int = 200, most: int = 20_000
) -> float:
    """The 95th percentile of the KS distance between ``size`` values drawn (with replacement) from ``simulated``
    and ``simulated`` itself: how far a real sample of that size strays from a simulator that is exactly right.
    Beyond ``most`` values, a random ``most`` of them stand for the simulated distribution (its own sampling
    error, about ``1 / sqrt(most)``, is small beside a real sample's). The simulated values' own noise is left
    out: against ``r`` times as many simulated values as real ones, the KS's spread is about ``sqrt(1 + 1 / r)``
    times this (2.5% more for 20 draws)."""
    if len(simulated) > most:
        simulated = generator.choice(simulated, most, replace=False)
    draws = [ks_distance(generator.choice(simulated, size), simulated) for _ in range(resamples)]
    return float(np.quantile(draws, 0.95))


def clicked(logs: Logs) -> Logs:
    """The rows of ``logs`` that were clicked (chosen): the events fidelity is measured on."""
    return logs if np.all(logs.click > 0) else logs.subset(logs.click > 0)


def fitted_users(logs: Logs, calibration: Calibration) -> dict[str, np.ndarray]:
    """What a saved population keeps of the users ``calibration`` fitted on ``logs`` (those with a clicked row,
    the ones with fitted factors): their labels, factors and first timestamp in ``logs``."""
    fitted, first_seen = _fitted_and_first_seen(logs)
    return {"user_id": logs.user_ids[fitted], "interest": calibration.user_factors[fitted], "first_seen": first_seen}


def _fitted_and_first_seen(logs: Logs) -> tuple[np.ndarray, np.ndarray]:
    """The codes of the users a fit gives factors (those with a clicked row) and their first timestamps."""
    fitted = np.unique(clicked(logs).user)
    first_seen = np.full(logs.num_users, np.inf)
    np.minimum.at(first_seen, logs.user, logs.timestamp)
    return fitted, first_seen[fitted]


def saved_calibration(path: str | Path, logs: Logs) -> Calibration:
    """The calibration that ``metarec calibrate`` saved to the population directory ``path``, rebuilt for the
    past ``logs`` it was fitted on: the world and fit as saved, each fitted user's factors at the user's code in
    ``logs`` (zeros for users without a clicked row, as the fit leaves them). Raises a ValueError naming
    ``population`` unless it was fitted on exactly these events: the same counts of events and items, and the same
    users first seen at the same times."""
    config, world, fit = load_population(path)
    users = load_fitted_users(path, config)
    if users is None or "first_seen" not in users:
        raise ValueError(f"population: {path} keeps no fitted users with their first timestamps (a population "
                         "written by an earlier version); calibrate the logs again")  # fmt: skip
    counts = (fit.get("events"), fit.get("items"))
    if counts != (logs.num_events, logs.num_items):
        raise ValueError(f"population: {path} was fitted on {counts[0]} events of {counts[1]} items, but the logs' "
                         f"past holds {logs.num_events} of {logs.num_items}; validate with the --holdout-frac it "
                         "was calibrated with, or calibrate these logs")  # fmt: skip
    fitted, first_seen = _fitted_and_first_seen(logs)
    labels = logs.user_ids[fitted].astype(str)
    mine, theirs = np.argsort(labels), np.argsort(users["user_id"])
    if not (np.array_equal(labels[mine], users["user_id"][theirs])
            and np.array_equal(first_seen[mine], users["first_seen"][theirs])):  # fmt: skip
        raise ValueError(f"population: {path} was fitted on other users than the logs' past (their labels or first "
                         "timestamps differ); calibrate these logs")  # fmt: skip
    code = {str(label): i for i, label in enumerate(logs.user_ids)}
    factors = np.zeros((logs.num_users, config.catalog.embedding_dim), dtype=np.float32)
    factors[[code[label] for label in users["user_id"]]] = users["interest"]
    quantiles = fit.get("rating_quantiles")
    split = (fit.get("quality_from_ratings") or None) is not None
    return Calibration(config, world, factors, world["item_embedding"], world["item_quality"],
                       None if quantiles is None else np.asarray(quantiles, dtype=np.float32), fit,
                       world["item_appeal"] if split else None)  # fmt: skip


def evaluate_fidelity(
    calibration: Calibration, train: Logs, test: Logs, seed: int = 0, rating_draws: int = 20
) -> tuple[dict, dict]:
    """Fidelity numbers of ``calibration`` on the held-out ``test`` logs, and the arrays to plot.

    Events are clicked rows: impressions nobody clicked (``click`` 0) are neither held-out events,
    next-item targets nor a user's history, nor counted in popularity or repeats. The logged click
    rate (share of slates, the rows of one user and timestamp, with a click) is reported on its own:
    ``logged_click_rate_train`` and ``logged_click_rate_holdout`` (None for logs without rows of
    ``click`` 0), beside ``click_rate_calibrated``, what the simulator was set to give random slates.

    The simulated future is drawn once for every number but the ratings'. Those compare the real ratings with
    ``rating_draws`` draws of it pooled (seeds ``seed`` onward), so that the KS measures the simulator's rating
    distribution rather than one draw's noise (the rating plot shows them too); ``rating_ks_sampling_p95`` and
    the quintiles' ``..._sampling_p95`` say how far the real sample alone would stray from an exactly right
    simulator."""
    if rating_draws < 1:
        raise ValueError(f"rating_draws: expected at least 1, got {rating_draws}")
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
    if has_ratings:
        draws = [simulated] + [simulate_future(calibration, train, future, seed + r) for r in range(1, rating_draws)]
        pooled = {key: np.concatenate([draw[key] for draw in draws]) for key in ("item", "rating")}
        sampling = np.random.default_rng(seed)
        fidelity["rating_ks"] = ks_distance(future.rating, pooled["rating"])
        fidelity["rating_ks_sampling_p95"] = ks_sampling_p95(
            pooled["rating"], int(np.isfinite(future.rating).sum()), sampling
        )
        fidelity["rating_ks_draws"] = rating_draws
        fidelity.update(rating_ks_by_popularity(train, future, pooled, generator=sampling))
    # next-item prediction: each user's first held-out item
    order = np.lexsort((future.timestamp, future.user))
    users, first = np.unique(future.user[order], return_index=True)
    target = future.item[order][first]
    seen = _seen(train, users)
    if users_repeat(train):  # users come back to items: a consumed item may be next again
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
        plots["rating"] = (future.rating, pooled["rating"])
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
    users = fitted_users(train, calibration)
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
