"""Process groups for the commands that split their work across processes (``--nproc N`` or torchrun).

``torch.distributed`` does the work: gloo on CPU, NCCL on GPUs. ``--nproc N`` spawns N processes on
this machine that meet through a file store in a private temporary directory (no socket is opened for
the meeting, and gloo's own connections stay on the loopback interface: nothing listens beyond this
machine); under ``torchrun`` (``WORLD_SIZE`` set) the processes torchrun started join through its
environment variables.
"""

from __future__ import annotations

import os
import socket
import sys
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


def loopback_interface() -> str | None:
    """The name of this machine's loopback network interface (``lo`` on Linux), or None if none is found."""
    for _, name in socket.if_nameindex():
        try:
            if int(Path(f"/sys/class/net/{name}/type").read_text()) == 772:  # ARPHRD_LOOPBACK
                return name
        except (OSError, ValueError):
            continue
    names = {name for _, name in socket.if_nameindex()}
    return next((name for name in ("lo", "lo0") if name in names), None)


def local_store(path: str, world: int) -> Any:
    """The store the ``world`` processes of one machine meet at: a ``torch.distributed.FileStore`` at ``path``
    (a file in a directory only this user can reach), which opens no socket, so nothing listens for the
    meeting (a c10d ``TCPStore`` listens on every interface, whatever host it is given)."""
    import torch.distributed as dist

    return dist.FileStore(path, world)


def join_group(device: str, rank: int, world: int, init_method: str | None = None, threads: int | None = None,
               backend: str | None = None, store: Any = None) -> None:  # fmt: skip
    """Joins process ``rank`` of ``world`` to the default group (NCCL when ``device`` is CUDA, else
    gloo; ``backend`` forces one) through ``store`` (e.g. :func:`local_store`) or ``init_method``, and gives
    it its share of the machine's cores."""
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
    if store is not None:
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    else:
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
    (integers, flags) as int64, so the fixed-point sums of :func:`~metarec.parallel.shards.add_exact`
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


def end_torchrun_process(code: int) -> int:
    """``code``, for a process that did not join a torchrun group. One that did (``metarec`` under torchrun) leaves
    the group and ends at once with ``code``: after a barrier when it succeeded, so that no process leaves while
    another still talks to the group, and without one when it failed (torchrun then stops the others). A gloo
    process left to end with the interpreter can abort while it shuts down ("terminate called without an active
    exception", SIGABRT), which would fail a run that finished."""
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ or not in_group():
        return code
    try:
        if code == 0:
            dist.barrier()
        dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set in any process of the group (every process calls this at the same point)."""
    value = torch.tensor([flag])
    all_reduce_([value], op="max")
    return bool(value.item())
