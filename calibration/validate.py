"""``metarec validate``: does the calibrated simulator rank recommenders the way the real future does?

The logs are split by time. On the past only, the simulator is calibrated (:func:`metarec.calibration.fit.calibrate`)
and the standard recommenders are trained (:mod:`metarec.calibration.recommenders`). Each recommender is then
scored three ways, on the same users: those with training events and at least one held-out event (in a log
without repeats, one held-out item they had not consumed before):

* **real**: its top ``k`` (training items left out where users do not repeat items) against the user's
  held-out items: ``recall@k`` (hits over ``min(k, held-out items)``) and ``ndcg@k`` (DCG over the ideal DCG).
* **simulated, offline**: the same metrics against the held-out items the calibrated users choose instead
  (:func:`metarec.calibration.run.simulate_future`: as many choices as the user really made, by the fitted
  choice model over the catalogue).
* **simulated, interactive**: the calibrated users, each in the state the fit leaves them (interest and anchor
  at their fitted factors, no fatigue), are shown one slate of the recommender's top ``k`` (the items they have
  not consumed, in its order) per held-out event they made, at most ``max_steps``, and respond by the
  simulator's own dynamics (:class:`~metarec.envs.drifting.model.DriftingUsersModel` on the fitted world:
  multinomial logit with no-click and position bias, fatigue, the fitted drift). ``hit_rate`` is the share of
  slates with a choice, ``ndcg@k`` the mean of ``1 / log2(position + 2)`` of the chosen position (0 for no
  choice), ``engagement`` the mean engagement per slate. The number of slates comes from the log, so the
  simulator's session budget does not cut them short. Every recommender meets the same random draws (common
  random numbers), so their differences are paired.

The report gives each score's mean with a bootstrap interval over users (the same resampled users for every
recommender, so differences are paired), each recommender's lift over popularity (its mean over popularity's,
minus 1) real and simulated, and Kendall's tau between the real and simulated rankings. Users are the unit:
the recommenders are fixed after training, so users' scores are independent given them.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from metarec.calibration.fit import Calibration, FitConfig, calibrate
from metarec.calibration.logs import load_logs, time_split, users_repeat
from metarec.calibration.recommenders import STANDARD, RecommenderConfig, check_recommenders, fit_recommenders
from metarec.calibration.run import clicked, saved_calibration, simulate_future, user_item_matrix
from metarec.config import FrozenConfig
from metarec.envs.calibrated import candidate_strata
from metarec.envs.core.backend import TorchRandom, torch_backend
from metarec.envs.drifting.model import DriftingUsersModel

REAL = ("recall", "ndcg")
SIMULATED = ("sim_offline_recall", "sim_offline_ndcg", "sim_hit_rate", "sim_ndcg", "sim_engagement")


class ValidateConfig(FrozenConfig):
    """What ``metarec validate`` does (``--set KEY=VALUE``; ``fit.KEY`` and ``recommenders.KEY`` reach those)."""

    k: int = Field(10, ge=1, description="Length of a recommendation list and of a simulated slate.")
    max_steps: int = Field(50, ge=1, description="Most simulated slates per user (one per held-out event).")
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples of the users.")
    seed: int = Field(0, ge=0, description="Seeds the random recommender, ALS, the simulation and the bootstrap.")
    fit: FitConfig = Field(default_factory=FitConfig)
    recommenders: RecommenderConfig = Field(default_factory=RecommenderConfig)


# ---------------------------------------------------------------------------------------------------------------------
# ranking and offline metrics


def ranked_lists(scores: np.ndarray, exclude: np.ndarray | None, length: int) -> np.ndarray:
    """``[U, length]`` item codes by descending score (ties by lower code), ``exclude`` (bool ``[U, M]``) last."""
    scores = np.array(scores, dtype=np.float64)
    if exclude is not None:
        scores[exclude] = -np.inf
    length = min(length, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :length]  # stable: ties keep the lower code first


def _lists(scorer: Any, users: np.ndarray, exclude: np.ndarray | None, length: int, chunk: int = 2048) -> np.ndarray:
    """:func:`ranked_lists` of ``scorer``'s scores, ``chunk`` users at a time (a user-by-catalogue score matrix is
    the largest array validation makes)."""
    parts = [
        ranked_lists(scorer(users[i : i + chunk]), None if exclude is None else exclude[i : i + chunk], length)
        for i in range(0, len(users), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, length), dtype=np.int64)


def list_metrics(lists: np.ndarray, relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per user ``recall`` (hits in the top ``k`` over ``min(k, relevant items)``) and ``ndcg`` of ``lists``
    (``[U, >= k]``) against ``relevant`` (bool ``[U, M]``); users without a relevant item get NaN."""
    top = lists[:, :k]
    hit = np.take_along_axis(relevant, top, axis=1)  # [U, k]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    count = relevant.sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(count, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = hit.sum(axis=1) / np.minimum(count, k)
        ndcg = (hit * discount[None, :]).sum(axis=1) / ideal
    return {"recall": np.where(count > 0, recall, np.nan), "ndcg": np.where(count > 0, ndcg, np.nan)}


