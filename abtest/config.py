"""The configuration of a simulated A/B test (a YAML file in ``configs/``), validated before any work.

An unknown key, a wrong type or an out-of-range value is an error that names the key; so is an arm,
metric or allocation that does not fit the rest of the config.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from metarec.abtest.metrics import METRICS
from metarec.agents.evaluation import check_env_kwargs
from metarec.config import FrozenConfig
from metarec.registration import ENVIRONMENTS, check_env_id
from metarec.resources import MIN_BYTES_PER_ENV, memory_problem

#: The fewest replicates a test may have when an arm's recommender learns across users: its users are then
#: not independent, and the interval of an effect rests on the variance between independent replicates of
#: the learner (a t interval with replicates - 1 degrees of freedom).
MIN_REPLICATES = 5


class ArmConfig(FrozenConfig):
    """One arm: a recommender by registry name (``metarec evaluate --agent`` names), training run directory or
    meta-trained method."""

    agent: str = Field(
        description="Recommender name (random, popular, linucb, ...), a `metarec train` run dir, or a "
        "meta-trained method (RUN/methods/METHOD.pt of a `metarec meta-train` run, e.g. rl2.pt or maml.pt)."
    )


class GuardrailConfig(FrozenConfig):
    """A metric a treatment must not make worse by more than ``max_drop`` (relative)."""

    metric: str = Field(description="A metric name (see metarec.abtest.metrics.METRICS).")
    max_drop: float = Field(0.01, ge=0, description="Largest tolerated relative loss, e.g. 0.01 = 1%.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        return _check_metric(value)


def _check_metric(value: str) -> str:
    if value not in METRICS:
        raise ValueError(f"expected one of {', '.join(METRICS)}")
    return value


class ABTestConfig(FrozenConfig):
    """One simulated A/B test.

    Designs: ``paired`` (default) runs every arm on the same ``users`` simulated users with the same
    environment random streams (common random numbers), so differences between arms are differences
    of policy only; ``independent`` randomises ``users`` users to the arms by ``allocation`` (each arm
    its own users, as in a live test). A "day" is one session of a user (the multi-session mode of
    the DriftingUsers environments); a user who does not come back after a session has left.
    """

    name: str = Field("abtest", min_length=1, description="Name shown in the report.")
    env: str = Field("metarec/DriftingUsers-v0", description="A registered metarec environment id.")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the environment.")
    arms: dict[str, ArmConfig] = Field(description="Arm name -> recommender; at least two arms.")
    control: str | None = Field(None, description="The control arm (default: the first arm).")
    users: int = Field(ge=2, description="Paired: users in every arm. Independent: users split across arms.")
    days: int = Field(ge=1, description="Simulated days (sessions per user) of the experiment.")
    pre_period_days: int = Field(
        0, ge=0, description="Days before the experiment, every user under the control arm (CUPED covariates)."
    )
    design: Literal["paired", "independent"] = Field("paired", description="See the class docstring.")
    allocation: dict[str, float] | None = Field(None, description="Independent design: share per arm (default equal).")
    primary_metric: str = Field("engagement", description="The metric the decision rests on.")
    guardrails: list[GuardrailConfig] = Field(default_factory=list, description="Metrics that must not get worse.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Two-sided level of every test and interval.")
    correction: Literal["holm", "bh", "none"] = Field("holm", description="Across treatments x metrics.")
    cuped: bool = Field(True, description="CUPED-adjust mean metrics with the pre-period (when there is one).")
    bootstrap: int = Field(
        0,
        ge=0,
        description="Percentile-bootstrap resamples for the absolute interval of mean metrics (0: t "
        "intervals); p-values, relative intervals and significance still come from the t-test.",
    )
    sequential: bool = Field(
        True, description="Group-sequential daily monitoring of the primary metric (alpha split over treatments)."
    )
    aa: bool = Field(False, description="A/A mode: every arm runs the control's recommender.")
    replicates: int = Field(
        1,
        ge=1,
        description="Independent replicates of the whole test, each with its own users and its own learner in "
        "every arm, each arm serving all `users`. More than 1 makes the replicate the unit of analysis; at least "
        "MIN_REPLICATES are needed when an arm's recommender learns across users (popular, meta-learned arms).",
    )
    seed: int = Field(0, ge=0, description="Seeds the users, the assignment and every recommender.")
    device: str = Field("cpu", description="Torch device of the simulation.")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads (None: torch's default).")
    max_steps: int = Field(1_000_000, ge=1, description="Safety limit of simulation steps per arm.")

    @field_validator("env")
    @classmethod
    def _known_env(cls, value: str) -> str:

        check_env_id(value)
        days_envs = [
            e.id for e in ENVIRONMENTS if e.module in ("metarec.envs.drifting.env", "metarec.envs.calibrated")
        ]
        if value not in days_envs:
            raise ValueError(
                f"expected an environment whose users come back day after day ({', '.join(days_envs)}); "
                "the RecSim ports have no sessions"
            )
        return value

    @field_validator("arms", mode="before")
    @classmethod
    def _arm_shorthand(cls, value: Any) -> Any:
        # ``arms: {control: popular}`` is short for ``arms: {control: {agent: popular}}``
        if isinstance(value, dict):
            return {name: {"agent": spec} if isinstance(spec, str) else spec for name, spec in value.items()}
        return value

    @field_validator("primary_metric")
    @classmethod
    def _known_primary(cls, value: str) -> str:
        return _check_metric(value)

    @field_validator("users")
    @classmethod
    def _users_fit(cls, value: int) -> int:
        # an upper bound before any work: every simulated user needs at least MIN_BYTES_PER_ENV
        problem = memory_problem(value, MIN_BYTES_PER_ENV)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _known_env_arguments(self) -> ABTestConfig:
        check_env_kwargs(self.env, self.env_kwargs)  # an unknown keyword stops the test before any work
        return self

    @model_validator(mode="after")
    def _consistent(self) -> ABTestConfig:
        if len(self.arms) < 2:
            raise ValueError(f"arms: expected at least two arms, got {len(self.arms)}")
        if self.control is not None and self.control not in self.arms:
            raise ValueError(f"control: expected one of the arms ({', '.join(self.arms)}), got {self.control!r}")
        if self.allocation is not None:
            if self.design != "independent":
                raise ValueError(
                    "allocation: only the independent design allocates users (paired runs all in every arm)"
                )
            if set(self.allocation) != set(self.arms):
                raise ValueError(
                    f"allocation: expected a share for each arm ({', '.join(self.arms)}), "
                    f"got {', '.join(self.allocation)}"
                )
            bad = {k: v for k, v in self.allocation.items() if not v > 0}
            if bad:
                raise ValueError(f"allocation: expected positive shares, got {bad}")
        if self.design == "independent":
            # users are assigned by a multinomial draw: expect at least 20 in the smallest arm, so that
            # none ends up with fewer than 2 (a chance below 1e-6)
            smallest = min(self.shares().values())
            if self.users * smallest < 20:
                needed = math.ceil(20 / smallest)
                raise ValueError(
                    f"users: expected at least {needed} for this allocation (20 in the smallest arm), got {self.users}"
                )
        return self

    @property
    def control_arm(self) -> str:
        return self.control if self.control is not None else next(iter(self.arms))

    @property
    def treatments(self) -> list[str]:
        return [name for name in self.arms if name != self.control_arm]

    def shares(self) -> dict[str, float]:
        """Intended share of users per arm (normalised)."""
        raw = self.allocation or {name: 1.0 for name in self.arms}
        total = sum(raw.values())
        return {name: raw[name] / total for name in self.arms}
