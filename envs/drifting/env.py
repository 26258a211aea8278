"""``metarec/DriftingUsers-v0`` and ``metarec/DriftingUsersSingle-v0``: single-user and vector classes."""

from __future__ import annotations

from metarec.envs.adapters import UserSimEnv
from metarec.envs.drifting.model import DriftingUsersModel
from metarec.envs.drifting.params import SimulatorConfig
from metarec.envs.vector import UserSimVectorEnv


class DriftingUsersEnv(UserSimEnv):
    """Users of a catalog whose interests drift, shown a slate at each step.

    ## Description
    A user draws an anchor interest from one of the population's interest clusters and browses
    until their session budget runs out. At each step the recommender shows a slate of ``K`` of the
    ``N`` candidate items; the user picks one or nothing by a multinomial logit over
    ``interest · embedding + quality - fatigue`` with position bias, and watches the chosen item for
    ``satisfaction × length`` minutes. Interests drift by consumption, an Ornstein-Uhlenbeck random
    walk, abrupt regime shifts and population trends; per-topic fatigue builds up and recovers
    (all in :mod:`metarec.envs.drifting.model`). The defaults have every mechanism on at moderate rates.

    ## Observation Space
    ``Dict``: ``candidates`` ``Box(N, d + 1)`` (item embedding, length); ``candidate_ids``
    ``Box(N,)`` int64 catalog ids; ``history`` ``Box(H, d + 3)``, the last ``H`` steps oldest first
    (embedding of the consumed item or zeros, engagement, clicked flag, valid flag). The user's
    interest, fatigue and budget are hidden. With catalog churn (``catalog={"churn_rate": r}``),
    ``candidate_age`` ``Box(N,)``: days since each candidate entered the catalog.

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
    ``config`` (a :class:`~metarec.envs.drifting.params.SimulatorConfig` or dict) and keyword overrides
    of its fields: ``catalog``, ``population`` (dicts merge into the defaults), ``num_candidates``,
    ``slate_size``, ``history_length``. ``single_item`` (``Discrete`` actions), ``ground_truth``
    (``info`` carries true utilities, the oracle's slate and value, regret), ``backend``
    (``"numpy"``, the fast path, or ``"torch"``, step-for-step equal to the vector env of one user).

    ``info`` after each step: ``clicked``, ``chosen_position``, ``chosen_candidate``,
    ``engagement``, ``satisfaction``, ``expected_reward`` (of the slate shown), ``regret``,
    ``regime_shift``, ``session_ended``, ``returned``; and for the next decision ``oracle_slate``,
    ``oracle_value``, ``candidate_utilities``. With churn, ``item_arrived`` (``[M]`` bool per user, the
    same for all): the catalog ids that took a new item at this step.

    ## Version History
    * v0: initial version.
    """

    config_class = SimulatorConfig
    model_class = DriftingUsersModel


class DriftingUsersVectorEnv(UserSimVectorEnv):
    """``num_envs`` users of :class:`DriftingUsersEnv` as one batch of torch tensors on ``device``.

    Same arguments as :class:`DriftingUsersEnv` (less ``backend``) plus ``num_envs``, ``device`` and
    ``autoreset``; see :mod:`metarec.envs.adapters` for the autoreset mode.
    """

    config_class = SimulatorConfig
    model_class = DriftingUsersModel
