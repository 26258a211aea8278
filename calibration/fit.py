"""Fit a DriftingUsers population and catalog to interaction logs.

The calibrated choice model is the simulator's own: a multinomial logit whose utility of item i for
user u is ``interest_u · embedding_i + quality_i``. Fitting it is matrix factorisation with a
softmax over the catalog (every logged event is a choice of one item), in torch:

1. **Item embeddings and quality**: maximise the log-likelihood of each logged item against the whole
   catalog, ``log softmax_i(U_u · V_i + b_i)``, with L2 regularisation (Adam, minibatches of events).
   Under the logit's independence of irrelevant alternatives the same parameters give the choice
   among a slate of candidates. The scale is the logit's, so ``choice_temperature`` is 1. With
   ``available_items`` (the default), an event's choice set is the items already in the catalogue at its time
   (each item's entry estimated from its first logged event, :func:`~metarec.calibration.fit_interests.availability`):
   an item that entered late is not read as shunned before it was there, so its bias is its pull while it was
   available, and the users' factors need not explain why the early users never chose it.
1c. **How far the factors carry into the future** (``predictive_scale``): a nested time split of the logs
   (:mod:`~metarec.calibration.fit_predictive`) finds the scale of the users' factors that best predicts their
   latest choices from a fit on the rest; the simulator's users act on the factors times that scale, and the
   prior, the drift and the estimation noise below are in its units. The items' bias is then refitted alone to
   the scaled users, so that each item keeps its share of the logged choices.
2. **The population prior**: a Gaussian mixture (spherical) over the users' factors, its number of
   components chosen by BIC (scikit-learn); centres and shares become the interest clusters, and
   the mean component std the cluster spread.
3. **Drift**: users' factors are re-fitted (items fixed) on the first and second half of each active
   user's events. Their squared distance, less the same distance between two random halves (the
   estimation noise alone), is the random-walk variance between the two halves' means (n/3 events
   for n events); one logged event counts as one simulated step. This gives ``ou_noise``; the other
   drift mechanisms are left off (their rates are not identifiable from a log of choices alone). The
   random halves also measure the factors' estimation noise, which is taken out of the cluster spread.
3b. **Items' click-through rates** (``ctr_from_impressions``), after the mixture: where the logs have rows with
   ``click`` 0, the items' rates when shown say how strongly each item draws clicks, which the softmax over
   clicked rows cannot (it sees an item's share of clicks, not of impressions). Each item's rate is shrunk
   toward the mean by a Beta prior fitted across items (empirical Bayes), and its bias moves so that its pull on
   the fitted population (cluster centres and spread) follows the shrunk rate
   (:func:`~metarec.calibration.fit_utility.item_ctr_correction`). That reading is linear; in step 6, a few
   rounds on the simulator's own random slates then match each item's click-through rate to its shrunk rate
   where items compete for a slate's one click and positions differ
   (:func:`~metarec.calibration.fit_utility.match_item_ctr`).
4. **Fatigue**: how much less often a user's next event repeats the topic of the previous one
   than the user's own topic mix predicts (topics are k-means clusters of the item embeddings).
5. **Ratings**: simulated satisfaction is mapped to the rating scale by the training ratings'
   quantiles (a monotone link), so simulated ratings use the logs' scale. Where the logs have ratings
   (``quality_from_ratings``), each item's fitted bias is split into **quality** and **appeal**: quality is
   the mean, over the item's rated events, of the rating's logit (of its mid-rank quantile) less the rater's
   fitted affinity, shrunk toward the mean of all items by ``quality_prior_events`` (fitted by empirical Bayes
   unless set); appeal is the bias less the quality. The choice logit (utility plus appeal) is the fit's;
   satisfaction follows utility alone, so an item chosen often but rated low satisfies as its ratings say. With
   ``noise_from_ratings``, the satisfaction logit's noise (``engagement_noise``) is the spread of those values
   within items: one user's rating of an item strays from its quality as the logged ratings do.
6. **Where utilities sit, and the no-click utility**: the softmax over the catalog is unchanged by
   adding a constant to every item's quality, so the fit leaves the utilities' zero point arbitrary
   (quality near -log M). The simulator reads them as absolute: satisfaction is ``sigmoid(u)``, and a
   slate is clicked against ``no_click_utility``. Two constants are set after the fit, both against
   the simulator's own reference: new users and their candidates drawn by the simulator itself on the
   fitted world, shown random slates (``slate_size`` distinct candidates, position weights
   ``exp(-position_bias k)``), S a slate's position-weighted sum of ``exp(u + appeal)`` (the choice
   logits; the choice temperature of a calibrated population is 1).

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

This module is the driver; the steps live in :mod:`metarec.calibration.fit_interests` (1, 2),
:mod:`metarec.calibration.fit_dynamics` (3, 4) and :mod:`metarec.calibration.fit_utility` (6), and
:class:`FitConfig` and :class:`Calibration` in :mod:`metarec.calibration.fit_config`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from scipy.special import expit

from metarec.calibration.fit_config import Calibration, FitConfig
from metarec.calibration.fit_dynamics import fit_drift, topics_and_fatigue
from metarec.calibration.fit_interests import availability, fit_mixture, recent_item_bias, softmax_mf
from metarec.calibration.fit_predictive import bias_for_scale, predictive_scale, scaled_drift
from metarec.calibration.fit_utility import (
    item_ctr_correction,
    match_item_ctr,
    prior_slates,
    quality_from_ratings,
    satisfaction_target,
    slate_click_rate,
    slate_weights,
    solve_no_click_utility,
    target_click_rate,
    weighted_median,
)
from metarec.calibration.logs import Logs
from metarec.envs.calibrated import candidate_strata
from metarec.envs.drifting.params import SimulatorConfig, UserPopulation


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


def calibrate(logs: Logs, config: FitConfig | None = None, progress: bool = False) -> Calibration:
    """Fits a population and catalog to ``logs`` (the training part of a time split; every row, clicked
    or not: rows with ``click`` 0 give the click rate). The same logs and config give the same arrays,
    bit for bit (torch's deterministic algorithms are on during the fit). ``progress`` shows the fit's
    gradient steps on stderr: ``epochs`` passes over the events, then twice ``refit_steps`` for the drift."""
    config = config or FitConfig()
    with _deterministic():
        return _calibrate(logs, config, progress)


def _calibrate(logs: Logs, config: FitConfig, progress: bool = False) -> Calibration:
    logged_rate = slate_click_rate(logs)  # from every logged row, chosen or not
    rows = logs  # every row, for the items' click-through rates (step 3b)
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
    available = availability(logs, rows) if config.available_items else None  # entries from every row shown
    users, vectors, bias, losses = softmax_mf(user, item, len(active), logs.num_items, config, generator, side=side,
                                              progress="calibrate: interests" if progress else None,
                                              available=available)  # fmt: skip
    # how far the factors carry into the users' future (step 1c): the simulator's users act on them scaled
    predictive = predictive_scale(logs, rows, config, side=side, progress=progress)
    users = users * predictive["scale"]
    factors = np.zeros((logs.num_users, config.embedding_dim), dtype=np.float32)
    factors[active] = users.numpy()
    current, recency = _recent_bias(logs, users, vectors, bias, user, item, config, available)  # step 1b
    if current is None:  # the items keep their shares of the choices among the scaled users (step 1c)
        current = bias_for_scale(predictive, users, vectors, bias, user, item, config, available)
    # the prior is fitted to users with enough events that their factors say who they are: the factors
    # of users with a handful of events are mostly the regulariser's pull toward zero
    counts = np.bincount(logs.user, minlength=logs.num_users)[active]
    enough = counts >= min(config.min_events_for_drift, int(np.median(counts)))
    mixture, bics = fit_mixture(users.numpy()[enough], config)
    drift = fit_drift(logs, vectors, bias, config, generator, progress, available=available)
    drift = scaled_drift(drift, predictive["scale"])  # the refits' factors are as fitted
    topic, fatigue = topics_and_fatigue(logs, vectors.numpy(), config)
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
    # the simulator's quality: the fit's, or refitted (as of the end of the logs, or to the scaled users; drift
    # and topics used the fit's)
    item_vectors, item_bias = vectors.numpy(), (bias if current is None else current).numpy()
    # the items' pull on the population, where impressions say it (step 3b)
    ctr = None
    if config.ctr_from_impressions:
        shares = mixture.weights_ / mixture.weights_.sum()
        corrected = item_ctr_correction(rows, item_bias, item_vectors, centres, shares, spread)
        if corrected is not None:
            item_bias, ctr, ctr_target = corrected
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
            "quality_std": float(item_bias.std()),
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
    # Quality and appeal (step 5b): where the logs have ratings, the choice logit's item term is split into
    # quality, which the ratings say, and appeal, the rest. Choices are unchanged.
    quality_split = _split_quality(logs, factors, item_bias, world, population, config)
    appeal = None if quality_split is None else world["item_appeal"]
    # Where utilities sit (module docstring, step 6): random slates shown to new users of the prior are
    # clicked at the logged rate, and those clicks satisfy as the logged ones did. The click rate fixes
    # v - offset, so v is found first with no offset, then both move by the offset.
    draft = SimulatorConfig.model_validate(sim_fields)
    rate, rate_source = target_click_rate(logged_rate, config)
    if ctr is not None:  # step 3b's rates, matched on the simulator's own random slates
        key = "item_quality" if quality_split is None else "item_appeal"
        ctr.update(match_item_ctr(world, draft, ctr_target, rate, key, config.seed))
        if quality_split is None:
            item_bias = world["item_quality"].copy()
        else:
            appeal = world["item_appeal"]
            item_bias = world["item_quality"] + appeal
    utility, logits = prior_slates(world, draft, config.seed)
    log_s, position = slate_weights(logits, draft.population.position_bias)
    no_click_utility = solve_no_click_utility(log_s, rate)
    clicks = position * expit(log_s - no_click_utility)[:, None]  # P(this position is clicked)
    noise = draft.population.engagement_noise * np.random.default_rng(config.seed).standard_normal(utility.shape)
    median_utility = weighted_median(utility + noise, clicks)
    target, target_source = satisfaction_target(logs, config)
    offset = math.log(target / (1.0 - target)) - median_utility
    world["item_quality"] = (world["item_quality"] + offset).astype(np.float32)
    population["no_click_utility"] = no_click_utility + offset
    sim = SimulatorConfig.model_validate(sim_fields)
    logged_utility = np.sum(factors[logs.user] * item_vectors[logs.item], axis=1) + item_bias[logs.item]
    no_click = {
        "utility": no_click_utility + offset,
        "click_rate": rate,
        "identified": logged_rate is not None or config.slate_click_rate is not None,
        "source": rate_source,
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
        "recency": recency,
        "predictive_scale": predictive,
        "ctr_from_impressions": ctr,
        "quality_from_ratings": quality_split,
        "utility_offset": {
            "offset": offset,
            "satisfaction_median": target,
            "source": target_source,
            "median_click_utility_random_slates": median_utility,  # before the offset, noise included
            "median_logged_click_logit": float(np.median(logged_utility)),  # the fit's choice logit, before the offset
        },
        "no_click": no_click,
    }
    return Calibration(sim, world, factors, item_vectors, world["item_quality"], quantiles, fit, appeal)


MIN_NOISE_DOF = 30  # ratings beyond one per item, at least, before their spread sets the simulator's noise


def _split_quality(
    logs: Logs, factors: np.ndarray, item_bias: np.ndarray, world: dict[str, np.ndarray], population: dict[str, Any],
    config: FitConfig,
) -> dict[str, Any] | None:  # fmt: skip
    """Step 5b: where the logs have ratings, the items' choice term ``item_bias`` becomes quality (what the
    ratings say, in ``world["item_quality"]``) plus appeal (the rest, in ``world["item_appeal"]``), and with
    ``noise_from_ratings`` the population's ``engagement_noise`` becomes the ratings' spread within items. Returns
    what was measured, or None where nothing was split."""
    if not config.quality_from_ratings:
        return None
    affinity = np.sum(factors[logs.user] * world["item_embedding"][logs.item], axis=1)
    split = quality_from_ratings(logs, affinity, config.quality_prior_events)
    if split is None:
        return None
    quality, about = split
    world["item_quality"], world["item_appeal"] = quality, (item_bias - quality).astype(np.float32)
    noise = {"value": population.get("engagement_noise", UserPopulation.model_fields["engagement_noise"].default)}
    if not config.noise_from_ratings:
        noise["source"] = "the simulator's default (noise_from_ratings is off)"
    elif about["within_item_dof"] < MIN_NOISE_DOF:
        noise["source"] = f"the simulator's default: fewer than {MIN_NOISE_DOF} ratings beyond one per item"
    else:  # satisfaction strays from utility as the ratings stray from their item's mean
        population["engagement_noise"] = noise["value"] = about["within_item_sd"]
        noise["source"] = "the ratings' spread within items"
    spread = float(np.std(quality))
    corr = float(np.corrcoef(quality, item_bias)[0, 1]) if spread > 0 and np.std(item_bias) > 0 else None
    return {**about, "engagement_noise": noise, "corr_quality_with_choice_bias": corr}


def _recent_bias(
    logs: Logs, users: torch.Tensor, vectors: torch.Tensor, bias: torch.Tensor, user: torch.Tensor, item: torch.Tensor,
    config: FitConfig, available: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor | None, dict[str, Any] | None]:  # fmt: skip
    """Step 1b (``recency_half_life``): the items' bias as of the end of the logs, and what was measured; None and
    None where it is off."""
    if config.recency_half_life is None:
        return None, None
    span = max(float(logs.timestamp.max() - logs.timestamp.min()), 1e-9)
    age = torch.from_numpy((logs.timestamp.max() - logs.timestamp) / span)
    weight = (0.5 ** (age / config.recency_half_life)).float()
    # its own generator: turning it on leaves every later step's draws (the drift's refits) as they were
    own = torch.Generator().manual_seed(config.seed + 1)
    current = recent_item_bias(users, vectors, bias, user, item, weight, config, own, available)
    return current, {
        "half_life_share_of_span": config.recency_half_life,
        "effective_events": float(weight.sum() ** 2 / (weight * weight).sum()),
        "corr_with_all_time_quality": float(np.corrcoef(bias.numpy(), current.numpy())[0, 1]),
    }


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
