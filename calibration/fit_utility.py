"""Where the fitted utilities sit: the logged click rate per slate, the no-click utility that gives it on random
slates of the simulator's own users, and the satisfaction the utility offset aims at (step 6 of
:mod:`metarec.calibration.fit`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import expit, logsumexp

from metarec.calibration.fit_config import FitConfig
from metarec.calibration.logs import Logs
from metarec.envs.calibrated import candidate_strata
from metarec.envs.core.backend import NumpyRandom, numpy_backend
from metarec.envs.drifting.model import DriftingUsersModel
from metarec.envs.drifting.params import SimulatorConfig


def slate_starts(logs: Logs) -> tuple[np.ndarray, np.ndarray]:
    """The rows in order of (user, timestamp), and where each slate (the rows of one user and timestamp) starts
    in that order; ``np.diff`` of the starts and the row count gives each slate's rows."""
    order = np.lexsort((logs.timestamp, logs.user))
    user, stamp = logs.user[order], logs.timestamp[order]
    return order, np.flatnonzero(np.r_[True, (np.diff(user) != 0) | (np.diff(stamp) != 0)])


def slate_click_rate(logs: Logs) -> dict[str, Any] | None:
    """The logged click rate per slate, or None where the logs have no row with ``click`` 0 (a log of
    choices: every row was clicked, so the rate is not in it).

    A slate is the rows of one user and timestamp (an impression log writes a row per shown item, all
    at the time of the slate); where every row has a timestamp of its own, every row is a slate. The
    rate is the share of slates with at least one clicked row."""
    if logs.num_events == 0 or not np.any(logs.click == 0):
        return None
    order, starts = slate_starts(logs)
    clicked = np.maximum.reduceat((logs.click[order] > 0).astype(np.int8), starts) > 0
    return {
        "click_rate": float(np.mean(clicked)),
        "slates": len(starts),
        "rows": int(logs.num_events),
        "row_click_rate": float(np.mean(logs.click > 0)),
    }


def target_click_rate(logged: dict[str, Any] | None, config: FitConfig) -> tuple[float, str]:
    """The share of random slates the no-click utility is set to have clicked, and where it comes from."""
    if config.slate_click_rate is not None:
        return config.slate_click_rate, "slate_click_rate (set)"
    if logged is None:
        return config.assumed_click_rate, "assumed_click_rate (the logs have no rows with click 0)"
    rate = float(np.clip(logged["click_rate"], 1e-3, 0.999))
    return rate, "logs: share of slates (rows of one user and timestamp) with a click"


def satisfaction_target(logs: Logs, config: FitConfig) -> tuple[float, str]:
    """The median satisfaction of a clicked item (see the module docstring, step 6) and where it comes from."""
    ratings = logs.rating[np.isfinite(logs.rating)]
    if len(ratings) == 0:
        return config.assumed_satisfaction, "assumed_satisfaction (the logs have no ratings)"
    low, high, median = float(ratings.min()), float(ratings.max()), float(np.median(ratings))
    if low >= 0.0 and high <= 1.0:
        target, source = median, "median rating (ratings in [0, 1] are satisfaction)"
    elif high > low:
        target, source = (median - low) / (high - low), f"median rating rescaled from [{low:g}, {high:g}] to [0, 1]"
    else:
        return config.assumed_satisfaction, f"assumed_satisfaction (every rating is {low:g})"
    return float(np.clip(target, 0.02, 0.98)), source


def prior_slates(
    world: dict[str, np.ndarray], config: SimulatorConfig, seed: int, samples: int = 16_384
) -> tuple[np.ndarray, np.ndarray]:
    """``[samples, k]`` utilities of random slates (``k`` distinct candidates in random order) shown to
    new users, and the same slates' choice logits (utility plus appeal, over the choice temperature): users
    and candidates drawn by the simulator itself (:class:`DriftingUsersModel` on this world), both as its
    choice model computes them."""
    utility, logits, _ = random_slates(world, config, seed, samples)
    return utility, logits


