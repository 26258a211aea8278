"""Neural policy/value modules for slate recommendation.

:class:`SlatePolicy` reads any metarec observation (a dict with ``candidates`` ``[B, N, F]``) and
returns one logit per candidate and a value. Each candidate is embedded by the same network from its
own features and scored by a dot product with a query computed from the user context, so the policy
is permutation-equivariant over candidates and works for any candidate count ``N``.

The user context comes from the rest of the observation:

* ``history`` ``[B, H, G]`` (DriftingUsers): a :class:`HistoryEncoder`, GRU or Transformer over
  the last ``H`` interactions;
* any other array (RecSim's ``user``, ``response``): flattened into an MLP.

``candidate_ids`` are never inputs (an id's number means nothing). Inputs pass through ``symlog``
(``sign(x) log(1 + |x|)``) so engagement in minutes and one-hot features share a scale.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from gymnasium import spaces
from torch import nn

from metarec.agents.nn.distributions import PlackettLuce
from metarec.envs.drifting.compact import expand_observation

HistoryKind = Literal["gru", "transformer", "mlp"]
# Per-candidate entries, not a description of the user: never flattened into the user context (a catalog's churn
# adds ``candidate_age``; a policy trained on a fixed catalog serves a churning one unchanged).
IGNORED_KEYS = ("candidates", "candidate_ids", "candidate_age")


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, last_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(activation())
    return nn.Sequential(*layers)


class HistoryEncoder(nn.Module):
    """Encodes ``[B, H, G]`` interaction histories (oldest first) into ``[B, hidden]``.

    ``kind``: ``"gru"`` (last hidden state), ``"transformer"`` (one encoder layer with learned
    positions; mean over all ``H`` steps, padding included: the valid flag is a feature) or
    ``"mlp"`` (the flattened window).
    """

    def __init__(self, steps: int, features: int, hidden: int, kind: HistoryKind = "gru", heads: int = 4) -> None:
        super().__init__()
        if kind not in ("gru", "transformer", "mlp"):
            raise ValueError(f"history_encoder: expected 'gru', 'transformer' or 'mlp', got {kind!r}")
        self.kind = kind
        if kind == "gru":
            self.rnn = nn.GRU(features, hidden, batch_first=True)
        elif kind == "transformer":
            if hidden % heads:
                raise ValueError(f"hidden: expected a multiple of {heads} attention heads, got {hidden}")
            self.embed = nn.Linear(features, hidden)
            self.position = nn.Parameter(torch.zeros(steps, hidden))
            layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        else:
            self.flat = mlp([steps * features, hidden], last_activation=True)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        if self.kind == "gru":
            _, last = self.rnn(history)
            return last[-1]
        if self.kind == "transformer":
            encoded = self.encoder(self.embed(history) + self.position)
            return encoded.mean(dim=1)
        return self.flat(history.flatten(1))


class SlatePolicy(nn.Module):
    """Candidate scorer plus value head over a metarec observation space.

    Args:
        observation_space: the single-user ``Dict`` space (must hold ``candidates`` ``(N, F)``).
        slate_size: ``K``; 1 for single-item environments.
        hidden: width of every layer.
        history_encoder: how a ``history`` entry is encoded (see :class:`HistoryEncoder`).
        tables: an env's ``observation_tables`` where it returns compact observations
            (:mod:`metarec.envs.drifting.compact`): the policy then gathers the features itself, and takes
            compact and full observations alike. ``observation_space`` is the full one (the env's
            ``full_observation_space``). The tables are not saved with the weights.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        slate_size: int,
        hidden: int = 64,
        history_encoder: HistoryKind = "gru",
        tables: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.compact = tables is not None
        for name, table in (tables or {}).items():
            self.register_buffer(f"table_{name}", table, persistent=False)
        if not isinstance(observation_space, spaces.Dict) or "candidates" not in observation_space.spaces:
            raise ValueError("observation_space: expected a Dict space with a 'candidates' entry of shape (N, F)")
        candidates = observation_space["candidates"].shape
        if len(candidates) != 2:
            raise ValueError(f"observation_space['candidates']: expected shape (N, F), got {candidates}")
        self.slate_size = slate_size
        self.hidden = hidden
        self.context_keys = sorted(k for k in observation_space.spaces if k not in IGNORED_KEYS and k != "history")
        flat = sum(math.prod(observation_space[k].shape) for k in self.context_keys)
        self.history: HistoryEncoder | None = None
        if "history" in observation_space.spaces:
            steps, features = observation_space["history"].shape
            self.history = HistoryEncoder(steps, features, hidden, history_encoder)
        self.context_mlp = mlp([flat, hidden], last_activation=True) if flat else None
        # Candidate embedding: candidate_out(relu(candidate_in(x))). The forward pass never builds
        # the embeddings of all candidates: their dot product with the query is folded into the
        # query (see forward), which halves the per-candidate work, the bulk of the cost.
        self.candidate_in = nn.Linear(candidates[1], hidden)
        self.candidate_out = nn.Linear(hidden, hidden)
        self.query = nn.Linear(hidden, hidden)
        self.value = mlp([2 * hidden, hidden, 1])

    def context(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, hidden]``: what the policy knows about the user."""
        batch = observation["candidates"].shape[0]
        context = torch.zeros(batch, self.hidden, device=observation["candidates"].device)
        if self.history is not None:
            context = context + self.history(symlog(observation["history"].float()))
        if self.context_mlp is not None:
            flat = torch.cat([observation[k].float().flatten(1) for k in self.context_keys], dim=1)
            context = context + self.context_mlp(symlog(flat))
        return context

    def forward(self, observation: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, N], value [B])``."""
        if self.compact and "candidates" not in observation:
            observation = self.expand(observation)
        context = self.context(observation)
        items = self.candidate_features(observation)
        return self.logits(items, context), self.state_value(items, context)

    def expand(self, observation: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A compact observation's full features, gathered from the tables."""
        tables = {"candidates": self.table_candidates, "history": self.table_history}
        return expand_observation(observation, tables)

    def candidate_features(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, hidden]``: each candidate's hidden layer (its embedding is ``candidate_out`` of it)."""
        return torch.relu(self.candidate_in(symlog(observation["candidates"].float())))

    def logits(self, items: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``[B, N]``: each candidate's embedding e = W h + c against the user's query q (a bias in the
        query scores items independently of the user, e.g. by quality), computed as h · (Wᵀ q) + c · q
        so the embeddings of all candidates are never built."""
        query = self.query(context)
        folded = query @ self.candidate_out.weight  # [B, h]
        offset = (query * self.candidate_out.bias).sum(-1, keepdim=True)
        return torch.bmm(items, folded.unsqueeze(-1)).squeeze(-1) + offset

    def state_value(self, items: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``[B]``: the value of the user's state given the candidates on offer."""
        pooled = self.candidate_out(items.mean(dim=1))  # the mean embedding (the map is affine)
        return self.value(torch.cat([context, pooled], dim=-1)).squeeze(-1)

    def distribution(self, logits: torch.Tensor) -> PlackettLuce:
        return PlackettLuce(logits, self.slate_size)
