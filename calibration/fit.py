"""Fit a DriftingUsers population and catalog to interaction logs.

The calibrated choice model is the simulator's own: a multinomial logit whose utility of item i for
user u is ``interest_u · embedding_i + quality_i``. Fitting it is matrix factorisation with a
softmax over the catalog (every logged event is a choice of one item), in torch:

1. **Item embeddings and quality**: maximise the log-likelihood of each logged item against the whole
   catalog, ``log softmax_i(U_u · V_i + b_i)``, with L2 regularisation (Adam, minibatches of events).
   Under the logit's independence of irrelevant alternatives the same parameters give the choice
   among a slate of candidates. The scale is the logit's, so ``choice_temperature`` is 1.
2. **The population prior**: a Gaussian mixture (spherical) over the users' factors, its number of
   components chosen by BIC (scikit-learn); centres and shares become the interest clusters, and
   the mean component std the cluster spread.
3. **Drift**: users' factors are re-fitted (items fixed) on the first and second half of each active
   user's events. Their squared distance, less the same distance between two random halves (the
   estimation noise alone), is the random-walk variance between the two halves' means (n/3 events
   for n events); one logged event counts as one simulated step. This gives ``ou_noise``; the other
   drift mechanisms are left off (their rates are not identifiable from a log of choices alone). The
   random halves also measure the factors' estimation noise, which is taken out of the cluster spread.
4. **Fatigue**: how much less often a user's next event repeats the topic of the previous one
   than the user's own topic mix predicts (topics are k-means clusters of the item embeddings).
5. **Ratings**: simulated satisfaction is mapped to the rating scale by the training ratings'
   quantiles (a monotone link), so simulated ratings use the logs' scale.
6. **Where utilities sit, and the no-click utility**: the softmax over the catalog is unchanged by
   adding a constant to every item's quality, so the fit leaves the utilities' zero point arbitrary
   (quality near -log M). The simulator reads them as absolute: satisfaction is ``sigmoid(u)``, and a
   slate is clicked against ``no_click_utility``. Two constants are set after the fit, both against
   the simulator's own reference: new users and their candidates drawn by the simulator itself on the
   fitted world, shown random slates (``slate_size`` distinct candidates, position weights
   ``exp(-position_bias k)``), S a slate's position-weighted sum of ``exp(u)``.

   * the **no-click utility** v is the root (``brentq``) of ``mean(S / (S + e^v)) = r``: random slates
     are clicked at rate r. r is the logged share of slates with a click, a slate being the rows of
     one user and timestamp (rows with ``click`` 0 are impressions nobody chose; where every row has
     its own timestamp, every row is a slate); in logs without rows of ``click`` 0 it is
     ``assumed_click_rate`` (0.5), since choices alone cannot tell it.
   * the **offset** added to every item's quality (and to v, which leaves the click rate as it is)
     puts the median satisfaction of those clicks (``sigmoid(u + noise)``, each click weighted by its
     probability) at the logged clicks' median satisfaction: the median rating where ratings lie in
     [0, 1] (satisfaction, as ``metarec simulate-logs`` writes it), the median rating rescaled from
     the ratings' [min, max] to [0, 1] otherwise (4 of 1-5 stars is 0.75), and ``assumed_satisfaction``
     (0.5) in logs without ratings. Satisfaction drives the session budget's refund and whether users
     return, so this keeps both in the logs' range. (The fitted utilities of the logged clicks
     themselves are not the reference: factors fitted to those very clicks rate them too high.)

   Both treat the logs as if gathered under random slates, with users as fresh as new ones: logs of
   a better-than-random policy show more clicks and more satisfied ones than random slates would
   give, and the fatigue and drift over a simulated session are not in either constant.

   Rows with ``click`` 0 are not choices: steps 1-5 see the clicked rows only, and users without a
   clicked training row (in the user table only, say because all their events are held out) are
   left out of every step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field
from scipy.special import expit

from metarec.calibration.logs import Logs
from metarec.config import FrozenConfig
from metarec.envs.calibrated import candidate_strata
from metarec.envs.core.backend import NumpyRandom, numpy_backend
from metarec.envs.drifting.model import DriftingUsersModel
from metarec.envs.drifting.params import SimulatorConfig


class FitConfig(FrozenConfig):
    """How to calibrate (``metarec calibrate --set KEY=VALUE`` sets these)."""

    embedding_dim: int = Field(16, ge=1, description="Dimension of item embeddings and user interests.")
    max_clusters: int = Field(8, ge=1, description="Largest number of interest clusters BIC may choose.")
    num_topics: int = Field(10, ge=1, description="Topics (k-means clusters of item embeddings) for fatigue.")
    epochs: int = Field(30, ge=1, description="Passes over the events.")
    batch_size: int = Field(2048, ge=1, description="Events per gradient step.")
    learning_rate: float = Field(0.03, gt=0, description="Adam step size.")
    l2: float = Field(1e-4, ge=0, description="L2 penalty on factors (per event).")
    refit_steps: int = Field(1000, ge=1, description="Gradient steps when re-fitting users' factors (drift).")
    min_events_for_drift: int = Field(20, ge=4, description="Users with fewer events are left out of drift.")
    num_candidates: int = Field(20, ge=1, description="Candidates per step in the simulator.")
    slate_size: int = Field(5, ge=1, description="Items per slate in the simulator.")
    text_features: bool = Field(
        False,
        description="Use the items' text (titles) as side information: each item's embedding and quality get a "
        "learned linear map of its text embedding added, so items with few events borrow from similar titles "
        "(needs the text extra).",
    )
    assumed_click_rate: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of random slates the simulated users click, where the logs cannot tell (no rows with "
        "click 0): the no-click utility is set to give it.",
    )
    assumed_satisfaction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Median satisfaction (sigmoid of utility) of a clicked item, where the logs have no ratings: "
        "sets where the fitted utilities sit.",
    )
    seed: int = Field(0, ge=0, description="Seeds initialisation, minibatches and mixtures.")


@dataclass
class Calibration:
    """A fitted population: the simulator config and world, the users' factors and how it was fitted."""

    config: SimulatorConfig
    world: dict[str, np.ndarray]
    user_factors: np.ndarray  # [num_users, d] of the training users (zeros for users without a clicked row)
    item_factors: np.ndarray  # [num_items, d]
    item_bias: np.ndarray  # [num_items]: the simulator's item quality (the fitted bias plus the offset)
    rating_quantiles: np.ndarray | None  # [101] quantiles of training ratings (None: no ratings)
    fit: dict[str, Any] = field(default_factory=dict)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """``[len(users), num_items]`` utilities of the calibrated choice model (the simulator's, before fatigue)."""
        return self.user_factors[users] @ self.item_factors.T + self.item_bias[None, :]


