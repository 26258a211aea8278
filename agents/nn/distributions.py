"""Plackett–Luce: distributions over slates of distinct candidates, ordered best position first.

A slate ``s = (s_1, …, s_K)`` of distinct candidates out of ``N`` with logits ``θ`` has probability

    P(s) = Π_k exp(θ[s_k]) / Σ_{j ∉ {s_1..s_{k-1}}} exp(θ[j])

(pick the first item by a softmax over all candidates, the next among those left, …). Sampling adds
Gumbel noise to the logits and keeps the top ``K`` (an exact draw from this law); a slate that repeats
a candidate has probability 0 (log-probability ``-inf``).
"""

from __future__ import annotations

import math

import torch

# Exact entropy enumerates ordered slate prefixes, holding prefixes x candidates values per user;
# above this many it switches to the chain-rule estimate along a given prefix (see
# :meth:`PlackettLuce.entropy`). N = 10, K = 2 (RecSim) needs 110; N = 20, K = 5 would need 2.3M.
EXACT_ENTROPY_LIMIT = 8192


def _masked_log_softmax(logits: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.masked_fill(taken, -math.inf), dim=-1)


def _categorical_entropy(log_p: torch.Tensor) -> torch.Tensor:
    p = log_p.exp()
    return -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum(-1)


def num_prefixes(num_candidates: int, slate_size: int) -> int:
    """Ordered prefixes of length ``0..K-1`` the exact entropy enumerates: Σ_k N!/(N-k)!."""
    total, ordered = 0, 1
    for k in range(slate_size):
        total += ordered
        ordered *= max(num_candidates - k, 0)
    return total


class PlackettLuce:
    """A batch of Plackett–Luce laws over slates of ``slate_size`` distinct candidates.

    Args:
        logits: ``[..., N]`` one logit per candidate.
        slate_size: ``K`` (``K <= N``).
    """

    def __init__(self, logits: torch.Tensor, slate_size: int) -> None:
        n = logits.shape[-1]
        if not 1 <= slate_size <= n:
            raise ValueError(f"slate_size: expected 1 <= slate_size <= {n} candidates, got {slate_size}")
        self.logits = logits
        self.slate_size = slate_size

    def sample(
        self, generator: torch.Generator | None = None, rows_of: tuple[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``[..., K]`` int64 slates, one exact draw per law (Gumbel top-k; no gradient).

        ``rows_of=(full, rows)``: these laws are rows ``rows`` of a ``[full, N]`` batch; the noise is
        drawn for the whole batch and these rows taken, so each row gets the draw it would get there.
        """
        with torch.no_grad():
            shape = self.logits.shape if rows_of is None else (rows_of[0], *self.logits.shape[1:])
            u = torch.rand(shape, generator=generator, device=self.logits.device, dtype=self.logits.dtype)
            if rows_of is not None:
                u = u[rows_of[1]]
            gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
            return torch.topk(self.logits + gumbel, self.slate_size, dim=-1).indices

    def mode(self) -> torch.Tensor:
        """The most probable slate: the ``K`` largest logits in decreasing order."""
        return torch.topk(self.logits, self.slate_size, dim=-1).indices

    def log_prob(self, slate: torch.Tensor) -> torch.Tensor:
        """``[...]`` exact log-probability of each slate (``-inf`` when a candidate repeats)."""
        slate = slate.long()
        if slate.shape[-1] != self.slate_size:
            raise ValueError(f"slate: expected {self.slate_size} positions, got shape {tuple(slate.shape)}")
        taken = torch.zeros_like(self.logits, dtype=torch.bool)
        total = torch.zeros(self.logits.shape[:-1], dtype=self.logits.dtype, device=self.logits.device)
        for k in range(self.slate_size):
            item = slate[..., k : k + 1]
            total = total + _masked_log_softmax(self.logits, taken).gather(-1, item).squeeze(-1)
            taken = taken.scatter(-1, item, True)
        return total

    def entropy(self, slate: torch.Tensor | None = None) -> torch.Tensor:
        """``[...]`` entropy of the slate law.

        Exact (enumerating ordered prefixes) when prefixes x candidates is at most
        :data:`EXACT_ENTROPY_LIMIT`, which covers ``K = 1`` up to 8,192 candidates and RecSim's
        ``N = 10, K = 2``. Above that the chain rule
        ``H = Σ_k E[H(position k | positions < k)]`` is evaluated along the prefix of ``slate``
        (an unbiased one-sample estimate when ``slate`` is drawn from this law, as in PPO's batch).
        """
        n = self.logits.shape[-1]
        if num_prefixes(n, self.slate_size) * n <= EXACT_ENTROPY_LIMIT:
            return self._exact_entropy()
        if slate is None:
            raise ValueError(
                f"slate: the exact entropy over {n} candidates and slate size {self.slate_size} is too large "
                "to enumerate; pass the sampled slate for the chain-rule estimate"
            )
        taken = torch.zeros_like(self.logits, dtype=torch.bool)
        total = torch.zeros(self.logits.shape[:-1], dtype=self.logits.dtype, device=self.logits.device)
        for k in range(self.slate_size):
            total = total + _categorical_entropy(_masked_log_softmax(self.logits, taken))
            taken = taken.scatter(-1, slate[..., k : k + 1].long(), True)
        return total

    def _exact_entropy(self) -> torch.Tensor:
        # Breadth-first over prefixes: each level holds (log-prob of the prefix, taken mask).
        n = self.logits.shape[-1]
        batch = self.logits.shape[:-1]
        logits = self.logits.unsqueeze(-2)  # [..., P, N] with P prefixes at this level
        log_prefix = torch.zeros((*batch, 1), dtype=self.logits.dtype, device=self.logits.device)
        taken = torch.zeros((*batch, 1, n), dtype=torch.bool, device=self.logits.device)
        total = torch.zeros(batch, dtype=self.logits.dtype, device=self.logits.device)
        for k in range(self.slate_size):
            log_p = _masked_log_softmax(logits.expand(*batch, taken.shape[-2], n), taken)  # [..., P, N]
            total = total + (log_prefix.exp() * _categorical_entropy(log_p)).sum(-1)
            if k + 1 == self.slate_size:
                break
            # Extend every prefix by every candidate; impossible extensions carry probability 0.
            log_prefix = (log_prefix.unsqueeze(-1) + log_p).reshape(*batch, -1)
            eye = torch.eye(n, dtype=torch.bool, device=self.logits.device)
            taken = (taken.unsqueeze(-2) | eye).reshape(*batch, -1, n)
            # Drop prefixes impossible for every law (a repeated candidate); a prefix possible in
            # some rows only stays, with probability 0 where it is impossible.
            keep = torch.isfinite(log_prefix).any(dim=tuple(range(len(batch)))) if batch else torch.isfinite(log_prefix)
            log_prefix, taken = log_prefix[..., keep], taken[..., keep, :]
        return total
