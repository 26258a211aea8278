"""Process groups for the commands that split their work across processes (``--nproc N`` or torchrun).

``torch.distributed`` does the work: gloo on CPU, NCCL on GPUs. ``--nproc N`` spawns N processes on
this machine that meet at a free local port; under ``torchrun`` (``WORLD_SIZE`` set) the processes
torchrun started join through its environment variables.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def world_size(nproc: int) -> int:
    """Processes of the run: ``nproc`` when above 1, else torchrun's ``WORLD_SIZE`` (1 without it)."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc: expected a positive integer, got {nproc!r}")
    return nproc if nproc > 1 else int(os.environ.get("WORLD_SIZE", "1"))


def free_port() -> int:
    """A TCP port free on this machine now, for the processes of one group to meet at."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def join_group(device: str, rank: int, world: int, init_method: str, threads: int | None = None,
               backend: str | None = None) -> None:  # fmt: skip
    """Joins process ``rank`` of ``world`` to the default group (NCCL when ``device`` is CUDA, else
    gloo; ``backend`` forces one) and gives it its share of the machine's cores."""
    import torch.distributed as dist

    if backend is None:
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if torch.device(device).type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))  # torchrun's rank on this machine
        count = torch.cuda.device_count()
        if backend == "nccl" and (local >= count or torch.device(device).index not in (None, local)):
            raise ValueError(
                f"nproc: NCCL needs one GPU per process; process {local} on this machine has "
                f"{count} GPU(s) and device {device!r} (use device 'cuda' and at most {count} processes per machine)"
            )
        torch.cuda.set_device(local % max(count, 1))
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    torch.set_num_threads(max(1, (threads or torch.get_num_threads()) // world))  # the processes share the cores


def rank() -> int:
    """This process's rank (0 without a group)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def group_size() -> int:
    """Processes in this process's group (1 without a group)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_(tensors: list[torch.Tensor], op: str = "sum", average: bool = False) -> None:
    """Reduces ``tensors`` in place over the processes of the default group (nothing without a group
    or with one process): ``op`` is ``"sum"`` or ``"max"``; ``average`` divides a sum by the processes.

    The tensors travel in one flat all-reduce per kind: floating point ones as float64, the others
    (integers, flags) as int64, so the fixed-point sums of :func:`~metarec.agents.base.add_exact`
    stay exact. The flat buffer lives where the backend reduces (a GPU under NCCL, the host under
    gloo) and the results are copied back to each tensor's own device and dtype. Every process of the
    group must call it with tensors of the same shapes and dtypes, in the same order."""
    import torch.distributed as dist

    if op not in ("sum", "max"):
        raise ValueError(f"op: expected 'sum' or 'max', got {op!r}")
    if average and (op != "sum" or not all(t.is_floating_point() for t in tensors)):
        raise ValueError("average: applies to op='sum' over floating-point tensors only")
    if not in_group() or dist.get_world_size() == 1 or not tensors:
        return
    where = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    reduce_op = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
    for floating in (True, False):
        group = [t for t in tensors if t.is_floating_point() == floating]
        if not group:
            continue
        dtype = torch.float64 if floating else torch.int64
        flat = torch.cat([t.detach().reshape(-1).to(where, dtype) for t in group])
        dist.all_reduce(flat, op=reduce_op)
        if average:
            flat /= dist.get_world_size()
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def blocks(total: int, world: int) -> list[tuple[int, int]]:
    """``(offset, size)`` of each process's contiguous block of ``total`` rows, in rank order; sizes
    differ by at most one."""
    if total < world:
        raise ValueError(f"users: expected at least one user per process ({world}), got {total}")
    base, extra = divmod(total, world)
    sizes = [base + (1 if r < extra else 0) for r in range(world)]
    offsets = [sum(sizes[:r]) for r in range(world)]
    return list(zip(offsets, sizes, strict=True))


def in_group() -> bool:
    """Whether this process is in a ``torch.distributed`` group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def torchrun_group(device: str, threads: int | None = None) -> None:
    """Joins the group of the processes torchrun started (``RANK``/``WORLD_SIZE`` in the environment),
    unless this process is in a group already."""
    if not in_group():
        join_group(device, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", threads)


def spawn_for_result(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    nproc: int,
    device: str = "cpu",
    threads: int | None = None,
    on_stop: Callable[[str], Exception] | None = None,
) -> Any:
    """Runs ``function(*args)`` in ``nproc`` new processes joined in one group and returns what the
    first returned (a JSON value).

    With ``on_stop``, SIGTERM or SIGINT to this process is passed on to the processes (which are
    expected to stop together, say after a checkpoint) and ``on_stop(signal_name)`` is raised here
    once they have ended.
    """
    import signal

    import torch.multiprocessing as mp

    from metarec.training import stop_requests

    with tempfile.TemporaryDirectory(prefix="metarec-") as scratch:
        result = Path(scratch) / "result.json"
        context = mp.start_processes(
            _run_in_group, args=(function, args, str(result), nproc, free_port(), device, threads), nprocs=nproc,
            join=False,
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
                  port: int, device: str, threads: int | None) -> None:  # fmt: skip
    import faulthandler
    import signal

    import torch.distributed as dist

    faulthandler.enable(all_threads=True)
    # The launching process decides what a signal means: it forwards a stop to runs that checkpoint
    # (they record it with metarec.training.stop_requests) and kills the processes otherwise. So the
    # workers leave its session (a Ctrl-C or a batch system's signal to the process group reaches the
    # launcher only, and the workers get it once, forwarded) and ignore signals outside such a run.
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    os.environ["METAREC_WORKER"] = "1"  # see metarec.training.stop_requests
    join_group(device, rank_, world, f"tcp://127.0.0.1:{port}", threads)
    try:
        try:
            value = function(*args)
        except Exception as err:
            if type(err).__name__ != "TrainingInterrupted":
                raise
            # stopped as asked, at the same update everywhere: wait until the first process has written
            # its checkpoint, then end cleanly (an early exit would get the others terminated)
            dist.barrier()
            value = {"_stopped_by": getattr(err, "signal_name", "SIGTERM")}
        if rank_ == 0:
            Path(result).write_text(json.dumps(value))
        dist.barrier()  # no process leaves while another still talks to the group (rank 0 hosts its store)
    finally:
        dist.destroy_process_group()
    # Done, and the result is written. A gloo process can abort while the interpreter shuts down
    # ("terminate called without an active exception", SIGABRT, about one run in five here), which would
    # fail a finished run; so a worker that succeeded ends at once, as a forked process would.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
