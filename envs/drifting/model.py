"""The DriftingUsers model: catalog users whose interests drift, batched over users.

A user has an anchor interest (drawn from one of the population's clusters) and a current interest
in the catalog's embedding space. The utility of item j to user i is

    u_ij = <interest_i, e_j> + quality_weight * q_j - fatigue_weight * fatigue_i[topic_j]

and the user picks one shown item, or nothing, by a multinomial logit with position bias:
P(position k) ∝ exp((u + a_j) / T) * exp(-position_bias * k), P(nothing) ∝ exp(no_click_utility / T),
where a_j is the item's appeal ("clickbait", off unless ``catalog.appeal_std`` > 0): it draws clicks
but adds nothing to satisfaction.
Consuming item j gives satisfaction s = sigmoid(u_ij + noise) and engagement (the reward)
s * length_j minutes; the session budget pays the browsing cost and the engagement, less a refund
for satisfying items, so good recommendations keep users longer (after RecSim's interest evolution).

Drift, each mechanism off at zero:
1. consumption: interest moves ``consumption_pull * (2s - 1)`` of the way toward the consumed item
   (away from it when unsatisfying), as in RecSim's interest-evolution model;
2. Ornstein-Uhlenbeck: interest reverts toward the anchor at ``ou_reversion`` with noise ``ou_noise``;
3. abrupt shifts: at rate ``shift_hazard`` a user's cluster, anchor and interest are re-drawn;
4. fatigue per topic, added on consumption and wearing off at ``fatigue_recovery`` per step;
5. population trends: each cluster's centre, and with it its users' anchors, moves along a fixed
   direction at ``trend_rate`` per simulated day;
6. catalog churn: at ``catalog.churn_rate`` of the catalog per simulated day, items retire and new
   ones from the catalog's prior take their ids (:mod:`metarec.envs.drifting.churn`). With churn on,
   the state holds the catalog's clock and the embeddings of the items in each user's history (an id
   may hold another item by the time it is observed), and the observation adds each candidate's age.

Candidates are drawn by stratified sampling: the catalog is shuffled once (by the world seed) into
N strata of near-equal size and one item is drawn uniformly from each, so the N candidates are
distinct and every item is equally likely to be offered, at O(N) cost per user.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from metarec.envs.core.backend import Array, Backend, Random
from metarec.envs.core.choice import per_user_column
from metarec.envs.core.model import Choice, ChoiceModel, Outcome, State, UserModel, push_history
from metarec.envs.drifting import compact
from metarec.envs.drifting.churn import CatalogTimeline, ChurningTables
from metarec.envs.drifting.params import SimulatorConfig
from metarec.envs.drifting.world import make_world, population_parameters

NO_CLICK = -1  # history entry of a step without a click
EMPTY = -2  # history entry before the first step


class DriftingUsersModel(UserModel):
    """Batched dynamics of ``metarec/DriftingUsers-v0`` and its variants (see the module docstring)."""

    guarded_keys = ("interest", "budget", "fatigue")

    def __init__(self, config: SimulatorConfig, backend: Backend, world: dict[str, np.ndarray] | None = None) -> None:
        self.config = config
        self.population = config.population
        self.backend = backend
        self.num_candidates = config.num_candidates
        self.slate_size = config.slate_size
        self.history_length = config.history_length
        self.world_numpy = make_world(config) if world is None else world
        self.world = {k: backend.asarray(v) for k, v in self.world_numpy.items()}
        # Observation lookup tables, so that observing is one gather per key (the hot path at large B):
        # a candidate's row [embedding, length]; a history entry's row [embedding or 0, engagement
        # (filled in per user), consumed, valid], indexed by history_item + 2 (EMPTY -> 0, NO_CLICK -> 1).
        self._build_tables()
        self.num_topics = int(max(config.catalog.num_topics, self.world_numpy["item_topic"].max() + 1))
        self.topics = backend.asarray(np.arange(self.num_topics))
        self.scalars = population_parameters(config.population, self.slate_size, backend)
        weight = self.world_numpy.get("cluster_weight")
        self.cluster_cdf = None if weight is None else backend.asarray(np.cumsum(weight).astype(np.float32))
        self._stratum_last = self.xp.astype(self.world["stratum_size"], self.xp.int64) - 1  # each stratum's last offset
        self.churn = self.catalog_timeline()
        self.catalog = None if self.churn is None else ChurningTables(self, self.churn)
        self._synced_clock: Array | None = None  # the state clock the tables were last brought to

    def _build_tables(self) -> None:
        backend = self.backend
        emb, length = self.world_numpy["item_embedding"], self.world_numpy["item_length"]
        d = emb.shape[1]
        past = np.zeros((emb.shape[0] + 2, d + 3), dtype=np.float32)
        past[1:, d + 2] = 1.0  # valid: a step was taken
        past[2:, d + 1] = 1.0  # consumed: an item was clicked
        past[2:, :d] = emb
        self.candidate_table = backend.asarray(np.concatenate([emb, length[:, None]], axis=1))
        self.has_appeal = bool(np.any(self.world_numpy["item_appeal"] != 0))
        self.history_table = backend.asarray(past)
        self.num_items = emb.shape[0]

    # -- catalog churn ----------------------------------------------------------------------
    def catalog_timeline(self) -> CatalogTimeline | None:
        """The catalog's churn (None when ``catalog.churn_rate`` is 0)."""
        if self.config.catalog.churn_rate == 0:
            return None
        if "topic_centre" not in self.world_numpy:
            raise ValueError(
                "catalog.churn_rate: this catalog has no topic centres to draw new items from (a calibrated "
                f"catalog is the one fitted to the logs); expected 0, got {self.config.catalog.churn_rate}"
            )
        return CatalogTimeline([self.config], [self.world_numpy["topic_centre"]], [0])

    def sync_catalog(self, state: State) -> None:
        """Brings the item tables to the catalog step of ``state`` (every row holds the same one). Reading the
        step is a device sync on a GPU, so a state whose clock was read last is not read again."""
        clock = None if self.catalog is None else state["catalog_step"]
        if clock is None or clock is self._synced_clock or clock.shape[0] == 0:
            return
        self.catalog.sync(int(clock[0]))
        self._synced_clock = clock

    def params(self, state: State) -> Any:
        """The population parameters that apply to each user (see :func:`population_parameters`)."""
        return self._params_of(state.get("task"))

    def _params_of(self, task: Array | None) -> Any:
        """Parameters of users of tasks ``task``: here the one population's, as Python floats; a batch
        of several populations gives ``[B]`` arrays instead (see :mod:`metarec.envs.task_batch`)."""
        return self.scalars

    # -- users ------------------------------------------------------------------------------
    def _draw_users(self, rng: Random, num_users: int, task: Array | None = None) -> tuple[Array, Array]:
        """Clusters ``[B]`` and anchor interests ``[B, d]`` of new users (of tasks ``task``, where the
        model holds several)."""
        if self.cluster_cdf is None:
            cluster = rng.integers(self.population.num_clusters, (num_users,))
        else:  # a calibrated population: clusters in their fitted shares
            drawn = self.xp.searchsorted(self.cluster_cdf, rng.uniform((num_users,)), side="right")
            cluster = self.xp.astype(self.xp.clip(drawn, 0, self.population.num_clusters - 1), self.xp.int64)
        noise = rng.normal((num_users, self.config.catalog.embedding_dim))
        anchor = self.backend.take_rows(self.world["cluster_centre"], cluster) + self.population.cluster_spread * noise
        return cluster, anchor

    def _draw_candidates(self, rng: Random, num_users: int, task: Array | None = None) -> Array:
        """``[B, N]`` distinct catalog items, one uniformly from each stratum."""
        xp, be, w = self.xp, self.backend, self.world
        u = rng.uniform((num_users, self.num_candidates))  # a fresh draw, scaled and floored in place
        u *= w["stratum_size"][None, :]
        offset = be.minimum_(xp.astype(be.apply_("floor", u), xp.int64), self._stratum_last[None, :])
        offset += w["stratum_start"][None, :]
        return be.take_rows(w["item_order"], offset)

    def initial_state(self, rng: Random, num_users: int, task: Array | None = None) -> State:
        xp, b, h = self.xp, num_users, self.history_length
        cluster, anchor = self._draw_users(rng, b, task)
        zeros_b = xp.zeros((b,), dtype=xp.float32, device=self.backend.device)
        counts_b = xp.zeros((b,), dtype=xp.int64, device=self.backend.device)
        budget = self._params_of(task).session_budget
        state = {
            "interest": anchor,
            "anchor": anchor,
            "cluster": cluster,
            "fatigue": xp.zeros((b, self.num_topics), dtype=xp.float32, device=self.backend.device),
            "budget": zeros_b + budget,
            "session": counts_b,
            "session_step": counts_b,
            "step": counts_b,
            "session_satisfaction": zeros_b,
            "session_clicks": zeros_b,
            "candidates": self._draw_candidates(rng, b, task),
            "history_item": xp.full((b, h), EMPTY, dtype=xp.int64, device=self.backend.device),
            "history_engagement": xp.zeros((b, h), dtype=xp.float32, device=self.backend.device),
        }
        if self.churn is not None:
            state["catalog_step"] = counts_b
            state["history_embedding"] = xp.zeros(
                (b, h, self.config.catalog.embedding_dim), dtype=xp.float32, device=self.backend.device
            )
        if self.population.num_sessions > 1:
            # whether the user comes back after session s is decided by draw s, fixed when the user is
            # drawn: the same user meets the same luck under every policy (common random numbers)
            state["return_draw"] = rng.uniform((b, self.population.num_sessions))
        return state

    def fresh_users(self, rng: Random, state: State, index: Array) -> State:
        fresh = self.initial_state(rng, int(index.shape[0]), state["task"][index] if "task" in state else None)
        if self.churn is not None:  # newcomers join the running catalog
            fresh["catalog_step"] = state["catalog_step"][index]
        return fresh

    # -- choice -----------------------------------------------------------------------------
    def choice_model(self, state: State, columns: Array | None = None) -> ChoiceModel:
        self.sync_catalog(state)
        be, w, p = self.backend, self.world, self.params(state)
        items = state["candidates"] if columns is None else be.take_along(state["candidates"], columns)  # [B, J]
        # a gather per column: one of [B, J, d + 3] rows would write and read them all through memory again
        # Every [B, J] array below is fresh, and each pass after the first is in place on one of them: the
        # arithmetic of (affinity + qw q) - fw f, exp(min(attraction / T, 60)) and length / (1 + exp(-u s)),
        # rounding for rounding (a product is the same either way round or with the sign moved across it).
        utility = be.row_dots(w["item_embedding"], items, state["interest"])  # the affinity, to start with
        quality = be.take_rows(w["item_quality"], items)
        quality *= per_user_column(p.quality_weight)
        utility += quality
        fatigue = be.take_along(state["fatigue"], be.take_rows(w["item_topic"], items))
        fatigue *= per_user_column(p.fatigue_weight)
        utility -= fatigue
        # appeal draws the click but is not what the user gets from the item (satisfaction uses utility)
        if self.has_appeal:
            weights = utility + be.take_rows(w["item_appeal"], items)
            weights /= per_user_column(p.choice_temperature)
        else:
            weights = utility / per_user_column(p.choice_temperature)
        weights = be.apply_("exp", be.clamp_max_(weights, 60.0))  # [B, N]
        decay = be.apply_("exp", utility * -per_user_column(p.revenue_scale))
        decay += 1.0
        revenue = be.take_rows(w["item_length"], items)
        revenue /= decay
        return ChoiceModel(weights, revenue, p.no_click_weight, p.position_weight, utility)

    # -- response and evolution -------------------------------------------------------------
    def respond(self, rng: Random, state: State, on_slate: ChoiceModel, choice: Choice) -> tuple[State, Outcome]:
        self.sync_catalog(state)
        xp, be, w, p = self.xp, self.backend, self.world, self.params(state)
        task = state.get("task")
        chosen, clicked = choice.candidate, choice.clicked
        b = clicked.shape[0]
        f32 = xp.float32
        click = xp.astype(clicked, f32)
        item = be.take_along(state["candidates"], chosen[:, None])[:, 0]  # [B]
        utility = be.take_along(on_slate.utilities, choice.position[:, None])[:, 0]

        # 3. response: satisfaction and engagement; the budget pays for browsing and watching.
        satisfaction = 1.0 / (1.0 + xp.exp(-(utility + p.engagement_noise * rng.normal((b,)))))
        engagement = click * satisfaction * be.take_rows(w["item_length"], item)
        budget = state["budget"] - p.step_cost - engagement * (1.0 - p.budget_bonus * (2.0 * satisfaction - 1.0))

        # 4. state evolution: fatigue, then the drift of interests.
        topic_onehot = xp.astype(be.take_rows(w["item_topic"], item)[:, None] == self.topics[None, :], f32)
        recovered = state["fatigue"] * (1.0 - per_user_column(p.fatigue_recovery))
        fatigue = recovered + per_user_column(p.fatigue_rate) * click[:, None] * topic_onehot
        # interest + pull (target - interest), then + reversion (anchor - interest) + noise, then + trend: each
        # [B, d] pass after the first in place on a fresh array, rounding for rounding as written out of place
        interest, anchor = state["interest"], state["anchor"]
        pull = p.consumption_pull * click * (2.0 * satisfaction - 1.0)
        moved = be.take_rows(w["item_embedding"], item)
        moved *= per_user_column(p.interest_scale)  # the target
        moved -= interest
        moved *= pull[:, None]
        moved += interest
        reverting = anchor - moved
        reverting *= per_user_column(p.ou_reversion)
        moved += reverting
        noise = rng.normal(interest.shape)
        noise *= per_user_column(p.ou_noise)
        moved += noise
        trend = self.trend(p, state["cluster"])
        anchor = anchor + trend
        moved += trend
        interest = moved
        shifted = rng.uniform((b,)) < p.shift_hazard
        new_cluster, new_anchor = self._draw_users(rng, b, task)
        cluster = xp.where(shifted, new_cluster, state["cluster"])
        anchor = xp.where(shifted[:, None], new_anchor, anchor)
        interest = xp.where(shifted[:, None], new_anchor, interest)

        # Session end, and in multi-session mode whether the user comes back.
        session_step = state["session_step"] + 1
        satisfaction_sum = state["session_satisfaction"] + click * satisfaction
        clicks = state["session_clicks"] + click
        out_of_budget = budget <= 0.0
        hit_limit = session_step >= p.max_session_steps
        session_over = out_of_budget | hit_limit
        if self.population.num_sessions == 1:
            returned = xp.zeros_like(session_over)
            terminated = out_of_budget
            truncated = hit_limit & ~out_of_budget
        else:
            last = state["session"] >= self.population.num_sessions - 1
            mean_satisfaction = satisfaction_sum / xp.maximum(clicks, 1.0)
            logit = p.return_bias + p.return_sensitivity * (mean_satisfaction - 0.5)
            draw = be.take_along(state["return_draw"], state["session"][:, None])[:, 0]
            comes_back = draw < 1.0 / (1.0 + xp.exp(-logit))
            returned = session_over & ~last & comes_back
            terminated = session_over & ~last & ~comes_back
            truncated = session_over & last
        budget = xp.where(returned, p.session_budget, budget)
        fatigue = xp.where(returned[:, None], 0.0, fatigue)  # topics are fresh again the next day

        history_item = push_history(xp, state["history_item"], xp.where(clicked, item, NO_CLICK))
        new_state = {
            **{key: state[key] for key in ("return_draw", "task") if key in state},  # fixed per user
            "interest": interest,
            "anchor": anchor,
            "cluster": cluster,
            "fatigue": fatigue,
            "budget": budget,
            "session": state["session"] + xp.astype(returned, xp.int64),
            "session_step": xp.where(returned, 0, session_step),
            "step": state["step"] + 1,
            "session_satisfaction": xp.where(returned, 0.0, satisfaction_sum),
            "session_clicks": xp.where(returned, 0.0, clicks),
            # 5. the next candidates.
            "candidates": self._draw_candidates(rng, b, task),
            "history_item": history_item,
            "history_engagement": push_history(xp, state["history_engagement"], engagement),
        }
        info = {
            "engagement": engagement,
            "satisfaction": xp.where(clicked, satisfaction, 0.0),
            "regime_shift": shifted,
            "session_ended": session_over,
            "returned": returned,
        }
        if self.churn is not None:
            # 6. the catalog's next step: its arrivals are applied before anything reads the next state
            new_state["catalog_step"] = state["catalog_step"] + 1
            consumed = be.take_rows(w["item_embedding"], item) * click[:, None]
            new_state["history_embedding"] = push_history(xp, state["history_embedding"], consumed)
            arrived = be.asarray(self.catalog.arrived_mask(self.catalog.clock + 1))
            info["item_arrived"] = be.broadcast_rows(arrived, b)
        return new_state, Outcome(engagement, terminated, truncated, info)

    def trend(self, params: Any, cluster: Array) -> Array:
        """``[B, d]``: how far one step moves the anchors of users in clusters ``cluster`` (``[B]``) along
        their population's trend (``params`` as :meth:`params` gives them)."""
        return per_user_column(params.drift_per_step) * self.backend.take_rows(self.world["trend_direction"], cluster)

    # -- what the agent sees ----------------------------------------------------------------
    def observe(self, state: State) -> dict[str, Array]:
        self.sync_catalog(state)
        be, d = self.backend, self.config.catalog.embedding_dim
        items = state["candidates"]
        history = be.take_rows(self.history_table, state["history_item"] - EMPTY)  # a fresh [B, H, d + 3]
        history[..., d] = state["history_engagement"]
        observation = {"candidates": be.take_rows(self.candidate_table, items), "candidate_ids": items}
        if self.churn is not None:
            history[..., :d] = state["history_embedding"]  # the items as they were when consumed
            xp = self.xp
            age = xp.astype(state["catalog_step"][:, None] - be.take_rows(self.catalog.item_birth, items), xp.float32)
            observation["candidate_age"] = age / per_user_column(self.params(state).steps_per_day)
        observation["history"] = history
        return observation

    # the compact observation (metarec.envs.drifting.compact): indices into tables shared by every user
    @property
    def compact_observation_refused(self) -> str | None:
        """Why this model has no compact observation, or None."""
        return None if self.churn is None else "a churning catalog (catalog.churn_rate > 0) changes the item tables"

    def compact_observation_space(self) -> spaces.Dict:
        return compact.compact_observation_space(self.num_candidates, self.history_length, self.num_items)

    def observe_compact(self, state: State) -> dict[str, Array]:
        return compact.observe_compact(state)

    def observation_tables(self) -> dict[str, Array]:
        return compact.observation_tables(self.candidate_table, self.history_table)

    def expand_observation(self, observation: dict[str, Array]) -> dict[str, Array]:
        return compact.expand_observation(observation, self.observation_tables())

    def observation_space(self) -> spaces.Dict:
        n, h, d = self.num_candidates, self.history_length, self.config.catalog.embedding_dim
        entries = {
            "candidates": spaces.Box(-np.inf, np.inf, (n, d + 1), np.float32),
            "candidate_ids": spaces.Box(0, self.num_items - 1, (n,), np.int64),
            "history": spaces.Box(-np.inf, np.inf, (h, d + 3), np.float32),
        }
        if self.churn is not None:  # days since each candidate entered the catalog
            entries["candidate_age"] = spaces.Box(0.0, np.inf, (n,), np.float32)
        return spaces.Dict(entries)