# ---------------------------------------------------------------------------------------------------------------------
# the interactive simulation


def simulation_model(calibration: Calibration, k: int) -> DriftingUsersModel:
    """The calibrated dynamics with slates of ``k`` items out of ``k`` candidates (the recommender's list)."""
    config = calibration.config
    if k > config.catalog.num_items:
        raise ValueError(f"k: expected at most the catalogue's {config.catalog.num_items} items, got {k}")
    config = config.model_validate({**config.model_dump(), "num_candidates": k, "slate_size": k})
    world = {**calibration.world, **candidate_strata(config.catalog.num_items, k, calibration.config.catalog.seed)}
    return DriftingUsersModel(config, torch_backend("cpu"), world)


def simulate_slates(
    model: DriftingUsersModel,
    interest: np.ndarray | None,
    lists: np.ndarray,
    steps: np.ndarray,
    seed: int,
) -> dict[str, np.ndarray]:
    """Shows each user (fitted ``interest`` ``[U, d]``, or None for new users drawn from the fitted prior) a slate
    of the first ``k`` items of their list (``[U, >= k + max(steps) - 1]``) not yet chosen in the simulation,
    ``steps[u]`` times; returns per user
    ``hit_rate``, ``ndcg`` (of the chosen position) and ``engagement`` per slate."""
    k, users = model.slate_size, lists.shape[0]
    horizon = int(steps.max()) if users else 0
    if lists.shape[1] < k + horizon - 1:
        raise ValueError(f"lists: expected at least {k + horizon - 1} items per user, got {lists.shape[1]}")
    rng = TorchRandom(torch.Generator().manual_seed(seed))
    state = model.initial_state(rng, users)
    if interest is not None:  # the user's cluster is the nearest centre (it sets only a trend, off when calibrated)
        fitted = torch.as_tensor(interest, dtype=torch.float32)
        cluster = torch.cdist(fitted, model.world["cluster_centre"]).argmin(dim=1)
        state.update(interest=fitted, anchor=fitted.clone(), cluster=cluster)
    listed = torch.as_tensor(lists, dtype=torch.int64)
    chosen = torch.zeros(listed.shape, dtype=torch.bool)
    slate = torch.arange(k).expand(users, k)
    live = torch.as_tensor(steps)[:, None] > torch.arange(max(horizon, 1))[None, :]  # [U, T]
    clicks, gain, engagement = (torch.zeros(users, dtype=torch.float64) for _ in range(3))
    discount = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2.0)
    for t in range(horizon):
        # the first k list positions not yet chosen, in list order (a stable sort puts chosen ones last)
        position = torch.sort(chosen.to(torch.int8), dim=1, stable=True).indices[:, :k]
        state["candidates"] = torch.gather(listed, 1, position)
        state, outcome = model.step(rng, state, slate)
        on = live[:, t]
        hit = outcome.info["clicked"] & on
        where = outcome.info["chosen_position"].clamp_min(0)
        rows = torch.nonzero(hit).squeeze(1)
        chosen[rows, position[rows, where[rows]]] = True
        clicks += hit.double()
        gain += torch.where(hit, discount[where], 0.0)
        engagement += torch.where(on, outcome.reward.double(), 0.0)
    count = torch.as_tensor(steps, dtype=torch.float64).clamp_min(1.0)
    return {
        "hit_rate": (clicks / count).numpy(),
        "ndcg": (gain / count).numpy(),
        "engagement": (engagement / count).numpy(),
    }


