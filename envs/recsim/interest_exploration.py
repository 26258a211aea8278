"""``metarec/RecSimInterestExploration-v0``: a batched port of RecSim's interest_exploration.

Source: ``recsim/environments/interest_exploration.py`` (RecSim 0.2.4 / recsim-no-tf 0.2.3):
``IEClusterUserSampler``, ``IETopicDocumentSampler``, ``IEUserModel`` with
``MultinomialLogitChoiceModel`` and ``total_clicks_reward``.
"""

from __future__ import annotations

import math

import numpy as np
from gymnasium import spaces
from pydantic import Field, model_validator

from metarec.envs.adapters import UserSimEnv
from metarec.envs.core.backend import Array, Backend, Random
from metarec.envs.core.finite import Float32Config
from metarec.envs.core.model import Choice, ChoiceModel, Outcome, State, UserModel
from metarec.envs.vector import UserSimVectorEnv


class InterestExplorationConfig(Float32Config):
    """RecSim interest_exploration's parameters, with its defaults."""

    num_candidates: int = Field(10, ge=1, description="Documents offered per step.")
    slate_size: int = Field(2, ge=1, description="Documents per slate.")
    resample_documents: bool = Field(True, description="Draw new candidates every step (else once per user).")
    no_click_mass: float = Field(
        5.0, ge=0, le=88.0, description="Logit of choosing nothing (at most 88: its exp must be a finite float32)."
    )
    user_type_distribution: tuple[float, ...] = Field((0.3, 0.7), description="P(user type).")
    user_affinity_mean: tuple[tuple[float, ...], ...] = Field(
        ((0.1, 0.7), (0.7, 0.1)), description="Log-affinity mean, user type × topic."
    )
    user_affinity_stddev: tuple[tuple[float, ...], ...] = Field(
        ((0.1, 0.1), (0.1, 0.1)), description="Log-affinity std, user type × topic."
    )
    topic_distribution: tuple[float, ...] = Field((0.2, 0.8), description="P(document topic).")
    topic_quality_mean: tuple[float, ...] = Field((0.8, 0.2), description="Log-quality mean per topic.")
    topic_quality_stddev: tuple[float, ...] = Field((0.1, 0.1), description="Log-quality std per topic.")
    max_steps: int = Field(
        27000, ge=1, description="Steps before truncation; RecSim's user never leaves and its runner stops at 27000."
    )

    @model_validator(mode="after")
    def _shapes_agree(self) -> InterestExplorationConfig:
        types, topics = len(self.user_type_distribution), len(self.topic_distribution)
        for name in ("user_type_distribution", "topic_distribution"):
            values = getattr(self, name)
            if min(values) < 0 or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
                raise ValueError(f"{name}: expected non-negative probabilities summing to 1, got {values}")
        for name in ("user_affinity_mean", "user_affinity_stddev"):
            shape = (len(getattr(self, name)), {len(row) for row in getattr(self, name)})
            if shape != (types, {topics}):
                raise ValueError(f"{name}: expected {types} rows (user types) of {topics} (topics), got {shape}")
        for name in ("topic_quality_mean", "topic_quality_stddev"):
            if len(getattr(self, name)) != topics:
                raise ValueError(f"{name}: expected {topics} values (one per topic), got {len(getattr(self, name))}")
        return self


