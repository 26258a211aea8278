"""An in-context recommender pre-trained by supervision (``icl``): a transformer over a user's
interactions, with the population's pooled evidence on every candidate, trained across many simulated
populations to predict the myopic oracle's slate.

What it sees when it serves is what RL² sees, and nothing else:

* the user's last ``window`` interactions, one token each: the mean features of the slate shown, the
  newest history row (the consumed item's embedding, engagement, clicked, valid) and the reward. A small
  transformer encoder reads them with a learned start token, whose output is the user's context;
* a per-user ridge regression of the reward on the candidates' features over the user's whole lifetime
  (the :class:`~metarec.meta.policy.Belief` that RL² keeps with ``belief: true``), so what is older than the
  window is not lost;
* the candidates' features, which carry the population's pooled item statistics when the run trains with
  ``item_stats`` (impressions, clicks and engagement logged over every user of the population).

The candidate scorer on top is RL²'s (:class:`~metarec.meta.policy.RL2Policy`), with the transformer's
context where RL² has its GRU state. So a window of tokens replaces the recurrent memory, and training
needs no back-propagation through time: every step's tokens are an input of their own.

Training is DAgger-style imitation (Ross et al., 2011): the policy serves meta-batches of training
populations, mixing in the oracle's slate for a share of the steps that falls linearly from
``oracle_mix`` to 0 over the first half of the run. Every decision is labelled with the slate the myopic
oracle (which sees the true user state) would show, and the policy maximises that slate's Plackett–Luce
log-likelihood. The simulator's ground truth is the label only: the env's ``info`` reaches the policy only
as the user's observable response (``chosen_position``), and the policy acts the same on an env built with
``ground_truth=False``. It serves greedily (its most probable slate), as meta-eval serves RL².
Optionally, PPO then fine-tunes it on the return (``rl_updates``). The trainer is
:class:`~metarec.meta.incontext_train.InContextTrainer`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from gymnasium import spaces
from pydantic import Field, model_validator
from torch import nn

from metarec.meta.policy import Memory, RL2Policy
from metarec.meta.rl2 import RL2Config


class InContextPolicy(RL2Policy):
    """RL²'s candidate scorer with a transformer over the user's last ``window`` interactions in place of
    its GRU (see the module docstring). The memory's ``hidden`` is the token window ``[B, window, T + 1]``:
    each token's ``T`` inputs (:meth:`RL2Policy.memory_inputs`) and a last column that is 1 where the token
    holds an interaction (0: padding, masked out of attention).

    Args:
        observation_space: a DriftingUsers ``Dict`` space (``candidates`` and ``history``).
        slate_size: K.
        hidden: the transformer's width and that of the scorer.
        window: interactions the transformer reads (the newest ones).
        layers: of the transformer encoder.
        heads: of the transformer encoder (it divides ``hidden``).
        belief: as :class:`RL2Policy`'s.
        belief_ridge: as :class:`RL2Policy`'s.
        population: as :class:`RL2Policy`'s.
        population_noise: as :class:`RL2Policy`'s.
        item_memory: as :class:`RL2Policy`'s.
        item_prior: as :class:`RL2Policy`'s.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        slate_size: int,
        hidden: int = 64,
        window: int = 16,
        layers: int = 2,
        heads: int = 4,
        belief: bool = True,
        belief_ridge: float = 1.0,
        population: bool = False,
        population_noise: float = 1.0,
        item_memory: bool = False,
        item_prior: float = 2.0,
    ) -> None:
        for name, value in (("window", window), ("layers", layers), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if hidden % heads:
            raise ValueError(f"heads: must divide hidden = {hidden}, got {heads}")
        super().__init__(observation_space, slate_size, hidden, belief, belief_ridge, population, population_noise,
                         item_memory, item_prior)  # fmt: skip
        del self.cell  # the transformer is the memory
        self.window = window
        self.token_inputs = self.candidate_dim + self.response_dim + 1
        self.embed = nn.Linear(self.token_inputs, hidden)
        self.position = nn.Parameter(torch.randn(window, hidden) * 0.02)  # oldest first, newest last
        self.start = nn.Parameter(torch.randn(hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, 2 * hidden, dropout=0.0, batch_first=True, norm_first=True
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.encoded = nn.LayerNorm(hidden)

    def initial_memory(self, batch: int, device: torch.device | str = "cpu") -> Memory:
        memory = super().initial_memory(batch, device)
        memory.hidden = torch.zeros(batch, self.window, self.token_inputs + 1, device=device)
        return memory

    def read(self, memory: Memory, observation: dict[str, torch.Tensor], reward: torch.Tensor) -> torch.Tensor:
        """The token window once the response to the last slate is in: the oldest token drops out and the
        newest comes in (padding where the user had no slate yet)."""
        shown = (memory.last_slate != 0).any(dim=-1, keepdim=True).to(memory.hidden.dtype)  # a slate was shown
        token = self.memory_inputs(memory.last_slate, observation["history"][:, -1], reward) * shown
        return torch.cat([memory.hidden[:, 1:], torch.cat([token, shown], -1)[:, None]], dim=1)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]``: the user's context, the start token's output over the window ``tokens``."""
        batch = tokens.shape[0]
        x = self.embed(tokens[..., :-1]) + self.position
        x = torch.cat([self.start.expand(batch, 1, -1), x], dim=1)
        padding = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=tokens.device), tokens[..., -1] < 0.5], 1)
        return self.encoded(self.encoder(x, src_key_padding_mask=padding)[:, 0])

    def act_from(
        self, observation: dict[str, torch.Tensor], hidden: torch.Tensor, beliefs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, N], value [B])`` from the token window ``hidden`` (:meth:`read`)."""
        if hidden.dim() != 3:
            raise ValueError(f"hidden: expected the token window [B, window, T + 1], got {tuple(hidden.shape)}")
        return super().act_from(observation, self.encode(hidden), beliefs)


def oracle_log_likelihood(logits: torch.Tensor, oracle: torch.Tensor) -> torch.Tensor:
    """``[B]``: the Plackett–Luce log-likelihood, under ``logits`` ``[B, N]``, of the items the oracle's slate
    ``[B, K]`` shows, in its order. The oracle may leave positions empty: from the first position that
    repeats its first item on, it shows nothing (:func:`~metarec.envs.core.choice.revenue_ordered_slate`),
    so only the prefix of distinct items is scored (the likelihood of a top-``r`` ranking)."""
    oracle = oracle.long()
    shown = shown_positions(oracle)
    taken = torch.zeros_like(logits, dtype=torch.bool)
    total = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
    for k in range(oracle.shape[1]):
        item = oracle[:, k : k + 1]
        log_p = torch.log_softmax(logits.masked_fill(taken, float("-inf")), dim=-1).gather(1, item).squeeze(1)
        total = total + torch.where(shown[:, k], log_p, torch.zeros_like(log_p))
        taken = taken | (torch.zeros_like(taken).scatter(1, item, True) & shown[:, k : k + 1])
    return total


def shown_positions(slate: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool: the positions a slate fills. From the first position that repeats its first item on,
    a slate shows nothing (the oracle's way of showing fewer items; a policy's slates never repeat)."""
    shown = torch.ones_like(slate, dtype=torch.bool)
    shown[:, 1:] = (slate[:, 1:] != slate[:, :1]).cumprod(dim=1).bool()
    return shown


def without_empty_positions(memory: Memory, observation: dict[str, torch.Tensor], slate: torch.Tensor) -> Memory:
    """``memory`` (:meth:`RL2Policy.remember` of ``slate``) as if only the positions the slate fills were
    shown: the slate's mean features over those, and the belief waiting for the response to those only."""
    shown = shown_positions(slate)
    if bool(shown.all()):
        return memory
    weights = shown.to(memory.last_slate.dtype)[:, :, None]  # [B, K, 1]
    features = RL2Policy.shown_features(observation, slate)
    last_slate = (features * weights).sum(1) / weights.sum(1)
    belief = memory.belief
    if belief is not None:
        belief = replace(belief, shown=belief.shown * weights)
    return replace(memory, last_slate=last_slate, belief=belief)


class InContextConfig(RL2Config):
    """Hyper-parameters of :class:`~metarec.meta.incontext_train.InContextTrainer` (an RL² trainer) and of the
    policy it trains: RL²'s meta-batch and PPO settings (:class:`~metarec.meta.rl2.RL2Config`; PPO's serve the
    optional fine-tuning on the return), with the imitation's own defaults, plus the transformer's and the
    imitation's. ``learning_rate`` is the imitation's step size, ``updates`` its number of updates."""

    updates: int = Field(80, ge=1, description="Imitation updates (each on one rollout).")
    update_epochs: int = Field(2, ge=1, description="Passes over each rollout.")
    num_minibatches: int = Field(4, ge=1, description="Minibatches (sets of users) per pass.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clip.")
    belief: bool = Field(True, description="Also keep the per-user ridge regression RL²'s belief keeps.")
    window: int = Field(16, ge=1, description="Interactions of the user the transformer reads.")
    layers: int = Field(2, ge=1, description="Transformer encoder layers.")
    heads: int = Field(4, ge=1, description="Attention heads (divides hidden).")
    oracle_mix: float = Field(
        0.5, ge=0, le=1,
        description="Share of steps that show the oracle's slate at the start, falling linearly to 0 over the "
        "first half of the updates (DAgger's mixture); the rest show the policy's own slate.",
    )  # fmt: skip
    rl_updates: int = Field(
        0, ge=0, description="PPO updates on the return after the imitation updates (the optional RL fine-tuning; "
        "0: none), with slates sampled from the policy."
    )  # fmt: skip
    rl_learning_rate: float = Field(3e-4, gt=0, description="Adam step size of the fine-tuning.")

    @model_validator(mode="after")
    def _fits(self) -> InContextConfig:
        if self.adversarial is not None:
            raise ValueError("adversarial: adversarial population sampling trains RL² only (rl2.adversarial); "
                             "expected null")
        if self.redraw_hazard:
            raise ValueError("redraw_hazard: users drawn anew in training are RL²'s only (rl2.redraw_hazard); "
                             "expected 0")  # fmt: skip
        if self.change_test:
            raise ValueError("change_test: RL²'s serving only (rl2.change_test); expected 0")
        if self.hidden % self.heads:
            raise ValueError(f"heads: must divide hidden = {self.hidden}, got {self.heads}")
        if self.tasks_per_batch * self.users_per_task % self.num_minibatches:
            raise ValueError(
                f"num_minibatches: must divide tasks_per_batch x users_per_task = "
                f"{self.tasks_per_batch * self.users_per_task}, got {self.num_minibatches}"
            )
        return self

    def make_policy(self, observation_space: Any, slate_size: int) -> InContextPolicy:
        """The policy these settings train (weights drawn from torch's global generator)."""
        return InContextPolicy(observation_space, slate_size, self.hidden, self.window, self.layers, self.heads,
                               self.belief, self.belief_ridge, self.population, self.population_noise,
                               self.item_memory, self.item_prior)  # fmt: skip
