"""The run directory, written once for every command that writes a directory of results.

A command's output directory is claimed before any work starts (:func:`claim_out`): a file, or a path
that cannot be written, is refused at once, and the directory gets a marker, ``.metarec-run`` (JSON:
the command and whether the command created the directory). A training run directory holds
``config.yaml`` (the validated configuration), ``checkpoints/`` (written atomically), ``tb/``
(TensorBoard events) and ``results.json``. The rules:

- nothing of another run is overwritten: a command writes into a missing or empty directory, or into
  one it created itself (for a training run, only while the run never reached its first checkpoint);
  any other non-empty directory needs ``--overwrite``, which replaces only the files the command writes
  (nothing is deleted);
- ``--resume`` continues the run in place, and only with the configuration it was started with, apart
  from the keys the caller names as free to change (the device, say); the configuration saved in the
  checkpoint is compared too, so a deleted ``config.yaml`` lets no other configuration through;
- a checkpoint carries the SHA-256 of its content (:func:`save_checkpoint`): a damaged one is refused
  by name (:func:`load_checkpoint`) instead of resuming to other weights;
- only the first process of a run split across processes writes files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel

from metarec.io import atomic_save, atomic_write_text

#: The marker file of a directory claimed by a command.
MARKER = ".metarec-run"
#: Commands whose runs continue with ``--resume``: a directory of theirs is reused only before the first
#: checkpoint (and otherwise the refusal points to ``--resume``).
TRAINING_COMMANDS = frozenset({"train", "meta-train"})


def config_values(config: BaseModel) -> dict[str, Any]:
    """``config`` as plain JSON values (what ``config.yaml`` holds)."""
    return json.loads(config.model_dump_json())


# --- output directories and files -----------------------------------------------------------------


def read_marker(out: str | Path) -> dict[str, Any] | None:
    """The marker of ``out`` (``{"command": ..., "created": ...}``), or None where there is none."""
    path = Path(out) / MARKER
    try:
        value = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def made_by(out: str | Path, command: str) -> bool:
    """Whether ``out`` is a directory (not a link) that ``command`` created: its marker says so."""
    out = Path(out)
    marker = read_marker(out) if out.is_dir() and not out.is_symlink() else None
    return marker is not None and marker.get("command") == command and marker.get("created") is True


def _holds_only(folder: Path, keep: Any) -> bool:
    """Whether ``folder`` is a real directory whose files (at any depth) all pass ``keep``."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    return all((p.is_dir() or keep(p)) and not p.is_symlink() for p in folder.rglob("*"))


def start_leftovers_only(out: str | Path) -> bool:
    """Whether ``out`` holds no more than a run writes before its first checkpoint: the marker,
    ``config.yaml``, TensorBoard event files in ``tb/`` and temporary files of an interrupted atomic
    write in ``checkpoints/``."""
    for entry in Path(out).iterdir():
        if entry.name in (MARKER, "config.yaml") and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name == "tb" and _holds_only(entry, lambda p: p.name.startswith("events.out.tfevents.")):
            continue
        if entry.name == "checkpoints" and _holds_only(entry, lambda p: ".tmp" in p.name):
            continue
        return False
    return True


def restartable(out: str | Path, command: str) -> bool:
    """Whether ``out`` holds a run of ``command`` that never reached its first checkpoint (killed, or
    failed at start): a fresh run of the same command may reuse the directory."""
    return made_by(out, command) and start_leftovers_only(out)


def _empty(out: Path) -> bool:
    """Whether the directory ``out`` holds nothing but, perhaps, a marker."""
    return all(entry.name == MARKER and entry.is_file() for entry in out.iterdir())


def _check_writable(out: Path, expect: str = "a directory") -> None:
    """A ValueError unless ``out`` (a directory, or a file where ``expect`` says so) could be created
    and written: the nearest existing folder at or above it is a writable directory."""
    try:
        if expect == "a directory" and out.exists() and not out.is_dir():
            raise ValueError(f"out: {out} is a file; expected a directory")
        existing = out if expect == "a directory" else out.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"out: cannot write to {out} ({existing} is a file); expected {expect}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"out: cannot write to {out} ({existing} is not writable)")
    except OSError as err:
        raise ValueError(f"out: cannot write to {out} ({err.strerror or err})") from None


