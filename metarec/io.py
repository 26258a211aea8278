"""Files written whole or not at all, and numbers JSON can hold.

Every file a run writes goes through :func:`atomic_write`: the content goes to a temporary file in the
same folder, which then replaces the target in one rename, so a kill at any moment leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
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


def print_json(payload: Any, file: Any = None) -> None:
    """``payload`` as one line of strict JSON (no NaN or infinity: :func:`json_safe`) on ``file``, else stdout.
    Commands run with ``--json`` pass the stream the CLI kept for it (``args.json_stream``): everything else
    they print goes to stderr then."""
    import sys

    print(json.dumps(json_safe(payload), allow_nan=False), file=file or sys.stdout, flush=True)


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


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` on one line: ``"head:\n  a\n  b"`` becomes ``"head: a; b"`` (for a command's error line)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    head, rest = lines[0], lines[1:]
    joined = head + ((" " if head.endswith(":") else "; ") + "; ".join(rest) if rest else "")
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def describe_os_error(err: OSError) -> str:
    """An ``OSError`` as ``"cannot write X: Permission denied"`` (``read`` where X exists and cannot be
    read, ``no such file`` where it is missing)."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.filename is None:
        return one_line(reason)
    name = os.fsdecode(err.filename)
    if err.errno == errno.ENOENT:
        return one_line(f"no such file or directory: {name}")
    verb = "read" if os.path.exists(name) and not os.access(name, os.R_OK) else "write"
    return one_line(f"cannot {verb} {name}: {reason}")
