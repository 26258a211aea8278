"""Work split across processes: process groups, blocks of users, exact sums and clean stops.

``torch.distributed`` does the work: gloo on CPU, NCCL on GPUs. ``--nproc N`` spawns N processes on
this machine that meet through a file store in a private temporary directory (no listening socket beyond
gloo's own, on the loopback interface); under ``torchrun`` (``WORLD_SIZE`` set) the processes
torchrun started join through its environment variables.
"""

from metarec.parallel.groups import (
    all_reduce_,
    any_rank,
    blocks,
    free_port,
    group_size,
    in_group,
    join_group,
    rank,
    torchrun_group,
    world_size,
)
from metarec.parallel.shards import EXACT_SCALE, Shard, add_exact
from metarec.parallel.signals import TrainingInterrupted, stop_requests
from metarec.parallel.spawn import spawn_for_result

__all__ = [
    "EXACT_SCALE",
    "Shard",
    "TrainingInterrupted",
    "add_exact",
    "all_reduce_",
    "any_rank",
    "blocks",
    "free_port",
    "group_size",
    "in_group",
    "join_group",
    "rank",
    "spawn_for_result",
    "stop_requests",
    "torchrun_group",
    "world_size",
]
