"""``metarec/RecSimLongTermSatisfaction-v0``: a batched port of RecSim's long_term_satisfaction.

Source: ``recsim/environments/long_term_satisfaction.py`` (RecSim 0.2.4 / recsim-no-tf 0.2.3):
``LTSStaticUserSampler``, ``LTSUserModel``, ``LTSDocumentSampler`` and ``clicked_engagement_reward``.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pydantic import Field

from metarec.envs.adapters import UserSimEnv
from metarec.envs.core.backend import Array, Backend, Random
from metarec.envs.core.finite import Float32Config
from metarec.envs.core.model import Choice, ChoiceModel, Outcome, State, UserModel
from metarec.envs.vector import UserSimVectorEnv


class LongTermSatisfactionConfig(Float32Config):
    """RecSim long_term_satisfaction's parameters, with its defaults."""

    num_candidates: int = Field(10, ge=1, description="Documents offered per step.")
    slate_size: int = Field(2, ge=1, description="Documents per slate (the user consumes the first).")
    resample_documents: bool = Field(True, description="Draw new candidates every step (else once per user).")
    memory_discount: float = Field(0.7, ge=0, lt=1, description="Decay of net positive exposure (NPE).")
    sensitivity: float = Field(0.01, ge=0, description="Satisfaction = sigmoid(sensitivity * NPE).")
    innovation_stddev: float = Field(0.05, ge=0, description="Noise std of the NPE transition.")
    choc_mean: float = Field(5.0, description="Log-engagement mean of fully clickbaity content.")
    choc_stddev: float = Field(1.0, ge=0, description="Log-engagement std of fully clickbaity content.")
    kale_mean: float = Field(4.0, description="Log-engagement mean of non-clickbaity content.")
    kale_stddev: float = Field(1.0, ge=0, description="Log-engagement std of non-clickbaity content.")
    time_budget: int = Field(60, ge=1, description="Documents a user consumes before leaving.")


