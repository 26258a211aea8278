"""Running one function in N new processes joined in one group, with stops passed on to them."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metarec.parallel.groups import join_group, local_store, loopback_interface
from metarec.parallel.signals import TrainingInterrupted, stop_requests


def spawn_for_result(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    nproc: int,
    device: str = "cpu",
    threads: int | None = None,
    on_stop: Callable[[str], Exception] | None = None,
) -> Any:
    """Runs ``function(*args)`` in ``nproc`` new processes joined in one group and returns what the
    first returned (a JSON value). The processes meet through a file store in a private temporary
    directory and talk over the loopback interface: nothing of the group listens beyond this machine.

    With ``on_stop``, SIGTERM or SIGINT to this process is passed on to the processes (which are
    expected to stop together, say after a checkpoint) and ``on_stop(signal_name)`` is raised here
    once they have ended.
    """
    import signal

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="metarec-") as scratch:
        result = Path(scratch) / "result.json"
        context = mp.start_processes(
            _run_in_group, args=(function, args, str(result), nproc, str(Path(scratch) / "store"), device, threads),
            nprocs=nproc, join=False,
        )  # fmt: skip
        try:
            with stop_requests() as request:
                forwarded = False
                while not context.join(timeout=0.2):  # a process that fails raises here, with its traceback
                    if request["signal"] is not None and not forwarded:
                        if on_stop is None:  # nothing to save: stop the processes and go
                            raise KeyboardInterrupt
                        for process in context.processes:
                            if process.is_alive() and process.pid is not None:
                                os.kill(process.pid, getattr(signal, str(request["signal"])))
                        forwarded = True
        except BaseException:
            for process in context.processes:
                if process.is_alive():
                    process.kill()  # they ignore SIGTERM and SIGINT (see _run_in_group)
            raise
        value = json.loads(result.read_text())
        if isinstance(value, dict) and "_stopped_by" in value:  # every process stopped as asked
            if on_stop is None:
                raise KeyboardInterrupt
            raise on_stop(str(value["_stopped_by"]))
        return value


def _run_in_group(rank_: int, function: Callable[..., Any], args: tuple[Any, ...], result: str, world: int,
                  store: str, device: str, threads: int | None) -> None:  # fmt: skip
    import faulthandler
    import signal

    import torch.distributed as dist

    faulthandler.enable(all_threads=True)
    # The launching process decides what a signal means: it forwards a stop to runs that checkpoint
    # (they record it with metarec.parallel.signals.stop_requests) and kills the processes otherwise. So the
    # workers leave its session (a Ctrl-C or a batch system's signal to the process group reaches the
    # launcher only, and the workers get it once, forwarded) and ignore signals outside such a run.
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    os.environ["METAREC_WORKER"] = "1"  # see metarec.parallel.signals.stop_requests
    # the launching process speaks for the run on stdout (one JSON line with --json): a worker's prints, and its
    # libraries' progress, go to stderr
    sys.stdout = sys.stderr
    # gloo listens for its connections on the interface of the machine's hostname unless told otherwise; the
    # processes are all on this machine, so the loopback interface serves, and nothing listens beyond it
    loopback = loopback_interface()
    if loopback is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    join_group(device, rank_, world, threads=threads, store=local_store(store, world))
    try:
        try:
            value = function(*args)
        except TrainingInterrupted as err:
            # stopped as asked, at the same update everywhere: wait until the first process has written
            # its checkpoint, then end cleanly (an early exit would get the others terminated)
            dist.barrier()
            value = {"_stopped_by": err.signal_name}
        if rank_ == 0:
            Path(result).write_text(json.dumps(value))
        dist.barrier()  # no process leaves while another still talks to the group
    finally:
        dist.destroy_process_group()
    # Done, and the result is written. A gloo process can abort while the interpreter shuts down
    # ("terminate called without an active exception", SIGABRT, about one run in five here), which would
    # fail a finished run; so a worker that succeeded ends at once, as a forked process would.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