class InterestExplorationModel(UserModel):
    """Batched RecSim interest-exploration users: static topic affinities, logit choice, clicks.

    A user's type is drawn from ``user_type_distribution`` and their affinity to topic t from
    lognormal(mean[type, t], std[type, t]). Documents have a topic from ``topic_distribution`` and a
    quality from lognormal(topic_quality_mean[t], topic_quality_stddev[t]). The user scores a
    document affinity[t] + quality and chooses by a multinomial logit with the no-click option at
    logit ``no_click_mass``. The user state never changes; the reward is the number of clicks.
    """

    guarded_keys = ("affinity", "doc_quality")

    def __init__(self, config: InterestExplorationConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.num_candidates = config.num_candidates
        self.slate_size = config.slate_size
        self.num_topics = len(config.topic_distribution)
        self.type_cdf = backend.asarray(np.cumsum(config.user_type_distribution)[:-1], np.float32)
        self.topic_cdf = backend.asarray(np.cumsum(config.topic_distribution)[:-1], np.float32)
        self.affinity_mean = backend.asarray(np.array(config.user_affinity_mean), np.float32)
        self.affinity_std = backend.asarray(np.array(config.user_affinity_stddev), np.float32)
        self.quality_mean = backend.asarray(np.array(config.topic_quality_mean), np.float32)
        self.quality_std = backend.asarray(np.array(config.topic_quality_stddev), np.float32)
        self.position_weight = backend.asarray(np.ones(config.slate_size), np.float32)
        self.no_click_weight = backend.asarray(math.exp(config.no_click_mass), np.float32)

    def _categorical(self, rng: Random, cdf: Array, shape: tuple[int, ...]) -> Array:
        u = rng.uniform(shape)
        return self.xp.sum(self.xp.astype(u[..., None] >= cdf, self.xp.int64), axis=-1)

    def _draw_documents(self, rng: Random, num_users: int) -> tuple[Array, Array]:
        be, shape = self.backend, (num_users, self.num_candidates)
        topic = self._categorical(rng, self.topic_cdf, shape)
        log_quality = be.take_rows(self.quality_mean, topic) + be.take_rows(self.quality_std, topic) * rng.normal(shape)
        return topic, self.xp.exp(log_quality)

    def initial_state(self, rng: Random, num_users: int) -> State:
        xp, be = self.xp, self.backend
        user_type = self._categorical(rng, self.type_cdf, (num_users,))
        log_affinity = be.take_rows(self.affinity_mean, user_type) + be.take_rows(
            self.affinity_std, user_type
        ) * rng.normal((num_users, self.num_topics))
        topic, quality = self._draw_documents(rng, num_users)
        return {
            "affinity": xp.exp(log_affinity),
            "step": xp.zeros((num_users,), dtype=xp.int64, device=be.device),
            "doc_topic": topic,
            "doc_quality": quality,
            "response": xp.zeros((num_users, self.slate_size, 3), dtype=xp.float32, device=be.device),
        }

    def choice_model(self, state: State, columns: Array | None = None) -> ChoiceModel:
        xp, be = self.xp, self.backend
        topic, quality = state["doc_topic"], state["doc_quality"]
        if columns is not None:
            topic, quality = be.take_along(topic, columns), be.take_along(quality, columns)
        score = be.take_along(state["affinity"], topic) + quality
        weights = xp.exp(score)
        return ChoiceModel(weights, xp.ones_like(weights), self.no_click_weight, self.position_weight, score)

    def respond(self, rng: Random, state: State, on_slate: ChoiceModel, choice: Choice) -> tuple[State, Outcome]:
        xp, be = self.xp, self.backend
        b = choice.clicked.shape[0]
        clicks = xp.astype(choice.clicked, xp.float32)
        at_choice = choice.clicked_mask(xp)
        response = xp.stack(
            [
                at_choice,
                be.take_along(state["doc_quality"], choice.slate),
                xp.astype(be.take_along(state["doc_topic"], choice.slate), xp.float32),
            ],
            axis=2,
        )
        if self.config.resample_documents:
            topic, quality = self._draw_documents(rng, b)
        else:
            topic, quality = state["doc_topic"], state["doc_quality"]
        step = state["step"] + 1
        new_state = {
            "affinity": state["affinity"],
            "step": step,
            "doc_topic": topic,
            "doc_quality": quality,
            "response": response,
        }
        truncated = step >= self.config.max_steps
        return new_state, Outcome(clicks, xp.zeros_like(truncated), truncated, {})

    def observe(self, state: State) -> dict[str, Array]:
        xp = self.xp
        candidates = xp.stack([state["doc_quality"], xp.astype(state["doc_topic"], xp.float32)], axis=2)
        return {"candidates": candidates, "response": state["response"]}

    def observation_space(self) -> spaces.Dict:
        return spaces.Dict(
            {
                "candidates": spaces.Box(0.0, np.inf, (self.num_candidates, 2), np.float32),
                "response": spaces.Box(0.0, np.inf, (self.slate_size, 3), np.float32),
            }
        )


class RecSimInterestExplorationEnv(UserSimEnv):
    """RecSim's interest-exploration environment: find out which topic a user likes.

    ## Description
    A port of RecSim's ``interest_exploration`` environment (dynamics in
    :class:`InterestExplorationModel`). Users have static, hidden affinities to two topics; the
    more common topic has lower quality, so a recommender must explore to learn each user's type.

    ## Observation Space
    ``Dict``: ``candidates`` ``Box((N, 2))`` — quality and topic id of each document (RecSim's
    ``doc`` observation); ``response`` ``Box((K, 3))`` — the previous slate's click, quality and
    topic per position. RecSim's user observation is empty and is left out.

    ## Action Space
    ``MultiDiscrete([N] * K)``.

    ## Rewards
    ``total_clicks_reward``: 1 for a click, else 0.

    ## Starting State
    A user type ~ (0.3, 0.7) and affinities ~ lognormal per type and topic; fresh candidates.

    ## Episode End
    Never terminated (RecSim's ``IEUserModel.is_terminal`` is always False); truncated after
    ``max_steps`` = 27000 steps, RecSim's ``Runner.max_steps_per_episode`` default.

    ## Arguments
    Fields of :class:`InterestExplorationConfig` as keywords (e.g. ``max_steps=200``),
    ``single_item``, ``ground_truth``, ``backend``.

    ## Differences from RecSim
    One explicit generator (parity is in distribution); the step limit lives in the environment
    rather than in RecSim's runner; ``resample_documents=False`` keeps each user's first candidates.

    ## Version History
    * v0: initial version.
    """

    config_class = InterestExplorationConfig
    model_class = InterestExplorationModel


class RecSimInterestExplorationVectorEnv(UserSimVectorEnv):
    """``num_envs`` users of :class:`RecSimInterestExplorationEnv` as one batch on ``device``."""

    config_class = InterestExplorationConfig
    model_class = InterestExplorationModel