class LongTermSatisfactionModel(UserModel):
    """Batched RecSim long-term-satisfaction ("chocolate or kale") users.

    Documents have a clickbait score ~ U(0, 1). The user always consumes the first document of the
    slate (RecSim's ``simulate_response`` selects index 0): engagement ~ exp(N(loc, scale²)) with
    loc = (cb·choc_mean + (1-cb)·kale_mean)·SAT and scale = cb·choc_stddev + (1-cb)·kale_stddev,
    SAT = sigmoid(sensitivity · NPE). Then NPE ← memory_discount·NPE − 2(cb − 0.5) + N(0, 0.05²)
    (the sign as in RecSim's code: clickbait lowers NPE) and one unit of budget is spent. NPE starts
    at (U(0, 1) − 0.5)/(1 − memory_discount); episodes last ``time_budget`` = 60 steps.
    """

    guarded_keys = ("npe", "satisfaction")

    def __init__(self, config: LongTermSatisfactionConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.num_candidates = config.num_candidates
        self.slate_size = config.slate_size
        first_only = np.zeros(config.slate_size)
        first_only[0] = 1.0
        self.position_weight = backend.asarray(first_only, np.float32)
        self.no_click_weight = backend.asarray(0.0, np.float32)

    def _sigmoid(self, x: Array) -> Array:
        return 1.0 / (1.0 + self.xp.exp(-x))

    def initial_state(self, rng: Random, num_users: int) -> State:
        xp, cfg = self.xp, self.config
        npe = (rng.uniform((num_users,)) - 0.5) * (1.0 / (1.0 - cfg.memory_discount))
        return {
            "npe": npe,
            "satisfaction": self._sigmoid(cfg.sensitivity * npe),
            "budget": xp.zeros((num_users,), dtype=xp.float32, device=self.backend.device) + float(cfg.time_budget),
            "clickbait": rng.uniform((num_users, self.num_candidates)),
            "response": xp.zeros((num_users, self.slate_size, 2), dtype=xp.float32, device=self.backend.device),
        }

    def _engagement_params(self, clickbait: Array, satisfaction: Array) -> tuple[Array, Array]:
        cfg = self.config
        loc = (clickbait * cfg.choc_mean + (1.0 - clickbait) * cfg.kale_mean) * satisfaction
        scale = clickbait * cfg.choc_stddev + (1.0 - clickbait) * cfg.kale_stddev
        return loc, scale

    def choice_model(self, state: State, columns: Array | None = None) -> ChoiceModel:
        xp = self.xp
        clickbait = state["clickbait"] if columns is None else self.backend.take_along(state["clickbait"], columns)
        loc, scale = self._engagement_params(clickbait, state["satisfaction"][:, None])
        revenue = xp.exp(loc + 0.5 * scale * scale)  # mean of the log-normal engagement
        ones = xp.ones_like(revenue)
        return ChoiceModel(ones, revenue, self.no_click_weight, self.position_weight, revenue)

    def respond(self, rng: Random, state: State, on_slate: ChoiceModel, choice: Choice) -> tuple[State, Outcome]:
        xp, be, cfg = self.xp, self.backend, self.config
        b = choice.clicked.shape[0]
        click = xp.astype(choice.clicked, xp.float32)
        cb = be.take_along(state["clickbait"], choice.candidate[:, None])[:, 0]
        loc, scale = self._engagement_params(cb, state["satisfaction"])
        engagement = xp.exp(loc + scale * rng.normal((b,))) * click
        npe = cfg.memory_discount * state["npe"] - 2.0 * (cb - 0.5) + cfg.innovation_stddev * rng.normal((b,))
        npe = xp.where(choice.clicked, npe, state["npe"])
        budget = state["budget"] - click
        at_choice = choice.clicked_mask(xp)
        response = xp.stack([at_choice, at_choice * xp.minimum(engagement, 100.0)[:, None]], axis=2)
        new_state = {
            "npe": npe,
            "satisfaction": self._sigmoid(cfg.sensitivity * npe),
            "budget": budget,
            "clickbait": rng.uniform((b, self.num_candidates)) if cfg.resample_documents else state["clickbait"],
            "response": response,
        }
        terminated = budget <= 0.0
        info = {"engagement": engagement, "net_positive_exposure": npe, "satisfaction": new_state["satisfaction"]}
        return new_state, Outcome(engagement, terminated, xp.zeros_like(terminated), info)

    def observe(self, state: State) -> dict[str, Array]:
        return {"candidates": state["clickbait"][:, :, None], "response": state["response"]}

    def observation_space(self) -> spaces.Dict:
        return spaces.Dict(
            {
                "candidates": spaces.Box(0.0, 1.0, (self.num_candidates, 1), np.float32),
                "response": spaces.Box(0.0, 100.0, (self.slate_size, 2), np.float32),
            }
        )


class RecSimLongTermSatisfactionEnv(UserSimEnv):
    """RecSim's long-term satisfaction environment: clickbait pays now and costs later.

    ## Description
    A port of RecSim's ``long_term_satisfaction`` environment (dynamics in
    :class:`LongTermSatisfactionModel`). Clickbaity ("chocolate") documents give more engagement
    now but lower the user's net positive exposure and with it future engagement; the myopic oracle
    falls for them. RecSim's random agent scores about 946-951 with 10 candidates and slate 2.

    ## Observation Space
    ``Dict``: ``candidates`` ``Box(0, 1, (N, 1))`` clickbait scores (RecSim's ``doc`` observation);
    ``response`` ``Box(0, 100, (K, 2))`` — the previous slate's click and engagement per position
    (engagement clipped to 100 as RecSim's ``LTSResponse`` does). RecSim's user observation is empty
    and is left out.

    ## Action Space
    ``MultiDiscrete([N] * K)``; only the first position is consumed, as in RecSim.

    ## Rewards
    ``clicked_engagement_reward``: the (unclipped) engagement with the consumed document.

    ## Starting State
    NPE = (U(0, 1) − 0.5)/(1 − 0.7); budget 60; fresh candidates.

    ## Episode End
    Terminated after ``time_budget`` = 60 steps; never truncated.

    ## Arguments
    Fields of :class:`LongTermSatisfactionConfig` as keywords, ``single_item``, ``ground_truth``,
    ``backend``.

    ## Differences from RecSim
    One explicit generator instead of RecSim's seeded samplers and global numpy state (parity is
    in distribution). ``resample_documents=False`` keeps each user's first candidates.

    ## Version History
    * v0: initial version.
    """

    config_class = LongTermSatisfactionConfig
    model_class = LongTermSatisfactionModel


class RecSimLongTermSatisfactionVectorEnv(UserSimVectorEnv):
    """``num_envs`` users of :class:`RecSimLongTermSatisfactionEnv` as one batch on ``device``."""

    config_class = LongTermSatisfactionConfig
    model_class = LongTermSatisfactionModel
