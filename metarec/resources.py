"""Memory bounds checked before a batch is allocated: a size that cannot fit is an error that names it.

A batch of users lives in memory at once (observations, state, the recommender's inputs): far too many
users would otherwise allocate until the machine runs out of memory, or die with a ``MemoryError``
traceback. :func:`check_memory` compares an estimate (bytes per user x users) with the limit:

* the ``limit_gib`` argument, where a caller passes one;
* else the environment variable ``METAREC_MEMORY_LIMIT_GIB`` (a number of GiB, e.g. ``512``);
* else this machine's physical memory (``os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')``).

The estimates are rough upper bounds of what metarec itself holds; set ``METAREC_MEMORY_LIMIT_GIB``
higher to run a batch the estimate refuses (say, on a machine with swap).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

ENV_VAR = "METAREC_MEMORY_LIMIT_GIB"
GIB = 1024**3
#: The least any metarec vector env holds per user (state, bounds of its spaces, infos): a cheap lower
#: bound for checks made before the observation space is known.
MIN_BYTES_PER_ENV = 1024
#: Copies of an observation a stepping batch holds per user (the observation, its batched space's bounds,
#: state, infos and the recommender's inputs), and a fixed part for the rest (measured: 6.5x-7.6x
#: the observation plus under 2 KiB, on the DriftingUsers and RecSim envs).
OBSERVATION_COPIES = 8
FIXED_BYTES_PER_USER = 2048


def machine_memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return total if total > 0 else None


def memory_limit_bytes(limit_gib: float | None = None) -> tuple[float, str]:
    """``(bytes, where it comes from)``: ``limit_gib``, else ``$METAREC_MEMORY_LIMIT_GIB``, else this
    machine's memory (infinite where unknown)."""
    if limit_gib is not None:
        return _positive_gib(limit_gib, "memory limit") * GIB, "the memory limit"
    text = os.environ.get(ENV_VAR)
    if text is not None and text.strip():
        return _positive_gib(text, ENV_VAR) * GIB, f"{ENV_VAR}'s"
    total = machine_memory_bytes()
    return (float(total) if total is not None else math.inf), "this machine's"


def _positive_gib(value: Any, name: str) -> float:
    try:
        gib = float(value)
    except (TypeError, ValueError):
        gib = math.nan
    if isinstance(value, bool) or not gib > 0 or math.isnan(gib):
        raise ValueError(f"{name}: expected a positive number of GiB, got {str(value)[:40]!r}")
    return gib


def memory_problem(count: int, bytes_each: float, what: str = "users", limit_gib: float | None = None) -> str | None:
    """What is wrong with holding ``count`` x ``bytes_each`` bytes (None when it fits under the limit)."""
    need = float(count) * float(bytes_each)
    limit, source = memory_limit_bytes(limit_gib)
    if need <= limit:
        return None
    return (
        f"{count} {what} need about {need / GIB:.3g} GiB, more than {source} {limit / GIB:.3g} GiB; "
        f"pass fewer {what}, or set {ENV_VAR} (GiB) to override"
    )


def check_memory(
    field: str, count: int, bytes_each: float, what: str = "users", limit_gib: float | None = None
) -> None:
    """A ValueError naming ``field`` when ``count`` x ``bytes_each`` is more than the memory limit."""
    problem = memory_problem(count, bytes_each, what, limit_gib)
    if problem is not None:
        raise ValueError(f"{field}: {problem}")


def space_bytes(space: Any) -> int:
    """Bytes of one element of a Gymnasium space (Dict and Tuple summed over their parts)."""
    parts = getattr(space, "spaces", None)
    if parts is not None:
        return sum(space_bytes(part) for part in (parts.values() if isinstance(parts, dict) else parts))
    shape = getattr(space, "shape", None) or (1,)
    dtype = getattr(space, "dtype", None)
    itemsize = np.dtype(dtype).itemsize if dtype is not None else 8
    return int(np.prod(shape, dtype=np.float64)) * itemsize


def bytes_per_user(observation_space: Any) -> int:
    """Estimated bytes a user of a stepping batch needs, from its single observation space."""
    return OBSERVATION_COPIES * space_bytes(observation_space) + FIXED_BYTES_PER_USER
