"""Array backends for the one implementation of the user dynamics.

The dynamics in :mod:`metarec.envs` are written once, against the Python Array API standard, and run
on one of two backends:

* ``numpy`` — what the single-user Gymnasium environment uses. A step of one user is about 150
  operations on arrays of a handful of elements, where numpy's per-call overhead (about 1 µs) is
  several times lower than torch's (3-10 µs). Even so that is slower than RecSim's scalar Python,
  so a model may add a fused step for one user (``UserModel.one_user``), tested to give the
  batched step's trajectories bit for bit; RecSim's interest evolution has one.
* ``torch`` — what the vector environment uses: thousands to millions of users per call, on CPU or GPU.

Every random draw goes through a :class:`Random` bound to an explicit generator
(``numpy.random.Generator`` or ``torch.Generator``), so a seed reproduces a run on either backend.
The two backends draw different random streams; given the same draws (see :class:`ReplayRandom`)
they produce the same trajectories, which is what the backend-parity test checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from metarec.envs.core.fast_numpy import FAST_NUMPY

Array = Any  # a numpy.ndarray or a torch.Tensor


class Random(Protocol):
    """A source of random arrays on one backend, bound to one explicit generator. Every draw is a fresh array
    that the caller owns: the dynamics scale and shift some of them in place."""

    def uniform(self, shape: tuple[int, ...]) -> Array:
        """Float32 draws from U[0, 1)."""

    def normal(self, shape: tuple[int, ...]) -> Array:
        """Float32 draws from N(0, 1)."""

    def integers(self, high: int, shape: tuple[int, ...]) -> Array:
        """Int64 draws from {0, ..., high - 1}."""


class NumpyRandom:
    """:class:`Random` over a ``numpy.random.Generator``."""

    def __init__(self, generator: np.random.Generator) -> None:
        self.generator = generator

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.generator.random(shape, dtype=np.float32)

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.generator.standard_normal(shape, dtype=np.float32)

    def integers(self, high: int, shape: tuple[int, ...]) -> np.ndarray:
        return self.generator.integers(0, high, shape, dtype=np.int64)


class TorchRandom:
    """:class:`Random` over a ``torch.Generator``; arrays land on the generator's device."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.device = generator.device

    def uniform(self, shape: tuple[int, ...]) -> Any:
        import torch

        return torch.rand(shape, generator=self.generator, device=self.device)

    def normal(self, shape: tuple[int, ...]) -> Any:
        import torch

        return torch.randn(shape, generator=self.generator, device=self.device)

    def integers(self, high: int, shape: tuple[int, ...]) -> Any:
        import torch

        return torch.randint(high, shape, generator=self.generator, device=self.device)

    def __getstate__(self) -> dict[str, Any]:
        return {"device": str(self.device), "state": self.generator.get_state()}

    def __setstate__(self, saved: dict[str, Any]) -> None:
        import torch

        self.generator = torch.Generator(device=saved["device"])
        self.generator.set_state(saved["state"])
        self.device = self.generator.device


class RowSubsetRandom:
    """:class:`Random` for a subset of a batch's rows that draws exactly what the whole batch would.

    Each draw of leading size ``len(rows)`` is made at the full ``batch`` size and its ``rows`` are
    returned, so a user meets the same random numbers whichever other users are still being
    simulated: stepping only the users who remain gives, row for row, the trajectories of stepping
    everyone (common random numbers across the arms of an A/B test, at the cost of drawing for all).
    """

    def __init__(self, base: Random, batch: int, rows: Array) -> None:
        self.base, self.batch, self.rows = base, int(batch), rows

    def _take(self, draw: Any, shape: tuple[int, ...]) -> Array:
        if shape[0] != self.rows.shape[0]:
            raise ValueError(f"shape: expected a leading size of {self.rows.shape[0]} rows, got {shape}")
        return draw((self.batch, *shape[1:]))[self.rows]

    def uniform(self, shape: tuple[int, ...]) -> Array:
        return self._take(self.base.uniform, shape)

    def normal(self, shape: tuple[int, ...]) -> Array:
        return self._take(self.base.normal, shape)

    def integers(self, high: int, shape: tuple[int, ...]) -> Array:
        return self._take(lambda full: self.base.integers(high, full), shape)