def random_slates(
    world: dict[str, np.ndarray], config: SimulatorConfig, seed: int, samples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`prior_slates`, and the slates' catalogue items (``[samples, k]``)."""
    if config.population.choice_temperature != 1.0:  # the no-click utility is solved in logit units
        raise ValueError(f"population.choice_temperature: expected 1 (a calibrated population's), got "
                         f"{config.population.choice_temperature}")  # fmt: skip
    rng = np.random.default_rng(seed)
    model = DriftingUsersModel(config, numpy_backend(), world)
    state = model.initial_state(NumpyRandom(rng), samples)
    choice = model.choice_model(state)  # [samples, N]
    slate = np.argsort(rng.random(choice.utilities.shape), axis=1)[:, : config.slate_size]
    utility = np.take_along_axis(choice.utilities, slate, axis=1).astype(np.float64)
    logits = np.log(np.take_along_axis(choice.weights, slate, axis=1).astype(np.float64))
    return utility, logits, np.take_along_axis(np.asarray(state["candidates"]), slate, axis=1)


def slate_weights(logits: np.ndarray, position_bias: float) -> tuple[np.ndarray, np.ndarray]:
    """``log S`` ``[B]`` of slates with choice ``logits`` ``[B, k]`` (the simulator's position-weighted choice
    weights) and ``[B, k]`` the probability of each position given a click."""
    log_weight = np.minimum(logits, 60.0) - position_bias * np.arange(logits.shape[1])[None, :]
    log_s = np.logaddexp.reduce(log_weight, axis=1)
    return log_s, np.exp(log_weight - log_s[:, None])


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values, axis=None)
    cumulative = np.cumsum(weights.ravel()[order])
    return float(values.ravel()[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def solve_no_click_utility(log_s: np.ndarray, rate: float) -> float:
    """v with ``mean(S / (S + e^v)) = rate`` (decreasing in v), found by ``brentq``."""
    from scipy.optimize import brentq

    low, high = float(log_s.min()) - 40.0, float(log_s.max()) + 40.0
    return float(brentq(lambda v: float(np.mean(expit(log_s - v))) - rate, low, high, xtol=1e-10))


DEFAULT_PRIOR_EVENTS = 10.0  # the shrinkage where nothing measures it


def quality_from_ratings(
    logs: Logs, affinity: np.ndarray, prior_events: float | None = None
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Each item's quality on the satisfaction logit's scale, from the ratings it got: every rated event's
    rating becomes the logit of its mid-rank quantile among the logs' ratings, less the rater's fitted affinity
    for the item (``affinity``, ``[E]``); an item's quality is the mean of these over its events, shrunk toward
    the mean over all events by ``prior_events`` events' worth.

    ``within_item_sd`` is the pooled spread of the events' values about their item's mean: how far satisfaction
    strays from utility from one event to the next. Where ``prior_events`` is None it is fitted (empirical Bayes, a
    normal random effect per item): the spread of the items' true qualities, ``t^2``, comes from the method of
    moments weighted by events, ``sum n_j (m_j - m)^2 = (N - sum n_j^2 / N) t^2 + (J - 1) s^2`` over the ``J``
    rated items (``N`` events, within-item variance ``s^2``), and an item's mean is worth ``n_j t^2 / s^2`` prior
    means, so ``prior_events = s^2 / t^2``: ``"infinite"`` (every item at the mean) where the items' means spread no
    more than one rating's noise gives, 10 where no item has two rated events. None where the logs have no
    ratings."""
    from scipy.stats import rankdata

    rated = np.isfinite(logs.rating)
    if not np.any(rated):
        return None
    level = (rankdata(logs.rating[rated]) - 0.5) / int(rated.sum())
    residual = np.log(level / (1.0 - level)) - affinity[rated]
    items = logs.item[rated]
    total = np.bincount(items, weights=residual, minlength=logs.num_items)
    count = np.bincount(items, minlength=logs.num_items)
    mean = float(residual.mean())
    # how far one rating strays from its item's mean: the pooled within-item spread (one mean per item fitted)
    item_mean = total / np.maximum(count, 1)
    dof = int(rated.sum()) - int(np.count_nonzero(count))
    within = float(np.sum((residual - item_mean[items]) ** 2)) / dof if dof > 0 else None
    between = None
    if within is not None:
        n, events = count[count > 0].astype(np.float64), float(rated.sum())
        spread_events = events - float(np.sum(n * n)) / events
        scatter = float(np.sum(n * (item_mean[count > 0] - mean) ** 2))
        between = max((scatter - (len(n) - 1) * within) / max(spread_events, 1e-12), 0.0)
    source = "set"
    if prior_events is None:
        if within is None:  # no item rated twice: nothing measures one rating's noise
            prior_events, source = DEFAULT_PRIOR_EVENTS, "default: no item has two rated events"
        elif between == 0.0:  # nothing tells the items apart beyond one rating's noise (or there is neither)
            prior_events, source = math.inf, "fitted: no spread between items, every item at the mean"
        else:
            prior_events, source = within / between, "fitted: within-item variance over between-item variance"
    # an item's weight on its own mean; 0 for every item where prior_events is infinite, and for unrated items
    shrink = np.divide(count, count + prior_events, out=np.zeros(logs.num_items), where=count > 0)
    quality = mean + shrink * (item_mean - mean)
    about = {
        "rated_events": int(rated.sum()),
        "prior_events": prior_events if math.isfinite(prior_events) else "infinite",
        "prior_source": source,
        "within_item_sd": None if within is None else math.sqrt(within),
        "within_item_dof": dof,
        "between_item_sd": None if between is None else math.sqrt(between),
    }
    return quality.astype(np.float32), about


def item_ctr_correction(
    rows: Logs, bias: np.ndarray, vectors: np.ndarray, centres: np.ndarray, weights: np.ndarray, spread: float
) -> tuple[np.ndarray, dict[str, Any], np.ndarray] | None:
    """Step 3b of :mod:`metarec.calibration.fit`: in logs with impressions, each item's choice bias moved so that
    the item draws the population's clicks in proportion to its click-through rate when shown, shrunk.

    Returns the new bias (``[M]``), what was measured, and the shrunk rates (``[M]``); None where every row is a
    click, or none is. An item's rate is its clicked rows over its rows, shrunk toward the mean rate ``p`` by a
    Beta prior worth ``m`` rows: ``(clicks + m p) / (rows + m)``. ``m = p (1 - p) / t^2 - 1`` (at least 1), where
    ``t^2``, the spread of the items' true rates, comes from the method of moments weighted by rows:
    ``sum n_j (r_j - p)^2 = (N - sum n_j^2 / N) t^2 + (J - 1) p (1 - p)`` over the ``J`` items shown (``N`` rows),
    so items shown a few times weigh little; no spread beyond the binomial noise shrinks every item to ``p``.
    The fitted model's pull of item ``j`` on the population is ``sum_c w_c exp(b_j + m_c . v_j + s^2 |v_j|^2 / 2)``
    over the interest clusters (centre ``m_c``, weight ``w_c``, spread ``s``: the mean of ``exp(u)`` over a
    Gaussian cluster). At low click rates a shown item's click probability is about its pull over the no-click's,
    so the bias moves by the log of the shrunk rate over the pull (less the mean move: step 6 sets the level, and
    :func:`match_item_ctr` then corrects this linear reading on the simulator's own slates). Users' interests, and
    so personalisation, are left as fitted. The rates are read as those of random slates shown to random users:
    a logging policy that chose items for users makes an item's rate partly its audience's.
    """
    if rows.num_events == 0 or not np.any(rows.click <= 0):
        return None
    shown = np.bincount(rows.item, minlength=len(bias)).astype(np.float64)
    clicks = np.bincount(rows.item, weights=(rows.click > 0).astype(np.float64), minlength=len(bias))
    seen = shown > 0
    n, total = shown[seen], float(shown.sum())
    rate = float(clicks[seen].sum() / total)
    if rate == 0.0:
        return None  # not one click: nothing to say about items
    observed = clicks[seen] / n
    binomial = rate * (1.0 - rate)
    spread_rows = total - float(np.sum(n * n)) / total
    between = (float(np.sum(n * (observed - rate) ** 2)) - (len(n) - 1) * binomial) / max(spread_rows, 1e-12)
    strength = math.inf if between <= 0 or rate == 1.0 else max(binomial / between - 1.0, 1.0)
    shrunk = np.full(len(bias), rate)
    if math.isfinite(strength):
        shrunk[seen] = (clicks[seen] + strength * rate) / (n + strength)
    pull = np.log(weights)[:, None] + centres @ vectors.T + 0.5 * spread**2 * np.sum(vectors**2, axis=1)[None, :]
    log_pull = bias + logsumexp(pull, axis=0)
    move = np.log(shrunk) - log_pull
    move -= move.mean()
    about = {
        "items_shown": int(seen.sum()),
        "rows": int(rows.num_events),
        "click_rate": rate,
        "between_item_sd": math.sqrt(max(between, 0.0)),
        "prior_strength_rows": None if not math.isfinite(strength) else strength,
        "pull_sd_before": float(np.std(log_pull)),
        "pull_sd_after": float(np.std(log_pull + move)),
    }
    return (bias + move).astype(np.float32), about, shrunk


def match_item_ctr(
    world: dict[str, np.ndarray], config: SimulatorConfig, target: np.ndarray, rate: float, key: str, seed: int,
    rounds: int = 5,
) -> dict[str, Any]:  # fmt: skip
    """Moves ``world[key]`` (the items' choice term) so that random slates of the simulator's own new users click
    each item, when shown, at its ``target`` rate relative to the mean: step 3b's rates matched where the linear
    reading of :func:`item_ctr_correction` is off (slates clicked often, where items compete for the one click,
    and position bias). Each round solves the no-click utility for the logged ``rate``, computes each item's
    expected click-through rate on the same random slates (common random numbers: enough slates that every item
    is shown about 200 times, at least 16,384) and moves each shown item by the log of its target over its rate.
    Returns the relative error of the items' rates before the first round and after the last."""
    k = config.slate_size
    samples = max(16_384, -(-200 * len(target) // k))
    # random slates need only k candidates a user: one from each of k strata, every item as often as before
    few = config.model_copy(update={"num_candidates": k})
    local = {**world, **candidate_strata(config.catalog.num_items, k, config.catalog.seed)}
    errors = []
    for _ in range(rounds + 1):
        _, logits, items = random_slates(local, few, seed, samples)
        log_s, position = slate_weights(logits, config.population.position_bias)
        clicks = position * expit(log_s - solve_no_click_utility(log_s, rate))[:, None]
        shown = np.bincount(items.ravel(), minlength=len(target)).astype(np.float64)
        clicked = np.bincount(items.ravel(), weights=clicks.ravel(), minlength=len(target))
        seen = shown > 0
        simulated = clicked[seen] / shown[seen]
        wanted = target[seen] * simulated.mean() / target[seen].mean()  # the level is the no-click utility's
        errors.append(float(np.sqrt(np.mean((simulated / wanted - 1.0) ** 2))))
        if len(errors) > rounds:
            break
        step = np.zeros(len(target))
        step[seen] = np.log(wanted / np.maximum(simulated, 1e-12))
        local[key] = (local[key] + step).astype(np.float32)
    world[key] = local[key]
    return {"rate_rel_error_before": errors[0], "rate_rel_error_after": errors[-1], "rounds": rounds}
