"""``metarec/DriftingUsers-v0`` and ``metarec/DriftingUsersSingle-v0``: single-user and vector classes."""

from __future__ import annotations

from typing import Any

from .adapters import UserSimEnv, UserSimVectorEnv
from .backend import Backend
from .drifting import DriftingUsersModel
from .population import SimulatorConfig, validate_config


def simulator_config(
    config: SimulatorConfig | dict[str, Any] | None, overrides: dict[str, Any], single_item: bool = False
) -> SimulatorConfig:
    """A validated :class:`SimulatorConfig` from a config object or dict plus keyword overrides
    (``catalog=...``, ``population=...``, ``slate_size=...``; nested dicts merge into the defaults)."""
    if isinstance(config, SimulatorConfig):
        base = config.model_dump()
    elif config is None:
        base = {}
    elif isinstance(config, dict):
        base = dict(config)
    else:
        raise ValueError(f"config: expected a SimulatorConfig, a dict or None, got {type(config).__name__}")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        elif hasattr(value, "model_dump"):
            base[key] = value.model_dump()
        else:
            base[key] = value
    if single_item:
        if base.get("slate_size", 1) != 1:
            raise ValueError(f"slate_size: single_item environments show one item, got {base['slate_size']}")
        base["slate_size"] = 1
    return validate_config(SimulatorConfig, base)


class DriftingUsersEnv(UserSimEnv):
    """Users of a catalog whose interests drift, shown a slate at each step.

    ## Description
    A user draws an anchor interest from one of the population's interest clusters and browses
    until their session budget runs out. At each step the recommender shows a slate of ``K`` of the
    ``N`` candidate items; the user picks one or nothing by a multinomial logit over
    ``interest · embedding + quality - fatigue`` with position bias, and watches the chosen item for
    ``satisfaction × length`` minutes. Interests drift by consumption, an Ornstein-Uhlenbeck random
    walk, abrupt regime shifts and population trends; per-topic fatigue builds up and recovers
    (all in :mod:`metarec.envs.drifting`). The defaults have every mechanism on at moderate rates.

    ## Observation Space
    ``Dict``: ``candidates`` ``Box(N, d + 1)`` (item embedding, length); ``candidate_ids``
    ``Box(N,)`` int64 catalog ids; ``history`` ``Box(H, d + 3)``, the last ``H`` steps oldest first
    (embedding of the consumed item or zeros, engagement, clicked flag, valid flag). The user's
    interest, fatigue and budget are hidden.

    ## Action Space
    ``MultiDiscrete([N] * K)``: candidate indices, best position first. A repeated index is shown
    once and its later positions stay empty. ``DriftingUsersSingle-v0``: ``Discrete(N)``.

    ## Rewards
    Engagement: minutes watched of the chosen item (0 without a click).

    ## Starting State
    A user drawn from the population: cluster uniform, anchor ~ N(centre, cluster_spread²),
    interest = anchor, no fatigue, a full budget and fresh candidates.

    ## Episode End
    Terminated when the session budget is spent (single-session), or when the user does not return
    after a session (multi-session, ``population={"num_sessions": S}``); truncated after
    ``max_session_steps`` steps of a session, or at the end of the last session in multi-session mode.

    ## Arguments
    ``config`` (a :class:`~metarec.envs.population.SimulatorConfig` or dict) and keyword overrides
    of its fields: ``catalog``, ``population`` (dicts merge into the defaults), ``num_candidates``,
    ``slate_size``, ``history_length``. ``single_item`` (``Discrete`` actions), ``ground_truth``
    (``info`` carries true utilities, the oracle's slate and value, regret), ``backend``
    (``"numpy"``, the fast path, or ``"torch"``, step-for-step equal to the vector env of one user).

    ``info`` after each step: ``clicked``, ``chosen_position``, ``chosen_candidate``,
    ``engagement``, ``satisfaction``, ``expected_reward`` (of the slate shown), ``regret``,
    ``regime_shift``, ``session_ended``, ``returned``; and for the next decision ``oracle_slate``,
    ``oracle_value``, ``candidate_utilities``.

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        config: SimulatorConfig | dict[str, Any] | None = None,
        *,
        single_item: bool = False,
        ground_truth: bool = True,
        backend: str = "numpy",
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode: this environment does not render, got {render_mode!r}")
        self.config = simulator_config(config, overrides, single_item)
        super().__init__(single_item=single_item, ground_truth=ground_truth, backend=backend)

    def build_model(self, backend: Backend) -> DriftingUsersModel:
        return DriftingUsersModel(self.config, backend)


class DriftingUsersVectorEnv(UserSimVectorEnv):
    """``num_envs`` users of :class:`DriftingUsersEnv` as one batch of torch tensors on ``device``.

    Same arguments as :class:`DriftingUsersEnv` (less ``backend``) plus ``num_envs``, ``device`` and
    ``autoreset``; see :mod:`metarec.envs.adapters` for the autoreset mode.
    """

    def __init__(
        self,
        num_envs: int,
        config: SimulatorConfig | dict[str, Any] | None = None,
        *,
        device: Any = "cpu",
        single_item: bool = False,
        ground_truth: bool = True,
        autoreset: bool = True,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode: this environment does not render, got {render_mode!r}")
        self.config = simulator_config(config, overrides, single_item)
        super().__init__(
            num_envs, device=device, single_item=single_item, ground_truth=ground_truth, autoreset=autoreset
        )

    def build_model(self, backend: Backend) -> DriftingUsersModel:
        return DriftingUsersModel(self.config, backend)
