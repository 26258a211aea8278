"""What an A/B test measures of each simulated user, step by step, and how per-user metrics follow.

Every step adds one row of :data:`COUNTERS` per user to that user's current day. A metric
(:data:`METRICS`) is then either a ``mean`` of a per-user value (e.g. minutes of engagement per user,
users who churned counting 0: an intent-to-treat view that keeps retention effects in) or a
``ratio`` of two per-user sums, such as CTR = clicks / impressions, whose interval comes from the
delta method with the user as the unit of randomisation.

Measured against the simulator's ground truth, which a live test never sees:

* ``precision`` / ``recall`` (@K): shown candidates the user truly prefers to choosing nothing
  (true utility above the no-click utility; the top K by utility where a model has no such notion)
  over K, and over the number of such candidates;
* ``ndcg`` (@K): DCG of the slate with gains softmax(utility / choice temperature) over the
  candidates, divided by the DCG of the best K;
* ``regret``: the myopic oracle's expected reward less the shown slate's, per step.

Of the items themselves: ``diversity`` is the intra-list diversity, the mean pairwise cosine
distance of the shown items' embeddings; ``novelty`` the mean self-information -log2 p(item) of
clicked items, where p is the item's "natural popularity": its mean choice probability over the
whole catalogue for users freshly drawn from the population (fixed by the world, so every arm is
scored on the same scale); catalogue ``coverage`` (arm-level, in the report) is the effective share
of the catalogue shown, exp(entropy of the impressions over items) / items: 1 when every item is
shown equally often, 1/M when one item takes every impression (every item is offered uniformly as a
candidate here, so "shown at least once" is nearly always 1 at scale and says nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from metarec.agents.metrics import Relevance, shown_once

COUNTERS = (
    "impressions",  # steps (slates shown)
    "clicks",
    "engagement",  # reward
    "regret",
    "diversity",
    "precision",
    "recall",
    "recall_steps",  # steps where the user had at least one relevant candidate
    "ndcg",
    "novelty",  # summed over clicks
)
C = {name: i for i, name in enumerate(COUNTERS)}


@dataclass(frozen=True)
class Metric:
    """A per-user metric: ``kind`` "mean" of ``numerator`` (per user) or "ratio" of two per-user sums."""

    kind: str
    numerator: str
    denominator: str | None
    higher_is_better: bool
    description: str


METRICS: dict[str, Metric] = {
    "engagement": Metric("mean", "engagement", None, True, "minutes of engagement per user"),
    "ctr": Metric("ratio", "clicks", "impressions", True, "clicks per slate shown"),
    "sessions": Metric("mean", "sessions", None, True, "days with a session per user"),
    "retention": Metric("mean", "retained", None, True, "share of users with a session on the last day"),
    "regret": Metric("ratio", "regret", "impressions", False, "expected reward lost to the myopic oracle per step"),
    "diversity": Metric("ratio", "diversity", "impressions", True, "intra-list diversity (mean cosine distance)"),
    "novelty": Metric("ratio", "novelty", "clicks", True, "self-information of clicked items (bits)"),
    "precision": Metric("ratio", "precision", "impressions", True, "precision@K against the true preferences"),
    "recall": Metric("ratio", "recall", "recall_steps", True, "recall@K against the true preferences"),
    "ndcg": Metric("ratio", "ndcg", "impressions", True, "NDCG@K against the true preferences"),
}


def per_user(metric: str, days: torch.Tensor | Any) -> tuple[Any, Any | None]:
    """Per-user numerator and denominator (None for a mean metric) of ``metric`` from ``days``: the
    per-user counters summed over the days of interest, ``[U, D', F]`` (numpy or torch)."""
    spec = METRICS[metric]
    active = days[..., C["impressions"]] > 0
    if spec.numerator == "sessions":
        return active.sum(-1) * 1.0, None
    if spec.numerator == "retained":
        return active[..., -1] * 1.0, None
    numerator = days[..., C[spec.numerator]].sum(-1)
    if spec.denominator is None:
        return numerator, None
    return numerator, days[..., C[spec.denominator]].sum(-1)


class StepMetrics:
    """Computes the :data:`COUNTERS` row of every user for one step of a vector env."""

    def __init__(self, env: Any, seed: int) -> None:
        self.env = env
        self.model = env.model
        self.relevance = Relevance(env)  # precision, recall and NDCG against the ground truth
        self.k = self.relevance.k
        catalog = getattr(env.config, "catalog", None)
        self.embedding_dim = getattr(catalog, "embedding_dim", None)
        self.self_information = natural_self_information(self.model, seed)  # [M] or None
        self.num_items = None if self.self_information is None else int(self.self_information.shape[0])

    def slate(self, action: torch.Tensor) -> torch.Tensor:
        return action[:, None] if action.dim() == 1 else action

    def before(self, observation: dict[str, torch.Tensor], info: dict[str, Any], slate: torch.Tensor) -> torch.Tensor:
        """Counters known when the slate is shown: ``[B, F]`` float32 with diversity, precision, recall,
        recall_steps and ndcg filled in."""
        b, k = slate.shape
        out = torch.zeros((b, len(COUNTERS)), dtype=torch.float32, device=slate.device)
        shown = shown_once(slate)  # [B, K] first occurrence of each index
        vectors = observation["candidates"]
        if self.embedding_dim is not None:
            vectors = vectors[..., : self.embedding_dim]
        picked = torch.nn.functional.normalize(vectors.gather(1, slate[..., None].expand(-1, -1, vectors.shape[-1])),
                                               dim=-1)
        if k > 1:
            similarity = picked @ picked.transpose(1, 2)  # [B, K, K]
            pair = shown[:, :, None] & shown[:, None, :] & ~torch.eye(k, dtype=torch.bool, device=slate.device)
            pairs = pair.sum((1, 2)).clamp_min(1)
            out[:, C["diversity"]] = ((1.0 - similarity) * pair).sum((1, 2)) / pairs
        utility = info.get("candidate_utilities")
        if utility is not None:
            for key, value in self.relevance(utility, slate).items():
                if key in C:
                    out[:, C[key]] = value
        return out

    def after(self, out: torch.Tensor, reward: torch.Tensor, info: dict[str, Any],
              observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """Adds what the step's response tells: impressions, clicks, engagement, regret and novelty."""
        clicked = info["clicked"].to(torch.float32)
        out[:, C["impressions"]] = 1.0
        out[:, C["clicks"]] = clicked
        out[:, C["engagement"]] = reward.to(torch.float32)
        if "regret" in info:
            out[:, C["regret"]] = info["regret"].to(torch.float32)
        if self.self_information is not None and "candidate_ids" in observation:
            chosen = info["chosen_candidate"].clamp_min(0)
            items = observation["candidate_ids"].gather(1, chosen[:, None])[:, 0]
            out[:, C["novelty"]] = self.self_information[items] * clicked
        return out


def natural_self_information(model: Any, seed: int, users: int = 4096) -> torch.Tensor | None:
    """-log2 of each catalogue item's natural popularity (see the module docstring), ``[M]`` on the
    model's device; None for models without a fixed catalogue (the RecSim ports)."""
    world = getattr(model, "world", None)
    if not isinstance(world, dict) or "item_embedding" not in world or not hasattr(model, "population"):
        return None
    rng = model.backend.make_random(seed)
    interest = model.initial_state(rng, users)["interest"]  # [U, d]
    p = model.population
    utility = interest @ world["item_embedding"].T + p.quality_weight * world["item_quality"][None, :]
    if "item_appeal" in world:  # choices follow utility + appeal
        utility = utility + world["item_appeal"][None, :]
    share = torch.softmax(utility / p.choice_temperature, dim=1).mean(0)
    return -torch.log2(share.clamp_min(math.ldexp(1.0, -60)))
