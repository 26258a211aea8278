"""Stopping a long run cleanly: SIGTERM and SIGINT become a request the trainer acts on at a safe point."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped a run; a checkpoint of the last completed update was written first."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path) -> None:
        super().__init__(f"{signal_name} at env step {step}: checkpoint {checkpoint} written; continue with --resume")
        self.signal_name = signal_name
        self.step = step
        self.checkpoint = checkpoint


@contextlib.contextmanager
def stop_requests() -> Iterator[dict[str, str | None]]:
    """While active, SIGTERM and SIGINT only record that a stop was asked (``["signal"]``), so the
    trainer can finish the update in progress, checkpoint and stop; the previous handlers come back
    after. Outside the main thread (where Python cannot set handlers) nothing changes."""
    request: dict[str, str | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    # A worker of a split run may get the same signal twice (from its process group and forwarded by
    # the launching process): it never escalates, the launcher does (by terminating the workers).
    escalate = os.environ.get("METAREC_WORKER") != "1"

    def ask(signum: int, _frame: Any) -> None:
        if request["signal"] is not None:  # a second signal: stop now
            if escalate:
                raise KeyboardInterrupt
            return
        request["signal"] = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
