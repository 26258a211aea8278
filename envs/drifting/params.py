"""Validated parameters of a catalog and a user population (a meta-RL task).

Both are immutable pydantic models: an unknown field or an out-of-range value is an error that
names the field and says what was expected. Defaults are the ones of ``metarec/DriftingUsers-v0``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from metarec.envs.core.finite import Float32Config


class CatalogConfig(Float32Config):
    """Items with a topic, a topic embedding, a quality and a length."""

    num_items: int = Field(1000, ge=1, description="Items in the catalog.")
    num_topics: int = Field(10, ge=1, description="Topics; each item belongs to one.")
    embedding_dim: int = Field(16, ge=1, description="Dimension d of item embeddings and user interests.")
    topic_spread: float = Field(0.35, ge=0, description="Std of an item's embedding around its topic centre.")
    quality_std: float = Field(0.5, ge=0, description="Std of item quality (a utility offset, mean 0).")
    appeal_std: float = Field(
        0.0, ge=0, description="Std of item appeal ('clickbait'): raises the chance of a click, not satisfaction."
    )
    min_length: float = Field(1.0, gt=0, description="Shortest item length (minutes).")
    max_length: float = Field(
        6.0, gt=0, description="Longest item length (minutes); times the slate size at most 1e12 (see SimulatorConfig)."
    )
    seed: int = Field(0, ge=0, description="Seed of the catalog and population geometry (the 'world').")
    churn_rate: float = Field(
        0.0,
        ge=0,
        description="Share of the catalog replaced per simulated day: each item retires with probability "
        "churn_rate / population.steps_per_day per step and a new item from the catalog's prior takes its slot "
        "(0: a fixed catalog).",
    )

    @model_validator(mode="after")
    def _lengths_ordered(self) -> CatalogConfig:
        if self.max_length < self.min_length:
            raise ValueError(f"max_length: expected >= min_length ({self.min_length}), got {self.max_length}")
        return self


class UserPopulation(Float32Config):
    """The distribution users are drawn from, their choice model and every drift mechanism.

    Each drift mechanism is off when its rate is zero.
    """

    # who the users are
    num_clusters: int = Field(4, ge=1, description="Interest clusters users are drawn from (uniformly).")
    topics_per_cluster: int = Field(2, ge=1, description="Topics mixed into each cluster centre.")
    interest_scale: float = Field(2.0, gt=0, description="Norm of a cluster centre in interest space.")
    cluster_spread: float = Field(0.5, ge=0, description="Std of a user's anchor interest around the centre.")
    # how they choose
    choice_temperature: float = Field(0.5, gt=0, description="Temperature of the multinomial logit.")
    no_click_utility: float = Field(1.0, description="Utility of choosing nothing.")
    quality_weight: float = Field(1.0, ge=0, description="Weight of item quality in utility.")
    position_bias: float = Field(0.15, ge=0, description="Choice weight at position k is exp(-bias * k).")
    engagement_noise: float = Field(0.3, ge=0, description="Std of noise on the satisfaction logit.")
    # how long they stay
    session_budget: float = Field(60.0, gt=0, description="Time budget of a session (minutes).")
    step_cost: float = Field(1.0, ge=0, description="Budget spent browsing one slate.")
    budget_bonus: float = Field(0.5, ge=0, le=1, description="Share of engagement refunded by a satisfying item.")
    max_session_steps: int = Field(200, ge=1, description="Steps after which a session is cut (truncation).")
    num_sessions: int = Field(1, ge=1, description="Sessions per episode; above 1 a user may return.")
    return_bias: float = Field(1.0, description="Logit of returning after a session of neutral satisfaction.")
    return_sensitivity: float = Field(6.0, ge=0, description="How strongly satisfaction raises the return logit.")
    # drift, each off at zero
    consumption_pull: float = Field(0.05, ge=0, le=1, description="Interest moves this share toward a consumed item.")
    ou_reversion: float = Field(0.02, ge=0, le=1, description="Ornstein-Uhlenbeck pull back to the anchor per step.")
    ou_noise: float = Field(0.03, ge=0, description="Ornstein-Uhlenbeck noise std per step and dimension.")
    shift_hazard: float = Field(0.002, ge=0, le=1, description="Per-step probability of an abrupt interest shift.")
    trend_rate: float = Field(0.2, ge=0, description="Distance cluster centres move per simulated day.")
    steps_per_day: int = Field(50, ge=1, description="Steps in a simulated day (for trends).")
    fatigue_rate: float = Field(0.3, ge=0, description="Fatigue added to a topic each time it is consumed.")
    fatigue_recovery: float = Field(0.1, ge=0, le=1, description="Share of fatigue that wears off each step.")
    fatigue_weight: float = Field(1.0, ge=0, description="Utility lost per unit of topic fatigue.")

    def without_drift(self) -> UserPopulation:
        """The same population with every drift mechanism off."""
        return self.model_copy(
            update=dict(consumption_pull=0.0, ou_reversion=0.0, ou_noise=0.0, shift_hazard=0.0, trend_rate=0.0)
        )


#: The most ``catalog.max_length * slate_size`` may be. A choice weight is exp(utility / choice_temperature)
#: with the exponent clamped at 60, so up to e^60 ~ 1.1e26; the oracle sums K of weight x length in float32,
#: which overflows (an infinite oracle value, a NaN regret) past 3.4e38 / 1.1e26 ~ 3e12.
MAX_LENGTH_TIMES_SLATE = 1e12


class SimulatorConfig(Float32Config):
    """Everything that defines a DriftingUsers environment besides the number of users.

    Besides each field's range: ``catalog.max_length * slate_size`` is at most 1e12 (``MAX_LENGTH_TIMES_SLATE``:
    past it the oracle's value overflows float32). Floats are within float32's range (:class:`Float32Config`);
    what else overflows (a huge ``cluster_spread`` or ``ou_noise``, say) stops the simulation with the NaN guard's
    ``FloatingPointError`` (:mod:`metarec.envs.core.finite`).
    """

    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    population: UserPopulation = Field(default_factory=UserPopulation)
    num_candidates: int = Field(20, ge=1, description="Candidates offered per step (N).")
    slate_size: int = Field(5, ge=1, description="Items per slate (K).")
    history_length: int = Field(10, ge=1, description="Past steps shown in the observation (H).")

    @model_validator(mode="after")
    def _sizes_fit(self) -> SimulatorConfig:
        if self.slate_size > self.num_candidates:
            raise ValueError(f"slate_size: expected <= num_candidates ({self.num_candidates}), got {self.slate_size}")
        if self.num_candidates > self.catalog.num_items:
            raise ValueError(
                f"num_candidates: expected <= catalog.num_items ({self.catalog.num_items}), got {self.num_candidates}"
            )
        if self.population.topics_per_cluster > self.catalog.num_topics:
            raise ValueError(
                f"population.topics_per_cluster: expected <= catalog.num_topics ({self.catalog.num_topics}), "
                f"got {self.population.topics_per_cluster}"
            )
        if self.catalog.churn_rate > self.population.steps_per_day:
            raise ValueError(
                f"catalog.churn_rate: expected at most population.steps_per_day ({self.population.steps_per_day}): "
                f"an item retires at most once a step, got {self.catalog.churn_rate}"
            )
        if self.catalog.max_length * self.slate_size > MAX_LENGTH_TIMES_SLATE:
            raise ValueError(
                f"catalog.max_length: expected at most {MAX_LENGTH_TIMES_SLATE:.0e} / slate_size ({self.slate_size}) "
                f"= {MAX_LENGTH_TIMES_SLATE / self.slate_size:.6g} (a choice weight, up to e^60, times an item's "
                f"length summed over the slate must stay within float32), got {self.catalog.max_length}"
            )
        return self
