"""Slate handling, choice sampling and the myopic oracle shared by every user model.

All functions are batched over users (leading dimension ``B``) and written against the Array API,
so they run unchanged on numpy and torch (see :mod:`metarec.envs.core.backend`).

Slate rule (every element of the action space is legal): a slate lists ``K`` candidate indices; a
candidate listed more than once is shown once, at its first position, and the later positions that
repeat it stay empty. An agent can therefore show fewer than ``K`` items by repeating one.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import accumulate
from typing import Any

import numpy as np
from array_api_compat import device as device_of

from metarec.envs.core.backend import Array, Backend, Random, numpy_backend


def positions_like(xp: Any, k: int, like: Array) -> Array:
    """``arange(k)`` on the device of ``like``: slate positions (cached; never write to it)."""
    return _positions(xp, k, like.device if hasattr(like, "device") else device_of(like))


@lru_cache(maxsize=64)
def _positions(xp: Any, k: int, device: Any) -> Array:
    positions = xp.arange(k, device=device)
    if hasattr(positions, "flags"):
        positions.flags.writeable = False  # numpy: shared by every caller
    return positions


@lru_cache(maxsize=64)
def _earlier(xp: Any, k: int, device: Any) -> Array:
    positions = _positions(xp, k, device)
    earlier = positions[:, None] > positions[None, :]  # [K, K]: position j < position i
    if hasattr(earlier, "flags"):
        earlier.flags.writeable = False
    return earlier


def shown_mask(xp: Any, slate: Array) -> Array:
    """Which slate positions show an item: ``[B, K]`` bool, False where a position repeats an earlier one."""
    k = slate.shape[1]
    if slate.shape[0] >= 256:
        # Many users: one comparison of each position with the later ones, K - 1 passes over [B, K] or less.
        # A [B, K, K] broadcast comparison takes several times longer there (0.22 ms against 0.03 ms at
        # 10,000 users and K = 2, on a 2-core CPU).
        repeated = xp.zeros_like(slate, dtype=xp.bool)
        for j in range(k - 1):
            repeated[:, j + 1 :] |= slate[:, j + 1 :] == slate[:, j : j + 1]
        return ~repeated
    same = slate[:, :, None] == slate[:, None, :]  # [B, K, K]
    earlier = _earlier(xp, k, slate.device if hasattr(slate, "device") else device_of(slate))
    return ~xp.any(same & earlier, axis=2)


def per_user_column(value: Any) -> Any:
    """A ``[B]`` per-user value as ``[B, 1]``; a scalar (or 0-d array) as it is."""
    return value[:, None] if getattr(value, "ndim", 0) == 1 else value


def per_user_rows(value: Array) -> Array:
    """A ``[K]`` value shared by every user as ``[1, K]``; a per-user ``[B, K]`` one as it is."""
    return value[None, :] if value.ndim == 1 else value


def row_cumsum(xp: Any, x: Array) -> Array:
    """Cumulative sums along each row of ``x`` (``[B, C]``). On a GPU the rows are scanned as the columns of
    the transpose, each added left to right: torch's scan along the last dimension is slow for short rows
    (about 6 ms for a million rows of 6 on an H200, against well under 1 ms this way). Both scans add float32
    in float32 on a GPU, where torch's CPU scan adds in float64, so the sums agree with the CPU's to float32
    rounding, not bit for bit."""
    if getattr(getattr(x, "device", None), "type", "cpu") == "cpu":
        return xp.cumulative_sum(x, axis=1)
    return xp.cumulative_sum(x.T.contiguous(), axis=0).T


def sample_categorical(xp: Any, rng: Random, probs: Array) -> Array:
    """One draw per row of ``probs`` (``[B, C]``, rows summing to 1) by inverting the CDF: ``[B]`` int64."""
    cdf = row_cumsum(xp, probs)
    u = rng.uniform((probs.shape[0], 1)) * cdf[:, -1:]
    index = xp.sum(cdf <= u, axis=1, dtype=xp.int64)
    return xp.minimum(index, probs.shape[1] - 1)


def choice_probabilities(xp: Any, weights: Array, no_click_weight: Array) -> Array:
    """Probabilities of choosing each slate position or nothing, from choice weights.

    Args:
        weights: ``[B, K]`` non-negative weights of the shown items (0 for empty positions), e.g.
            ``exp(utility / temperature) * position_bias`` for a multinomial logit.
        no_click_weight: ``[B]`` or scalar weight of choosing nothing.

    Returns:
        ``[B, K + 1]`` probabilities; the last column is "no click".
    """
    w0 = per_user_column(no_click_weight) + xp.zeros_like(weights[:, :1])
    full = xp.concat([weights, w0], axis=1)
    return full / xp.sum(full, axis=1, keepdims=True)


def revenue_ordered_slate(
    be: Backend, weights: Array, revenue: Array, no_click_weight: Array, position_weight: Array, slate_size: int
) -> tuple[Array, Array]:
    """The myopic oracle: the best revenue-ordered assortment under a multinomial choice model.

    Under a multinomial logit, the assortment maximising expected revenue (here: expected reward of
    the step) is one of the sets "the r candidates of highest revenue", r = 1..K (Talluri and van
    Ryzin, 2004). With position bias and a slate-size limit that is a close heuristic rather than a
    guarantee. The items go in order of revenue, the best in the first position; positions beyond
    r repeat the first item, which the slate rule leaves empty.

    Args:
        weights: ``[B, N]`` choice weight of every candidate at an unbiased position.
        revenue: ``[B, N]`` expected reward if the candidate is chosen.
        no_click_weight: ``[B]`` or scalar.
        position_weight: ``[K]`` (or ``[B, K]``) multiplicative position bias (ones when there is none).
        slate_size: K.

    Returns:
        ``(slate [B, K] int64, value [B])``: the oracle's slate and its expected reward.
    """
    return assortment_in_order(
        be, revenue_order(be, weights, revenue, slate_size), weights, revenue, no_click_weight, position_weight
    )


def revenue_order(be: Backend, weights: Array, revenue: Array, slate_size: int) -> Array:
    """The ``[B, K]`` candidates of highest revenue, best first, ties broken by choice weight: the order in
    which :func:`revenue_ordered_slate` fills a slate. Rows go in :meth:`~metarec.envs.core.backend.Backend.row_blocks`:
    on a CPU the float64 key of a million users is then a few MB at a time, not hundreds."""
    blocks = be.row_blocks(weights.shape[0], weights.shape[1])
    if len(blocks) > 1:
        parts = [_revenue_order(be, weights[a:b], revenue[a:b], slate_size) for a, b in blocks]
        return be.xp.concat(parts, axis=0)
    return _revenue_order(be, weights, revenue, slate_size)


def _revenue_order(be: Backend, weights: Array, revenue: Array, slate_size: int) -> Array:
    xp = be.xp
    # A float64 key whose weight term, at most 1e-9 of the largest revenue, separates equal float32 revenues.
    # The row maxima are taken in float32 (exact: abs and max round nothing), not over float64 copies. A top-k,
    # not a full sort: N can be large and K is small.
    largest = xp.maximum(xp.max(revenue, axis=1, keepdims=True), -xp.min(revenue, axis=1, keepdims=True))
    scale = 1e-9 * (xp.astype(largest, xp.float64) + 1e-30)
    heaviest = xp.astype(xp.max(weights, axis=1, keepdims=True), xp.float64)
    key = xp.astype(revenue, xp.float64) + scale * xp.astype(weights, xp.float64) / (heaviest + 1e-30)
    return be.top_k(key, slate_size)


def shared_revenue_order(revenue: np.ndarray, slate_size: int) -> np.ndarray | None:
    """:func:`revenue_order` for every user at once, where a model knows it in advance: ``revenue`` (``[N]``)
    is the same for every user, and its ``K + 1`` highest values lie further apart than the tie-break on
    choice weight (at most 1e-9 of the largest revenue) can bridge, so no user's weights can reorder them.
    Returns the ``[K]`` order (int64), or None where that does not hold (the oracle then orders per user).
    The order agrees with :func:`revenue_order` for any finite non-negative weights."""
    r = np.asarray(revenue, dtype=np.float64).reshape(-1)
    if r.size < slate_size or not np.all(np.isfinite(r)):
        return None
    largest = float(np.max(np.abs(r)))
    order = np.argsort(-r, kind="stable")[: slate_size + 1]
    # each key is its revenue plus a term in [0, 1e-9 * largest], rounded in float64: twice that is room enough
    margin = 2e-9 * (largest + 1e-30) + 8 * float(np.spacing(largest))
    if np.any(-np.diff(r[order]) <= margin):
        return None
    return order[:slate_size].astype(np.int64)


def assortment_in_order(
    be: Backend, order: Array, weights: Array, revenue: Array, no_click_weight: Array, position_weight: Array
) -> tuple[Array, Array]:
    """The best revenue-ordered assortment given the order (``[B, K]``, from :func:`revenue_order`, or a
    shared ``[K]`` one broadcast to every user): ``(slate [B, K], value [B])`` as :func:`revenue_ordered_slate`."""
    if order.ndim == 1:
        order = be.broadcast_rows(order, weights.shape[0])
    return assortment_of_ordered(
        be, order, be.take_along(weights, order), be.take_along(revenue, order), no_click_weight, position_weight
    )


def assortment_of_ordered(
    be: Backend, order: Array, weights: Array, revenue: Array, no_click_weight: Array, position_weight: Array | None
) -> tuple[Array, Array]:
    """:func:`assortment_in_order` given the weights and revenues of the ordered candidates (``[B, K]``, in the
    order of ``order``), where the caller has them; ``position_weight`` None where every position weighs 1."""
    xp = be.xp
    slate_size = order.shape[1]
    w = weights if position_weight is None else weights * per_user_rows(position_weight)
    r = revenue
    numerator = row_cumsum(xp, w * r)
    denominator = row_cumsum(xp, w) + per_user_column(no_click_weight)  # no-click + each cumulative sum: one rounding
    values = numerator / denominator  # [B, K]: value of showing the top r = 1..K
    best, value = be.row_argmax(values)  # [B]
    keep = positions_like(xp, slate_size, order)[None, :] <= best[:, None]
    slate = xp.where(keep, order, order[:, :1])
    return slate, value


def choose_one(uniform: float, weights: list[Any], no_click_weight: Any) -> tuple[int, list[Any]]:
    """One user's choice from the float32 weights of a slate's positions (0 where nothing is shown):
    ``(index, probabilities)``, index K meaning no click. The arithmetic of
    :func:`choice_probabilities` and :func:`sample_categorical` for a batch of one, in numpy float32
    scalars, given the draw ``uniform``. Exact where numpy sums ``K + 1`` floats in order
    (:func:`sums_in_order`)."""
    full = [*weights, no_click_weight]
    total = sum(full, np.float32(0.0))  # numpy's sum starts from +0 (it matters only to the sign of a zero)
    probs = [w / total for w in full]
    cdf = list(accumulate(probs))  # numpy's cumulative sum starts from the first term
    u = np.float32(uniform) * cdf[-1]
    index = sum(1 for c in cdf if c <= u)
    return min(index, len(weights)), probs


def revenue_ordered_slate_one(
    weights: Any, revenue: Any, no_click_weight: Any, position_weight: Any, slate_size: int
) -> tuple[Any, Any]:
    """:func:`revenue_ordered_slate` for one user: 1-D ``weights`` and ``revenue`` (float32 numpy),
    a float32 ``no_click_weight`` and ``position_weight`` ``[K]``; the same arithmetic, so the same
    ``(slate [K] int64, value)`` bit for bit. The float64 key is computed on Python floats (the same
    IEEE operations in the same order) and Python's sort is stable, as the batched argsort is."""
    r64, w64 = revenue.tolist(), weights.tolist()
    if not all(map(math.isfinite, r64 + w64)):  # numpy's rules for NaN and inf (max, sort) are not Python's
        slate, value = revenue_ordered_slate(
            numpy_backend(), weights[None], revenue[None], no_click_weight, position_weight, slate_size
        )
        return slate[0], value[0]
    scale = 1e-9 * (max(map(abs, r64)) + 1e-30)
    top = max(w64) + 1e-30
    key = [r + scale * w / top for r, w in zip(r64, w64, strict=True)]
    order = sorted(range(len(key)), key=key.__getitem__, reverse=True)[:slate_size]
    w = [weights[j] * position_weight[k] for k, j in enumerate(order)]
    numerator, shown = w[0] * revenue[order[0]], w[0]
    best, value = 0, numerator / (no_click_weight + shown)
    for k in range(1, slate_size):
        numerator, shown = numerator + w[k] * revenue[order[k]], shown + w[k]
        current = numerator / (no_click_weight + shown)
        if current > value or (current != current and value == value):  # argmax's: the first NaN, else the first max
            best, value = k, current
    slate = order[: best + 1] + [order[0]] * (slate_size - best - 1)
    return np.array(slate, dtype=np.int64), value


@lru_cache(maxsize=16)
def sums_in_order(count: int) -> bool:
    """Whether numpy adds ``count`` float32 numbers one after another, left to right (it does for
    fewer than 8 and pairwise above; not documented, so checked): what a fused one-user step that
    sums in Python needs to give the batched step's results bit for bit."""
    # 2**25 + 1 rounds back to 2**25 in float32, so each order of summation gives another total
    values = np.array([2.0**25, 1.0, -(2.0**25), 1.0, 1.0, 1.0, 1.0, 1.0, 1.0][:count], dtype=np.float32)
    total = np.float32(0.0)
    for value in values:
        total = total + value
    return bool(np.sum(values[None, :], axis=1)[0] == total)
