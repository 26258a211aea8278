"""The parts of the information ladder's Bayesian rungs (:mod:`metarec.meta.posterior_rung`) that are not the
rung itself: the filter's update steps (a Laplace step of the multinomial logit, a Kalman step of a linear
observation), the expected reward of slates under posterior draws, the posterior over item quality pooled over a
population, and what the model family says of a population without its own parameters (the typical population,
the clusters every set of topics could make)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from metarec.envs.core.backend import numpy_backend
from metarec.envs.core.choice import shown_mask
from metarec.envs.drifting.model import population_parameters
from metarec.envs.task_batch import TaskBatchModel


def laplace_choice_step(
    mean: torch.Tensor, cov: torch.Tensor, e: torch.Tensor, prob: torch.Tensor, picked: torch.Tensor,
    temperature: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One online Laplace (Newton) step of a Gaussian belief ``N(mean [B, C, d], cov [B, C, d, d])`` over the
    interest after a multinomial-logit choice: items ``e`` ``[B, K, d]`` shown, their choice probabilities at the
    mean ``prob`` ``[B, C, K]``, the embedding of the item chosen ``picked`` ``[B, d]`` (0 for no click, whose
    weight does not depend on the interest), weights ``exp(e·θ / temperature)``. The log-likelihood's gradient
    is ``(picked - Σ p e) / T`` and minus its Hessian ``(Σ p e eᵀ - (Σ p e)(Σ p e)ᵀ) / T²``."""
    t = temperature[:, None, None]
    expected = torch.einsum("bck,bkd->bcd", prob, e)
    gradient = (picked[:, None, :] - expected) / t
    second = torch.einsum("bck,bkd,bke->bcde", prob, e, e) - expected[..., :, None] * expected[..., None, :]
    posterior = torch.linalg.inv(torch.linalg.inv(cov) + second / (t * t)[..., None])
    posterior = 0.5 * (posterior + posterior.transpose(-1, -2))
    return mean + (posterior @ gradient[..., None])[..., 0], posterior


