"""How far users' fitted interests carry into their future (step 1c of :mod:`metarec.calibration.fit`).

A user's factors, fitted to their history, predict that history better than their next choices. They carry the
estimation noise of a few dozen events and the tastes of a past the user is leaving, and a full-softmax fit is
most confident about exactly the events it saw. Simulated users act on their interests: with the factors as
fitted, a simulated future is as predictable from the past as the past was, and recommenders that model the past
(matrix factorisation, item-kNN) gain far more from it than they do in the real future.

The scale is read from the logs themselves, by a nested time split. The factors are fitted again, with the same
settings, on all but the latest ``predictive_holdout`` of the choices. The scale ``a`` then maximises the mean
log-likelihood of the held-out choices under logits ``a U_u . V_i + b_i``: each choice among the items the early
fit knows, less those the user had chosen before the split where users do not come back to items. The scale is
found for factors fitted on four fifths of the choices and applied to factors fitted on all of them, which hold
less estimation noise, so it errs low. The log-likelihood is concave in
``a`` (a log-softmax of logits linear in it), so a bounded scalar search finds its maximum. The simulator's users
take the factors times ``a``, and so do what is measured in their units: the population prior fitted to them,
the drift and the factors' estimation noise. ``a = 1`` leaves them as fitted; ``a = 0`` leaves only the items'
bias, popularity while available. Users who act less on their factors act more on the items' bias, so the bias
is then refitted alone to the scaled users (:func:`bias_for_scale`): each item keeps its share of the logged
choices, where the fit's bias would pile the choices on the items it favours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metarec.calibration.fit_config import FitConfig
from metarec.calibration.fit_interests import availability, recent_item_bias, softmax_mf
from metarec.calibration.logs import Logs, split_at, users_repeat
from metarec.calibration.recommenders import user_item_csr

MIN_HELD_OUT = 100  # fewer held-out choices than this say too little: the factors are kept as fitted
MAX_HELD_OUT = 20_000  # a random subset of this many held-out choices is scored where there are more
MAX_SCALE = 4.0


def predictive_scale(
    logs: Logs, rows: Logs, config: FitConfig, side: torch.Tensor | None = None, progress: bool = False
) -> dict[str, Any]:
    """The scale of users' factors in the simulator and how it was found (see the module docstring). ``logs``
    are the choices the fit sees, ``rows`` every logged row (impressions give the items' entries), ``side``
    the fit's item features. The nested fit draws from its own generator (``seed + 2``), so the main fit's
    draws do not depend on it."""
    if config.predictive_scale is not None:
        return {"scale": float(config.predictive_scale), "source": "predictive_scale (set)"}
    split_time, early = split_at(logs, config.predictive_holdout)  # time_split's rule, its checks left to here
    if early.all():
        return _as_fitted(f"the latest {config.predictive_holdout:g} of the choices share the last timestamp")
    past, future = logs.subset(early), logs.subset(~early)
    active = np.unique(past.user)
    dense = np.full(logs.num_users, -1, dtype=np.int64)
    dense[active] = np.arange(len(active))
    known = np.bincount(past.item, minlength=logs.num_items) > 0
    held = (dense[future.user] >= 0) & known[future.item]
    # where users do not come back to items, an item chosen before the split is no alternative (nor a choice)
    chosen = None if users_repeat(logs) else user_item_csr(dense[past.user], past.item, len(active), logs.num_items)
    if chosen is not None:
        held &= ~(np.asarray(chosen[dense[future.user].clip(0), future.item]).ravel() > 0)
    if held.sum() < MIN_HELD_OUT:
        return _as_fitted(f"{int(held.sum())} held-out choices by users and of items the early fit knows "
                          f"(at least {MIN_HELD_OUT} are needed)")  # fmt: skip
    generator = torch.Generator().manual_seed(config.seed + 2)
    available = None
    if config.available_items:
        available = availability(past, rows.subset(rows.timestamp <= split_time))
    factors, vectors, bias, _ = softmax_mf(
        torch.from_numpy(dense[past.user]), torch.from_numpy(past.item.astype(np.int64)), len(active),
        logs.num_items, config, generator, side=side, available=available,
        progress="calibrate: predictive scale (nested fit)" if progress else None,
    )  # fmt: skip
    index = np.flatnonzero(held)
    if len(index) > MAX_HELD_OUT:
        index = np.sort(index[torch.randperm(len(index), generator=generator)[:MAX_HELD_OUT].numpy()])
    user, item = dense[future.user[index]], future.item[index]
    score = _held_out_loss(factors.double(), vectors.double(), bias.double(), user, item, known, chosen)
    from scipy.optimize import minimize_scalar

    best = minimize_scalar(score, bounds=(0.0, MAX_SCALE), method="bounded", options={"xatol": 1e-3})
    return {
        "scale": float(best.x),
        "source": "nested time split",
        "at_bound": not 0.01 < float(best.x) < MAX_SCALE - 0.01,  # the likelihood may peak outside [0, 4]
        "holdout": config.predictive_holdout,
        "split_time": split_time,
        "held_out_choices": len(index),
        "nll_as_fitted": score(1.0),
        "nll_scaled": float(best.fun),
        "nll_items_only": score(0.0),
    }


def bias_for_scale(
    predictive: dict[str, Any], users: torch.Tensor, vectors: torch.Tensor, bias: torch.Tensor, user: torch.Tensor,
    item: torch.Tensor, config: FitConfig, available: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor | None:  # fmt: skip
    """The items' bias refitted alone (full-softmax likelihood of the logged choices ``(user, item)``, ``users``
    already scaled, ``vectors`` fixed; its own generator, ``seed + 3``), or None where the scale is 1. Scaled
    users choose by the bias more than the fit's did, so the fit's bias would pile their choices on the items it
    favours; at the refit's optimum the model gives each item as many of the logged choices as it had. Records
    the correlation of the two biases in ``predictive``."""
    if predictive["scale"] == 1.0:
        return None
    generator = torch.Generator().manual_seed(config.seed + 3)
    weight = torch.ones(len(user))
    refitted = recent_item_bias(users, vectors, bias, user, item, weight, config, generator, available)
    predictive["corr_refitted_bias"] = float(np.corrcoef(bias.numpy(), refitted.numpy())[0, 1])
    return refitted


def scaled_drift(drift: dict[str, Any], scale: float) -> dict[str, Any]:
    """``fit_drift``'s numbers in the units of factors times ``scale``."""
    out = dict(drift)
    for key in ("mean_squared_move", "mean_squared_estimation_noise", "factor_noise_variance"):
        if key in out:
            out[key] = out[key] * scale**2
    out["ou_noise"] = drift["ou_noise"] * scale
    return out


