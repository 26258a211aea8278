"""``metarec/RecSimInterestEvolution-v0``: a faithful, batched port of RecSim's interest_evolution.

Source: ``recsim/environments/interest_evolution.py`` (RecSim 0.2.4; the same file in recsim-no-tf
0.2.3): ``UtilityModelVideoSampler``, ``UtilityModelUserSampler``, ``IEvUserModel`` with
``MultinomialProportionalChoiceModel`` and ``clicked_watchtime_reward``, as built by its
``create_environment``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pydantic import Field

from metarec.envs.adapters import UserSimEnv
from metarec.envs.core.backend import Array, Backend, Random
from metarec.envs.core.choice import choose_one, revenue_ordered_slate_one, sums_in_order
from metarec.envs.core.finite import Float32Config
from metarec.envs.core.model import Choice, ChoiceModel, Outcome, State, UserModel
from metarec.envs.vector import UserSimVectorEnv


class InterestEvolutionConfig(Float32Config):
    """RecSim interest_evolution's parameters, with its defaults."""

    num_candidates: int = Field(10, ge=1, description="Documents offered per step.")
    slate_size: int = Field(2, ge=1, description="Documents per slate.")
    resample_documents: bool = Field(True, description="Draw new candidates every step (else once per user).")
    num_clusters: int = Field(20, ge=2, description="Topic clusters (one-hot document features).")
    min_utility: float = Field(-3.0, description="Mean quality of the worst ('trashy') cluster.")
    max_utility: float = Field(3.0, description="Mean quality of the best ('nutritious') cluster.")
    quality_std: float = Field(0.1, ge=0, description="Std of a document's quality around its cluster mean.")
    video_length: float = Field(4.0, gt=0, description="Length of every video (minutes).")
    time_budget: float = Field(200.0, gt=0, description="A user's initial time budget (minutes).")
    step_penalty: float = Field(0.5, ge=0, description="Budget spent by a step without a click.")
    no_click_mass: float = Field(1.0, description="Score of choosing nothing.")
    min_normalizer: float = Field(-1.0, description="Subtracted from every score (proportional choice).")
    user_update_alpha: float = Field(0.9 / 3.4, description="Budget refunded per minute watched per unit quality.")
    user_quality_factor: float = Field(0.0, description="Weight of the user's score in received utility.")
    document_quality_factor: float = Field(1.0, description="Weight of document quality in received utility.")
    alpha_x_intercept: float = Field(1.0, gt=0, description="Interest step size: x-intercept of the alpha line.")
    alpha_y_intercept: float = Field(0.3, ge=0, description="Interest step size at zero interest.")


