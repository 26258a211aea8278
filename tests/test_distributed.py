"""The helpers every split run rests on: one all-reduce for sums, averages and flags, and the block of
users (or tasks) each process holds."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
import torch

import metarec.meta.tasks as meta_tasks
import metarec.parallel.shards as shards
from metarec.config import load_yaml_config
from metarec.meta.tasks import TaskShare, task_batch
from metarec.parallel import Shard, all_reduce_, rank, spawn_for_result

BIG = 2**60 + 3  # float64 cannot hold it (or twice it) exactly


def _reduce_in_group() -> dict:
    here = rank()
    exact = torch.tensor([BIG + here, -here], dtype=torch.int64)
    floats = torch.tensor([[0.25 * (here + 1)], [1.0]], dtype=torch.float32)
    flag = torch.tensor([here == 1])
    all_reduce_([exact, floats, flag])
    averaged = torch.tensor([2.0 * here])
    all_reduce_([averaged], average=True)
    largest = torch.tensor([3 - here, here], dtype=torch.int32)
    all_reduce_([largest], op="max")
    return {
        "exact": [str(v) for v in exact.tolist()], "floats": floats.flatten().tolist(), "flag": flag.tolist(),
        "dtypes": [str(t.dtype) for t in (exact, floats, flag, largest)], "averaged": averaged.item(),
        "largest": largest.tolist(),
    }  # fmt: skip


def test_all_reduce_over_two_processes_keeps_dtypes_and_integer_sums_exact():
    out = spawn_for_result(_reduce_in_group, (), 2)
    assert out["exact"] == [str(2 * BIG + 1), "-1"]  # one more than float64 would give
    assert out["floats"] == [0.75, 2.0]
    assert out["flag"] == [True]
    assert out["dtypes"] == ["torch.int64", "torch.float32", "torch.bool", "torch.int32"]
    assert out["averaged"] == 1.0
    assert out["largest"] == [3, 1]


def _listening_addresses() -> list[str]:
    """The local addresses of this process's listening TCP sockets (IPv4 and IPv6), read from /proc."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    addresses = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/self/net") / table
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                host, port = local.split(":")
                raw = bytes.fromhex(host)  # 32-bit words in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                addresses.append(f"{socket.inet_ntop(family, raw)} port {int(port, 16)}")
    return addresses


def _group_listening_addresses() -> dict:
    import torch.distributed as dist

    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, _listening_addresses())  # while the whole group is up
    return {"by_rank": everyone}


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split(" port ")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads the listening sockets from Linux's /proc")
def test_a_spawned_group_listens_on_the_loopback_interface_only():
    # a c10d TCPStore (init_method tcp://127.0.0.1:PORT) listens on every interface; the group's file store
    # opens no socket, and gloo's own listener is held to the loopback interface
    out = spawn_for_result(_group_listening_addresses, (), 2)
    assert len(out["by_rank"]) == 2
    outside = [a for addresses in out["by_rank"] for a in addresses if not _is_loopback(a)]
    assert outside == [], f"listening beyond the loopback interface: {outside} (all: {out['by_rank']})"


def test_all_reduce_without_a_group_changes_nothing_and_names_bad_arguments():
    values = torch.tensor([1.5, 2.5])
    all_reduce_([values])
    assert values.tolist() == [1.5, 2.5]
    with pytest.raises(ValueError, match="op: expected 'sum' or 'max', got 'mean'"):
        all_reduce_([values], op="mean")
    with pytest.raises(ValueError, match="average: applies to op='sum' over floating-point tensors only"):
        all_reduce_([torch.tensor([1])], average=True)


def test_the_shard_of_a_process(monkeypatch):
    assert Shard.of_this_process(10) is None  # one process holds every user
    monkeypatch.setattr(shards, "group_size", lambda: 3)
    monkeypatch.setattr(shards, "rank", lambda: 1)
    shard = Shard.of_this_process(10)
    assert shard == Shard(10, 4, 3)  # blocks of 4, 3, 3
    assert shard.env_rows() == (10, [4, 5, 6])


def test_the_task_share_of_a_process(monkeypatch):
    tasks = load_yaml_config(meta_tasks.TaskDistribution, Path(__file__).parents[1] / "configs" / "meta_tasks.yaml")
    whole = TaskShare.of_this_process(4, 3, "rl2.tasks_per_batch")
    assert (whole.rank, whole.world, whole.local_tasks, whole.offset) == (0, 1, 4, 0)
    assert whole.env_shard() is None and whole.rows_of("cpu") is None
    second = TaskShare(rank=1, world=2, tasks_per_batch=4, users_per_task=3)
    assert (second.local_tasks, second.total_users, second.local_users, second.offset) == (2, 12, 6, 6)
    assert second.env_shard() == (12, [6, 7, 8, 9, 10, 11])
    total, rows = second.rows_of("cpu")
    assert total == 12 and rows.tolist() == list(range(6, 12))
    assert second.tasks(tasks, "meta-train", 5, 2, 3) == task_batch(tasks, "meta-train", 4, 5, 2, 3)[2:]
    monkeypatch.setattr(meta_tasks, "group_size", lambda: 3)
    with pytest.raises(ValueError, match=r"rl2\.tasks_per_batch: must divide among 3 processes, got 4"):
        TaskShare.of_this_process(4, 3, "rl2.tasks_per_batch")