def _softmax_mf(
    user: torch.Tensor,
    item: torch.Tensor,
    num_users: int,
    num_items: int,
    config: FitConfig,
    generator: torch.Generator,
    items: tuple[torch.Tensor, torch.Tensor] | None = None,
    steps: int | None = None,
    side: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """Fits U (and, unless ``items`` are given and kept fixed, V and b) by full-softmax likelihood.
    With ``side`` (``[num_items, F]`` item features), V and b are a free part plus a learned linear map
    of the features; the returned V and b are the sums."""
    d = config.embedding_dim
    scale = 0.1
    users = torch.nn.Parameter(scale * torch.randn(num_users, d, generator=generator))
    if items is None:
        vectors = torch.nn.Parameter(scale * torch.randn(num_items, d, generator=generator))
        counts = torch.bincount(item, minlength=num_items).double() + 1.0
        bias = torch.nn.Parameter((counts / counts.sum()).log().float())
        params = [users, vectors, bias]
        if side is not None:
            to_vector = torch.nn.Parameter(torch.zeros(side.shape[1], d))
            to_bias = torch.nn.Parameter(torch.zeros(side.shape[1]))
            params += [to_vector, to_bias]
    else:
        vectors, bias = items
        params = [users]

    def item_side() -> tuple[torch.Tensor, torch.Tensor]:
        if items is None and side is not None:
            return vectors + side @ to_vector, bias + side @ to_bias
        return vectors, bias

    optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    events = user.shape[0]
    batch = min(config.batch_size, events)
    losses: list[float] = []
    total = steps if steps is not None else config.epochs * math.ceil(events / batch)
    per_epoch = max(1, math.ceil(events / batch))
    order = torch.randperm(events, generator=generator)
    for step in range(total):
        position = step % per_epoch
        if position == 0 and step:
            order = torch.randperm(events, generator=generator)
        index = order[position * batch : (position + 1) * batch]
        u, i = users[user[index]], item[index]
        item_vectors, item_bias = item_side()
        logits = u @ item_vectors.T + item_bias[None, :]
        loss = torch.nn.functional.cross_entropy(logits, i)
        penalty = (u * u).sum(1).mean()
        if items is None:
            penalty = penalty + (vectors[i] * vectors[i]).sum(1).mean()  # the free part: text explains the rest
        (loss + config.l2 * penalty).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if position == per_epoch - 1:
            losses.append(float(loss.detach()))
    item_vectors, item_bias = item_side()
    return users.detach(), item_vectors.detach(), item_bias.detach(), losses


def _mixture(factors: np.ndarray, config: FitConfig) -> tuple[Any, list[float]]:
    """The spherical Gaussian mixture over users' factors with the best BIC."""
    from sklearn.mixture import GaussianMixture

    best, bics = None, []
    for k in range(1, min(config.max_clusters, len(factors)) + 1):
        model = GaussianMixture(k, covariance_type="spherical", n_init=2, random_state=config.seed).fit(factors)
        bics.append(float(model.bic(factors)))
        if best is None or bics[-1] < min(bics[:-1], default=math.inf):
            best = model
    return best, bics


def _drift(
    logs: Logs,
    vectors: torch.Tensor,
    bias: torch.Tensor,
    config: FitConfig,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Random-walk variance per step of users' factors (see the module docstring)."""
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
    fitted = {}
    for name, part in (("time", late), ("random", coin)):
        rows = torch.from_numpy(2 * dense + part.astype(np.int64))
        factors, _, _, _ = _softmax_mf(
            rows,
            torch.from_numpy(item),
            2 * len(active),
            logs.num_items,
            config,
            generator,
            items=(vectors, bias),
            steps=config.refit_steps,
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


def _topics_and_fatigue(logs: Logs, vectors: np.ndarray, config: FitConfig) -> tuple[np.ndarray, dict[str, Any]]:
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


def slate_click_rate(logs: Logs) -> dict[str, Any] | None:
    """The logged click rate per slate, or None where the logs have no row with ``click`` 0 (a log of
    choices: every row was clicked, so the rate is not in it).

    A slate is the rows of one user and timestamp (an impression log writes a row per shown item, all
    at the time of the slate); where every row has a timestamp of its own, every row is a slate. The
    rate is the share of slates with at least one clicked row."""
    if logs.num_events == 0 or not np.any(logs.click == 0):
        return None
    order = np.lexsort((logs.timestamp, logs.user))
    user, stamp, click = logs.user[order], logs.timestamp[order], logs.click[order] > 0
    starts = np.flatnonzero(np.r_[True, (np.diff(user) != 0) | (np.diff(stamp) != 0)])
    clicked = np.maximum.reduceat(click.astype(np.int8), starts) > 0
    return {
        "click_rate": float(np.mean(clicked)),
        "slates": len(starts),
        "rows": int(logs.num_events),
        "row_click_rate": float(np.mean(click)),
    }


def _satisfaction_target(logs: Logs, config: FitConfig) -> tuple[float, str]:
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


def _prior_slates(
    world: dict[str, np.ndarray], config: SimulatorConfig, seed: int, samples: int = 16_384
) -> np.ndarray:
    """``[samples, k]`` utilities of random slates (``k`` distinct candidates in random order) shown to
    new users: users and candidates drawn by the simulator itself (:class:`DriftingUsersModel` on this
    world), utilities as its choice model computes them."""
    rng = np.random.default_rng(seed)
    model = DriftingUsersModel(config, numpy_backend(), world)
    utility = model.choice_model(model.initial_state(NumpyRandom(rng), samples)).utilities  # [samples, N]
    slate = np.argsort(rng.random(utility.shape), axis=1)[:, : config.slate_size]
    return np.take_along_axis(utility, slate, axis=1).astype(np.float64)


def _slate_weights(utility: np.ndarray, position_bias: float) -> tuple[np.ndarray, np.ndarray]:
    """``log S`` ``[B]`` of slates with ``utility`` ``[B, k]`` (the simulator's position-weighted choice
    weights) and ``[B, k]`` the probability of each position given a click."""
    log_weight = np.minimum(utility, 60.0) - position_bias * np.arange(utility.shape[1])[None, :]
    log_s = np.logaddexp.reduce(log_weight, axis=1)
    return log_s, np.exp(log_weight - log_s[:, None])


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values, axis=None)
    cumulative = np.cumsum(weights.ravel()[order])
    return float(values.ravel()[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def _no_click_utility(log_s: np.ndarray, rate: float) -> float:
    """v with ``mean(S / (S + e^v)) = rate`` (decreasing in v), found by ``brentq``."""
    from scipy.optimize import brentq

    low, high = float(log_s.min()) - 40.0, float(log_s.max()) + 40.0
    return float(brentq(lambda v: float(np.mean(expit(log_s - v))) - rate, low, high, xtol=1e-10))


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Torch's deterministic algorithms, restored afterwards: the fit's sparse gradient sums (rows of
    users and items in a minibatch) otherwise add up in a thread-dependent order, so two fits with one
    seed differed in the last bits."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def calibrate(logs: Logs, config: FitConfig | None = None) -> Calibration:
    """Fits a population and catalog to ``logs`` (the training part of a time split; every row, clicked
    or not: rows with ``click`` 0 give the click rate). The same logs and config give the same arrays,
    bit for bit (torch's deterministic algorithms are on during the fit)."""
    config = config or FitConfig()
    with _deterministic():
        return _calibrate(logs, config)


def _calibrate(logs: Logs, config: FitConfig) -> Calibration:
    logged_rate = slate_click_rate(logs)  # from every logged row, chosen or not
    if np.any(logs.click == 0):  # impressions without a click: what was chosen is the choice data
        logs = logs.subset(logs.click > 0)
    if logs.num_events < 2 or logs.num_items < config.num_candidates:
        raise ValueError(
            f"logs: expected at least {config.num_candidates} items (num_candidates) and 2 events, "
            f"got {logs.num_items} items and {logs.num_events} events"
        )
    generator = torch.Generator().manual_seed(config.seed)
    # Only users with a clicked row are fitted: the user table also holds users whose events are all held
    # out (a time split keeps the whole table) or were impressions, and they have nothing to fit.
    active = np.unique(logs.user)
    dense = np.full(logs.num_users, -1, dtype=np.int64)
    dense[active] = np.arange(len(active))
    user = torch.from_numpy(dense[logs.user])
    item = torch.from_numpy(logs.item.astype(np.int64))
    side, text = None, None
    if config.text_features:
        from metarec.calibration.text import MODEL_NAME, embed_texts

        if logs.item_text is None:
            raise ValueError(
                "text_features: the logs have no item text (a MovieLens item file, or --items with a text column)"
            )
        side = torch.from_numpy(embed_texts(logs.item_text))
        text = {
            "model": MODEL_NAME,
            "dim": int(side.shape[1]),
            "items_with_text": int(sum(1 for t in logs.item_text if t)),
        }
    users, vectors, bias, losses = _softmax_mf(user, item, len(active), logs.num_items, config, generator, side=side)
    factors = np.zeros((logs.num_users, config.embedding_dim), dtype=np.float32)
    factors[active] = users.numpy()
    # the prior is fitted to users with enough events that their factors say who they are: the factors
    # of users with a handful of events are mostly the regulariser's pull toward zero
    counts = np.bincount(logs.user, minlength=logs.num_users)[active]
    enough = counts >= min(config.min_events_for_drift, int(np.median(counts)))
    mixture, bics = _mixture(users.numpy()[enough], config)
    drift = _drift(logs, vectors, bias, config, generator)
    topic, fatigue = _topics_and_fatigue(logs, vectors.numpy(), config)
    # The mixture sees users' estimated factors, each the mean of a drifting interest over a history:
    # their spread is the anchors' plus the estimation noise plus the walk's mean displacement
    # (variance s² n / 3 per dimension over n events). Both are taken out.
    observed = float(np.sum(mixture.weights_ * mixture.covariances_))
    walk = drift["ou_noise"] ** 2 * float(np.mean(counts[enough])) / 3.0
    spread = float(np.sqrt(max(observed - drift.get("factor_noise_variance", 0.0) - walk, 0.25 * observed)))
    centres = mixture.means_.astype(np.float32)
    num_topics = int(topic.max()) + 1
    # item lengths: the logs say nothing of them; every item lasts the same (engagement = satisfaction)
    lengths = np.ones(logs.num_items, dtype=np.float32)
    item_vectors, item_bias = vectors.numpy(), bias.numpy()
    population = {
        "num_clusters": len(centres),
        "topics_per_cluster": 1,
        "interest_scale": float(np.mean(np.linalg.norm(centres, axis=1))),
        "cluster_spread": spread,
        "choice_temperature": 1.0,
        "quality_weight": 1.0,
        "consumption_pull": 0.0,
        "ou_reversion": 0.0,
        "ou_noise": drift["ou_noise"],
        "shift_hazard": 0.0,
        "trend_rate": 0.0,
        "fatigue_rate": fatigue["fatigue_rate"],
    }
    sim_fields = {
        "catalog": {
            "num_items": logs.num_items,
            "num_topics": num_topics,
            "embedding_dim": config.embedding_dim,
            "quality_std": float(bias.std()),
            "min_length": 1.0,
            "max_length": 1.0,
            "seed": config.seed,
        },
        "population": population,
        "num_candidates": config.num_candidates,
        "slate_size": min(config.slate_size, config.num_candidates),
    }
    world = {
        "item_embedding": item_vectors.astype(np.float32),
        "item_topic": topic,
        "item_quality": item_bias.astype(np.float32),  # the offset is added below
        "item_length": lengths,
        "item_appeal": np.zeros(logs.num_items, dtype=np.float32),
        "cluster_centre": centres,
        "cluster_weight": (mixture.weights_ / mixture.weights_.sum()).astype(np.float32),
        "trend_direction": np.zeros_like(centres),
        **candidate_strata(logs.num_items, config.num_candidates, config.seed),
    }
    # Where utilities sit (module docstring, step 6): random slates shown to new users of the prior are
    # clicked at the logged rate, and those clicks satisfy as the logged ones did. The click rate fixes
    # v - offset, so v is found first with no offset, then both move by the offset.
    draft = SimulatorConfig.model_validate(sim_fields)
    rate = config.assumed_click_rate if logged_rate is None else float(np.clip(logged_rate["click_rate"], 1e-3, 0.999))
    utility = _prior_slates(world, draft, config.seed)
    log_s, position = _slate_weights(utility, draft.population.position_bias)
    no_click_utility = _no_click_utility(log_s, rate)
    clicks = position * expit(log_s - no_click_utility)[:, None]  # P(this position is clicked)
    noise = draft.population.engagement_noise * np.random.default_rng(config.seed).standard_normal(utility.shape)
    median_utility = _weighted_median(utility + noise, clicks)
    target, target_source = _satisfaction_target(logs, config)
    offset = math.log(target / (1.0 - target)) - median_utility
    world["item_quality"] = (item_bias + offset).astype(np.float32)
    population["no_click_utility"] = no_click_utility + offset
    sim = SimulatorConfig.model_validate(sim_fields)
    logged_utility = np.sum(factors[logs.user] * item_vectors[logs.item], axis=1) + item_bias[logs.item]
    no_click = {
        "utility": no_click_utility + offset,
        "click_rate": rate,
        "identified": logged_rate is not None,
        "source": "assumed_click_rate (the logs have no rows with click 0)"
        if logged_rate is None
        else "logs: share of slates (rows of one user and timestamp) with a click",
        "logged": logged_rate,
        "position_bias": draft.population.position_bias,
        "slate_size": draft.slate_size,
    }
    ratings = logs.rating[np.isfinite(logs.rating)]
    quantiles = np.quantile(ratings, np.linspace(0, 1, 101)).astype(np.float32) if len(ratings) else None
    fit = {
        "method": "softmax matrix factorisation + spherical Gaussian mixture (BIC)",
        "config": config.model_dump(),
        "events": int(logs.num_events),
        "users": len(active),
        "users_without_events": logs.num_users - len(active),
        "items": int(logs.num_items),
        "train_loss_per_epoch": [round(x, 5) for x in losses],
        "clusters_bic": bics,
        "num_clusters": len(centres),
        "drift": drift,
        "fatigue": fatigue,
        "rating_quantiles": None if quantiles is None else quantiles.tolist(),
        "text_features": text,
        "utility_offset": {
            "offset": offset,
            "satisfaction_median": target,
            "source": target_source,
            "median_click_utility_random_slates": median_utility,  # before the offset, noise included
            "median_logged_click_utility": float(np.median(logged_utility)),  # the fit's, before the offset
        },
        "no_click": no_click,
    }
    return Calibration(sim, world, factors, item_vectors, world["item_quality"], quantiles, fit)


def summary(calibration: Calibration) -> dict[str, Any]:
    """The fitted numbers worth printing."""
    fit = calibration.fit
    return {
        "num_clusters": fit["num_clusters"],
        "ou_noise": fit["drift"]["ou_noise"],
        "fatigue_rate": fit["fatigue"]["fatigue_rate"],
        "final_train_loss": fit["train_loss_per_epoch"][-1] if fit["train_loss_per_epoch"] else None,
    }


__all__ = ["Calibration", "FitConfig", "calibrate", "slate_click_rate", "summary"]