def kalman_step(
    mean: torch.Tensor, cov: torch.Tensor, e: torch.Tensor, target: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The conjugate update of ``N(mean [B, C, d], cov [B, C, d, d])`` after observing ``θ·e + ε = target``
    (``e`` ``[B, d]``, ``target`` ``[B, C]``, ``ε ~ N(0, noise [B])``): the posterior mean, covariance and the
    observation's log marginal likelihood ``[B, C]``."""
    cov_e = (cov @ e[:, None, :, None])[..., 0]  # [B, C, d]
    spread = (cov_e * e[:, None, :]).sum(-1) + noise[:, None]
    residual = target - (mean * e[:, None, :]).sum(-1)
    gain = cov_e / spread[..., None]
    log_lik = -0.5 * residual**2 / spread - 0.5 * torch.log(2 * math.pi * spread)
    return mean + gain * residual[..., None], cov - gain[..., :, None] * cov_e[..., None, :], log_lik


def slate_values(
    weights: torch.Tensor, revenue: torch.Tensor, no_click: torch.Tensor, position: torch.Tensor, slates: torch.Tensor
) -> torch.Tensor:
    """``[B, S, P]``: the expected reward of each of ``slates`` (``[B, S, K]`` candidate indices) under each
    of P draws' choice weights and revenues (``[B, P, N]``), with no-click weights ``[B]`` and position weights
    ``[B, K]``; a position that repeats an earlier item is empty, as in the env."""
    b, s, k = slates.shape
    p, n = weights.shape[1:]
    index = slates[:, :, None, :].expand(b, s, p, k)
    w = weights[:, None].expand(b, s, p, n).gather(3, index)
    r = revenue[:, None].expand(b, s, p, n).gather(3, index)
    shown = shown_mask(torch, slates.reshape(b * s, k)).reshape(b, s, 1, k).to(w.dtype)
    w = w * position[:, None, None, :] * shown
    return (w * r).sum(3) / (w.sum(3) + no_click[:, None, None])


def typical_population(model: TaskBatchModel) -> TaskBatchModel:
    """A view of ``model`` in which every task has the typical population: each of the population's parameters
    the mean over the tasks (choice temperature, utility of not clicking, position bias, quality weight, noise,
    spread, drift, fatigue, budgets), and what the dynamics derive from them (the no-click weight, the position
    weights, the trend per step) derived from those means. It shares the world and everything else with
    ``model``, and changes nothing of it."""
    populations = [t.population for t in model.tasks]
    typical = {
        key: float(np.mean([getattr(p, key) for p in populations]))
        for key, value in populations[0].model_dump().items()
        if isinstance(value, float)
    }
    host = population_parameters(populations[0].model_copy(update=typical), model.slate_size, numpy_backend())
    reference = vars(model.task_params)
    view = copy.copy(model)
    view.task_params = SimpleNamespace(**{
        key: torch.as_tensor(np.asarray(getattr(host, key), dtype=np.float32), device=value.device)
        .expand_as(value).clone()
        for key, value in reference.items()
    })  # fmt: skip
    return view


def topic_set_centres(model: TaskBatchModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``([T, C, d], [T])``: for each task, the centre the model family would give a cluster of every set of
    ``topics_per_cluster`` of its catalogue's topics (``interest_scale`` times their normalised sum), each
    topic's centre the normalised mean of its items' embeddings, and how many sets it has; C is the most
    sets any task has (a task with fewer repeats its last)."""
    world, sets = model.world, []
    start = 0
    for task in model.tasks:
        items = slice(start, start + task.catalog.num_items)
        start += task.catalog.num_items
        embedding, topic = world["item_embedding"][items], world["item_topic"][items]
        sums = torch.zeros((task.catalog.num_topics, embedding.shape[1]), device=embedding.device)
        centre = torch.nn.functional.normalize(sums.index_add_(0, topic, embedding), dim=1)
        combos = torch.combinations(torch.arange(task.catalog.num_topics), task.population.topics_per_cluster)
        summed = centre[combos.to(centre.device)].sum(1)
        sets.append(task.population.interest_scale * torch.nn.functional.normalize(summed, dim=1))
    count = torch.tensor([s.shape[0] for s in sets], device=sets[0].device)
    most = int(count.max())
    return torch.stack([torch.cat([s, s[-1:].expand(most - s.shape[0], -1)]) for s in sets]), count


class ItemQualityPosterior:
    """A Gaussian posterior over every item's quality, ``N(0, quality_std²)`` a priori, pooled over the
    population's users (ids are distinct across a task batch's catalogues): the satisfaction of each click,
    less the user's expected affinity (its uncertainty added to the noise), and an online Laplace step of
    the multinomial logit's choice for every item shown, both at the users' posterior means. Kept in
    natural parameters (precision, precision x mean), so the users of a step add up in any order."""

    def __init__(self, model: TaskBatchModel) -> None:
        self.model = model
        device = model.world["item_quality"].device
        counts = torch.tensor([t.catalog.num_items for t in model.tasks], device=device)
        task_of_item = torch.repeat_interleave(torch.arange(model.num_tasks, device=device), counts)
        std = torch.tensor([t.catalog.quality_std for t in model.tasks], device=device)[task_of_item]
        self.prior_precision = 1.0 / (std**2).clamp(min=1e-6)
        self.reset()

    def reset(self) -> None:
        self.precision = self.prior_precision.clone()
        self.shift = torch.zeros_like(self.precision)  # precision x mean

    def mean(self) -> torch.Tensor:
        return self.shift / self.precision

    def variance(self) -> torch.Tensor:
        return 1.0 / self.precision

    def update(
        self, state: dict[str, Any], items: torch.Tensor, e: torch.Tensor, weight: torch.Tensor,
        belief: dict[str, torch.Tensor], prob: torch.Tensor, position: torch.Tensor, y: torch.Tensor,
        active: torch.Tensor, params: Any,
    ) -> None:  # fmt: skip
        """``items`` ``[B, K]`` shown (embeddings ``e``), the belief's component weights ``[B, C]``, each
        component's choice probabilities ``prob`` ``[B, C, K]``, the position chosen (-1: none) and the
        satisfaction logit ``y`` of a click."""
        k = items.shape[1]
        mean_q = self.mean()
        w_q = params.quality_weight  # [B]
        p = (weight[..., None] * prob).sum(1)  # [B, K]: the choice probabilities under the belief
        chosen = (torch.arange(k, device=items.device)[None, :] == position[:, None]).float()
        t = params.choice_temperature[:, None]
        gradient = (chosen - p) * w_q[:, None] / t
        curvature = p * (1 - p) * (w_q[:, None] / t) ** 2
        live = active[:, None].float()
        shift = (gradient + curvature * mean_q[items]) * live
        precision = curvature * live
        clicked = (position >= 0) & active & (w_q > 1e-6)
        users = torch.nonzero(clicked)[:, 0]
        self.precision.index_add_(0, items.reshape(-1), precision.reshape(-1))
        self.shift.index_add_(0, items.reshape(-1), shift.reshape(-1))
        if len(users):
            pos = position[users]
            item, ec = items[users, pos], e[users, pos]
            theta = (weight[users, :, None] * belief["mean"][users]).sum(1)
            spread = torch.einsum("ucde,ud,ue->uc", belief["cov"][users], ec, ec)
            affinity_var = (weight[users] * spread).sum(1)
            topic = self.model.world["item_topic"][item]
            fatigue = state["fatigue"][users].gather(1, topic[:, None])[:, 0] * params.fatigue_weight[users]
            residual = y[users] - (theta * ec).sum(-1) + fatigue  # w_q * q + noise
            var = params.engagement_noise[users] ** 2 + affinity_var
            self.precision.index_add_(0, item, w_q[users] ** 2 / var)
            self.shift.index_add_(0, item, w_q[users] * residual / var)