# ---------------------------------------------------------------------------------------------------------------------
# the statistics


def bootstrap_summary(
    values: dict[str, dict[str, np.ndarray]], baseline: str, draws: int, generator: np.random.Generator
) -> dict[str, dict[str, Any]]:
    """For each recommender and metric (``values[name][metric]``, ``[U]`` per user, NaN where not evaluated):
    the mean with a 95% percentile bootstrap interval over users, and the lift over ``baseline`` (ratio of means
    minus 1) with its interval; the same resampled users for every recommender."""
    users = len(next(iter(next(iter(values.values())).values())))
    picks = generator.integers(0, users, size=(draws, users))
    bases = {metric: np.nanmean(per_user[picks], axis=1) for metric, per_user in values[baseline].items()}
    out: dict[str, dict[str, Any]] = {}
    for name, metrics in values.items():
        out[name] = {}
        for metric, per_user in metrics.items():
            means = np.nanmean(per_user[picks], axis=1)
            base = bases[metric]
            mean, base_mean = float(np.nanmean(per_user)), float(np.nanmean(values[baseline][metric]))
            with np.errstate(invalid="ignore", divide="ignore"):
                lifts = means / base - 1.0
            out[name][metric] = {
                "mean": mean,
                "ci": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
                "lift": mean / base_mean - 1.0 if base_mean else math.nan,
                "lift_ci": [float(np.nanquantile(lifts, 0.025)), float(np.nanquantile(lifts, 0.975))],
            }
    return out


def resampled_means(
    values: dict[str, np.ndarray], draws: int, generator: np.random.Generator
) -> dict[str, np.ndarray]:
    """``[draws]`` means of each ``values[name]`` (``[U]`` per user, NaN where not evaluated) over bootstrap
    resamples of the users, the same users for every name."""
    users = len(next(iter(values.values())))
    picks = generator.integers(0, users, size=(draws, users))
    return {name: np.nanmean(per_user[picks], axis=1) for name, per_user in values.items()}


def clear_pairs(values: dict[str, np.ndarray], draws: int, generator: np.random.Generator) -> list[tuple[str, str]]:
    """Pairs ``(better, worse)`` whose paired bootstrap interval (95%) of the difference of means excludes 0."""
    names = list(values)
    means = resampled_means(values, draws, generator)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            low, high = np.quantile(means[a] - means[b], [0.025, 0.975])
            if low > 0 or high < 0:
                pairs.append((a, b) if low > 0 else (b, a))
    return pairs


def exact_simulator_reach(
    real: dict[str, np.ndarray], baseline: str, draws: int, generator: np.random.Generator
) -> dict[str, Any]:
    """How often a simulator that is exactly right would meet the targets against a real future of this many
    users. Its scores are the real means over all users (``real[name]``, ``[U]`` per user); another real future of
    the same size is a bootstrap resample of the users, and the targets are checked against it: each lift within
    ``max(25%, 0.02)`` of the resample's (:func:`within_target`), all of them at once, and Kendall's tau 1.0.
    Where these are far below 1, the logs hold too few users for the targets to tell a right simulator from a
    wrong one."""
    names = list(real)
    full = {name: float(np.nanmean(real[name])) for name in names}
    resampled = resampled_means(real, draws, generator)
    within = {}
    for name in names:
        if name == baseline:
            continue
        exact = full[name] / full[baseline] - 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            lifts = resampled[name] / resampled[baseline] - 1.0
        within[name] = lifts_within_target(lifts, exact)
    taus = [_tau({n: resampled[n][b] for n in names}, full) for b in range(draws)]
    return {
        "lift_within_target": {name: float(hit.mean()) for name, hit in within.items()},
        "all_lifts_within_target": float(np.mean(np.all(list(within.values()), axis=0))) if within else None,
        "kendall_tau_1": float(np.mean(np.asarray(taus) > 1.0 - 1e-9)),
        "draws": draws,
    }