def check_out(out: str | Path, command: str, overwrite: bool = False, resume: bool = False) -> None:
    """Checks, writing nothing, that ``command`` may write into the directory ``out`` (see
    :func:`claim_out`); a ValueError naming the path says why not."""
    out = Path(out)
    _check_writable(out)
    if resume or not out.is_dir() or _empty(out):
        return
    own = made_by(out, command)
    if own and (command not in TRAINING_COMMANDS or start_leftovers_only(out)):
        return
    if overwrite:
        return
    if command in TRAINING_COMMANDS:
        raise ValueError(f"out: {out} is not empty; pass --resume to continue the run there, or choose another --out")
    marker = read_marker(out) or {}
    by = f" (it holds a run of metarec {marker['command']})" if isinstance(marker.get("command"), str) else ""
    raise ValueError(
        f"out: {out} is not empty and was not made by metarec {command}{by}; pass --overwrite to replace the "
        f"files metarec {command} writes there, or choose another --out"
    )


def claim_out(out: str | Path, command: str, overwrite: bool = False, resume: bool = False,
              create: bool = True) -> Path:  # fmt: skip
    """Claims the directory ``out`` for ``command`` before any work starts, and returns it.

    Refused (a ValueError naming the path): a file, a path that cannot be written, and a non-empty
    directory that ``command`` did not create, unless ``overwrite`` (then the command replaces only
    the files it writes; nothing is deleted) or ``resume``. A training command reuses a directory of
    its own only while the run never reached its first checkpoint (:func:`restartable`); its leftovers
    (TensorBoard events, temporary files) are removed. ``create`` false (a process other than the
    first) only checks. Otherwise the directory is created and gets its marker.
    """
    out = Path(out)
    check_out(out, command, overwrite, resume)
    if not create:
        return out
    created = not out.is_dir() or _empty(out) or made_by(out, command)
    try:
        if not resume and made_by(out, command) and start_leftovers_only(out):  # a restart: drop the leftovers
            for name in ("tb", "checkpoints"):
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
            (out / "config.yaml").unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps({"command": command, "created": created}) + "\n", out / MARKER)
    except OSError as err:
        raise ValueError(f"out: cannot write to {out} ({err.strerror or err})") from None
    return out


def claim_file(path: str | Path, overwrite: bool = False) -> Path:
    """Checks, before any work, that the output file ``path`` may be written: not a directory, in a
    writable folder, and (unless ``overwrite``) not there yet. A ValueError names the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"out: {path} is a directory; expected a file")
    if path.exists() and not overwrite:
        raise ValueError(f"out: {path} exists; pass --overwrite to replace it, or choose another --out")
    _check_writable(path, expect="a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"out: cannot write to {path} (not writable)")
    return path


# --- training runs: config.yaml and checkpoints ---------------------------------------------------


def check_same_config(saved: Mapping[str, Any], config: BaseModel, resumable: Iterable[str], where: str) -> None:
    """A ValueError naming the top-level keys of ``config`` (but those in ``resumable``) whose values
    differ from ``saved``, the configuration of ``where``."""
    now = config_values(config)
    changed = sorted(k for k in now.keys() - set(resumable) if saved.get(k) != now[k])
    if changed:
        raise ValueError(f"config: {', '.join(changed)} differs from {where}; resume with the same values")


def prepare_run(out: Path, config: BaseModel, resume: bool, resumable: Iterable[str] = (), write: bool = True,
                command: str = "train", checkpoint: Path | None = None, overwrite: bool = False,
                create: bool = True) -> None:  # fmt: skip
    """Checks that ``out`` may take the run and claims it (:func:`claim_out`), then writes
    ``config.yaml`` (when ``write``).

    A new run (``resume`` false) needs ``out`` empty, missing, or a run of ``command`` that never reached
    its first checkpoint. A resumed run must have the config it was started with, except the top-level
    keys in ``resumable``: the one in ``config.yaml``, or where that is missing, the one saved in
    ``checkpoint`` (whose digest is checked too); a ValueError names the keys that differ. Nothing is
    written before these checks pass.
    """
    out = Path(out)
    check_out(out, command, overwrite, resume)
    if resume and (out / "config.yaml").is_file():
        saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
        check_same_config(saved, config, resumable, f"the run {out} was started with")
    elif resume and checkpoint is not None and checkpoint.is_file():
        load_checkpoint(checkpoint, config, resumable)
    claim_out(out, command, overwrite, resume, create=create)
    if write and create:
        write_config(out, config)


def write_config(out: Path, config: BaseModel) -> None:
    """``config.yaml`` of the run in ``out``: the validated configuration, atomically."""
    atomic_write_text(yaml.safe_dump(config_values(config), sort_keys=False), out / "config.yaml")


def _feed(digest: Any, value: Any) -> None:
    """Adds ``value`` (tensors, dicts, lists, tuples and plain scalars, nested) to ``digest``, each with
    its kind and size, so that different contents give different byte streams."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}:".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, bytes):
        digest.update(f"B{len(value)}:".encode() + value)
    elif isinstance(value, float):
        digest.update(f"F{value.hex()};".encode())
    else:  # str, int, bool, None
        text = repr(value).encode()
        digest.update(f"{type(value).__name__}{len(text)}:".encode() + text)


