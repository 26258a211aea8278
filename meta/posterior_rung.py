"""The information ladder's Bayesian rungs: myopic planners that know every population parameter and infer
each user from that user's own responses.

The ladder's other rungs (:mod:`metarec.meta.ceiling`) are told part of the hidden state. These are told
none of the user's state, only how the population's users are made and how they move, and learn the rest
as a Bayesian filter would:

* **What they know**: what the ``cluster`` rung knows but the user's cluster: every population parameter
  (the cluster centres, their spread, the choice temperature, the position bias, the utility of not
  clicking, the satisfaction's noise, the drift and its trend, the fatigue's rates and its state, the items'
  embeddings, lengths and appeal), and when a user's interests were drawn anew (a new user, an abrupt
  shift), though not what was drawn.
* **What they infer of the user**: a mixture with one Gaussian component per cluster of the population over
  the user's current interest, started at the clusters' centres and spread. After each step, the choice (an
  item, or none) updates each component by an online Laplace step of the multinomial logit at its mean, the
  satisfaction of a click (engagement over the item's length) by an exact Kalman update of its logit, and
  each component's weight by the likelihood of both (the choice's at the component's mean, not integrated
  over it). Between steps each component moves as the model's users do: the consumption pull toward the item
  consumed, the reversion toward the user's anchor with its noise added to the covariance, and the cluster's
  trend. The anchor's estimate takes the same steps as the interest's, as if the two were fully correlated
  (they are equal when a user is drawn, and the anchor moves only with the trend).
* **What they know of item quality**, one rung each: ``none`` (``posterior``) plans and infers as if every
  item had the prior mean quality, 0, with the quality it does not know added to the satisfaction's noise;
  ``learned`` (``posterior+learned quality``) keeps a Gaussian posterior over every item's quality, pooled
  over the population's users (:class:`~metarec.meta.bayes_filter.ItemQualityPosterior`); ``true``
  (``posterior+quality``) knows it.
* **How they act**: the slate of highest expected reward under ``samples`` draws from the posterior, among
  the myopic oracle's slates for the posterior mean and for the ``components`` heaviest components' means.

So ``posterior+learned quality`` learns the user and the items from the population's slates and responses,
and is told the population's parameters, the fatigue and when users were redrawn: its score is about what
knowing the population is worth to a myopic learner. Options tell it less (``prior``, ``typical``, ``pool``,
``observable``). Like every rung it is not an upper bound: the filter is an approximation (Laplace steps,
the mean-field split of user and item), and a learner may plan better (looking ahead, exploring).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from metarec.agents.base import Recommender
from metarec.envs.core.choice import shown_mask
from metarec.envs.task_batch import TaskBatchModel, TaskBatchVectorEnv
from metarec.meta.bayes_filter import (
    ItemQualityPosterior,
    kalman_step,
    laplace_choice_step,
    slate_values,
    topic_set_centres,
    typical_population,
)
from metarec.meta.ceiling import RedrawTracker, quality_blind

QUALITY: tuple[str, ...] = ("none", "learned", "true")  # what the Bayesian rung knows of item quality
#: What of the env's state the rungs read besides the population parameters: the candidates, the fatigue (unless
#: ``observable``, which sets it to 0), the user's population and step count (and the catalogue's clock)
VISIBLE: tuple[str, ...] = ("candidates", "fatigue", "task", "step", "catalog_step")
PRIORS: tuple[str, ...] = ("clusters", "moments", "topics")  # what it knows of the population's clusters
POOL_PRIOR = 0.1  # Dirichlet pseudo-count of each component when a population's weights are pooled


class PosteriorOracle(Recommender):
    """See the module docstring. Reads the population parameters and the fatigue from ``env``, never the
    user's cluster, anchor or interest; for measurement only, like the ladder's other rungs.

    Args:
        env: the task batch it serves.
        quality: whether it knows every item's true quality.
        seed: of its own draws (the posterior samples that score the slates).
        samples: posterior draws per user that score the candidate slates.
        components: of the mixture whose slates are candidates besides the posterior mean's (the heaviest).
        prior: what it knows of the population's clusters. ``"clusters"``: their centres. ``"moments"``: only
            the mean and covariance of the population's interests (every component starts at the mean of the
            centres, with their covariance plus a cluster's spread). ``"topics"``: only the model family's
            rule, that a cluster's centre is the normalised sum of ``topics_per_cluster`` topics' centres,
            scaled to ``interest_scale``: one equally weighted component for every such set of the catalogue's
            topics, each topic's centre the mean direction of its items' embeddings; no trend is known.
        typical: plan and infer with the typical population's parameters (each the mean over the env's
            populations) instead of this population's own: its choice temperature, position bias, utility of
            not clicking, noise, spread, drift and fatigue. The clusters' centres and the catalogue stay known.
        pool: learn each population's weights of the prior's components from its users (empirical Bayes: one
            EM step after each of its steps), instead of keeping the prior's; with ``prior="topics"`` this is
            how the population's other users reveal which sets of topics its clusters are.
        observable: know nothing of the user's state beyond the responses: plan and infer as if no topic
            tired the user (fatigue 0), and start a user's belief afresh only at their first step, never at
            an abrupt shift (which it is not told of). Both ``no_fatigue`` and ``no_shifts``.
        no_fatigue: the first half of ``observable`` alone: plan and infer with fatigue 0.
        no_shifts: the second half alone: start a user's belief afresh only at their first step.
    """

    shares_state_across_users = False

    def __init__(
        self,
        env: TaskBatchVectorEnv,
        quality: str,
        seed: int,
        samples: int = 32,
        components: int = 3,
        prior: str = "clusters",
        typical: bool = False,
        pool: bool = False,
        observable: bool = False,
        no_fatigue: bool = False,
        no_shifts: bool = False,
    ) -> None:
        if quality not in QUALITY:
            raise ValueError(f"quality: expected one of {', '.join(QUALITY)}, got {quality!r}")
        if not isinstance(env.model, TaskBatchModel):
            raise TypeError(f"env: expected a TaskBatchVectorEnv, got {type(env).__name__}")
        for name, value in (("samples", samples), ("components", components)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        self.env, self.model, self.quality = env, env.model, quality
        if prior not in PRIORS:
            raise ValueError(f"prior: expected one of {', '.join(PRIORS)}, got {prior!r}")
        self.no_fatigue, self.no_shifts = no_fatigue or observable, no_shifts or observable
        self.name = posterior_name(quality, prior, typical, pool, self.no_fatigue, self.no_shifts)
        self.prior, self.pool = prior, pool
        self.view = typical_population(self.model) if typical else self.model  # whose parameters it uses
        if quality == "true":
            self.planner = self.view
        elif quality == "none":
            self.planner = quality_blind(self.view)
        else:  # plans with the posterior mean of every item's quality, learned from the population's responses
            self.planner = copy.copy(self.view)
            estimate = torch.zeros_like(self.model.world["item_quality"])
            self.planner.world = {**self.model.world, "item_quality": estimate}
        self.items = ItemQualityPosterior(self.model) if quality == "learned" else None
        self.samples = samples
        world = self.model.world
        self.c = int(world["num_clusters"].max())
        count = world["num_clusters"].long()
        if prior == "topics":
            self.topic_sets, count = topic_set_centres(self.model)  # [T, C, d], [T]
            self.c = self.topic_sets.shape[1]
        self.valid = torch.arange(self.c, device=env.device)[None, :] < count[:, None]  # [T, C]: real components
        self.top = min(components, self.c)
        self.generator = torch.Generator(device=env.device).manual_seed(seed)
        self.redraws = RedrawTracker(self.model)
        unknown = [t.catalog.quality_std if quality == "none" else 0.0 for t in self.model.tasks]
        self.unknown_quality = torch.tensor(unknown, device=env.device)  # [T]: quality std left out of the utility
        self.belief: dict[str, torch.Tensor] | None = None
        self._share: torch.Tensor | None = None  # [T, C]: each population's pooled log weights (``pool``)
        self._shown: dict[str, Any] | None = None

    def reset(self, mask: torch.Tensor | None = None) -> None:
        if mask is None:
            self.belief, self._shown, self._share = None, None, None
            self.redraws.reset()
            if self.items is not None:
                self.items.reset()
                self.planner.world["item_quality"].zero_()

    # -- the prior -------------------------------------------------------------------------------------
    def _prior(self, task: torch.Tensor) -> dict[str, torch.Tensor]:
        """The belief about users of tasks ``task`` (``[n]``) whose interests were just drawn: one component per
        cluster of their population at its centre, the cluster's spread around it, equal weights."""
        world, params = self.model.world, self.view._params_of(task)
        n, d = task.shape[0], self.model.config.catalog.embedding_dim
        local = torch.arange(self.c, device=task.device)
        count = world["num_clusters"][task].long()
        cluster = world["cluster_offset"][task][:, None] + local.clamp(max=count[:, None] - 1)  # [n, C]
        mean = world["cluster_centre"][cluster]
        eye = torch.eye(d, device=task.device)
        cov = (params.cluster_spread**2)[:, None, None, None] * eye.expand(n, self.c, d, d)
        valid = local[None, :] < count[:, None]
        log_weight = torch.where(valid, -torch.log(count.float())[:, None], -math.inf)
        trend = world["trend_direction"][cluster]
        if self.prior == "topics":  # every set of topics the family could have made a cluster of
            mean, valid = self.topic_sets[task], self.valid[task]
            log_weight = torch.where(valid, -torch.log(valid.float().sum(1, keepdim=True)), -math.inf)
            cluster, trend = torch.full_like(cluster[:, :1], -1).expand(-1, self.c).clone(), torch.zeros_like(mean)
        elif self.prior == "moments":  # the population's moments in every component
            share = valid.float() / count.float()[:, None]  # [n, C]
            centre = torch.einsum("nc,ncd->nd", share, mean)
            apart = mean - centre[:, None]
            between = torch.einsum("nc,ncd,nce->nde", share, apart, apart)
            mean = centre[:, None].expand(-1, self.c, -1).clone()
            cov = cov + between[:, None]
            trend = torch.einsum("nc,ncd->nd", share, trend)[:, None].expand(-1, self.c, -1).clone()  # the mean's
        return {"cluster": cluster, "mean": mean, "cov": cov.clone(), "anchor": mean.clone(), "log_prior": log_weight,
                "log_lik": torch.zeros_like(log_weight), "trend": trend,
                "seen": torch.zeros(n, dtype=torch.bool, device=task.device)}  # fmt: skip

    def _restart(self, state: dict[str, Any]) -> None:
        """Starts afresh the beliefs of the users whose interests were drawn: told when (never what) from the
        users' anchors by :class:`~metarec.meta.ceiling.RedrawTracker`, or, when ``no_shifts`` (or
        ``observable``), only at a user's first step."""
        # only a user seen for the first time (the first step of a row) starts afresh when no_shifts
        redrawn = state["step"] == 0 if self.no_shifts else self.redraws.update(state)
        if self.belief is None or self.belief["mean"].shape[0] != redrawn.shape[0]:
            self.belief = self._prior(state["task"])
            return
        rows = torch.nonzero(redrawn)[:, 0]
        if len(rows):
            for key, value in self._prior(state["task"][rows]).items():
                self.belief[key][rows] = value
            if self._share is not None:  # what the population's users revealed stays the prior of its new users
                self.belief["log_prior"][rows] = self._share[state["task"][rows]]

    @staticmethod
    def _rows(state: dict[str, Any], interest: torch.Tensor) -> dict[str, Any]:
        """``state`` with each user's row repeated for each of their M interests ``[B, M, d]``, set to it."""
        b, m, d = interest.shape
        return {**{k: v.repeat_interleave(m, dim=0) for k, v in state.items()}, "interest": interest.reshape(b * m, d)}

    # -- acting ----------------------------------------------------------------------------------------
    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        if self.env.model is not self.model:
            raise RuntimeError(
                "env: its model was rebuilt (set_tasks) after this PosteriorOracle was made; make a new one"
            )
        full = self.env.state
        state = {key: full[key] for key in VISIBLE if key in full}  # never the user's cluster, anchor or interest
        self._restart(state if self.no_shifts else full)
        if self.no_fatigue:  # fatigue is the user's hidden state too
            state["fatigue"] = torch.zeros_like(state["fatigue"])
        belief = self.belief
        b, _, d = belief["mean"].shape
        weight = self.weights()  # [B, C]
        mean = (weight[..., None] * belief["mean"]).sum(1)
        heaviest = weight.topk(self.top, dim=1).indices
        centres = belief["mean"].gather(1, heaviest[..., None].expand(-1, -1, d))
        plans = torch.cat([mean[:, None], centres], dim=1)  # [B, 1 + top, d]
        slates, _, _ = self.planner.oracle(self._rows(state, plans))
        slates = slates.reshape(b, plans.shape[1], -1)
        truth = self.planner.choice_model(self._rows(state, self._draws(belief, weight)))
        n = truth.weights.shape[1]
        params = self.planner.params(state)
        no_click, position = params.no_click_weight, params.position_weight  # [B], [B, K]
        value = slate_values(truth.weights.reshape(b, self.samples, n), truth.revenue.reshape(b, self.samples, n),
                             no_click, position, slates)  # fmt: skip
        slate = slates[torch.arange(b), value.mean(2).argmax(1)]
        self._shown = {"state": state, "slate": slate, "no_click": no_click, "position": position}
        return slate

    def _draws(self, belief: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        """``[B, S, d]`` draws of each user's interest from the mixture."""
        b, _, d = belief["mean"].shape
        pick = torch.multinomial(weight, self.samples, replacement=True, generator=self.generator)  # [B, S]
        factor = torch.linalg.cholesky(belief["cov"] + 1e-6 * torch.eye(d, device=weight.device))  # [B, C, d, d]
        z = torch.randn((b, self.samples, d), generator=self.generator, device=weight.device)
        mean = belief["mean"].gather(1, pick[..., None].expand(-1, -1, d))
        chol = factor.gather(1, pick[..., None, None].expand(-1, -1, d, d))
        return mean + (chol @ z[..., None])[..., 0]

    # -- learning from the response -----------------------------------------------------------------
    def observe(self, reward: torch.Tensor, done: torch.Tensor, info: dict[str, Any]) -> None:
        if self._shown is None:
            raise RuntimeError("observe() called before act()")
        shown, self._shown = self._shown, None
        state, slate, belief = shown["state"], shown["slate"], self.belief
        b, c, d = belief["mean"].shape
        rows = torch.arange(b)
        active = info.get("active")
        active = torch.ones(b, dtype=torch.bool) if active is None else active.to(torch.bool)
        position = info["chosen_position"].to(torch.int64)
        clicked = position >= 0
        world, params = self.model.world, self.view.params(state)
        items = state["candidates"].gather(1, slate)  # [B, K]
        e = world["item_embedding"][items]  # [B, K, d]
        temperature = params.choice_temperature
        # 1. the choice: an online Laplace step of the multinomial logit, per component, at its mean
        truth = self.planner.choice_model(self._rows(state, belief["mean"]), slate.repeat_interleave(c, dim=0))
        on_slate = truth.weights.reshape(b, c, -1)  # [B, C, K]: the shown items only
        on_slate = on_slate * shown["position"][:, None, :] * shown_mask(torch, slate)[:, None, :].float()
        total = on_slate.sum(2) + shown["no_click"][:, None]
        prob = on_slate / total[..., None]  # [B, C, K]
        pos = position.clamp(min=0)
        chosen = torch.where(clicked[:, None], on_slate[rows, :, pos], shown["no_click"][:, None])
        log_choice = torch.log(chosen.clamp(min=1e-30)) - torch.log(total)
        picked = torch.where(clicked[:, None], e[rows, pos], 0.0)  # [B, d]
        mean, cov = laplace_choice_step(belief["mean"], belief["cov"], e, prob, picked, temperature)
        log_lik = belief["log_lik"] + log_choice
        # 2. the satisfaction of a click: a Kalman update of the (linear) satisfaction logit
        length = world["item_length"][items[rows, pos]].clamp(min=1e-6)
        satisfaction = (reward.float() / length).clamp(1e-6, 1 - 1e-6)
        y = torch.log(satisfaction) - torch.log1p(-satisfaction)
        offset = truth.utilities.reshape(b, c, -1)[rows, :, pos] - (
            belief["mean"] * e[rows, pos][:, None, :]).sum(-1)  # [B, C]: utility less the affinity  # fmt: skip
        unknown = self.unknown_quality[state["task"]] ** 2
        if self.items is not None:
            unknown = self.items.variance()[items[rows, pos]]
        noise = (params.engagement_noise**2 + params.quality_weight**2 * unknown).clamp(min=1e-4)
        sat_mean, sat_cov, sat_log = kalman_step(mean, cov, e[rows, pos], y[:, None] - offset, noise)
        hit = clicked[:, None, None]
        mean = torch.where(hit, sat_mean, mean)
        cov = torch.where(hit[..., None], sat_cov, cov)
        log_lik = torch.where(clicked[:, None], log_lik + sat_log, log_lik)
        log_lik = log_lik - log_lik.amax(1, keepdim=True)  # only differences between components matter
        if self.items is not None:  # the population's evidence on the items shown, under the belief before this step
            weight = self.weights()
            self.items.update(state, items, e, weight, belief, prob, position, y, active, params)
            self.planner.world["item_quality"].copy_(self.items.mean())
        # what the response taught of the interest it teaches of the anchor too: the two start equal and the
        # anchor moves only with the trend, so they are taken as fully correlated (the anchor's estimate
        # takes the same step, and reverting toward it adds no uncertainty of its own)
        anchor = belief["anchor"] + (mean - belief["mean"])
        # 3. the drift between steps: consumption pull, reversion toward the anchor, the cluster's trend
        pull = (params.consumption_pull * clicked.float() * (2 * satisfaction - 1))[:, None, None]
        target = params.interest_scale[:, None, None] * e[rows, pos][:, None, :]
        mean = (1 - pull) * mean + pull * target
        cov = (1 - pull[..., None]) ** 2 * cov
        r = params.ou_reversion[:, None, None]
        mean = (1 - r) * mean + r * anchor
        eye = torch.eye(d, device=mean.device)
        cov = cov + (params.ou_noise**2)[:, None, None, None] * eye
        trend = params.drift_per_step[:, None, None] * belief["trend"]
        keep = ~active
        belief["mean"] = torch.where(keep[:, None, None], belief["mean"], mean + trend)
        belief["cov"] = torch.where(keep[:, None, None, None], belief["cov"], cov)
        belief["anchor"] = torch.where(keep[:, None, None], belief["anchor"], anchor + trend)
        belief["log_lik"] = torch.where(keep[:, None], belief["log_lik"], log_lik)
        belief["seen"] = belief["seen"] | active
        if self.pool:
            self._pool(state["task"])

    def weights(self) -> torch.Tensor:
        """``[B, C]``: each user's posterior weight of each component."""
        return torch.softmax(self.belief["log_prior"] + self.belief["log_lik"], dim=1)

    def _pool(self, task: torch.Tensor) -> None:
        """One EM step of each population's weights of the components (a Dirichlet prior of ``POOL_PRIOR`` each):
        the mean responsibility of its users who have responded at least once, shared by all its users."""
        belief = self.belief
        seen = belief["seen"].float()[:, None]
        mass = torch.zeros((self.model.num_tasks, self.c), device=seen.device)
        mass.index_add_(0, task, self.weights() * seen)
        users = torch.zeros(self.model.num_tasks, device=seen.device).index_add_(0, task, seen[:, 0])
        prior = POOL_PRIOR * self.valid.float()
        share = (mass + prior) / (users[:, None] + prior.sum(1, keepdim=True))
        self._share = torch.where(self.valid, torch.log(share), -math.inf)
        belief["log_prior"] = self._share[task]


def posterior_name(
    quality: str, prior: str = "clusters", typical: bool = False, pool: bool = False, no_fatigue: bool = False,
    no_shifts: bool = False,
) -> str:  # fmt: skip
    """The rung's name; blind to both the fatigue and the shifts, it is ``-observable``."""
    user = "posterior" + ("-typical" if typical else "") + ("" if prior == "clusters" else f"-{prior}")
    user += "-pooled" if pool else ""
    if no_fatigue and no_shifts:
        user += "-observable"
    else:
        user += ("-no-fatigue" if no_fatigue else "") + ("-no-shifts" if no_shifts else "")
    return user + {"none": "", "learned": "+learned quality", "true": "+quality"}[quality]


def posterior_rungs(samples: int = 32) -> dict[str, Any]:
    """``{name: factory(env, seed)}`` for the Bayesian rungs: blind to quality, learning it, knowing it, and
    learning it without knowing the clusters' centres or without the population's own parameters."""
    rungs = [(q, "clusters", False, False) for q in QUALITY]
    rungs += [("learned", "moments", False, False), ("learned", "clusters", True, False),
              ("learned", "topics", True, False), ("learned", "topics", True, True)]  # fmt: skip
    rungs = [(*r, False, False) for r in rungs]  # told the fatigue and when users were redrawn
    rungs += [("learned", "topics", True, True, True, True),  # told neither: -observable
              ("learned", "topics", True, True, True, False),  # told when users were redrawn, not the fatigue
              ("learned", "topics", True, True, False, True)]  # told the fatigue, not the redraws  # fmt: skip
    return {
        posterior_name(*r): (
            lambda env, seed, r=r: PosteriorOracle(
                env, r[0], seed, samples, prior=r[1], typical=r[2], pool=r[3], no_fatigue=r[4], no_shifts=r[5]
            )
        )
        for r in rungs
    }
