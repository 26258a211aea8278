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
6. **No click**: rows with ``click`` 0 (impressions nobody chose) are not choices; where there are
   any, the no-click utility is set to reproduce the logged click rate on random slates. A log of
   choices alone cannot identify it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field

from metarec.envs.calibrated import candidate_strata
from metarec.envs.population import FrozenConfig, SimulatorConfig

from .logs import Logs


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
    seed: int = Field(0, ge=0, description="Seeds initialisation, minibatches and mixtures.")


@dataclass
class Calibration:
    """A fitted population: the simulator config and world, the users' factors and how it was fitted."""

    config: SimulatorConfig
    world: dict[str, np.ndarray]
    user_factors: np.ndarray  # [num_users, d] of the training users
    item_factors: np.ndarray  # [num_items, d]
    item_bias: np.ndarray  # [num_items]
    rating_quantiles: np.ndarray | None  # [101] quantiles of training ratings (None: no ratings)
    fit: dict[str, Any] = field(default_factory=dict)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """``[len(users), num_items]`` utilities of the calibrated choice model."""
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
    weights = totals[:, 0] - 1.0
    expected = float(np.sum(weights * np.sum(shares**2, axis=1)) / max(np.sum(weights), 1.0))
    ratio = repeats / expected if expected > 0 else math.nan
    # fewer repeats than the user's mix predicts is satiation: map the shortfall to a fatigue rate
    rate = 0.0 if not math.isfinite(ratio) else float(np.clip(1.0 - ratio, 0.0, 1.0))
    return topic, {"repeat_topic_rate": repeats, "expected_repeat_rate": expected, "ratio": ratio, "fatigue_rate": rate}


def _no_click_utility(
    shown: Logs,
    factors: np.ndarray,
    vectors: np.ndarray,
    bias: np.ndarray,
    config: FitConfig,
    generator: torch.Generator,
) -> dict[str, Any]:
    """The utility of choosing nothing. Identified only where the logs have impressions without a click
    (``click`` 0): then it is set so that a slate of ``slate_size`` random items is clicked at the logged
    rate, P(click) = S / (S + e^v) with S the slate's summed exp-utility (averaged over users and
    slates). Logs of choices alone (ratings) cannot tell it: it stays at the simulator's default, 1."""
    rate = float(np.mean(shown.click > 0))
    if rate >= 1.0 or rate <= 0.0:
        return {"utility": 1.0, "click_rate": rate, "identified": False}
    users = torch.randint(factors.shape[0], (2048,), generator=generator).numpy()
    k = min(config.slate_size, vectors.shape[0])
    slates = torch.rand(2048, vectors.shape[0], generator=generator).argsort(dim=1)[:, :k].numpy()
    utility = np.einsum("bd,bkd->bk", factors[users], vectors[slates]) + bias[slates]
    summed = float(np.mean(np.exp(utility).sum(axis=1)))
    return {"utility": math.log(summed * (1.0 - rate) / rate), "click_rate": rate, "identified": True}


def calibrate(logs: Logs, config: FitConfig | None = None) -> Calibration:
    """Fits a population and catalog to ``logs`` (the training part of a time split)."""
    config = config or FitConfig()
    shown = logs  # every logged row, chosen or not
    if np.any(logs.click == 0):  # impressions without a click: what was chosen is the choice data
        logs = logs.subset(logs.click > 0)
    if logs.num_events < 2 or logs.num_items < config.num_candidates:
        raise ValueError(
            f"logs: expected at least {config.num_candidates} items (num_candidates) and 2 events, "
            f"got {logs.num_items} items and {logs.num_events} events"
        )
    generator = torch.Generator().manual_seed(config.seed)
    user = torch.from_numpy(logs.user.astype(np.int64))
    item = torch.from_numpy(logs.item.astype(np.int64))
    side, text = None, None
    if config.text_features:
        from .text import MODEL_NAME, embed_texts

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
    users, vectors, bias, losses = _softmax_mf(user, item, logs.num_users, logs.num_items, config, generator, side=side)
    factors = users.numpy()
    # the prior is fitted to users with enough events that their factors say who they are: the factors
    # of users with a handful of events are mostly the regulariser's pull toward zero
    counts = np.bincount(logs.user, minlength=logs.num_users)
    enough = counts >= min(config.min_events_for_drift, int(np.median(counts)))
    mixture, bics = _mixture(factors[enough], config)
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
    no_click = _no_click_utility(shown, factors, vectors.numpy(), bias.numpy(), config, generator)
    sim = SimulatorConfig.model_validate(
        {
            "catalog": {
                "num_items": logs.num_items,
                "num_topics": num_topics,
                "embedding_dim": config.embedding_dim,
                "quality_std": float(bias.std()),
                "min_length": 1.0,
                "max_length": 1.0,
                "seed": config.seed,
            },
            "population": {
                "num_clusters": len(centres),
                "topics_per_cluster": 1,
                "interest_scale": float(np.mean(np.linalg.norm(centres, axis=1))),
                "cluster_spread": spread,
                "choice_temperature": 1.0,
                "no_click_utility": no_click["utility"],
                "quality_weight": 1.0,
                "consumption_pull": 0.0,
                "ou_reversion": 0.0,
                "ou_noise": drift["ou_noise"],
                "shift_hazard": 0.0,
                "trend_rate": 0.0,
                "fatigue_rate": fatigue["fatigue_rate"],
            },
            "num_candidates": config.num_candidates,
            "slate_size": min(config.slate_size, config.num_candidates),
        }
    )
    world = {
        "item_embedding": vectors.numpy().astype(np.float32),
        "item_topic": topic,
        "item_quality": bias.numpy().astype(np.float32),
        "item_length": lengths,
        "item_appeal": np.zeros(logs.num_items, dtype=np.float32),
        "cluster_centre": centres,
        "cluster_weight": (mixture.weights_ / mixture.weights_.sum()).astype(np.float32),
        "trend_direction": np.zeros_like(centres),
        **candidate_strata(logs.num_items, config.num_candidates, config.seed),
    }
    ratings = logs.rating[np.isfinite(logs.rating)]
    quantiles = np.quantile(ratings, np.linspace(0, 1, 101)).astype(np.float32) if len(ratings) else None
    fit = {
        "method": "softmax matrix factorisation + spherical Gaussian mixture (BIC)",
        "config": config.model_dump(),
        "events": int(logs.num_events),
        "users": int(logs.num_users),
        "items": int(logs.num_items),
        "train_loss_per_epoch": [round(x, 5) for x in losses],
        "clusters_bic": bics,
        "num_clusters": len(centres),
        "drift": drift,
        "fatigue": fatigue,
        "rating_quantiles": None if quantiles is None else quantiles.tolist(),
        "text_features": text,
        "no_click": no_click,
    }
    return Calibration(sim, world, factors, vectors.numpy(), bias.numpy(), quantiles, fit)


def summary(calibration: Calibration) -> dict[str, Any]:
    """The fitted numbers worth printing."""
    fit = calibration.fit
    return {
        "num_clusters": fit["num_clusters"],
        "ou_noise": fit["drift"]["ou_noise"],
        "fatigue_rate": fit["fatigue"]["fatigue_rate"],
        "final_train_loss": fit["train_loss_per_epoch"][-1] if fit["train_loss_per_epoch"] else None,
    }


__all__ = ["Calibration", "FitConfig", "calibrate", "summary"]