def content_sha256(value: Any) -> str:
    """SHA-256 of the content of ``value`` (what a checkpoint holds), independent of how it was
    serialised: the same tensors, numbers and keys in the same order give the same digest."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def save_checkpoint(state: Any, path: str | Path, config: BaseModel) -> Path:
    """``state`` with ``config`` and their SHA-256, atomically: ``{"sha256", "config", "payload"}``
    (loadable with ``torch.load(weights_only=True)``; :func:`load_checkpoint` checks it)."""
    values = config_values(config)
    digest = content_sha256({"config": values, "payload": state})
    return atomic_save({"sha256": digest, "config": values, "payload": state}, path)


def load_checkpoint(path: str | Path, config: BaseModel | None = None, resumable: Iterable[str] = (),
                    map_location: str = "cpu") -> Any:  # fmt: skip
    """The state saved by :func:`save_checkpoint` in ``path``, after checking its digest and, with
    ``config``, that the run's configuration is the saved one but for the keys in ``resumable``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged file fails in the zip reader or the unpickler, each its own way
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        message = f"checkpoint {path} is corrupt (unreadable: {reason}); restore it from a copy or start a new run"
        raise ValueError(message) from None
    if not isinstance(saved, dict) or not {"sha256", "config", "payload"} <= saved.keys():
        raise ValueError(f"checkpoint {path} carries no sha256 (written by an older metarec); start a new run")
    if content_sha256({"config": saved["config"], "payload": saved["payload"]}) != saved["sha256"]:
        raise ValueError(f"checkpoint {path} is corrupt (sha256 mismatch); restore it from a copy or start a new run")
    if config is not None:
        check_same_config(saved["config"], config, resumable, f"the config saved in checkpoint {path}")
    return saved["payload"]


def params_sha256(*states: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of parameters in a canonical order: the state dicts in the order given, each one's names
    sorted; every tensor as its raw bytes on the CPU."""
    digest = hashlib.sha256()
    for state in states:
        for name in sorted(state):
            digest.update(name.encode())
            digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def flat_config(config: BaseModel) -> dict[str, Any]:
    """The configuration as one dotted key per leaf value (``ppo.learning_rate``)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix] = value

    walk("", config.model_dump(mode="json"))
    return flat


def hyperparameter_table(config: BaseModel) -> str:
    """The configuration as a Markdown table, one dotted key a row (TensorBoard's text tab renders it)."""
    return "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in flat_config(config).items())


#: The tags TensorBoard's HParams tab compares training runs by (each run logs them as scalars).
HPARAM_METRICS = ("eval/mean_return", "eval/normalised_return", "charts/episode_return")


def write_hparams(
    writer: Any, config: BaseModel, metrics: tuple[str, ...] = HPARAM_METRICS, extra: dict[str, Any] | None = None
) -> None:
    """Writes the configuration (and ``extra``, such as the method a run trains) to ``writer``'s run for
    TensorBoard's HParams plugin (one hyper-parameter per dotted key; lists and None as text), with ``metrics``
    the scalar tags its table shows beside them."""
    if isinstance(writer, NoWriter):
        return
    from torch.utils.tensorboard.summary import hparams

    flat = {**(extra or {}), **flat_config(config)}
    values = {key: v if isinstance(v, bool | int | float | str) else json.dumps(v) for key, v in flat.items()}
    file_writer = writer._get_file_writer() if hasattr(writer, "_get_file_writer") else writer.file_writer
    for summary in hparams(values, {tag: 0.0 for tag in metrics}):
        file_writer.add_summary(summary)


def log_evaluation(add_scalar: Any, result: dict[str, Any], normalised_return: float | None, step: int) -> None:
    """An evaluation's scalars under ``eval/``, as every trainer (batched PPO, SB3) logs them:
    ``add_scalar(tag, value, step)``."""
    add_scalar("eval/mean_return", result["mean_return"], step)
    add_scalar("eval/ci95_low", result["ci95"][0], step)
    add_scalar("eval/ci95_high", result["ci95"][1], step)
    add_scalar("eval/click_rate", result["click_rate"], step)
    if normalised_return is not None:
        add_scalar("eval/normalised_return", normalised_return, step)


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