def _tau(real: dict[str, float], simulated: dict[str, float]) -> float:
    from scipy.stats import kendalltau

    names = list(real)
    return float(kendalltau([real[n] for n in names], [simulated[n] for n in names]).statistic)


def lifts_within_target(real_lift: Any, simulated_lift: Any) -> np.ndarray:
    """Whether each simulated lift over popularity is within ``max(25% of the real lift, 0.02)`` of the real one
    (arrays or numbers, broadcast)."""
    return np.abs(simulated_lift - real_lift) <= np.maximum(0.25 * np.abs(real_lift), 0.02)


def within_target(real_lift: float, simulated_lift: float) -> bool:
    """:func:`lifts_within_target` of one pair of lifts."""
    return bool(lifts_within_target(real_lift, simulated_lift))


# ---------------------------------------------------------------------------------------------------------------------
# the driver


def run_validation(
    logs_path: str | Path,
    format: str,
    items: str | Path | None = None,
    holdout_frac: float = 0.2,
    config: ValidateConfig | None = None,
    names: tuple[str, ...] = STANDARD,
    progress: bool = False,
    population: str | Path | None = None,
) -> dict[str, Any]:
    """Loads and splits the logs, calibrates and trains on the past, scores every recommender on the real and
    the simulated future; returns the report's numbers (strict-JSON-safe but for NaN, which ``write_json`` maps).
    With ``population`` (a directory ``metarec calibrate`` wrote for the same logs and ``holdout_frac``) the fit
    is loaded from it instead of made (:func:`~metarec.calibration.run.saved_calibration` checks it is this past's)."""
    config = config or ValidateConfig()
    check_recommenders(names)
    if "popularity" not in names:
        raise ValueError("recommenders: expected popularity among them (lifts are measured over it)")
    started = time.perf_counter()

    def say(text: str) -> None:
        if progress:
            print(f"validate: {text} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    logs = load_logs(logs_path, format, items=items)
    if logs.num_items < config.k + config.max_steps - 1:
        raise ValueError(
            f"k, max_steps: a user's list needs k + max_steps - 1 = {config.k + config.max_steps - 1} items; "
            f"the logs have {logs.num_items}"
        )
    train, test = time_split(logs, holdout_frac)
    doing = "calibrating on" if population is None else "loading the population fitted on"
    say(f"{logs.num_events:,} events; {doing} the past {train.num_events:,}")
    calibration = calibrate(train, config.fit, progress=progress) if population is None else (
        saved_calibration(population, train))  # fmt: skip
    fit_seconds = time.perf_counter() - started
    train, test = clicked(train), clicked(test)
    repeats = users_repeat(train)
    m = train.num_items
    users = np.intersect1d(np.unique(test.user), np.unique(train.user))
    seen = user_item_matrix(users, train.user, train.item, m)
    future = user_item_matrix(users, test.user, test.item, m)
    if not repeats:
        future &= ~seen
    keep = future.any(axis=1)
    users, seen, future = users[keep], seen[keep], future[keep]
    if len(users) == 0:
        raise ValueError("holdout: no user has both training events and a held-out event to predict")
    row = np.searchsorted(users, test.user).clip(0, len(users) - 1)
    held = test.subset((users[row] == test.user) & (repeats | ~seen[row, test.item]))  # what the users are scored on
    simulated = simulate_future(calibration, train, held, seed=config.seed)
    offline = user_item_matrix(users, simulated["user"], simulated["item"], m)
    if not repeats:
        offline &= ~seen
    steps = np.minimum(np.bincount(np.searchsorted(users, held.user), minlength=len(users)), config.max_steps)
    generator = np.random.default_rng(config.seed)
    say(f"training {', '.join(names)} on the past; scoring {len(users):,} users")
    recommenders = fit_recommenders(
        train.user, train.item, train.timestamp, train.num_users, m, config.recommenders, generator, names
    )
    model = simulation_model(calibration, config.k)
    length = config.k + config.max_steps
    # users new in the held-out period: no history for the recommenders, drawn from the fitted prior in the simulator
    new = np.setdiff1d(np.unique(test.user), np.unique(train.user))
    new_future = user_item_matrix(new, test.user, test.item, m)
    mine = np.isin(test.user, new)
    new_steps = np.minimum(np.bincount(np.searchsorted(new, test.user[mine]), minlength=len(new)), config.max_steps)
    values: dict[str, dict[str, np.ndarray]] = {}
    cold: dict[str, dict[str, np.ndarray]] = {}
    for name, scorer in recommenders.items():
        lists = _lists(scorer, users, None if repeats else seen, length)
        real = list_metrics(lists, future, config.k)
        off = list_metrics(lists, offline, config.k)
        slates = simulate_slates(model, calibration.user_factors[users], lists, steps, config.seed)
        values[name] = {
            "recall": real["recall"],
            "ndcg": real["ndcg"],
            "sim_offline_recall": off["recall"],
            "sim_offline_ndcg": off["ndcg"],
            **{f"sim_{key}": value for key, value in slates.items()},
        }
        say(f"{name}: real ndcg@{config.k} {np.nanmean(real['ndcg']):.4f}, simulated {np.nanmean(slates['ndcg']):.4f}")
        if len(new):
            lists = _lists(scorer, new, None, length)
            slates = simulate_slates(model, None, lists, new_steps, config.seed)
            cold[name] = {**list_metrics(lists, new_future, config.k), **{f"sim_{k}": v for k, v in slates.items()}}
    summary = bootstrap_summary(values, "popularity", config.bootstrap, generator)
    means = {metric: {n: summary[n][metric]["mean"] for n in names} for metric in (*REAL, *SIMULATED)}
    clear = clear_pairs({n: values[n]["ndcg"] for n in names}, config.bootstrap, generator)
    agreement = {}
    for metric in ("sim_offline_ndcg", "sim_ndcg"):
        agreement[metric] = {
            "kendall_tau": _tau(means["ndcg"], means[metric]),
            "clear_pairs_same_order": all(means[metric][a] > means[metric][b] for a, b in clear) if clear else None,
            "lifts_within_target": {
                n: within_target(summary[n]["ndcg"]["lift"], summary[n][metric]["lift"]) for n in names
            },
        }
    cold_start: dict[str, Any] = {"users": len(new)}
    if len(new):
        cold_summary = bootstrap_summary(cold, "popularity", config.bootstrap, generator)
        cold_means = {metric: {n: cold_summary[n][metric]["mean"] for n in names} for metric in ("ndcg", "sim_ndcg")}
        cold_start.update(
            recommenders=cold_summary,
            agreement={"sim_ndcg": {"kendall_tau": _tau(cold_means["ndcg"], cold_means["sim_ndcg"])}},
        )
    reach = exact_simulator_reach({n: values[n]["ndcg"] for n in names}, "popularity", config.bootstrap, generator)
    return {
        "logs": Path(logs_path).name,
        "events": int(logs.num_events),
        "holdout_frac": holdout_frac,
        "k": config.k,
        "users_evaluated": len(users),
        "held_out_events_of_new_users": int(np.sum(~np.isin(test.user, train.user))),
        "repeats": bool(repeats),
        "recommenders": summary,
        "clear_pairs_real_ndcg": [list(pair) for pair in clear],
        "agreement": agreement,
        "exact_simulator": reach,
        "cold_start": cold_start,
        "population": None if population is None else str(population),
        "calibration_seconds": round(fit_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
    }
