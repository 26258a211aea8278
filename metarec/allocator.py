"""Keep freed memory for reuse instead of returning it to the OS (glibc only).

At large batches every step allocates tensors of tens to hundreds of MB (e.g. ``[B, N, F]``
candidate features at 100k users). glibc serves allocations above its mmap threshold (at most 32 MB
by default) with fresh ``mmap`` pages and unmaps them on free, so each step pays page faults to zero
that memory again: at 100,000 users on a 2-core CPU this was half of a DriftingUsers step (0.44 s
with 0.36 s of system time, against 0.21 s after :func:`tune_allocator`). Raising the mmap and trim
thresholds keeps the memory in the heap, where the next step reuses it; the cost is that the
process keeps its peak memory until it exits.

The ``metarec`` command and the benchmarks call :func:`tune_allocator`; a script that steps big
batches can too. ``METAREC_TUNE_MALLOC=0`` turns it off. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Sets glibc's mmap and trim thresholds to ``threshold`` bytes (default 1 GiB) for this process.

    Returns:
        Whether the allocator was tuned (False off glibc, or with ``METAREC_TUNE_MALLOC=0``).
    """
    if os.environ.get("METAREC_TUNE_MALLOC", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
