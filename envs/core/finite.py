"""Finite or loud: the NaN guard of every path that steps a user model, and the float32 range of parameters.

The dynamics compute in float32. A parameter beyond float32's finite range is refused when its configuration
is validated (:class:`Float32Config`), and so is a catalog that a parameter overflows before any step
(:func:`require_float32`); what is left to overflow (products of parameters with random draws, an interest
random walk run long enough) is stopped by the guard. After every step the single-user env, the vector env
(and with it the task batch) and the A/B simulator check, with :func:`check_finite_outcome` or the pieces it
is made of (:func:`step_quantities`, :func:`finite_flag`, :func:`non_finite_report`):

* the reward;
* the ground truth in ``info`` (``GUARDED_INFO``): the expected reward of the slate shown, the regret (and so
  the oracle's value of the state the step was taken in), the oracle's value and the candidates' utilities;
* the float state the model lists in ``UserModel.guarded_keys``.

A NaN or inf among them raises ``FloatingPointError`` naming the quantity, the env step and, in a batch, the
first users it hit. The single-user env checks the ground truth of the next decision at once (and after a
reset); the vector env, to keep to one device sync a step, checks it with the next step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import ValidationInfo, field_validator

from metarec.config import FrozenConfig
from metarec.envs.core.backend import Array

#: The largest finite float32, as a Python float.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: What the guard checks of a step's ``info``, when present: the ground truth of the step taken (its expected
#: reward and regret) and of the next decision (the oracle's value, every candidate's utility).
GUARDED_INFO = ("expected_reward", "regret", "oracle_value", "candidate_utilities")

Quantity = tuple[str, Any]  # (name, [B, ...] array, Python number or 0-d array)


def beyond_float32(value: Any) -> float | None:
    """The first float in ``value`` (a float, or a tuple or list of them, nested) whose magnitude is beyond
    float32's finite range, or None."""
    if isinstance(value, float):
        return value if abs(value) > FLOAT32_MAX else None
    if isinstance(value, tuple | list):
        for item in value:
            bad = beyond_float32(item)
            if bad is not None:
                return bad
    return None


class Float32Config(FrozenConfig):
    """A :class:`~metarec.config.FrozenConfig` of parameters the dynamics hold as float32: a float field
    (or a float in a tuple field) beyond float32's finite range, ``abs(x) > 3.4028235e38``, is an error
    naming the field (as float32 it would be infinite, and the rewards NaN)."""

    @field_validator("*", mode="after")
    @classmethod
    def _within_float32(cls, value: Any, info: ValidationInfo) -> Any:
        bad = beyond_float32(value)
        if bad is not None:
            raise ValueError(
                f"{info.field_name}: expected a value within float32's finite range (|x| <= {FLOAT32_MAX:.8g}; "
                f"the simulator computes in float32), got {bad!r}"
            )
        return value


def require_float32(values: Any, field: str, what: str) -> None:
    """A ``ValueError`` naming ``field`` unless ``values`` (computed in float64 from the configuration, e.g. a
    catalog drawn from its seed) are finite as float32: what a parameter overflows into before a step is taken."""
    values = np.asarray(values, dtype=np.float64)
    if not bool(np.all(np.abs(values) <= FLOAT32_MAX)):  # NaN fails too
        worst = values.reshape(-1)[np.argmax(np.where(np.isnan(values), np.inf, np.abs(values)).reshape(-1))]
        raise ValueError(
            f"{field}: {what} must be finite float32 numbers (|x| <= {FLOAT32_MAX:.8g}), this value makes one {worst!r}"
        )


_INFO_NAMES = {key: f"info['{key}']" for key in GUARDED_INFO}
#: Float32 arrays up to this size are checked in Python (a sum of doubles, which finite float32 numbers cannot
#: overflow, is finite exactly when they all are): cheaper than numpy's calls for one user's arrays.
_SMALL = 64


@lru_cache(maxsize=64)
def _state_names(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"state['{key}']" for key in keys)


def step_quantities(
    reward: Any, info: Mapping[str, Any], state: Mapping[str, Array], keys: Sequence[str]
) -> list[Quantity]:
    """What the guard checks after a step: ``[(name, value), ...]`` of the reward (none where None: after a
    reset), the ``info`` entries of ``GUARDED_INFO`` where present, and the state's ``keys`` (a model's
    ``guarded_keys``)."""
    quantities: list[Quantity] = [] if reward is None else [("reward", reward)]
    quantities += [(name, info[key]) for key, name in _INFO_NAMES.items() if key in info]
    quantities += zip(_state_names(tuple(keys)), (state[key] for key in keys), strict=True)
    return quantities


def _host_finite(value: Any) -> bool | None:
    """Whether a host ``value`` (Python number, numpy array or scalar) is all finite; None for a tensor."""
    if isinstance(value, np.ndarray):
        if value.dtype == np.float32 and value.size <= _SMALL:
            return math.isfinite(sum(value.reshape(-1).tolist()))
        return bool(np.isfinite(value).all())
    if isinstance(value, float | int | np.generic):
        return math.isfinite(value)
    return None


