"""What RL²'s memory (:class:`~metarec.meta.policy.RL2Policy`) knows of a user in closed form, the
:class:`Belief`, and what it pools over the users of a population: the population memory (what the other
users' beliefs predict of a user, :func:`population_predictions`) and the item memory (what each item earned
beyond its viewers' beliefs, :func:`remember_residuals`), and the change test that restarts a belief whose user
changed (:func:`detect_change`). All read the users' responses only, never the simulator's ground truth."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from metarec.agents.baselines.linear import ridge_estimate

ITEM_MEMORY_KEYS = ("shown_ids", "items")  # the Belief's fields that only the item memory fills
CHANGE_KEYS = ("recent", "recent_response", "evidence")  # the Belief's fields that only the change test fills
OPTIONAL_KEYS = ITEM_MEMORY_KEYS + CHANGE_KEYS  # the fields a clone or a checkpoint keeps where they are filled


@dataclass
class Belief:
    """What a user's responses say about them, in closed form: a ridge regression of the reward on the
    features of every item shown to them (the clicked item's engagement, 0 for the others), as LinUCB
    keeps it. ``inverse`` ``[B, F, F]`` is ``A⁻¹`` (``A = ridge·I + Σ x xᵀ``), ``response`` ``[B, F]`` is
    ``b = Σ reward·x``, and ``shown`` ``[B, K, F]`` the features of the slate shown last, waiting for the
    response to it (zeros: nothing to learn). ``F`` counts the candidate features and a constant 1;
    ``ridge`` is λ, the prior precision a new user starts from."""

    inverse: torch.Tensor
    response: torch.Tensor
    shown: torch.Tensor
    ridge: float
    #: the item memory's (:func:`remember_residuals`), None without one: the catalog ids of the slate shown last
    #: ``[B, K]`` (-1: no item), and the summed residuals and their count per item ``[num_items, 2]``
    shown_ids: torch.Tensor | None = None
    items: torch.Tensor | None = None
    #: the change test's (:func:`detect_change`), None without one: a belief that forgets, ``A`` ``[B, F, F]``
    #: (not its inverse) and ``b`` ``[B, F]``, and the evidence ``[B]`` that the user changed
    recent: torch.Tensor | None = None
    recent_response: torch.Tensor | None = None
    evidence: torch.Tensor | None = None

    def clone(self) -> Belief:
        extra = {key: getattr(self, key).clone() for key in OPTIONAL_KEYS if getattr(self, key) is not None}
        return Belief(self.inverse.clone(), self.response.clone(), self.shown.clone(), self.ridge, **extra)


def population_predictions(
    features: torch.Tensor, belief: Belief, population: int, noise: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The population memory: ``([B, N], [B, N])`` what the other users of each user's population predict of
    the candidates ``features`` (``[B, N, F]``), from their beliefs alone (their responses, never the
    simulator's ground truth). Rows ``g·population .. (g+1)·population - 1`` are population ``g``.

    * *Neighbours*: each other user ``v`` with responses of their own is a hypothesis of what this user ``u``
      is like, weighted by how well ``v``'s estimate ``θ_v`` explains ``u``'s responses: the Gaussian
      log-likelihood ``(2 θ_vᵀ b_u − θ_vᵀ X_uᵀX_u θ_v) / 2σ²`` (up to what does not depend on ``v``), through
      a softmax over ``v``. The prediction is ``x · Σ_v w_uv θ_v``. A new user's responses explain every
      neighbour equally, so it starts as the population's average user and moves to those like them.
    * *Population*: the ridge regression of every user of the population pooled, ``x · (λI + Σ_v X_vᵀX_v)⁻¹
      Σ_v b_v``.

    Users without a response yet (prior beliefs) are no one's neighbour; a user with no such neighbour
    gets 0."""
    batch, f = belief.response.shape
    if population < 1 or batch % population:
        raise ValueError(f"population: expected a number of users that divides the batch of {batch}, got {population}")
    groups = batch // population
    eye = torch.eye(f, device=features.device, dtype=belief.inverse.dtype)
    gram = torch.linalg.inv(belief.inverse) - belief.ridge * eye  # [B, F, F] Xᵀ X of each user's responses
    theta = ridge_estimate(belief.inverse, belief.response)  # [B, F]
    known = gram.diagonal(dim1=1, dim2=2).sum(-1) > 1e-3  # [B] users with a response
    g_theta = theta.reshape(groups, population, f)
    g_gram = gram.reshape(groups, population, f, f)
    cross = belief.response.reshape(groups, population, f) @ g_theta.transpose(1, 2)  # [G, u, v] θ_vᵀ b_u
    quad = quadratic_fits(g_gram, g_theta)  # θ_vᵀ X_uᵀX_u θ_v
    fit = (2.0 * cross - quad) / (2.0 * noise)
    self_or_unknown = torch.eye(population, dtype=torch.bool, device=fit.device) | ~known.reshape(groups, 1, population)
    fit = fit.masked_fill(self_or_unknown, float("-inf"))
    any_neighbour = ~self_or_unknown.all(dim=-1, keepdim=True)
    weights = torch.softmax(fit.masked_fill(~any_neighbour, 0.0), dim=-1) * any_neighbour
    neighbours = (weights @ g_theta).reshape(batch, f)
    pooled_gram = g_gram.sum(1) + belief.ridge * eye  # [G, F, F]
    pooled = torch.linalg.solve(pooled_gram, belief.response.reshape(groups, population, f).sum(1))  # [G, F]
    pooled = pooled.repeat_interleave(population, dim=0)
    return (features @ neighbours[:, :, None])[:, :, 0], (features @ pooled[:, :, None])[:, :, 0]


#: Populations larger than this compute their pairwise fits as one matrix product (see :func:`quadratic_fits`).
LARGE_POPULATION = 256


def quadratic_fits(gram: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``[G, P, P]``: ``θ_vᵀ X_uᵀX_u θ_v`` for every pair of users ``u``, ``v`` of each population, from their
    Gram matrices ``[G, P, F, F]`` and estimates ``[G, P, F]``. Up to :data:`LARGE_POPULATION` users (the
    populations meta-training sees) by an ``einsum``; beyond, as ``vec(X_uᵀX_u) · vec(θ_v θ_vᵀ)``, one matrix
    product whose memory grows as ``P²`` rather than ``P² F`` (an A/B arm's thousands of users). The two agree
    to float rounding."""
    groups, population, f, _ = gram.shape
    if population <= LARGE_POPULATION:
        return torch.einsum("guij,gvi,gvj->guv", gram, theta, theta)
    outer = (theta[..., :, None] * theta[..., None, :]).reshape(groups, population, f * f)
    return gram.reshape(groups, population, f * f) @ outer.transpose(1, 2)


def remember_residuals(
    belief: Belief, shown: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """The item memory once a slate's responses are in: each item shown adds its residual, the response
    ``targets`` ``[B, K]`` less what the viewer's belief predicted of it before this response
    (``shown`` ``[B, K, F]`` its features, zeros where nothing is to be learned), and a count of 1. The memory
    ``[num_items, 2]`` grows to the largest id it meets; ids below 0 are empty positions."""
    assert belief.shown_ids is not None
    theta = ridge_estimate(belief.inverse, belief.response)  # [B, F]
    residual = targets.to(theta.dtype) - (shown @ theta[:, :, None])[:, :, 0]  # [B, K]
    ids = belief.shown_ids
    valid = (ids >= 0) & (shown.abs().sum(-1) > 0)
    if rows is not None:
        valid = valid & rows[:, None]
    items = belief.items
    size = int(ids.max()) + 1 if ids.numel() else 0
    if items is None or items.shape[0] < size:
        grown = torch.zeros(max(size, 1), 2, dtype=torch.float64, device=ids.device)
        if items is not None:
            grown[: items.shape[0]] = items
        items = grown
    else:
        items = items.clone()
    chosen = ids[valid]
    items[:, 0].index_add_(0, chosen, residual[valid].double())
    items[:, 1].index_add_(0, chosen, torch.ones_like(chosen, dtype=torch.float64))
    return items


def item_memory_features(items: torch.Tensor | None, ids: torch.Tensor, prior: float) -> list[torch.Tensor]:
    """What the item memory says of the candidates ``ids`` ``[B, N]``: the mean residual shrunk toward 0 by
    ``prior`` pseudo-counts, ``Σ r / (n + prior)``, and ``sqrt(prior / (n + prior))``, which falls from 1 as the
    item is seen (both ``[B, N]``)."""
    ids = ids.long()
    sums = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    counts = torch.zeros_like(sums)
    if items is not None:
        known = ids < items.shape[0]
        rows = items[ids.clamp(max=items.shape[0] - 1)].float()
        sums = torch.where(known, rows[..., 0], 0.0)
        counts = torch.where(known, rows[..., 1], 0.0)
    return [sums / (counts + prior), torch.sqrt(prior / (counts + prior))]


def predictive_log_likelihood(
    inverse: torch.Tensor, response: torch.Tensor, shown: torch.Tensor, targets: torch.Tensor, noise: float
) -> torch.Tensor:
    """``[B]``: the log-likelihood of the responses ``targets`` ``[B, K]`` to the items ``shown`` ``[B, K, F]``
    under the ridge regression ``A⁻¹`` ``inverse``, ``b`` ``response`` before it saw them: each a Gaussian of mean
    ``x·A⁻¹b`` and variance ``σ²(1 + xᵀA⁻¹x)`` (``σ²`` ``noise``), summed over the items; positions whose
    features are zeros (nothing shown) add 0."""
    theta = ridge_estimate(inverse, response)
    error = targets.to(theta.dtype) - (shown @ theta[:, :, None])[:, :, 0]  # [B, K]
    leverage = ((shown @ inverse) * shown).sum(-1)  # [B, K] xᵀA⁻¹x
    variance = noise * (1.0 + leverage)
    log_density = -0.5 * (error.square() / variance + torch.log(variance))
    return (log_density * (shown.abs().sum(-1) > 0)).sum(-1)


def detect_change(
    belief: Belief, shown: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None, discount: float,
    threshold: float, noise: float,
) -> tuple[Belief, torch.Tensor]:
    """The change test once a slate's responses are in, before the belief learns them: did the user change?

    Two regressions compete to predict each response before seeing it: the belief, which weighs all of the user's
    responses since it (re)started alike, and a belief that forgets, whose ``A`` and ``b`` are discounted by
    ``discount`` per interaction (back toward the prior ``λI``). For a user who does not change, the belief
    predicts better, since it has more evidence; after a change, the one that forgets does. The evidence is a
    CUSUM of the log-likelihood ratio (:func:`predictive_log_likelihood`): it adds each slate's ratio and never
    falls below 0. Where it passes ``threshold`` the belief restarts from the forgetting one, and the evidence from
    0. Rows where ``rows`` is False (users not served) change nothing. Returns the belief (the forgetting
    one having learned the slate, the other not yet) and ``[B]`` which users' beliefs restarted."""
    assert belief.recent is not None and belief.recent_response is not None and belief.evidence is not None
    eye = torch.eye(belief.recent.shape[-1], dtype=belief.recent.dtype, device=belief.recent.device)
    recent_inverse = torch.linalg.inv(belief.recent)
    ratio = predictive_log_likelihood(recent_inverse, belief.recent_response, shown, targets, noise)
    ratio = ratio - predictive_log_likelihood(belief.inverse, belief.response, shown, targets, noise)
    learning = shown.abs().sum((1, 2)) > 0
    if rows is not None:
        learning = learning & rows
        shown = shown * learning.to(shown.dtype)[:, None, None]
    evidence = torch.where(learning, (belief.evidence + ratio).clamp(min=0.0), belief.evidence)
    forget = torch.where(learning, discount, 1.0)[:, None]
    recent = forget[:, :, None] * belief.recent + (1.0 - forget[:, :, None]) * belief.ridge * eye
    recent = recent + shown.transpose(1, 2) @ shown
    recent_response = forget * belief.recent_response + (targets.to(shown.dtype)[:, :, None] * shown).sum(1)
    restart = evidence > threshold
    # a restart takes the forgetting belief as it was before this slate, which the belief learns next
    inverse = torch.where(restart[:, None, None], recent_inverse, belief.inverse)
    response = torch.where(restart[:, None], belief.recent_response, belief.response)
    evidence = torch.where(restart, 0.0, evidence)
    changed = replace(belief, inverse=inverse, response=response, recent=recent, recent_response=recent_response,
                      evidence=evidence)  # fmt: skip
    return changed, restart
