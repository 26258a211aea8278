"""Policies for meta-RL over DriftingUsers task batches.

* :class:`AffinityPolicy` (:func:`feedforward_policy`) — a :class:`~metarec.agents.nn.networks.SlatePolicy`
  whose history encoder is an MLP over the observed window, plus target attention from each candidate
  to the consumed items: plain tensor ops and ``nn.Linear`` layers, so ``torch.func.vmap`` can
  evaluate it with a different parameter set per task (what MAML, FOMAML and Reptile need).
* :class:`RL2Policy` — RL²: the same candidate scorer, plus a GRU memory of the user's
  whole stream of interactions. Each step, the memory reads what the last slate was (its mean
  candidate features), how the user responded (the newest history row: the consumed item's
  embedding, engagement, clicked, valid) and the reward. The memory persists across the sessions
  of one user and starts from zero for a new user (a new task draw); the caller carries it
  (:class:`Memory`) and resets rows with :meth:`RL2Policy.reset_memory`. With
  ``belief=True`` the memory also holds a :class:`Belief`, a per-user ridge regression of the reward on
  the candidates' features (LinUCB's statistics), and every candidate is scored with what it predicts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from metarec.agents.baselines.bandits import slate_targets
from metarec.agents.baselines.linear import LinearBandit, ridge_prediction
from metarec.agents.nn.networks import SlatePolicy, symlog
from metarec.meta.beliefs import (  # noqa: F401 (Belief, LARGE_POPULATION, quadratic_fits: re-exported)
    LARGE_POPULATION,
    OPTIONAL_KEYS,
    Belief,
    detect_change,
    item_memory_features,
    population_predictions,
    quadratic_fits,
    remember_residuals,
)


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
    """What RL² carries from one step to the next, per user: the GRU state ``[B, hidden]``, the mean
    features of the slate shown last ``[B, F]`` (zeros before a user's first step) and, for a policy
    with ``belief=True``, the :class:`Belief`."""

    hidden: torch.Tensor
    last_slate: torch.Tensor
    belief: Belief | None = None

    def clone(self) -> Memory:
        belief = None if self.belief is None else self.belief.clone()
        return Memory(self.hidden.clone(), self.last_slate.clone(), belief)


class RL2Policy(AffinityPolicy):
    """RL² policy: :class:`SlatePolicy` (MLP history window) with a recurrent memory over the user's
    lifetime added to its user context.

    Args:
        observation_space: a DriftingUsers ``Dict`` space (``candidates`` and ``history``).
        slate_size: K.
        hidden: width of every layer and of the memory.
        belief: also keep a :class:`Belief` per user and score each candidate with its predicted reward
            and that prediction's standard deviation (``sqrt(xᵀA⁻¹x)``), as two more candidate features
            and through a per-user weighting of the two read from the context.
        belief_ridge: the belief's prior precision λ (``> 0``).
        population: with ``belief``, also score each candidate with a population memory: what the beliefs of
            the other users of the user's population predict (:func:`population_predictions`), two more
            candidate features. The caller then says how many consecutive rows form a population
            (:meth:`believe`'s ``population``).
        population_noise: the reward's noise variance σ² the population memory assumes (``> 0``).
        item_memory: with ``belief``, also score each candidate with an item memory pooled over the users of
            the batch: the mean of what the item earned, wherever it was shown, beyond what the belief of the user
            it was shown to predicted, shrunk toward 0, and how little is known of it
            (:func:`remember_residuals`, :func:`item_memory_features`), two more candidate features. Items are
            told apart by ``candidate_ids``, which a task batch keeps distinct across its populations.
        item_prior: pseudo-counts shrinking the item memory's mean toward 0 (``> 0``).
        change_test: with ``belief``, test each user for a change of interests after every response, and where the
            evidence passes this many nats (:func:`detect_change`) treat them as a new user: the belief restarts
            from one that forgets and the GRU memory from zero (what is pooled over the population stays); 0 (the
            default): never. :class:`~metarec.meta.rl2.RL2Trainer` trains without it; it serves.
        change_discount: what the change test's forgetting belief keeps per interaction (in ``(0, 1)``).
        change_noise: the reward noise variance σ² the change test assumes (``> 0``).
    """

    BELIEF_FEATURES = 2  # a candidate's predicted reward and its standard deviation
    POPULATION_FEATURES = 2  # what the user's likely neighbours predict, and what the whole population does
    ITEM_FEATURES = 2  # what the item earned beyond its viewers' beliefs, and how little is known of it

    def __init__(
        self,
        observation_space: spaces.Dict,
        slate_size: int,
        hidden: int = 64,
        belief: bool = False,
        belief_ridge: float = 1.0,
        population: bool = False,
        population_noise: float = 1.0,
        item_memory: bool = False,
        item_prior: float = 2.0,
        change_test: float = 0.0,
        change_discount: float = 0.9,
        change_noise: float = 0.1,
    ) -> None:
        raw = observation_space["candidates"].shape[1]
        if population and not belief:
            raise ValueError("population: the population memory pools the users' beliefs; set belief: true")
        if not population_noise > 0:
            raise ValueError(f"population_noise: expected a number > 0, got {population_noise!r}")
        if item_memory and not belief:
            raise ValueError("item_memory: the item memory pools the residuals of the users' beliefs; set belief: true")
        if not item_prior > 0:
            raise ValueError(f"item_prior: expected a number > 0, got {item_prior!r}")
        if not change_test >= 0:
            raise ValueError(f"change_test: expected a number of nats >= 0 (0: no test), got {change_test!r}")
        if change_test and not belief:
            raise ValueError("change_test: the change test restarts the users' beliefs; set belief: true")
        if not 0 < change_discount < 1:
            raise ValueError(f"change_discount: expected a number in (0, 1), got {change_discount!r}")
        if not change_noise > 0:
            raise ValueError(f"change_noise: expected a number > 0, got {change_noise!r}")
        scores = self.BELIEF_FEATURES + (self.POPULATION_FEATURES if population else 0)
        scores += self.ITEM_FEATURES if item_memory else 0
        if belief:
            if not belief_ridge > 0:
                raise ValueError(f"belief_ridge: expected a number > 0, got {belief_ridge!r}")
            n = observation_space["candidates"].shape[0]
            scored = spaces.Box(-np.inf, np.inf, (n, raw + scores), np.float32)
            observation_space = spaces.Dict({**observation_space.spaces, "candidates": scored})
        super().__init__(observation_space, slate_size, hidden)
        self.belief, self.belief_ridge = belief, float(belief_ridge)
        self.population, self.population_noise = population, float(population_noise)
        self.item_memory, self.item_prior = item_memory, float(item_prior)
        self.change_test, self.change_discount = float(change_test), float(change_discount)
        self.change_noise = float(change_noise)
        self.scores = scores  # what believe() gives per candidate
        self.candidate_dim = raw  # what the memory reads of a slate: the environment's features
        self.response_dim = observation_space["history"].shape[1]
        self.cell = nn.GRUCell(self.candidate_dim + self.response_dim + 1, hidden)
        self.memory_out = nn.Linear(hidden, hidden)
        self.memory_interest = nn.Linear(hidden, self.embedding_dim)  # what the memory says the user likes
        if belief:  # how far to trust the user's regression, read from the context; at first its plain estimate
            self.belief_weight = nn.Linear(hidden, self.scores)
            nn.init.zeros_(self.belief_weight.weight)
            with torch.no_grad():
                start = torch.zeros(self.scores)
                start[0] = 1.0
                self.belief_weight.bias.copy_(start)  # start from the estimate

    def initial_memory(self, batch: int, device: torch.device | str = "cpu") -> Memory:
        """The memory of ``batch`` new users."""
        belief = None
        if self.belief:
            f = self.candidate_dim + 1
            prior = torch.eye(f, device=device) / self.belief_ridge
            change = {}
            if self.change_test:  # the forgetting belief starts at the prior too, with no evidence of a change
                change = {"recent": (torch.eye(f, device=device) * self.belief_ridge).expand(batch, f, f).clone(),
                          "recent_response": torch.zeros(batch, f, device=device),
                          "evidence": torch.zeros(batch, device=device)}  # fmt: skip
            belief = Belief(
                prior.expand(batch, f, f).clone(),
                torch.zeros(batch, f, device=device),
                torch.zeros(batch, self.slate_size, f, device=device),
                self.belief_ridge,
                **change,
            )
        return Memory(
            torch.zeros(batch, self.hidden, device=device),
            torch.zeros(batch, self.candidate_dim, device=device),
            belief,
        )

    @staticmethod
    def reset_memory(memory: Memory, done: torch.Tensor) -> Memory:
        """Zeroes the memory of the rows where ``done`` (``[B]`` bool), and returns their belief to its
        prior: those users are new."""
        keep = (~done).to(memory.hidden.dtype)[:, None]
        belief = memory.belief
        hidden = memory.hidden * keep.reshape(-1, *[1] * (memory.hidden.dim() - 1))  # any trailing shape
        if belief is not None:
            prior = torch.eye(belief.inverse.shape[-1], device=belief.inverse.device) / belief.ridge
            belief = replace(
                belief,
                inverse=torch.where(done[:, None, None], prior, belief.inverse),
                response=belief.response * keep,
                shown=belief.shown * keep[:, :, None],
            )
            if belief.recent is not None:
                assert belief.recent_response is not None and belief.evidence is not None
                start = torch.eye(belief.recent.shape[-1], device=belief.recent.device) * belief.ridge
                belief = replace(belief, recent=torch.where(done[:, None, None], start, belief.recent),
                                 recent_response=belief.recent_response * keep, evidence=belief.evidence * keep[:, 0])
        return Memory(hidden, memory.last_slate * keep, belief)

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

    def believe(
        self, memory: Memory, observation: dict[str, torch.Tensor], population: int | None = None
    ) -> torch.Tensor | None:
        """What the belief says of each candidate on offer, ``[B, N, S]``: the predicted reward
        ``x·A⁻¹b`` and its standard deviation ``sqrt(xᵀA⁻¹x)``, then, for a policy with a population
        memory, the two predictions of :func:`population_predictions` over populations of ``population``
        consecutive rows; None for a policy without a belief."""
        belief = memory.belief
        if belief is None:
            if self.belief:
                raise ValueError("memory: this policy keeps a belief (belief=True), but the memory holds none")
            return None
        features = self.regression_features(observation)
        mean, variance = ridge_prediction(features, belief.inverse, belief.response)
        scores = [mean, variance.sqrt()]
        if self.population:
            if population is None:
                raise ValueError("population: this policy keeps a population memory; say how many consecutive "
                                 "users form a population")  # fmt: skip
            scores.extend(population_predictions(features, belief, population, self.population_noise))
        if self.item_memory:
            scores.extend(item_memory_features(belief.items, observation["candidate_ids"], self.item_prior))
        return torch.stack(scores, dim=-1)

    def learn(
        self, memory: Memory, reward: torch.Tensor, position: torch.Tensor, rows: torch.Tensor | None = None
    ) -> Memory:
        """The memory once the response to the slate it holds is in: the belief adds the slate's items
        with their targets, ``reward`` (``[B]``) at the clicked ``position`` (``[B]``, -1 without a click)
        and 0 at the others, as LinUCB does; rows where ``rows`` (``[B]`` bool) is False learn nothing
        (users this policy did not serve). The slate is then spent, so a second call adds nothing."""
        belief = memory.belief
        if belief is None:
            return memory
        shown = belief.shown if rows is None else belief.shown * rows.to(belief.shown.dtype)[:, None, None]
        targets = slate_targets(reward, {"chosen_position": position}, self.slate_size, "reward")
        items = belief.items
        if self.item_memory and belief.shown_ids is not None:
            items = remember_residuals(belief, shown, targets, rows)
        restart = None
        if self.change_test:
            belief, restart = detect_change(belief, shown, targets, rows, self.change_discount, self.change_test,
                                              self.change_noise)  # fmt: skip
        b = belief.response.clone()
        inverse = LinearBandit.update(belief.inverse.clone(), b, shown, targets)
        hidden = memory.hidden
        if restart is not None:  # a changed user is a new user to the memory too
            hidden = hidden * (~restart).to(hidden.dtype)[:, None]
        learned = replace(belief, inverse=inverse, response=b, shown=torch.zeros_like(shown), shown_ids=None,
                          items=items)  # fmt: skip
        return replace(memory, hidden=hidden, belief=learned)

    @staticmethod
    def regression_features(observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, F]``: the candidates' features and a constant 1 (what the belief regresses on)."""
        return with_constant(observation["candidates"].float())

    def remember(
        self, hidden: torch.Tensor, belief: Belief | None, observation: dict[str, torch.Tensor], slate: torch.Tensor
    ) -> Memory:
        """The memory to carry to the next step once ``slate`` (``[B, K]``) is shown: the GRU state, the
        slate's mean features and the belief (the memory's) waiting for the response to the slate
        (:meth:`learn`)."""
        shown = self.shown_features(observation, slate)  # [B, K, F]
        if belief is not None:
            ids = observation["candidate_ids"].long().gather(1, slate) if self.item_memory else None
            belief = replace(belief, shown=with_constant(shown), shown_ids=ids)
        return Memory(hidden, shown.mean(dim=1), belief)

    def act_from(
        self, observation: dict[str, torch.Tensor], hidden: torch.Tensor, beliefs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, N], value [B])`` given the memory already updated by :meth:`read` and, for a
        policy with a belief, what :meth:`believe` says of the candidates (``beliefs`` ``[B, N, 2]``)."""
        if self.belief != (beliefs is not None):
            wanted = f"[B, N, {self.scores}] from believe()" if self.belief else "None (this policy keeps no belief)"
            raise ValueError(f"beliefs: expected {wanted}, got {None if beliefs is None else tuple(beliefs.shape)}")
        embeddings = observation["candidates"][..., : self.embedding_dim].float()
        if beliefs is not None:
            observation = {**observation, "candidates": torch.cat([observation["candidates"].float(), beliefs], -1)}
        context = self.context(observation) + torch.relu(self.memory_out(hidden))
        items = self.candidate_features(observation)
        remembered = (embeddings @ self.memory_interest(hidden)[:, :, None]).squeeze(-1)
        logits = self.logits(items, context) + self.affinity_bonus(observation) + remembered
        if beliefs is not None:
            logits = logits + (beliefs * self.belief_weight(context)[:, None, :]).sum(dim=-1)
        return logits, self.state_value(items, context)

    @staticmethod
    def shown_features(observation: dict[str, torch.Tensor], slate: torch.Tensor) -> torch.Tensor:
        """``[B, K, F]`` features of the candidates in ``slate`` (their mean is what the memory reads as
        the action)."""
        candidates = observation["candidates"].float()
        return candidates.gather(1, slate[:, :, None].expand(-1, -1, candidates.shape[2]))


def with_constant(x: torch.Tensor) -> torch.Tensor:
    """``x`` with a constant 1 appended to its last axis (a regression's intercept)."""
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


BELIEF_KEYS = ("inverse", "response", "shown")


def memory_state(memory: Memory) -> dict[str, torch.Tensor]:
    """A checkpoint's copy of an RL² memory (its belief's tensors too, where it keeps one)."""
    state = {"hidden": memory.hidden.clone(), "last_slate": memory.last_slate.clone()}
    if memory.belief is not None:
        state.update({key: getattr(memory.belief, key).clone() for key in BELIEF_KEYS})
        for key in OPTIONAL_KEYS:  # where it keeps an item memory, a change test
            if getattr(memory.belief, key) is not None:
                state[key] = getattr(memory.belief, key).clone()
    return state


def memory_from(state: dict[str, torch.Tensor], policy: RL2Policy, device: Any, field: str = "rl2.belief") -> Memory:
    """The memory :func:`memory_state` saved, for ``policy``; a checkpoint without the belief the policy
    keeps (or with one it does not) is refused, naming the setting ``field``."""
    if policy.belief != ("inverse" in state):
        raise ValueError(
            f"checkpoint: its memory {'has' if 'inverse' in state else 'has no'} belief, but {field} is "
            f"{policy.belief}; resume with the settings it was saved with"
        )
    if policy.belief and ("evidence" in state) != bool(policy.change_test):
        raise ValueError(f"checkpoint: its memory {'has a' if 'evidence' in state else 'has no'} change test, but "
                         f"rl2.change_test is {policy.change_test:g}; resume with the settings it was saved with")
    if "items" in state and not policy.item_memory:
        raise ValueError("checkpoint: its memory has an item memory, but rl2.item_memory is False; resume with the "
                         "settings it was saved with")  # fmt: skip
    belief = None
    if policy.belief:
        extra = {key: state[key].to(device) for key in OPTIONAL_KEYS if key in state}
        belief = Belief(*(state[key].to(device) for key in BELIEF_KEYS), policy.belief_ridge, **extra)
    return Memory(state["hidden"].to(device), state["last_slate"].to(device), belief)
