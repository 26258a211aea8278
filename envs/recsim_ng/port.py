"""``metarec/RecSimNGInterestEvolution-v0``: a batched port of RecSim NG's interest-evolution model.

Source (recsim-ng 0.1.2): ``recsim_ng/applications/recsys_partially_observable_rl/`` —
``simulation_config.create_interest_evolution_simulation_network`` (2 topics, 100 documents, slate
2, frozen corpus), ``user.InterestEvolutionUser``, ``corpus.CorpusWithTopicAndQuality`` and
``metrics.ConsumedTimeAsRewardMetrics``; with ``entities/choice_models`` (``TargetPointSimilarity``
'negative_euclidean', ``MultinomialLogitChoiceModel``, ``get_chosen``) and
``entities/state_models/dynamic`` (``ControlledLinearScaledGaussianStateModel`` inside
``NoOPOrContinueStateModel``).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pydantic import Field

from metarec.envs.adapters import UserSimEnv
from metarec.envs.core.backend import Array, Backend, Random
from metarec.envs.core.choice import shared_revenue_order
from metarec.envs.core.finite import Float32Config, require_float32
from metarec.envs.core.model import Choice, ChoiceModel, Outcome, State, UserModel
from metarec.envs.vector import UserSimVectorEnv


class NGInterestEvolutionConfig(Float32Config):
    """RecSim NG interest-evolution parameters, with its defaults."""

    num_topics: int = Field(2, ge=1, description="Topics (and the dimension of features and interests).")
    num_docs: int = Field(100, ge=1, description="Documents in the frozen corpus; all are candidates.")
    slate_size: int = Field(2, ge=1, description="Documents per slate.")
    topic_min_utility: float = Field(-1.0, description="Mean quality of the worst topic.")
    topic_max_utility: float = Field(1.0, description="Mean quality of the best topic.")
    quality_std: float = Field(0.1, ge=0, description="Std of quality around the topic mean.")
    feature_std: float = Field(0.7, ge=0, description="Std of document features around one-hot(topic).")
    video_length: float = Field(2.0, gt=0, description="Length of every document.")
    no_click_mass: float = Field(
        0.0, le=88.0, description="Logit of choosing nothing (at most 88: its exp must be a finite float32)."
    )
    logit_offset: float = Field(
        2.0, le=88.0, description="Added to the affinities (-distance, at most 0) to form the logits (at most 88)."
    )
    interest_step_size: float = Field(0.1, ge=0, description="Step of the interest toward a consumed document.")
    max_user_affinity: float = Field(10.0, gt=0, description="Interests are squashed into ±2·max_user_affinity.")
    max_steps: int = Field(100, ge=1, description="Steps before truncation (RecSim NG runs a fixed horizon).")
    corpus_seed: int = Field(0, ge=0, description="Seed of the frozen corpus.")


class NGInterestEvolutionModel(UserModel):
    """Batched RecSim NG interest-evolution users over one frozen corpus.

    The corpus (drawn once from ``corpus_seed``): topic uniform, quality ~ N(mean_topic, 0.1²) with
    the topic means spaced as RecSim NG does (70% 'trashy' in [-1, 0], the rest in [0, 1]; for 2
    topics: -1 and 0), features ~ N(one-hot(topic), 0.7²), length 2. Users start with interests
    ~ N(0, I). Logits are 2 - ||interest - features|| for the shown documents and 0 for no choice;
    a chosen document is consumed for sigmoid(-quality) × length (the reward). The interest then
    takes a linear step 0.1 × quality × (features - interest) when something was consumed and, at
    every step, is squashed by x ↦ 4·m·(sigmoid(x/m) - 0.5), m = 10 (``InterestEvolutionUser``).
    """

    guarded_keys = ("interest",)

    def __init__(self, config: NGInterestEvolutionConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.num_candidates = config.num_docs
        self.slate_size = config.slate_size
        corpus = self.make_corpus(config)
        self.doc_features = backend.asarray(corpus["features"])  # [N, T]
        self.doc_squared_norm = self.xp.sum(self.doc_features * self.doc_features, axis=1)  # [N]
        self.doc_quality = backend.asarray(corpus["quality"])  # [N]
        self.doc_length = backend.asarray(corpus["length"])  # [N]
        self.consumed_if_chosen = backend.asarray(
            (corpus["length"] / (1.0 + np.exp(corpus["quality"]))).astype(np.float32)
        )
        self.doc_observation = backend.asarray(
            np.concatenate([corpus["features"], corpus["quality"][:, None], corpus["length"][:, None]], axis=1)
        )
        # the revenue of a document (its consumed time) is the same for every user, so the oracle's order is too
        order = shared_revenue_order(self.backend.to_numpy(self.consumed_if_chosen), config.slate_size)
        self.oracle_order = None if order is None else backend.asarray(order)
        self.position_weight = backend.asarray(np.ones(config.slate_size), np.float32)
        self.no_click_weight = backend.asarray(np.exp(config.no_click_mass), np.float32)

    @staticmethod
    def make_corpus(config: NGInterestEvolutionConfig) -> dict[str, np.ndarray]:
        """The frozen corpus for ``config.corpus_seed``: topic, quality, features and length per document."""
        rng = np.random.default_rng(config.corpus_seed)
        t = config.num_topics
        trashy = np.linspace(config.topic_min_utility, 0.0, int(t * 0.7))
        nutritious = np.linspace(0.0, config.topic_max_utility, t - int(t * 0.7))
        means = np.concatenate([trashy, nutritious])
        topic = rng.integers(0, t, config.num_docs)
        quality = means[topic] + config.quality_std * rng.standard_normal(config.num_docs)
        features = np.eye(t)[topic] + config.feature_std * rng.standard_normal((config.num_docs, t))
        require_float32(quality, "quality_std", "the corpus' qualities (topic mean + std x a normal draw)")
        # the choice model takes squared distances between interests and features, in float32
        require_float32(np.sum(features * features, axis=1), "feature_std", "the corpus' squared feature norms")
        return {
            "topic": topic,
            "quality": quality.astype(np.float32),
            "features": features.astype(np.float32),
            "length": np.full(config.num_docs, config.video_length, dtype=np.float32),
        }

    def initial_state(self, rng: Random, num_users: int) -> State:
        xp, device = self.xp, self.backend.device
        return {
            "interest": rng.normal((num_users, self.config.num_topics)),
            "step": xp.zeros((num_users,), dtype=xp.int64, device=device),
            "response": xp.zeros((num_users, self.slate_size, 2), dtype=xp.float32, device=device),
        }

    def choice_model(self, state: State, columns: Array | None = None) -> ChoiceModel:
        xp, be = self.xp, self.backend
        interest = state["interest"]  # [B, T]
        if columns is None:
            # ||u - f||² = |u|² - 2 u·f + |f|² over the whole corpus, without materialising [B, N, T]. Every pass
            # after the product is in place on it: the same roundings as (|u|² - 2 u·f) + |f|², as -2x + a is
            # a - 2x exactly, with one [B, N] array written instead of seven.
            squared = interest @ xp.permute_dims(self.doc_features, (1, 0))
            squared *= -2.0
            squared += self._squared_norms(interest)[:, None]
            squared += self.doc_squared_norm[None, :]
            revenue = be.broadcast_rows(self.consumed_if_chosen, squared.shape[0])  # a view, not a copy per user
        else:
            difference = interest[:, None, :] - be.take_rows(self.doc_features, columns)  # [B, J, T]
            squared = xp.sum(difference * difference, axis=2)
            revenue = be.take_rows(self.consumed_if_chosen, columns)
        # -sqrt(max(squared, 0)), in place on the fresh array; the weights exp(affinity + offset) are computed
        # only where read (a step reads the slate's and the oracle's columns of the whole corpus' ground truth)
        affinity = be.apply_("negative", be.apply_("sqrt", be.clamp_min_(squared, 0.0)))
        return ChoiceModel(None, revenue, self.no_click_weight, self.position_weight, affinity, self.weight_of)

    def _squared_norms(self, interest: Array) -> Array:
        """``sum(interest * interest, axis=1)``. With two topics, the one addition of the two columns: the same
        number (one rounding either way), several times faster than torch's sum along rows of two."""
        squares = interest * interest
        if squares.shape[1] == 2:
            return squares[:, 0] + squares[:, 1]
        return self.xp.sum(squares, axis=1)

    def weight_of(self, affinity: Array) -> Array:
        """The choice weights of candidates of these affinities: ``exp(affinity + logit_offset)``."""
        return self.backend.apply_("exp", affinity + self.config.logit_offset)

    def respond(self, rng: Random, state: State, on_slate: ChoiceModel, choice: Choice) -> tuple[State, Outcome]:
        xp, be, cfg = self.xp, self.backend, self.config
        click = xp.astype(choice.clicked, xp.float32)
        consumed = be.take_rows(self.consumed_if_chosen, choice.candidate) * click
        quality = be.take_rows(self.doc_quality, choice.candidate) * click
        features = be.take_rows(self.doc_features, choice.candidate)  # [B, T]
        interest = state["interest"]
        linear = interest + cfg.interest_step_size * quality[:, None] * (features - interest)
        m = cfg.max_user_affinity
        interest = 4.0 * m * (1.0 / (1.0 + xp.exp(-linear / m)) - 0.5)
        at_choice = choice.clicked_mask(xp)
        response = xp.stack([at_choice, at_choice * consumed[:, None]], axis=2)
        step = state["step"] + 1
        truncated = step >= cfg.max_steps
        new_state = {"interest": interest, "step": step, "response": response}
        return new_state, Outcome(consumed, xp.zeros_like(truncated), truncated, {"consumed_time": consumed})

    def observe(self, state: State) -> dict[str, Array]:
        b = state["step"].shape[0]
        # The corpus is the same for every user: a broadcast view, not a copy per user.
        candidates = self.xp.broadcast_to(self.doc_observation[None], (b, *self.doc_observation.shape))
        return {"candidates": candidates, "response": state["response"]}

    def observation_space(self) -> spaces.Dict:
        return spaces.Dict(
            {
                "candidates": spaces.Box(
                    -np.inf, np.inf, (self.num_candidates, self.config.num_topics + 2), np.float32
                ),
                "response": spaces.Box(0.0, np.inf, (self.slate_size, 2), np.float32),
            }
        )


