"""What :func:`metarec.calibration.fit.calibrate` takes (:class:`FitConfig`) and gives (:class:`Calibration`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from metarec.config import FrozenConfig
from metarec.envs.drifting.params import SimulatorConfig


class FitConfig(FrozenConfig):
    """How to calibrate (``metarec calibrate --set KEY=VALUE`` sets these)."""

    embedding_dim: int = Field(16, ge=1, description="Dimension of item embeddings and user interests.")
    max_clusters: int = Field(8, ge=1, description="Largest number of interest clusters BIC may choose.")
    num_topics: int = Field(10, ge=1, description="Topics (k-means clusters of item embeddings) for fatigue.")
    epochs: int = Field(30, ge=1, description="Passes over the events.")
    batch_size: int = Field(2048, ge=1, description="Events per gradient step.")
    learning_rate: float = Field(0.03, gt=0, description="Adam step size.")
    l2: float = Field(1e-4, ge=0, description="L2 penalty on factors (per event).")
    refit_steps: int = Field(1000, ge=1, description="Gradient steps when re-fitting users' factors (drift).")
    min_events_for_drift: int = Field(20, ge=4, description="Users with fewer events are left out of drift.")
    num_candidates: int = Field(20, ge=1, description="Candidates per step in the simulator.")
    slate_size: int = Field(5, ge=1, description="Items per slate in the simulator.")
    recency_half_life: float | None = Field(
        None,
        gt=0,
        description="Items' choice bias as of the end of the logs: after the fit, the items' bias alone is refitted "
        "with each event weighted by 0.5 ** (age / (recency_half_life x the logs' time span)), so items chosen "
        "lately are chosen more (with quality_from_ratings, satisfaction still follows the ratings; null: every "
        "event counts the same).",
    )
    available_items: bool = Field(
        True,
        description="Each logged choice is among the items already in the logs at its time (each item's first "
        "logged event), not the whole catalogue: an item that entered the logs late is not taken as shunned "
        "before it was there, so its bias says how strongly it draws while available, and users' factors need "
        "not explain why early users never chose it.",
    )
    predictive_scale: float | None = Field(
        None,
        ge=0,
        description="Scale of users' fitted factors in the simulator: their interests. Null: the scale that best "
        "predicts the latest predictive_holdout of the choices from a fit on the rest (a nested time split; fitted "
        "factors predict a user's own past better than their future); 1: the factors as fitted.",
    )
    predictive_holdout: float = Field(
        0.2, gt=0, lt=1, description="Share of the latest choices held out to find predictive_scale."
    )
    ctr_from_impressions: bool = Field(
        True,
        description="In logs with rows of click 0 (impressions), move each item's choice bias so that its pull on "
        "the fitted population follows its click-through rate when shown, shrunk toward the mean rate by a Beta "
        "prior fitted across items: the softmax fit sees only clicks, so an item clicked twice in few impressions "
        "would otherwise draw far more than its rate says. The rates are then matched on the simulator's own random "
        "slates.",
    )
    quality_from_ratings: bool = Field(
        True,
        description="In logs with ratings, split each item's fitted bias into quality (what satisfies, fitted to "
        "the ratings the item got beyond what its raters' interests explain) and appeal (the rest: what draws the "
        "choice). Choices stay as fitted; satisfaction, and so ratings, follow quality.",
    )
    quality_prior_events: float | None = Field(
        None,
        gt=0,
        description="Ratings' worth of shrinkage of an item's quality toward the mean of all items; null fits it "
        "(empirical Bayes: the ratings' variance within items over the variance of the items' true means; 10 where "
        "no item has two ratings).",
    )
    noise_from_ratings: bool = Field(
        True,
        description="With quality_from_ratings, set the population's engagement_noise (the spread of satisfaction "
        "about utility) to the spread of the ratings about their item's mean, pooled within items (where at least "
        "30 ratings lie beyond one per item); false keeps the simulator's default.",
    )
    text_features: bool = Field(
        False,
        description="Use the items' text (titles) as side information: each item's embedding and quality get a "
        "learned linear map of its text embedding added, so items with few events borrow from similar titles "
        "(needs the text extra).",
    )
    assumed_click_rate: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of random slates the simulated users click, where the logs cannot tell (no rows with "
        "click 0): the no-click utility is set to give it.",
    )
    slate_click_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Share of slates with a click that the no-click utility is set to give, in place of the logs' "
        "(rows of one user and timestamp): for logs whose rows were sampled from slates, where the rows of a slate "
        "are no longer together (null: from the logs, or assumed_click_rate where they cannot tell).",
    )
    assumed_satisfaction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Median satisfaction (sigmoid of utility) of a clicked item, where the logs have no ratings: "
        "sets where the fitted utilities sit.",
    )
    seed: int = Field(0, ge=0, description="Seeds initialisation, minibatches and mixtures.")


@dataclass
class Calibration:
    """A fitted population: the simulator config and world, the users' factors and how it was fitted."""

    config: SimulatorConfig
    world: dict[str, np.ndarray]
    user_factors: np.ndarray  # [num_users, d] of the training users (zeros for users without a clicked row)
    item_factors: np.ndarray  # [num_items, d]
    item_bias: np.ndarray  # [num_items]: the simulator's item quality (the fit's quality plus the offset)
    rating_quantiles: np.ndarray | None  # [101] quantiles of training ratings (None: no ratings)
    fit: dict[str, Any] = field(default_factory=dict)
    item_appeal: np.ndarray | None = None  # [num_items]: what draws the choice beyond quality (None: nothing)

    def utilities(self, users: np.ndarray) -> np.ndarray:
        """``[len(users), num_items]`` the users' utility of each item, what satisfaction follows (the simulator's,
        before fatigue)."""
        return self.user_factors[users] @ self.item_factors.T + self.item_bias[None, :]

    def scores(self, users: np.ndarray) -> np.ndarray:
        """``[len(users), num_items]`` the logits of the calibrated choice model: utility plus appeal (the
        simulator's, before fatigue)."""
        utility = self.utilities(users)
        return utility if self.item_appeal is None else utility + self.item_appeal[None, :]
