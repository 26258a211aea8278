"""The run directory, written once for every command that trains.

A run directory holds ``config.yaml`` (the validated configuration), ``checkpoints/`` (written
atomically), ``tb/`` (TensorBoard events) and ``results.json``. The rules:

- a new run needs an empty (or missing) directory, so nothing of another run is overwritten;
- ``--resume`` continues the run in place, and only with the configuration it was started with, apart
  from the keys the caller names as free to change (the device, say);
- only the first process of a run split across processes writes files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel

from metarec.io import atomic_write_text


def config_values(config: BaseModel) -> dict[str, Any]:
    """``config`` as plain JSON values (what ``config.yaml`` holds)."""
    return json.loads(config.model_dump_json())


def prepare_run(out: Path, config: BaseModel, resume: bool, resumable: Iterable[str] = (),
                write: bool = True) -> None:  # fmt: skip
    """Checks that ``out`` may take the run, then writes ``config.yaml`` (when ``write``).

    A new run (``resume`` false) needs ``out`` empty or missing. A resumed run must have the config it
    was started with, except the top-level keys in ``resumable``; a ValueError names the keys that differ.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} is a file; expected a directory")
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"out: {out} is not empty; pass --resume to continue the run there, or choose another --out")
    now = config_values(config)
    if resume and (out / "config.yaml").is_file():
        saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
        changed = sorted(k for k in now.keys() - set(resumable) if saved.get(k) != now[k])
        if changed:
            raise ValueError(
                f"config: {', '.join(changed)} differs from the run {out} was started with; resume with the same values"
            )
    out.mkdir(parents=True, exist_ok=True)
    if write:
        write_config(out, config)


def write_config(out: Path, config: BaseModel) -> None:
    """``config.yaml`` of the run in ``out``: the validated configuration, atomically."""
    atomic_write_text(yaml.safe_dump(config_values(config), sort_keys=False), out / "config.yaml")


def params_sha256(*states: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of parameters in a canonical order: the state dicts in the order given, each one's names
    sorted; every tensor as its raw bytes on the CPU."""
    digest = hashlib.sha256()
    for state in states:
        for name in sorted(state):
            digest.update(name.encode())
            digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def hyperparameter_table(config: BaseModel) -> str:
    """The configuration as a Markdown table, one dotted key a row (TensorBoard's text tab renders it)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix] = value

    walk("", config.model_dump())
    return "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in flat.items())


class NoWriter:
    """Stands in for TensorBoard's SummaryWriter in processes other than the first."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def summary_writer(logdir: Path, primary: bool, purge_after: int | None = None) -> Any:
    """TensorBoard's SummaryWriter on ``logdir`` in the first process (a :class:`NoWriter` elsewhere).
    ``purge_after``: on resume, the step of the checkpoint; events an interrupted process logged after
    it are dropped."""
    if not primary:
        return NoWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(logdir), purge_step=None if purge_after is None else purge_after + 1)