class RecSimNGInterestEvolutionEnv(UserSimEnv):
    """RecSim NG's interest-evolution model (``recsys_partially_observable_rl``) as a Gymnasium env.

    ## Description
    A port of the user, corpus and metrics of RecSim NG's interest-evolution simulation (dynamics
    in :class:`NGInterestEvolutionModel`); the agent plays RecSim NG's recommender, choosing a slate
    of 2 from the 100 documents of a frozen corpus at each step. Used for side-by-side comparison
    with RecSim NG on equal work.

    ## Observation Space
    ``Dict``: ``candidates`` ``Box((100, T + 2))`` — every document's features, quality and length
    (what RecSim NG's ``available_documents`` hands its recommender); ``response`` ``Box((K, 2))`` —
    the previous slate's choice and consumed time per position. The user's interest is hidden (RecSim
    NG's user observation is empty).

    ## Action Space
    ``MultiDiscrete([100] * 2)``: document indices of the corpus.

    ## Rewards
    ``ConsumedTimeAsRewardMetrics``: the consumed time, clipped at 0 (0 without a choice).

    ## Starting State
    Interests ~ N(0, I) over 2 topics.

    ## Episode End
    Never terminated; truncated after ``max_steps`` = 100 steps (RecSim NG runs a fixed horizon).

    ## Arguments
    Fields of :class:`NGInterestEvolutionConfig` as keywords, ``single_item``, ``ground_truth``,
    ``backend``.

    ## Differences from RecSim NG
    RecSim NG draws the frozen corpus anew with each simulation run; here it is drawn once per
    environment from ``corpus_seed``. Random draws come from one explicit generator, so agreement
    is in distribution.

    ## Note
    The myopic oracle (``info["oracle_slate"]``) does worse than random here: low-quality documents
    are consumed longest, but consuming them (quality < 0) pushes the interest away from them, so
    greed now costs clicks later. The oracle is a one-step upper bound, not a long-term one.

    ## Version History
    * v0: initial version.
    """

    config_class = NGInterestEvolutionConfig
    model_class = NGInterestEvolutionModel


class RecSimNGInterestEvolutionVectorEnv(UserSimVectorEnv):
    """``num_envs`` users of :class:`RecSimNGInterestEvolutionEnv` as one batch on ``device``."""

    config_class = NGInterestEvolutionConfig
    model_class = NGInterestEvolutionModel
