"""What a meta-learner is compared with on the adaptation protocol, and the hierarchical Bayesian
reference's prior fitted on the training populations.

Non-meta baselines, each learning online from the held-out users it serves:

* ``popular``: one table of reward per impression per population, learned from all of that population's
  users (catalogue ids are distinct across a task batch's populations, so one table over ids is one per
  population); the A/B test's control;
* ``linucb`` and ``thompson``: a ridge regression per user on the candidates' features;
* ``greedy``: a table of reward per impression per user;
* ``finetune`` and ``scratch`` (trained by meta-train): a policy pre-trained on the task mixture, or a
  fresh one, adapted per population by policy-gradient steps.

``hbayes`` (:class:`~metarec.agents.baselines.hbayes.HierarchicalBayesRecommender`) is the principled
reference, never "the meta-learner": it knows the model family, and its constants come from
:func:`fit_bayes_prior`, which reads the training split's populations (their parameters and users), never
a held-out population's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from metarec.agents.baselines.hbayes import BayesPrior
from metarec.agents.registry import generator_for, make_hbayes, make_recommender
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.tasks import TaskDistribution, task_batch

#: Online baselines built by name from the registry; ``finetune`` and ``scratch`` come from meta-train.
ONLINE_BASELINES = ("popular", "linucb", "thompson", "greedy")
REFERENCE = "hbayes"
PRIOR_INDEX = 20_000  # meta-batch index of the training populations the prior is fitted on


def fit_bayes_prior(
    distribution: TaskDistribution, split: str, seed: int, tasks: int = 64, users_per_task: int = 64
) -> BayesPrior:
    """The constants of :class:`BayesPrior` measured on ``tasks`` populations of the training ``split``
    (``users_per_task`` new users each): the variance of users' interests around zero and around their
    cluster's centre, of item offsets (quality times its weight), of the satisfaction noise, and the
    choice model's typical temperature (geometric mean), no-click utility and position bias (means).

    Raises:
        ValueError: ``split`` holds something out (a held-out split is what the reference is judged on).
    """
    if split not in distribution.splits:
        raise ValueError(f"split: expected one of {', '.join(distribution.splits)}, got {split!r}")
    if distribution.splits[split].holds_out:
        raise ValueError(f"split: the prior is fitted on a training split; {split!r} holds out populations")
    configs = task_batch(distribution, split, tasks, seed, PRIOR_INDEX, 1)
    env = TaskBatchVectorEnv(configs, users_per_task, autoreset=False, ground_truth=False)
    env.reset(seed=seed)
    model, state = env.model, env.state
    interest = state["interest"].double()
    centre = torch.as_tensor(model.world_numpy["cluster_centre"], dtype=torch.float64)[state["cluster"]]
    populations = [c.population for c in configs]
    quality = model.world_numpy["item_quality"].astype(np.float64)
    sizes = np.cumsum([0] + [c.catalog.num_items for c in configs])
    offset_var = np.mean(
        [p.quality_weight**2 * quality[a:b].var() for p, a, b in zip(populations, sizes[:-1], sizes[1:], strict=True)]
    )
    return BayesPrior(
        interest_var=float(interest.pow(2).mean()),
        cluster_var=float((interest - centre).pow(2).mean()),
        offset_var=float(max(offset_var, 1e-6)),
        noise_var=float(max(np.mean([p.engagement_noise**2 for p in populations]), 1e-6)),
        temperature=float(math.exp(np.mean([math.log(p.choice_temperature) for p in populations]))),
        no_click_utility=float(np.mean([p.no_click_utility for p in populations])),
        position_bias=float(np.mean([p.position_bias for p in populations])),
    )


Factory = Callable[[TaskBatchVectorEnv, int], Any]


def baseline_factories(prior: BayesPrior) -> dict[str, Factory]:
    """The online baselines and the reference as ``factory(env, seed)`` for the protocol."""

    def named(name: str) -> Factory:
        return lambda env, seed: make_recommender(name, env, seed)

    def reference(env: TaskBatchVectorEnv, seed: int) -> Any:
        return make_hbayes(env, generator_for(env, seed), prior)

    return {**{name: named(name) for name in ONLINE_BASELINES}, REFERENCE: reference}