@dataclass(frozen=True)
class Backend:
    """An array namespace and the device arrays live on.

    Attributes:
        name: ``"numpy"`` or ``"torch"``.
        xp: the Array-API namespace (``numpy`` itself, or ``array_api_compat.torch``).
        device: the torch device, or ``"cpu"`` for numpy.
    """

    name: str
    xp: ModuleType
    device: Any

    def __reduce__(self) -> tuple[Any, ...]:
        # Modules do not pickle; a backend is rebuilt from its name and device.
        return (backend_by_name, (self.name, str(self.device)))

    def asarray(self, value: Any, dtype: Any = None) -> Array:
        """Converts numpy data or Python scalars (``dtype``: a numpy dtype) to an array of this backend."""
        value = np.asarray(value, dtype=dtype)
        if self.name == "numpy":
            return value
        import torch

        return torch.from_numpy(np.ascontiguousarray(value)).to(self.device)

    def apply_(self, name: str, value: Array) -> Array:
        """``value`` with the elementwise function ``name`` (``"exp"``, ``"sqrt"``, ``"negative"``) applied in
        place, and returned: for a fresh array nothing else holds, where a new one would be one more pass
        through memory and one more allocation. The result is the out-of-place function's, bit for bit."""
        if self.name == "numpy":
            return getattr(np, name)(value, out=value)
        import torch

        return getattr(torch, name)(value, out=value)

    def clamp_min_(self, value: Array, low: float) -> Array:
        """``maximum(value, low)`` in place (see :meth:`apply_`); NaN stays NaN, as with ``maximum``."""
        if self.name == "numpy":
            return np.maximum(value, low, out=value)
        return value.clamp_min_(low)

    def minimum_(self, value: Array, other: Array) -> Array:
        """``minimum(value, other)`` in place (see :meth:`apply_`), ``other`` broadcast to ``value``'s shape."""
        if self.name == "numpy":
            return np.minimum(value, other, out=value)
        import torch

        return torch.minimum(value, other, out=value)

    def clamp_max_(self, value: Array, high: float) -> Array:
        """``minimum(value, high)`` in place (see :meth:`apply_`); NaN stays NaN, as with ``minimum``."""
        if self.name == "numpy":
            return np.minimum(value, high, out=value)
        return value.clamp_max_(high)

    def to_numpy(self, value: Array) -> np.ndarray:
        if self.name == "numpy":
            return np.asarray(value)
        return value.detach().cpu().numpy()

    def take_rows(self, table: Array, index: Array) -> Array:
        """``table[index]`` for an integer ``index`` of any shape: rows of ``table`` (``[M, ...]``)
        gathered into ``[*index.shape, ...]``. (Array-API ``take`` through array_api_compat is several
        times slower on torch than ``index_select``, and this is the hottest operation.)"""
        if self.name == "numpy" and table.ndim == 1:
            return table.take(index)  # the method: np.take's wrapper costs more than the gather at small sizes
        flat = index.reshape(-1)
        rows = table.take(flat, axis=0) if self.name == "numpy" else table.index_select(0, flat)
        return rows.reshape(*index.shape, *table.shape[1:])

    def row_blocks(self, rows: int, per_row: int) -> list[tuple[int, int]]:
        """``[(start, stop), ...]``: the rows of a batch in blocks of at most :data:`ROW_BLOCK_ELEMENTS`
        elements of work (``per_row`` each) on a CPU, so that a computation's intermediates stay in cache
        and its temporaries stay small; one block on numpy and on an accelerator."""
        if self.name == "numpy" or self.device.type != "cpu" or rows * per_row <= ROW_BLOCK_ELEMENTS:
            return [(0, rows)]
        step = max(1, ROW_BLOCK_ELEMENTS // per_row)
        return [(start, min(rows, start + step)) for start in range(0, rows, step)]

    def row_dots(self, table: Array, index: Array, vectors: Array) -> Array:
        """``sum(table[index] * vectors[:, None, :], axis=2)``: ``[B, J]`` dot products of each user's vector
        (``vectors``, ``[B, d]``) with the rows ``index`` (``[B, J]``) of ``table`` (``[M, d]``), e.g. every
        candidate's affinity. The users go in :meth:`row_blocks`, so that on a CPU the ``[B, J, d]``
        products stay in cache instead of streaming through memory three times; every element is the same
        product and the same sum, so the result is the same bit for bit."""
        b, j = index.shape
        d = table.shape[1]
        blocks = self.row_blocks(b, j * d)
        if len(blocks) == 1:
            products = self.take_rows(table, index)
            products *= vectors[:, None, :]
            return self.xp.sum(products, axis=2)
        import torch

        out = torch.empty((b, j), dtype=table.dtype, device=self.device)  # the products are in place, as above
        for start, stop in blocks:
            products = table.index_select(0, index[start:stop].reshape(-1)).reshape(stop - start, j, d)
            products *= vectors[start:stop, None, :]
            torch.sum(products, dim=2, out=out[start:stop])
        return out

    def broadcast_rows(self, row: Array, batch: int) -> Array:
        """``row`` (``[...]``) as ``[batch, ...]`` without copying it: a read-only view, the same row for
        every user."""
        if self.name == "numpy":
            return np.broadcast_to(row[None], (batch, *row.shape))
        return row[None].expand(batch, *row.shape)

    def take_along(self, values: Array, index: Array) -> Array:
        """``values[b, index[b, j]]`` along the last axis of 2-D arrays: ``[B, J]``."""
        if self.name == "numpy":
            if values.shape[0] == 1 and index.shape[0] == 1:  # one user: a flat gather, no row index
                return values.take(index)
            # Plain fancy indexing: np.take_along_axis builds its index in Python, several µs a call.
            return values[_row_index(index.shape[0]), index]
        return values.gather(1, index)

    def take_columns(self, values: Array, columns: Array) -> Array:
        """``values[:, columns]``: the same columns (``[J]``) of every row of a 2-D array, ``[B, J]``. Of a row
        broadcast to every user (:meth:`broadcast_rows`), the row's columns broadcast in turn, not copied."""
        if self.name == "numpy":
            if values.strides[0] == 0:
                return self.broadcast_rows(values[0].take(columns), values.shape[0])
            return values.take(columns, axis=1)
        if values.stride(0) == 0:
            return self.broadcast_rows(values[0].index_select(0, columns), values.shape[0])
        return values.index_select(1, columns)

    def row_argmax(self, values: Array) -> tuple[Array, Array]:
        """``(argmax, max)`` of each row of a 2-D array: the first largest entry's column and its value (a NaN
        counts as the largest, the first NaN's column, as with ``argmax``). torch gives both in one reduction,
        several times faster than ``argmax`` alone on short rows."""
        if self.name == "numpy":
            index = self.xp.argmax(values, axis=1)
            return index, self.take_along(values, index[:, None])[:, 0]
        largest, index = values.max(dim=1)
        return index, largest

    def top_k(self, key: Array, k: int) -> Array:
        """Indices ``[B, k]`` of the ``k`` largest entries of each row of ``key``, largest first."""
        if self.name == "numpy":
            return (-key).argsort(axis=1, kind="stable")[:, :k]
        return key.topk(k, dim=1).indices

    def make_random(self, seed: int | None) -> Random:
        """A :class:`Random` on this backend, seeded (or from OS entropy when ``seed`` is None)."""
        if self.name == "numpy":
            return NumpyRandom(np.random.default_rng(seed))
        import torch

        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
        return TorchRandom(generator)


#: How many elements of work a block of :meth:`Backend.row_blocks` holds on a CPU: a million, 4 MiB of float32.
ROW_BLOCK_ELEMENTS = 1 << 20


@lru_cache(maxsize=64)
def _row_index(rows: int) -> np.ndarray:
    return np.arange(rows)[:, None]




def numpy_backend() -> Backend:
    """The numpy backend: numpy's own namespace where it implements the Array API (numpy >= 2.1), with faster
    entry points for small arrays (:class:`~metarec.envs.core.fast_numpy.FastNumpy`); else the
    ``array_api_compat`` wrapper (slower per call, same results)."""
    if hasattr(np, "cumulative_sum") and np.lib.NumpyVersion(np.__version__) >= "2.1.0":
        return Backend("numpy", FAST_NUMPY, "cpu")
    import array_api_compat.numpy as xp_numpy

    return Backend("numpy", xp_numpy, "cpu")


def torch_backend(device: Any = "cpu") -> Backend:
    """The torch backend on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``)."""
    import array_api_compat.torch as xp_torch
    import torch

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {str(device)!r} was asked for but torch sees no CUDA device")
    return Backend("torch", xp_torch, device)


def backend_by_name(name: str, device: Any = "cpu") -> Backend:
    """``"numpy"`` or ``"torch"`` (on ``device``)."""
    if name == "numpy":
        return numpy_backend()
    if name == "torch":
        return torch_backend(device)
    raise ValueError(f"backend: expected 'numpy' or 'torch', got {name!r}")


class ReplayRandom:
    """Test double: serves pre-drawn numpy values in order, converted to a backend.

    Two backends fed the same ReplayRandom take exactly the same random decisions, so their
    trajectories must agree to float precision.
    """

    def __init__(self, backend: Backend, seed: int = 0) -> None:
        self.backend = backend
        self.generator = np.random.default_rng(seed)

    def uniform(self, shape: tuple[int, ...]) -> Array:
        return self.backend.asarray(self.generator.random(shape, dtype=np.float32))

    def normal(self, shape: tuple[int, ...]) -> Array:
        return self.backend.asarray(self.generator.standard_normal(shape, dtype=np.float32))

    def integers(self, high: int, shape: tuple[int, ...]) -> Array:
        return self.backend.asarray(self.generator.integers(0, high, shape, dtype=np.int64))
