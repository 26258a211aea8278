"""Users' interests and the items they choose among: softmax matrix factorisation of the logged choices, and the
population prior as a spherical Gaussian mixture over the users' factors (steps 1 and 2 of
:mod:`metarec.calibration.fit`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from metarec.calibration.fit_config import FitConfig
from metarec.calibration.logs import Logs


def availability(logs: Logs, shown: Logs | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(event_time [E], item_start [M])``: the time of each event of ``logs``, and when each item entered the
    catalogue, both as ranks among the events' times, as ``softmax_mf`` takes them (``available_items``). The
    entry is read from ``shown`` (every logged row, impressions included) where given, else from the events: an
    item's first row comes some time after it entered, the longer the rarer the item, so its entry is taken one
    mean wait between its rows earlier, ``first - (last_time - first) / rows`` (the logs' first time at the
    earliest), and a rare item first logged late is not taken as new. An item never logged is never an
    alternative."""
    rows = logs if shown is None else shown
    first = np.full(logs.num_items, np.inf)
    np.minimum.at(first, rows.item, rows.timestamp)
    count = np.bincount(rows.item, minlength=logs.num_items)
    seen = count > 0
    start = first.copy()
    start[seen] = np.maximum(first[seen] - (rows.timestamp.max() - first[seen]) / count[seen], rows.timestamp.min())
    # as ranks among the events' times (int32, cheap to compare per step): an item is there at time t = times[r]
    # once start <= t, that is once r >= the count of times below start
    times = np.unique(logs.timestamp)
    event = np.searchsorted(times, logs.timestamp).astype(np.int32)
    entry = np.searchsorted(times, start).astype(np.int32)  # inf: past every time, never an alternative
    return torch.from_numpy(event), torch.from_numpy(entry)


def not_yet_there(available: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """``[len(index), M]``: which items had not entered yet at the time of each event ``index`` (``available`` as
    :func:`availability` gives it), so were no alternative to its choice."""
    return available[1][None, :] > available[0][index, None]


def softmax_mf(
    user: torch.Tensor,
    item: torch.Tensor,
    num_users: int,
    num_items: int,
    config: FitConfig,
    generator: torch.Generator,
    items: tuple[torch.Tensor, torch.Tensor] | None = None,
    steps: int | None = None,
    side: torch.Tensor | None = None,
    progress: str | None = None,
    available: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """Fits U (and, unless ``items`` are given and kept fixed, V and b) by full-softmax likelihood.
    With ``side`` (``[num_items, F]`` item features), V and b are a free part plus a learned linear map
    of the features; the returned V and b are the sums. ``progress`` names a bar of the gradient steps on
    stderr (None: no bar). With ``available`` (``(event_time [E], item_start [num_items])``) an event's choice is
    among the items already in the logs at its time (``item_start <= event_time``), not the whole catalogue."""
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
    for step in tqdm(range(total), desc=progress, unit="step", leave=False, disable=progress is None):
        position = step % per_epoch
        if position == 0 and step:
            order = torch.randperm(events, generator=generator)
        index = order[position * batch : (position + 1) * batch]
        u, i = users[user[index]], item[index]
        item_vectors, item_bias = item_side()
        logits = u @ item_vectors.T + item_bias[None, :]
        if available is not None:  # items that were not there yet were no alternative
            logits.masked_fill_(not_yet_there(available, index), -math.inf)
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


def fit_mixture(factors: np.ndarray, config: FitConfig) -> tuple[Any, list[float]]:
    """The spherical Gaussian mixture over users' factors with the best BIC."""
    from sklearn.mixture import GaussianMixture

    best, bics = None, []
    for k in range(1, min(config.max_clusters, len(factors)) + 1):
        model = GaussianMixture(k, covariance_type="spherical", n_init=2, random_state=config.seed).fit(factors)
        bics.append(float(model.bic(factors)))
        if best is None or bics[-1] < min(bics[:-1], default=math.inf):
            best = model
    return best, bics


def recent_item_bias(
    user_factors: torch.Tensor,
    vectors: torch.Tensor,
    bias: torch.Tensor,
    user: torch.Tensor,
    item: torch.Tensor,
    weight: torch.Tensor,
    config: FitConfig,
    generator: torch.Generator,
    available: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The item biases refitted alone (users' and items' factors fixed) by the full-softmax likelihood of the
    events, each weighted by ``weight`` (``[E]``, e.g. by recency), from ``bias``: ``config.epochs`` passes of
    Adam over minibatches of events, each choice among the items ``available`` at its time (as in
    :func:`softmax_mf`; None: the whole catalogue)."""
    fitted = torch.nn.Parameter(bias.clone())
    optimizer = torch.optim.Adam([fitted], lr=config.learning_rate)
    events = user.shape[0]
    batch = min(config.batch_size, events)
    affinity_users, vectors = user_factors.detach(), vectors.detach()
    for _ in range(config.epochs):
        order = torch.randperm(events, generator=generator)
        for start in range(0, events, batch):
            index = order[start : start + batch]
            logits = affinity_users[user[index]] @ vectors.T + fitted[None, :]
            if available is not None:
                logits = logits.masked_fill(not_yet_there(available, index), -math.inf)
            losses = torch.nn.functional.cross_entropy(logits, item[index], reduction="none")
            w = weight[index]
            ((losses * w).sum() / w.sum().clamp_min(1e-12)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return fitted.detach()
