"""Files written whole or not at all, and numbers JSON can hold.

Every file a run writes goes through :func:`atomic_write`: the content goes to a temporary file in the
same folder, which then replaces the target in one rename, so a kill at any moment leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Calls ``write(tmp)`` on a temporary path next to ``path`` (same suffix, so writers that add one
    leave it alone), then renames it over ``path``. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    """``text`` into ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    """``data`` into ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` into ``path`` atomically (tensors and plain containers: loadable with
    ``weights_only=True``)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def json_safe(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples, numbers, numpy scalars and arrays) as plain JSON values,
    with None for every non-finite number: strict JSON has no NaN or infinity."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(value: Any, path: str | Path) -> Path:
    """``value`` as indented strict JSON (non-finite numbers as null), atomically."""
    return atomic_write_text(json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n", path)
