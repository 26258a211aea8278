"""numpy's Array-API namespace with faster entry points for the tiny arrays of one user's step (see
:func:`metarec.envs.core.backend.numpy_backend`)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


class FastNumpy(ModuleType):
    """numpy's Array-API namespace with cheaper entry points for the functions the dynamics call
    every step on tiny arrays (one user: a handful of elements), where numpy's Python-level wrappers
    (``np.sum``, ``np.max``, ``np.clip``, ``np.stack``, ...) cost several times the work itself. Each
    override returns what numpy's own function returns (same values, dtypes and shapes); anything
    not overridden is numpy's."""

    def __init__(self) -> None:
        super().__init__("metarec.envs.core.backend.numpy", "numpy's Array API namespace, fast at small sizes")

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        setattr(self, name, value)
        return value

    @staticmethod
    def sum(x: np.ndarray, /, *, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Any:
        return np.add.reduce(x, axis=axis, dtype=dtype, keepdims=keepdims)

    @staticmethod
    def max(x: np.ndarray, /, *, axis: Any = None, keepdims: bool = False) -> Any:
        return np.maximum.reduce(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def min(x: np.ndarray, /, *, axis: Any = None, keepdims: bool = False) -> Any:
        return np.minimum.reduce(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def any(x: np.ndarray, /, *, axis: Any = None, keepdims: bool = False) -> Any:
        if x.dtype != np.bool_:
            return np.any(x, axis=axis, keepdims=keepdims)
        return np.logical_or.reduce(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def cumulative_sum(x: np.ndarray, /, *, axis: int | None = None, dtype: Any = None, include_initial: bool = False):
        if x.dtype.kind != "f" or dtype is not None or include_initial or axis is None:
            return np.cumulative_sum(x, axis=axis, dtype=dtype, include_initial=include_initial)
        return np.add.accumulate(x, axis=axis)

    @staticmethod
    def argmax(x: np.ndarray, /, *, axis: int | None = None, keepdims: bool = False) -> Any:
        return x.argmax(axis=axis, keepdims=keepdims)

    @staticmethod
    def astype(x: np.ndarray, dtype: Any, /, *, copy: bool = True, device: Any = None) -> np.ndarray:
        return x.astype(dtype, copy=copy)

    @staticmethod
    def zeros_like(x: np.ndarray, /, *, dtype: Any = None, device: Any = None) -> np.ndarray:
        return np.zeros(x.shape, dtype=x.dtype if dtype is None else dtype)

    @staticmethod
    def clip(x: np.ndarray, /, min: Any = None, max: Any = None) -> np.ndarray:
        if x.dtype.kind != "f" or min is None or max is None or isinstance(min, np.ndarray | np.generic):
            return np.clip(x, min=min, max=max)
        return np.minimum(np.maximum(x, min), max)

    @staticmethod
    def stack(arrays: Any, /, *, axis: int = 0) -> np.ndarray:
        shape = arrays[0].shape
        if axis != len(shape) or any(a.shape != shape for a in arrays):
            return np.stack(arrays, axis=axis)
        return np.concatenate([a[..., None] for a in arrays], axis=axis)


FAST_NUMPY = FastNumpy()
