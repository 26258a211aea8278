"""Policies for meta-RL over DriftingUsers task batches.

* :class:`AffinityPolicy` (:func:`feedforward_policy`) — a :class:`~metarec.agents.networks.SlatePolicy`
  whose history encoder is an MLP over the observed window, plus target attention from each candidate
  to the consumed items: plain tensor ops and ``nn.Linear`` layers, so ``torch.func.vmap`` can
  evaluate it with a different parameter set per task (what MAML, FOMAML and Reptile need).
* :class:`RecurrentSlatePolicy` — RL²: the same candidate scorer, plus a GRU memory of the user's
  whole stream of interactions. Each step, the memory reads what the last slate was (its mean
  candidate features), how the user responded (the newest history row: the consumed item's
  embedding, engagement, clicked, valid) and the reward. The memory persists across the sessions
  of one user and starts from zero for a new user (a new task draw); the caller carries it
  (:class:`Memory`) and resets rows with :meth:`RecurrentSlatePolicy.reset_memory`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gymnasium import spaces
from metarec.agents.networks import SlatePolicy, symlog
from torch import nn


class AffinityPolicy(SlatePolicy):
    """:class:`SlatePolicy` (MLP history window) plus target attention over the history (as in Deep
    Interest Network): each candidate's logit gets a learned function of its embedding's similarity
    to the items the user consumed in the window (weighted by engagement, by click, the best match and
    the latest). Plain tensor ops and ``nn.Linear``: vmap-compatible, so every gradient-based
    method adapts this network.

    Needs a DriftingUsers observation: ``candidates`` ``(N, d + 1 + extra)`` (embedding, length, then
    e.g. the population's item statistics) and ``history`` ``(H, d + 3)`` (embedding, engagement,
    consumed, valid).
    """

    def __init__(self, observation_space: spaces.Dict, slate_size: int, hidden: int = 64) -> None:
        super().__init__(observation_space, slate_size, hidden, history_encoder="mlp")
        if "history" not in observation_space.spaces:
            raise ValueError("observation_space: needs a 'history' entry (DriftingUsers observations)")
        features, history = observation_space["candidates"].shape[1], observation_space["history"].shape[1]
        if history < 4 or features < history - 2:
            raise ValueError(
                f"observation_space: expected history rows (d + 3) and candidates with at least d + 1 features "
                f"(a DriftingUsers observation), got history {history} and candidates {features}"
            )
        self.embedding_dim = history - 3
        self.affinity = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def affinity_bonus(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N]``: the target-attention term of each candidate's logit."""
        d = self.embedding_dim
        items = observation["candidates"][..., :d].float()  # [B, N, d]
        history = observation["history"].float()  # [B, H, d + 3]
        similarity = items @ history[..., :d].transpose(-1, -2)  # [B, N, H]
        engagement, consumed = history[..., d], history[..., d + 1]  # [B, H]
        by_engagement = (similarity * engagement[:, None]).sum(-1) / (engagement.sum(-1, keepdim=True) + 1.0)
        by_click = (similarity * consumed[:, None]).sum(-1) / (consumed.sum(-1, keepdim=True) + 1.0)
        best = (similarity * consumed[:, None] - 4.0 * (1.0 - consumed[:, None])).amax(-1)
        latest = similarity[..., -1] * consumed[:, -1:]
        return self.affinity(torch.stack([by_engagement, by_click, best, latest], dim=-1)).squeeze(-1)

    def forward(self, observation: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value = super().forward(observation)
        return logits + self.affinity_bonus(observation), value


def feedforward_policy(observation_space: spaces.Dict, slate_size: int, hidden: int = 64) -> AffinityPolicy:
    """The candidate scorer every gradient-based method adapts (vmap-compatible)."""
    return AffinityPolicy(observation_space, slate_size, hidden)


@dataclass
class Memory:
    """What RL² carries from one step to the next, per user: the GRU state ``[B, hidden]`` and the
    mean features of the slate shown last ``[B, F]`` (zeros before a user's first step)."""

    hidden: torch.Tensor
    last_slate: torch.Tensor

    def clone(self) -> Memory:
        return Memory(self.hidden.clone(), self.last_slate.clone())


class RecurrentSlatePolicy(AffinityPolicy):
    """RL² policy: :class:`SlatePolicy` (MLP history window) with a recurrent memory over the user's
    lifetime added to its user context.

    Args:
        observation_space: a DriftingUsers ``Dict`` space (``candidates`` and ``history``).
        slate_size: K.
        hidden: width of every layer and of the memory.
    """

    def __init__(self, observation_space: spaces.Dict, slate_size: int, hidden: int = 64) -> None:
        super().__init__(observation_space, slate_size, hidden)
        self.candidate_dim = observation_space["candidates"].shape[1]
        self.response_dim = observation_space["history"].shape[1]
        self.cell = nn.GRUCell(self.candidate_dim + self.response_dim + 1, hidden)
        self.memory_out = nn.Linear(hidden, hidden)
        self.memory_interest = nn.Linear(hidden, self.embedding_dim)  # what the memory says the user likes

    def initial_memory(self, batch: int, device: torch.device | str = "cpu") -> Memory:
        return Memory(
            torch.zeros(batch, self.hidden, device=device), torch.zeros(batch, self.candidate_dim, device=device)
        )

    @staticmethod
    def reset_memory(memory: Memory, done: torch.Tensor) -> Memory:
        """Zeroes the memory of the rows where ``done`` (``[B]`` bool): those users are new."""
        keep = (~done).to(memory.hidden.dtype)[:, None]
        return Memory(memory.hidden * keep, memory.last_slate * keep)

    def read(self, memory: Memory, observation: dict[str, torch.Tensor], reward: torch.Tensor) -> torch.Tensor:
        """The memory after taking in the response to the last slate: ``[B, hidden]``. ``reward``
        ``[B]`` is the last step's reward (0 before a user's first step)."""
        inputs = self.memory_inputs(memory.last_slate, observation["history"][:, -1], reward)
        return self.cell(inputs, memory.hidden)

    @staticmethod
    def memory_inputs(last_slate: torch.Tensor, response: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """What the memory reads at a step (any leading shape): the last slate's mean features, the
        newest history row and the last reward, through symlog."""
        return symlog(torch.cat([last_slate, response.float(), reward[..., None].float()], dim=-1))

    def act_from(self, observation: dict[str, torch.Tensor], hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, N], value [B])`` given the memory already updated by :meth:`read`."""
        context = self.context(observation) + torch.relu(self.memory_out(hidden))
        items = self.candidate_features(observation)
        embeddings = observation["candidates"][..., : self.embedding_dim].float()
        remembered = (embeddings @ self.memory_interest(hidden)[:, :, None]).squeeze(-1)
        logits = self.logits(items, context) + self.affinity_bonus(observation) + remembered
        return logits, self.state_value(items, context)

    @staticmethod
    def slate_features(observation: dict[str, torch.Tensor], slate: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` mean features of the candidates in ``slate`` (what the memory reads as the action)."""
        candidates = observation["candidates"].float()
        index = slate[:, :, None].expand(-1, -1, candidates.shape[2])
        return candidates.gather(1, index).mean(dim=1)
