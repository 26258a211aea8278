"""Users split across processes: each process's block of rows, and sums that stay exact in any split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metarec.parallel.groups import all_reduce_, blocks, group_size, rank

#: Resolution of the fixed-point sums of statistics shared across users (see :func:`add_exact`).
EXACT_SCALE = 2.0**24


@dataclass(frozen=True)
class Shard:
    """Where one process's users sit among the users of a run split across processes: rows
    ``offset .. offset + size`` of ``total`` (contiguous blocks, in rank order).

    A recommender placed on a shard (:meth:`Recommender.place`) draws its random numbers for all
    ``total`` users and keeps its own rows (:class:`UserDraws`), and sums what it learns across users
    over every process (:meth:`sum_`), so each user is served exactly as in one process.
    """

    total: int
    offset: int
    size: int

    def __post_init__(self) -> None:
        if not 0 <= self.offset <= self.offset + self.size <= self.total:
            raise ValueError(f"shard: expected 0 <= offset <= offset + size <= total, got {self}")

    @classmethod
    def of_this_process(cls, total: int) -> Shard | None:
        """This process's block of ``total`` users in the default ``torch.distributed`` group (blocks
        in rank order, sizes differing by at most one), or None when the run has one process."""
        world = group_size()
        return None if world == 1 else cls(total, *blocks(total, world)[rank()])

    def env_rows(self) -> tuple[int, list[int]]:
        """The ``shard`` argument of the vector environments: ``(total, this process's rows)``."""
        return self.total, list(range(self.offset, self.offset + self.size))

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor`` over the processes of the default ``torch.distributed`` group, in place (a
        no-op when no group is running; an int64 table of fixed-point sums stays exact)."""
        all_reduce_([tensor])
        return tensor


def add_exact(table: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """``table[index] += values`` for an int64 ``table`` of fixed-point sums (units of
    1 / :data:`EXACT_SCALE`): integer sums are exact in any order, so a statistic shared across users
    comes out the same on any device, with any thread count and however users are split across
    processes (float sums differ in the last bits)."""
    table.index_add_(0, index, torch.round(values.to(torch.float64) * EXACT_SCALE).to(torch.int64))