class InterestEvolutionModel(UserModel):
    """Batched RecSim interest-evolution users.

    Per step: candidates are documents with a uniform random cluster c (features one-hot(c)) and a
    quality ~ N(mean_c, 0.1²), mean_c spaced over [-3, 0] for 70% of the clusters and [0, 3] for the
    rest. The user picks document j with probability ∝ interest[c_j] - min_normalizer, or nothing
    ∝ no_click_mass - min_normalizer. A click watches min(budget, 4) minutes (the reward), spends
    them from the budget and refunds ``user_update_alpha × watch_time × quality``; the clicked
    cluster's interest x moves by ±alpha(x)·(1 - x), alpha(x) = 0.3(1 - |x|), upward with
    probability (x + 1)/2, clipped to [-1, 1]. A step without a click costs 0.5 of the budget.
    The episode terminates when the budget reaches 0.
    """

    guarded_keys = ("interest", "budget", "doc_quality")

    def __init__(self, config: InterestEvolutionConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.num_candidates = config.num_candidates
        self.slate_size = config.slate_size
        c = config.num_clusters
        trashy = np.linspace(config.min_utility, 0, int(c * 0.7))
        nutritious = np.linspace(0, config.max_utility, int(c * 0.3))
        means = np.concatenate([trashy, nutritious])
        if len(means) < c:  # RecSim's split leaves no mean for some cluster counts; repeat the best
            means = np.concatenate([means, np.full(c - len(means), config.max_utility)])
        self.cluster_mean = backend.asarray(means, np.float32)
        self.clusters = backend.asarray(np.arange(c))
        self.position_weight = backend.asarray(np.ones(config.slate_size), np.float32)
        self.no_click_weight = backend.asarray(config.no_click_mass - config.min_normalizer, np.float32)

    def _draw_documents(self, rng: Random, num_users: int) -> tuple[Array, Array]:
        xp, be = self.xp, self.backend
        cluster = rng.integers(self.config.num_clusters, (num_users, self.num_candidates))
        quality = be.take_rows(self.cluster_mean, cluster) + self.config.quality_std * rng.normal(cluster.shape)
        return cluster, xp.astype(quality, xp.float32)

    def initial_state(self, rng: Random, num_users: int) -> State:
        xp = self.xp
        interest = 2.0 * rng.uniform((num_users, self.config.num_clusters)) - 1.0
        cluster, quality = self._draw_documents(rng, num_users)
        return {
            "interest": interest,
            "budget": xp.zeros((num_users,), dtype=xp.float32, device=self.backend.device) + self.config.time_budget,
            "doc_cluster": cluster,
            "doc_quality": quality,
            "response": xp.zeros((num_users, self.slate_size, 4), dtype=xp.float32, device=self.backend.device),
        }

    def choice_model(self, state: State, columns: Array | None = None) -> ChoiceModel:
        xp, be = self.xp, self.backend
        cluster = state["doc_cluster"] if columns is None else be.take_along(state["doc_cluster"], columns)
        score = be.take_along(state["interest"], cluster)  # [B, J]
        watch = xp.minimum(state["budget"], self.config.video_length)
        revenue = watch[:, None] + xp.zeros_like(score)
        return ChoiceModel(
            score - self.config.min_normalizer, revenue, self.no_click_weight, self.position_weight, score
        )

    def respond(self, rng: Random, state: State, on_slate: ChoiceModel, choice: Choice) -> tuple[State, Outcome]:
        xp, be, cfg = self.xp, self.backend, self.config
        clicked = choice.clicked
        b = clicked.shape[0]
        cluster = be.take_along(state["doc_cluster"], choice.candidate[:, None])[:, 0]
        quality = be.take_along(state["doc_quality"], choice.candidate[:, None])[:, 0]
        budget = state["budget"]
        watch = xp.where(clicked, xp.minimum(budget, cfg.video_length), 0.0)

        # Interest evolution of the clicked cluster (IEvUserModel.update_state).
        x = be.take_along(state["interest"], cluster[:, None])[:, 0]
        alpha = (-cfg.alpha_y_intercept / cfg.alpha_x_intercept) * xp.abs(x) + cfg.alpha_y_intercept
        update = alpha * (1.0 - x)
        upward = rng.uniform((b,)) < (x + 1.0) / 2.0
        x_new = xp.clip(x + xp.where(upward, update, -update), min=-1.0, max=1.0)
        changed = (cluster[:, None] == self.clusters[None, :]) & clicked[:, None]
        interest = xp.where(changed, x_new[:, None], state["interest"])

        # RecSim's "expected utility" is the choice model's normalised score, taken before the update.
        expected_utility = x - cfg.min_normalizer
        received = cfg.user_quality_factor * expected_utility + cfg.document_quality_factor * quality
        budget = xp.where(clicked, budget - watch + cfg.user_update_alpha * watch * received, budget - cfg.step_penalty)

        # RecSim's response observation for every slate position: click, watch_time, quality, cluster_id.
        slate_cluster = be.take_along(state["doc_cluster"], choice.slate)
        slate_quality = be.take_along(state["doc_quality"], choice.slate)
        at_choice = choice.clicked_mask(xp)
        response = xp.stack(
            [
                at_choice,
                at_choice * watch[:, None],
                slate_quality,
                xp.astype(slate_cluster, xp.float32),
            ],
            axis=2,
        )
        if cfg.resample_documents:
            doc_cluster, doc_quality = self._draw_documents(rng, b)
        else:
            doc_cluster, doc_quality = state["doc_cluster"], state["doc_quality"]
        new_state = {
            "interest": interest,
            "budget": budget,
            "doc_cluster": doc_cluster,
            "doc_quality": doc_quality,
            "response": response,
        }
        terminated = budget <= 0.0
        return new_state, Outcome(watch, terminated, xp.zeros_like(terminated), {"engagement": watch})

    def observe(self, state: State) -> dict[str, Array]:
        xp = self.xp
        features = xp.astype(state["doc_cluster"][:, :, None] == self.clusters[None, None, :], xp.float32)
        return {"user": state["interest"], "candidates": features, "response": state["response"]}

    def one_user(self) -> InterestEvolutionOneUser | None:
        # a subclass that changes the dynamics would be bypassed; the fused choice sums K + 1 floats in order
        if type(self) is not InterestEvolutionModel or self.backend.name != "numpy":
            return None
        return InterestEvolutionOneUser(self) if sums_in_order(self.slate_size + 1) else None

    def observation_space(self) -> spaces.Dict:
        c, n, k = self.config.num_clusters, self.num_candidates, self.slate_size
        return spaces.Dict(
            {
                "user": spaces.Box(-1.0, 1.0, (c,), np.float32),
                "candidates": spaces.Box(0.0, 1.0, (n, c), np.float32),
                "response": spaces.Box(-np.inf, np.inf, (k, 4), np.float32),
            }
        )


class InterestEvolutionOneUser:
    """:class:`InterestEvolutionModel`'s step, observation and oracle for one user, fused (see
    :class:`~metarec.envs.core.model.OneUserStep`): float32 scalars and a handful of small numpy calls in
    place of the batched step's ~150, with the same draws in the same order, so every trajectory is
    the batched one bit for bit (``tests/test_one_user_step.py``; signed zeros and the oracle's NaN
    and inf rules included). One known exception: where parameters make an interest NaN (an
    ``alpha_x_intercept`` near 0, say), that NaN may carry other bits than the batched step's."""

    def __init__(self, model: InterestEvolutionModel) -> None:
        cfg = self.config = model.config
        self.slate_size, self.num_candidates = model.slate_size, model.num_candidates
        self.cluster_mean = model.cluster_mean
        self.one_hot = np.eye(cfg.num_clusters, dtype=np.float32)
        self.position_weight = model.position_weight
        self.no_click_weight = model.no_click_weight + np.float32(0.0)  # a float32 scalar
        self.video_length = np.float32(cfg.video_length)
        self.slope = -cfg.alpha_y_intercept / cfg.alpha_x_intercept

    def _truth(self, state: State) -> tuple[np.ndarray, np.ndarray, np.float32]:
        """``(weights [N], utilities [N], watch)``: the choice model of every candidate."""
        utilities = state["interest"][0].take(state["doc_cluster"][0])
        watch = min(state["budget"][0], self.video_length)
        return utilities - self.config.min_normalizer, utilities, watch

    def oracle(self, state: State) -> tuple[np.ndarray, float, np.ndarray, tuple]:
        truth = weights, utilities, watch = self._truth(state)
        revenue = np.full(self.num_candidates, watch, dtype=np.float32)
        slate, value = revenue_ordered_slate_one(
            weights, revenue, self.no_click_weight, self.position_weight, self.slate_size
        )
        return slate, float(value), utilities, truth

    def step(
        self, generator: np.random.Generator, state: State, slate: list[int], truth: tuple | None
    ) -> tuple[State, float, bool, bool, dict[str, Any]]:
        cfg, k = self.config, self.slate_size
        interest, clusters, quality = state["interest"][0], state["doc_cluster"][0], state["doc_quality"][0]
        budget = state["budget"][0]
        if truth is None:
            weights = [interest[clusters[j]] - cfg.min_normalizer for j in slate]
            watch_if_clicked = min(budget, self.video_length)
        else:
            weights = [truth[0][j] for j in slate]
            watch_if_clicked = truth[2]
        shown = [np.float32(j not in slate[:i]) for i, j in enumerate(slate)]
        weights = [w * self.position_weight[i] * shown[i] for i, w in enumerate(weights)]
        index, probs = choose_one(generator.random(dtype=np.float32), weights, self.no_click_weight)
        clicked = index < k
        position = min(index, k - 1)
        chosen = slate[position]
        expected = sum((p * watch_if_clicked for p in probs[:k]), np.float32(0.0))  # as numpy sums: from +0

        # the response and the new state, as InterestEvolutionModel.respond
        cluster, chosen_quality = clusters[chosen], quality[chosen]
        watch = watch_if_clicked if clicked else np.float32(0.0)
        x = interest[cluster]
        update = (self.slope * abs(x) + cfg.alpha_y_intercept) * (1.0 - x)
        upward = np.float32(generator.random(dtype=np.float32)) < (x + 1.0) / 2.0
        if clicked:
            interest = interest.copy()
            interest[cluster] = min(max(x + (update if upward else -update), -1.0), 1.0)
            received = cfg.user_quality_factor * (x - cfg.min_normalizer) + cfg.document_quality_factor * chosen_quality
            budget = budget - watch + cfg.user_update_alpha * watch * received
        else:
            budget = budget - cfg.step_penalty
        response = np.empty((1, k, 4), dtype=np.float32)
        at_choice = response[0, :, 0]
        at_choice[:] = 0.0
        if clicked:
            at_choice[position] = 1.0
        response[0, :, 1] = at_choice * watch  # 0 x watch, not 0: a -0 or NaN as the batched step gives
        response[0, :, 2] = quality.take(slate)
        response[0, :, 3] = clusters.take(slate)
        if cfg.resample_documents:
            doc_cluster = generator.integers(0, cfg.num_clusters, (1, self.num_candidates), dtype=np.int64)
            noise = generator.standard_normal((1, self.num_candidates), dtype=np.float32)
            doc_quality = self.cluster_mean.take(doc_cluster) + cfg.quality_std * noise
        else:
            doc_cluster, doc_quality = state["doc_cluster"], state["doc_quality"]
        new_state = {
            "interest": interest[None, :] if clicked else state["interest"],
            "budget": np.array([budget], dtype=np.float32),
            "doc_cluster": doc_cluster,
            "doc_quality": doc_quality,
            "response": response,
        }
        info = {
            "clicked": clicked,
            "chosen_position": position if clicked else -1,
            "chosen_candidate": chosen if clicked else -1,
            "expected_reward": float(expected),
            "engagement": float(watch),
        }
        return new_state, float(watch), bool(budget <= 0.0), False, info

    def observe(self, state: State) -> dict[str, np.ndarray]:
        return {
            "user": state["interest"][0].copy(),
            "candidates": self.one_hot[state["doc_cluster"][0]],
            "response": state["response"][0].copy(),
        }


class RecSimInterestEvolutionEnv(UserSimEnv):
    """RecSim's interest-evolution environment (YouTube-like videos; the reward is watch time).

    ## Description
    A port of RecSim's ``interest_evolution`` environment, dynamics as in
    :class:`InterestEvolutionModel`, run on metarec's batched core. RecSim's published numbers for
    its agents carry over: a random agent scores about 154 with 10 candidates and slate 2.

    ## Observation Space
    ``Dict``: ``user`` ``Box(-1, 1, (20,))`` — the user's interests, which RecSim's
    ``IEvUserState.create_observation`` exposes; ``candidates`` ``Box(0, 1, (N, 20))`` — one-hot
    cluster features (RecSim's ``doc`` observation, as an array in candidate order); ``response``
    ``Box((K, 4))`` — the previous slate's responses per position: clicked, watch_time, quality,
    cluster_id (RecSim's ``response``; zeros before the first step; ``liked`` is never set by RecSim
    and is left out).

    ## Action Space
    ``MultiDiscrete([N] * K)``. RecSim shows a repeated document twice; here it is shown once
    (metarec's rule), which only matters to agents that repeat.

    ## Rewards
    ``clicked_watchtime_reward``: minutes watched of the clicked video (0 without a click).

    ## Starting State
    Interests ~ U(-1, 1)^20, time budget 200, fresh candidates (RecSim's ``UtilityModelUserSampler``).

    ## Episode End
    Terminated when the time budget is at or below 0; never truncated (RecSim sets no step limit).

    ## Arguments
    Fields of :class:`InterestEvolutionConfig` as keywords (``num_candidates=10``, ``slate_size=2``,
    ``resample_documents=True``, ...), ``single_item``, ``ground_truth``, ``backend``.

    ## Differences from RecSim
    Randomness comes from one explicit generator rather than RecSim's several seeded samplers and
    the global numpy state, so trajectories match RecSim in distribution, not draw for draw. With
    ``resample_documents=False`` each user keeps their first candidates (RecSim keeps one candidate
    set for the whole environment).

    ## Version History
    * v0: initial version.
    """

    config_class = InterestEvolutionConfig
    model_class = InterestEvolutionModel


class RecSimInterestEvolutionVectorEnv(UserSimVectorEnv):
    """``num_envs`` users of :class:`RecSimInterestEvolutionEnv` as one batch on ``device``."""

    config_class = InterestEvolutionConfig
    model_class = InterestEvolutionModel