def host_finite_quick(reward: Any, info: Mapping[str, Any], state: Mapping[str, Any], keys: Sequence[str]) -> bool:
    """A fast test of what :func:`step_quantities` lists, for one user on the host (Python numbers and small
    numpy arrays): True where all are finite. The values are summed as doubles, finite exactly when they all
    are unless finite values overflow a double (never from float32), so False means "check with
    :func:`finite_flag`", not "not finite"."""
    total = 0.0 if reward is None else reward
    for key in GUARDED_INFO:
        value = info.get(key)
        if value is not None:
            total += value if type(value) is float else _host_sum(value)
    for key in keys:
        value = state[key]
        total += sum(value.ravel().tolist()) if value.size <= _SMALL else _host_sum(value)
    return math.isfinite(total)


def _host_sum(value: Any) -> float:
    if type(value) is float:
        return value
    if isinstance(value, np.ndarray | np.generic):
        if value.size <= _SMALL:
            return sum(value.ravel().tolist())
        return 0.0 if np.isfinite(value).all() else math.nan
    return float(value)


def finite_flag(quantities: Iterable[Quantity], exact: bool = False) -> Any:
    """Whether every quantity is finite: a Python bool on the host, a 0-d bool tensor (not synced) where any
    quantity is a torch tensor (all on one device), so that a vector env can fold it into the one sync its step
    makes. A tensor is reduced to one sum, NaN or infinite when one of its elements is: one pass over it.

    The sum is taken in the tensor's own float32, several times faster on a CPU than in float64, so a False can
    also mean finite numbers whose sum passes float32's range (about 3.4e38). Confirm a False with
    ``exact=True`` before reporting it: that sums in float64, which finite float32 numbers cannot overflow (a
    float64 tensor is multiplied by 0 first), so it is NaN or infinite exactly when an element is."""
    sums = []
    for _, value in quantities:
        ok = _host_finite(value)
        if ok is False:
            return False
        if ok is None and value.is_floating_point():  # a torch tensor (integers are always finite)
            sums.append(_sum(value, exact))
    if not sums:
        return True
    import torch

    return torch.stack(sums).isfinite().all()


def _sum(tensor: Any, exact: bool) -> Any:
    import torch

    if tensor.dtype == torch.float64:
        return (tensor * 0).sum()
    return tensor.sum(dtype=torch.float64) if exact else tensor.sum()  # torch.stack promotes the float32 sums


def confirmed_finite(quantities: Sequence[Quantity], flag: Any) -> bool:
    """Whether the quantities are finite, given :func:`finite_flag`'s fast verdict ``flag`` (synced to a bool or
    not): a False is checked again exactly, so finite values whose float32 sum overflows are not reported."""
    return bool(flag) or bool(finite_flag(quantities, exact=True))


def non_finite_report(quantities: Iterable[Quantity], step: int, users: Any = None, per_user: bool = True) -> str:
    """Where a NaN or inf arose: each non-finite quantity, the env ``step`` (0: the reset) and, where ``per_user``
    (the quantities are ``[B, ...]``), how many users it hit and the first of them (row indices, or their
    entries in ``users``, e.g. the rows of a shard)."""
    parts = []
    for name, value in quantities:
        rows = np.asarray(_host(value), dtype=np.float64)
        if not per_user or rows.ndim == 0:
            if not np.isfinite(rows).all():
                parts.append(name)
            continue
        bad = np.flatnonzero(~np.isfinite(rows.reshape(rows.shape[0], -1)).all(axis=1))
        if bad.size > 0:
            first = bad[:8] if users is None else np.asarray(_host(users)).reshape(-1)[bad[:8]]
            parts.append(f"{name} of {bad.size} users (first: {[int(u) for u in first]})")
    return (
        f"simulator: NaN or inf at env step {step}{' (the reset)' if step == 0 else ''} in "
        f"{'; '.join(parts) or 'a quantity of the step'}; the users' population parameters or the actions that "
        "reached them are the place to look"
    )


def _host(value: Any) -> Any:
    """``value`` as something numpy reads (a torch tensor moved to the host)."""
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def check_finite(quantities: Sequence[Quantity], step: int, users: Any = None) -> None:
    """Raises ``FloatingPointError`` (:func:`non_finite_report`) unless every quantity is finite; one
    device sync where the quantities are on a device."""
    if not confirmed_finite(quantities, finite_flag(quantities)):
        raise FloatingPointError(non_finite_report(quantities, step, users))


def check_finite_outcome(
    model: Any, state: Mapping[str, Array], outcome: Any, *, step: int, users: Any = None, info: Any = None
) -> None:
    """The NaN guard for code that steps a :class:`~metarec.envs.core.model.UserModel` itself (the A/B
    simulator, say): after ``state, outcome = model.step(...)``, raises ``FloatingPointError`` naming the
    quantity, the env ``step`` and the first users hit, where the reward, the state's ``model.guarded_keys`` or
    the entries of ``GUARDED_INFO`` that ``info`` (default ``outcome.info``) has hold a NaN or inf: pass
    ``info={**outcome.info, "regret": ..., "candidate_utilities": truth.utilities}`` to check the ground truth
    too. ``users`` (``[B]``, optional) names the rows in the report (e.g. the user ids of a subset or a
    shard); otherwise row indices are given. One device sync; every ``[B, ...]`` quantity is per user."""
    quantities = step_quantities(outcome.reward, outcome.info if info is None else info, state, model.guarded_keys)
    check_finite(quantities, step, users)