def _as_fitted(why: str) -> dict[str, Any]:
    return {"scale": 1.0, "source": f"as fitted: {why}"}


def _held_out_loss(
    factors: torch.Tensor, vectors: torch.Tensor, bias: torch.Tensor, user: np.ndarray, item: np.ndarray,
    known: np.ndarray, exclude: Any, chunk: int = 2048,
) -> Any:  # fmt: skip
    """The mean negative log-likelihood of the choices ``(user, item)`` as a function of the factors' scale,
    each among the ``known`` items less the user's row of ``exclude`` (a sparse users x items matrix, nonzero where
    excluded; None: nothing excluded)."""
    unknown = torch.from_numpy(~known)

    def loss(scale: float) -> float:  # recomputed per call: the chunks' logits would be held-out choices x catalogue
        total = 0.0
        for start in range(0, len(user), chunk):
            rows, chosen = user[start : start + chunk], torch.from_numpy(item[start : start + chunk])
            mask = unknown[None, :].expand(len(rows), -1)
            if exclude is not None:
                mask = mask | torch.from_numpy(exclude[rows].toarray() > 0)
            logits = scale * (factors[torch.from_numpy(rows)] @ vectors.T) + bias[None, :]
            logits = logits.masked_fill(mask, -torch.inf)
            total += float(torch.nn.functional.cross_entropy(logits, chosen, reduction="sum"))
        return total / len(user)

    return loss
