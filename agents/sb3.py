"""stable-baselines3 support: metarec's vector environments, networks and metrics inside SB3's algorithms.

* :class:`SB3VecEnv`: an SB3 ``VecEnv`` over a native torch vector env (one SB3 "env" per user).
* :class:`SlateActorCriticPolicy` (PPO, A2C), :class:`RecurrentSlatePolicy` (sb3-contrib's RecurrentPPO) and
  :class:`SlateDQNPolicy` (DQN on single-item envs), all built on :class:`~metarec.agents.nn.networks.SlatePolicy`;
  the actor-critic ones draw slates from its logits by Plackett–Luce (distinct items, exact log-probabilities).
* :class:`RecommenderMetricsCallback`: click rate, engagement and returns in TensorBoard.
* :func:`make_sb3_model` picks the policy for an algorithm; :class:`SB3Recommender` evaluates a trained model
  like any other :class:`~metarec.agents.base.Recommender`.

Needs the ``sb3`` extra (``pip install metarec[sb3]``)::

    env = SB3VecEnv(gym.make_vec("metarec/DriftingUsers-v0", num_envs=16, vectorization_mode="vector_entry_point"))
    model = make_sb3_model("ppo", env, seed=0)
    model.learn(20_000, callback=RecommenderMetricsCallback())
    evaluate("metarec/DriftingUsers-v0", SB3Recommender(model), users=1000)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn
from stable_baselines3.dqn.policies import DQNPolicy

from metarec.agents.base import Recommender
from metarec.agents.nn.distributions import PlackettLuce
from metarec.agents.nn.networks import HistoryKind, SlatePolicy

# Per-step engagement in the step info: minutes watched (DriftingUsers, long-term satisfaction) or
# watch time (RecSim's interest evolution).
ENGAGEMENT_KEYS = ("engagement", "watch_time")


# -- environment -------------------------------------------------------------------------------------------------


class SB3VecEnv(VecEnv):
    """An SB3 ``VecEnv`` over a native metarec vector env: SB3 sees one environment per simulated user.

    Observations are dicts of numpy arrays ``[B, ...]``, rewards float32 ``[B]``, dones bool ``[B]``. The
    native env resets finished users in the same step (``SAME_STEP`` autoreset), which is what SB3 expects: the
    returned observation is the new user's first, and the finished user's ``info`` holds
    ``terminal_observation``, ``TimeLimit.truncated`` (truncated and not terminated) and ``episode``
    (``r`` return, ``l`` length, ``t`` seconds since creation, as SB3's ``Monitor`` writes it, so SB3 logs
    ``rollout/ep_rew_mean`` unwrapped). Every ``info`` also carries the env's per-user step info (``clicked``,
    ``engagement``, ...) as Python scalars, for :class:`RecommenderMetricsCallback`.

    The users share one vector environment and one random generator: ``seed(s)`` seeds the next ``reset`` with
    ``s`` (SB3's per-env seeds ``s + i`` collapse to the first), ``get_attr`` reads the shared environment, and
    ``set_attr`` / ``env_method`` apply to the whole batch, so they refuse a subset of ``indices``.

    Args:
        vector_env: a metarec vector env, e.g. ``gym.make_vec(id, num_envs=B,
            vectorization_mode="vector_entry_point")``, in its default ``SAME_STEP`` autoreset mode.
    """

    def __init__(self, vector_env: VectorEnv) -> None:
        mode = vector_env.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(f"vector_env: expected the SAME_STEP autoreset mode (autoreset=True), got {mode}")
        self.venv = vector_env
        super().__init__(vector_env.num_envs, vector_env.single_observation_space, vector_env.single_action_space)
        self.keys = list(self.observation_space.spaces)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._created = time.time()

    def reset(self) -> VecEnvObs:
        if any(options != self._options[0] for options in self._options):
            raise ValueError("options: the users share one vector environment; set the same options for all")
        observation, info = self.venv.reset(seed=self._seeds[0], options=self._options[0] or None)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = self._per_user(info)
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self._numpy(observation)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape((self.num_envs, *self.action_space.shape))

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        observation, reward, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        rewards = reward.cpu().numpy().astype(np.float32)
        terminated, truncated = terminated.cpu().numpy(), truncated.cpu().numpy()
        dones = terminated | truncated
        infos = self._per_user(info)
        self._returns += rewards
        self._lengths += 1
        if dones.any():
            final = self._numpy(info["final_obs"])
            elapsed = round(time.time() - self._created, 6)
            for b in np.flatnonzero(dones):
                infos[b]["terminal_observation"] = {key: final[key][b] for key in self.keys}
                infos[b]["TimeLimit.truncated"] = bool(truncated[b] and not terminated[b])
                infos[b]["episode"] = {"r": float(self._returns[b]), "l": int(self._lengths[b]), "t": elapsed}
            self._returns[dones] = 0.0
            self._lengths[dones] = 0
        return self._numpy(observation), rewards, dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = self._attribute(attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._require_whole_batch(indices, "set_attr")
        setattr(self.venv.unwrapped, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list:
        self._require_whole_batch(indices, "env_method")
        result = self._attribute(method_name)(*method_args, **method_kwargs)
        return [result for _ in range(self.num_envs)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        # The users are rows of one batch, not gym.Env instances: no gym.Wrapper can wrap one of them.
        return [False for _ in self._get_indices(indices)]

    def _attribute(self, name: str) -> Any:
        """``name`` on the vector env given, else on the native env under its wrappers."""
        try:
            return getattr(self.venv, name)
        except AttributeError:
            return getattr(self.venv.unwrapped, name)

    def _require_whole_batch(self, indices: VecEnvIndices, method: str) -> None:
        if indices is not None and sorted(set(self._get_indices(indices))) != list(range(self.num_envs)):
            raise ValueError(
                f"indices: the {self.num_envs} users share one vector environment, so {method} applies to all "
                f"of them; got {indices!r}"
            )

    def _numpy(self, observation: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        # Copies: on CPU, numpy() shares memory with the simulator's state, which no caller may write to.
        return {key: np.array(observation[key].cpu().numpy()) for key in self.keys}

    def _per_user(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """The batched step info as one dict per user (scalars as Python numbers, rows as numpy arrays)."""
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, value in info.items():
            per_user = isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == self.num_envs
            if key.startswith("_") or key == "final_obs" or not per_user:
                continue
            column = value.cpu().numpy()
            for user_info, entry in zip(infos, column.tolist() if column.ndim == 1 else column, strict=True):
                user_info[key] = entry
        return infos


# -- policies ----------------------------------------------------------------------------------------------------


def slate_of(action_space: spaces.Space, observation_space: spaces.Dict) -> tuple[int, bool]:
    """``(K, single_item)`` of a metarec action space: ``Discrete(N)`` or ``MultiDiscrete([N] * K)``."""
    if isinstance(action_space, spaces.Discrete):
        slate_size, single_item, n = 1, True, int(action_space.n)
    elif (
        isinstance(action_space, spaces.MultiDiscrete)
        and action_space.nvec.ndim == 1
        and len(set(action_space.nvec.tolist())) == 1
    ):
        slate_size, single_item, n = len(action_space.nvec), False, int(action_space.nvec[0])
    else:
        raise ValueError(f"action_space: expected Discrete(N) or MultiDiscrete([N] * K), got {action_space}")
    candidates = observation_space["candidates"].shape[0]
    if n != candidates:
        raise ValueError(f"action_space: expected indices into the {candidates} candidates, got {action_space}")
    return slate_size, single_item


class SlateDistribution(Distribution):
    """SB3's view of a :class:`PlackettLuce` law: actions are slates ``[B, K]`` or, single-item, items ``[B]``.

    The logits come from :class:`SlatePolicy`, so there is no ``proba_distribution_net``.
    """

    def __init__(self, slate_size: int, single_item: bool) -> None:
        super().__init__()
        self.slate_size = slate_size
        self.single_item = single_item
        self.distribution: PlackettLuce | None = None

    def proba_distribution(self, logits: torch.Tensor) -> SlateDistribution:  # type: ignore[override]
        self.distribution = PlackettLuce(logits, self.slate_size)
        return self

    def proba_distribution_net(self, *args: Any, **kwargs: Any) -> torch.nn.Module:
        raise NotImplementedError("the logits come from SlatePolicy; a SlateDistribution has no network of its own")

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self._law.log_prob(self._slates(actions))

    def entropy(self, actions: torch.Tensor | None = None) -> torch.Tensor:
        """Exact where small enough, else the chain-rule estimate along ``actions`` (see PlackettLuce.entropy)."""
        return self._law.entropy(None if actions is None else self._slates(actions))

    def sample(self) -> torch.Tensor:
        return self._actions(self._law.sample())

    def mode(self) -> torch.Tensor:
        return self._actions(self._law.mode())

    def actions_from_params(self, logits: torch.Tensor, deterministic: bool = False) -> torch.Tensor:  # type: ignore[override]
        return self.proba_distribution(logits).get_actions(deterministic=deterministic)

    def log_prob_from_params(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        actions = self.actions_from_params(logits)
        return actions, self.log_prob(actions)

    @property
    def _law(self) -> PlackettLuce:
        if self.distribution is None:
            raise RuntimeError("proba_distribution(logits) has not been called")
        return self.distribution

    def _slates(self, actions: torch.Tensor) -> torch.Tensor:
        # SB3's buffers hand actions back as floats; single-item actions are [B] or [B, 1].
        actions = actions.long()
        return actions.reshape(-1, 1) if self.single_item else actions

    def _actions(self, slates: torch.Tensor) -> torch.Tensor:
        return slates[..., 0] if self.single_item else slates


class ObservationDict(BaseFeaturesExtractor):
    """Hands SB3's preprocessed observation dict through: :class:`SlatePolicy` reads candidates and context itself.

    Args:
        features_dim: what SB3 sizes on top of it; only the recurrent policy uses it (the LSTM's input is
            SlatePolicy's user context, ``hidden`` wide).
    """

    def __init__(self, observation_space: spaces.Dict, features_dim: int = 1) -> None:
        super().__init__(observation_space, features_dim)

    def forward(self, observations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return observations


def _slate_arguments(
    policy: BasePolicy,
    observation_space: spaces.Dict,
    action_space: spaces.Space,
    hidden: int,
    history_encoder: HistoryKind,
    use_sde: bool = False,
) -> None:
    """Checks and stores what every metarec SB3 policy is built from (before SB3's constructor runs)."""
    if use_sde:
        raise ValueError("use_sde: state-dependent exploration is for continuous actions; slates are discrete")
    policy.slate_size, policy.single_item = slate_of(action_space, observation_space)
    policy.hidden, policy.history_encoder = hidden, history_encoder


def _constructor_parameters(policy: BasePolicy) -> dict[str, Any]:
    """What SB3 saves to rebuild a metarec policy (each policy adds its own extras)."""
    return dict(
        observation_space=policy.observation_space,
        action_space=policy.action_space,
        lr_schedule=policy._dummy_schedule,
        hidden=policy.hidden,
        history_encoder=policy.history_encoder,
        optimizer_class=policy.optimizer_class,
        optimizer_kwargs=policy.optimizer_kwargs,
    )


class _SlateActorCritic:
    """The part of the PPO/A2C and RecurrentPPO policies that is the same: SlatePolicy, the slate law, the
    optimizer over both, and what SB3 saves to rebuild them."""

    def _build(self, lr_schedule: Schedule) -> None:
        # For RecurrentPPO, the LSTMs and the final optimizer come after this, in its __init__.
        self.slate_net = SlatePolicy(self.observation_space, self.slate_size, self.hidden, self.history_encoder)
        self.action_dist = SlateDistribution(self.slate_size, self.single_item)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return _constructor_parameters(self)


class SlateActorCriticPolicy(_SlateActorCritic, ActorCriticPolicy):
    """PPO / A2C policy: :class:`SlatePolicy` scores every candidate, slates are Plackett–Luce draws from the scores.

    Slates are drawn without replacement with exact log-probabilities; the entropy term uses
    ``PlackettLuce.entropy(taken slate)`` (exact where small enough, else an unbiased chain-rule estimate).
    Deterministic actions are the law's mode, the ``K`` best-scored candidates. SB3's ``net_arch``, features
    extractor and orthogonal initialisation do not apply: the network is SlatePolicy, with its own init.

    Args:
        hidden: SlatePolicy's layer width.
        history_encoder: how SlatePolicy encodes a ``history`` entry (``"gru"``, ``"transformer"``, ``"mlp"``).
        use_sde: must be False (passed by SB3's on-policy algorithms).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        hidden: int = 64,
        history_encoder: HistoryKind = "gru",
        use_sde: bool = False,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        _slate_arguments(self, observation_space, action_space, hidden, history_encoder, use_sde)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=[],
            ortho_init=False,
            features_extractor_class=ObservationDict,
            normalize_images=False,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )

    def forward(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        distribution, values = self._heads(obs)
        actions = distribution.get_actions(deterministic=deterministic)
        return actions, values, distribution.log_prob(actions)

    def evaluate_actions(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        distribution, values = self._heads(obs)
        return values, distribution.log_prob(actions), distribution.entropy(actions)

    def get_distribution(self, obs: dict[str, torch.Tensor]) -> SlateDistribution:
        return self._heads(obs)[0]

    def predict_values(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._heads(obs)[1]

    def _heads(self, obs: dict[str, torch.Tensor]) -> tuple[SlateDistribution, torch.Tensor]:
        """The slate law and values ``[B, 1]`` (SB3's shape) for a batch of observations."""
        logits, value = self.slate_net(self.extract_features(obs))
        distribution = SlateDistribution(self.slate_size, self.single_item).proba_distribution(logits)
        return distribution, value.unsqueeze(-1)


class RecurrentSlatePolicy(_SlateActorCritic, RecurrentActorCriticPolicy):
    """RecurrentPPO policy: an LSTM over SlatePolicy's user context, candidates scored against its output.

    Per step, SlatePolicy's context encoder (history encoder and context MLP) reads the observation; an actor
    LSTM and a critic LSTM (sb3-contrib's default layout, so the value loss trains memory too) run over those
    contexts across steps; SlatePolicy's candidate scorer and value head then read the LSTMs' outputs in place
    of the per-step context. Slates are Plackett–Luce draws from the scores, as in
    :class:`SlateActorCriticPolicy`. The LSTMs are ``hidden`` wide, as SlatePolicy's heads expect.

    Args:
        hidden: SlatePolicy's layer width and the LSTMs' hidden size.
        history_encoder: how SlatePolicy encodes a ``history`` entry.
        n_lstm_layers: stacked LSTM layers.
        lstm_kwargs: extra ``torch.nn.LSTM`` arguments.
        use_sde: must be False (passed by RecurrentPPO).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        hidden: int = 64,
        history_encoder: HistoryKind = "gru",
        n_lstm_layers: int = 1,
        lstm_kwargs: dict[str, Any] | None = None,
        use_sde: bool = False,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        _slate_arguments(self, observation_space, action_space, hidden, history_encoder, use_sde)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=[],
            ortho_init=False,
            features_extractor_class=ObservationDict,
            features_extractor_kwargs={"features_dim": hidden},
            normalize_images=False,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            lstm_hidden_size=hidden,
            n_lstm_layers=n_lstm_layers,
            lstm_kwargs=lstm_kwargs,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {
            **_constructor_parameters(self),
            "n_lstm_layers": self.lstm_actor.num_layers,
            "lstm_kwargs": self.lstm_kwargs,
        }

    def forward(
        self,
        obs: dict[str, torch.Tensor],
        lstm_states: RNNStates,
        episode_starts: torch.Tensor,
        deterministic: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RNNStates]:
        items, context = self._encode(obs)
        latent_pi, states_pi = self._process_sequence(context, lstm_states.pi, episode_starts, self.lstm_actor)
        latent_vf, states_vf = self._process_sequence(context, lstm_states.vf, episode_starts, self.lstm_critic)
        distribution = self._distribution(items, latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        values = self.slate_net.state_value(items, latent_vf).unsqueeze(-1)
        return actions, values, distribution.log_prob(actions), RNNStates(states_pi, states_vf)

    def get_distribution(
        self, obs: dict[str, torch.Tensor], lstm_states: tuple[torch.Tensor, torch.Tensor], episode_starts: torch.Tensor
    ) -> tuple[SlateDistribution, tuple[torch.Tensor, ...]]:
        items, context = self._encode(obs)
        latent_pi, states_pi = self._process_sequence(context, lstm_states, episode_starts, self.lstm_actor)
        return self._distribution(items, latent_pi), states_pi

    def predict_values(
        self, obs: dict[str, torch.Tensor], lstm_states: tuple[torch.Tensor, torch.Tensor], episode_starts: torch.Tensor
    ) -> torch.Tensor:
        items, context = self._encode(obs)
        latent_vf, _ = self._process_sequence(context, lstm_states, episode_starts, self.lstm_critic)
        return self.slate_net.state_value(items, latent_vf).unsqueeze(-1)

    def evaluate_actions(  # type: ignore[override]
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor, lstm_states: RNNStates, episode_starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items, context = self._encode(obs)
        latent_pi, _ = self._process_sequence(context, lstm_states.pi, episode_starts, self.lstm_actor)
        latent_vf, _ = self._process_sequence(context, lstm_states.vf, episode_starts, self.lstm_critic)
        distribution = self._distribution(items, latent_pi)
        values = self.slate_net.state_value(items, latent_vf).unsqueeze(-1)
        return values, distribution.log_prob(actions), distribution.entropy(actions)

    def _encode(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates' hidden features ``[B, N, hidden]`` (computed once) and SlatePolicy's per-step user
        context ``[B, hidden]`` (the LSTMs' input)."""
        observation = self.extract_features(obs)
        return self.slate_net.candidate_features(observation), self.slate_net.context(observation)

    def _distribution(self, items: torch.Tensor, latent_pi: torch.Tensor) -> SlateDistribution:
        return SlateDistribution(self.slate_size, self.single_item).proba_distribution(
            self.slate_net.logits(items, latent_pi)
        )


class SlateQNetwork(BasePolicy):
    """DQN's Q-network: SlatePolicy's candidate scores as Q-values ``[B, N]`` (its value head is unused).

    Permutation-equivariant: each candidate's Q-value comes from its own features and the user context, so
    reordering the candidates reorders the Q-values.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        hidden: int = 64,
        history_encoder: HistoryKind = "gru",
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            features_extractor=ObservationDict(observation_space),
            normalize_images=False,
        )
        self.hidden, self.history_encoder = hidden, history_encoder
        self.slate_net = SlatePolicy(observation_space, 1, hidden, history_encoder)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, _ = self.slate_net(self.extract_features(obs, self.features_extractor))
        return logits

    def _predict(self, observation: dict[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        return self(observation).argmax(dim=1)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return dict(
            observation_space=self.observation_space,
            action_space=self.action_space,
            hidden=self.hidden,
            history_encoder=self.history_encoder,
        )


class SlateDQNPolicy(DQNPolicy):
    """DQN policy for single-item envs (``Discrete(N)``): a :class:`SlateQNetwork` and its target copy.

    SB3's DQN keeps the target network (``q_net_target``) and its updates; only the network is metarec's.

    Args:
        hidden: SlatePolicy's layer width.
        history_encoder: how SlatePolicy encodes a ``history`` entry.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        hidden: int = 64,
        history_encoder: HistoryKind = "gru",
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        _slate_arguments(self, observation_space, action_space, hidden, history_encoder)
        if not self.single_item:
            raise ValueError(f"action_space: DQN scores one item per step; expected Discrete(N), got {action_space}")
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=[],
            features_extractor_class=ObservationDict,
            normalize_images=False,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )

    def make_q_net(self) -> SlateQNetwork:  # type: ignore[override]
        q_net = SlateQNetwork(self.observation_space, self.action_space, self.hidden, self.history_encoder)
        return q_net.to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return _constructor_parameters(self)


# -- metrics, construction, evaluation ---------------------------------------------------------------------------


class RecommenderMetricsCallback(BaseCallback):
    """Logs recommender metrics through SB3's logger (TensorBoard when ``tensorboard_log`` is set).

    Means since the last dump of the logs: ``recommender/ctr`` (clicks per step), ``recommender/engagement``
    (per step; ``watch_time`` where an env has no ``engagement``), ``recommender/episode_return`` (per finished
    episode, from ``info["episode"]``, which :class:`SB3VecEnv` or SB3's ``Monitor`` write) and, with
    ``reference``, ``recommender/normalised_return`` = ``(R - random) / (oracle - random)``.

    Args:
        reference: ``(random_return, oracle_return)``: mean returns of the random and oracle recommenders
            on the same environment (e.g. from :func:`metarec.evaluation.evaluate`).
    """

    def __init__(self, reference: tuple[float, float] | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        if reference is not None:
            random_return, oracle_return = (float(x) for x in reference)
            if oracle_return == random_return:
                raise ValueError(f"reference: the random and oracle returns must differ, got {reference}")
            reference = (random_return, oracle_return)
        self.reference = reference

    def _on_step(self) -> bool:
        infos: Sequence[dict[str, Any]] = self.locals["infos"]
        clicked = [info["clicked"] for info in infos if "clicked" in info]
        if clicked:
            self.logger.record_mean("recommender/ctr", float(np.mean(clicked)))
        engagement = [_engagement(info) for info in infos]
        engagement = [x for x in engagement if x is not None]
        if engagement:
            self.logger.record_mean("recommender/engagement", float(np.mean(engagement)))
        for info in infos:
            if "episode" not in info:
                continue
            episode_return = float(info["episode"]["r"])
            self.logger.record_mean("recommender/episode_return", episode_return)
            if self.reference is not None:
                random_return, oracle_return = self.reference
                normalised = (episode_return - random_return) / (oracle_return - random_return)
                self.logger.record_mean("recommender/normalised_return", normalised)
        return True


def _engagement(info: dict[str, Any]) -> float | None:
    for key in ENGAGEMENT_KEYS:
        if key in info:
            return float(info[key])
    return None


# Each algorithm make_sb3_model builds, with the policy it uses.
ALGORITHMS: dict[str, tuple[type[BaseAlgorithm], type[BasePolicy]]] = {
    "ppo": (PPO, SlateActorCriticPolicy),
    "a2c": (A2C, SlateActorCriticPolicy),
    "recurrent-ppo": (RecurrentPPO, RecurrentSlatePolicy),
    "dqn": (DQN, SlateDQNPolicy),
}


def make_sb3_model(
    algo: str,
    env: VecEnv | VectorEnv | gym.Env,
    *,
    seed: int,
    policy_kwargs: dict[str, Any] | None = None,
    algo_kwargs: dict[str, Any] | None = None,
    tensorboard_log: str | None = None,
    device: str | torch.device = "cpu",
) -> BaseAlgorithm:
    """An SB3 model with metarec's policy for ``algo``.

    Args:
        algo: ``"ppo"``, ``"a2c"`` (:class:`SlateActorCriticPolicy`), ``"recurrent-ppo"``
            (:class:`RecurrentSlatePolicy`) or ``"dqn"`` (:class:`SlateDQNPolicy`; single-item envs only).
        env: an SB3 VecEnv or gym.Env, or a native metarec vector env (wrapped in :class:`SB3VecEnv`).
        seed: seeds SB3 (torch, numpy, the env's next reset).
        policy_kwargs: the policy's arguments (``hidden``, ``history_encoder``, ...).
        algo_kwargs: the algorithm's (``n_steps``, ``learning_rate``, ...).
        tensorboard_log: directory for TensorBoard logs.
        device: where the policy lives.
    """
    if algo not in ALGORITHMS:
        raise ValueError(f"algo: expected one of {', '.join(ALGORITHMS)}, got {algo!r}")
    if isinstance(env, VectorEnv):
        env = SB3VecEnv(env)
    if algo == "dqn" and not isinstance(env.action_space, spaces.Discrete):
        raise ValueError(
            f"algo: 'dqn' needs a Discrete single-item environment (e.g. metarec/DriftingUsersSingle-v0), "
            f"got action space {env.action_space}"
        )
    algorithm, policy = ALGORITHMS[algo]
    return algorithm(
        policy,
        env,
        seed=seed,
        device=device,
        tensorboard_log=tensorboard_log,
        policy_kwargs=dict(policy_kwargs or {}),
        **(algo_kwargs or {}),
    )


class SB3Recommender(Recommender):
    """Acts with a trained SB3 model on batches of torch observations from a native vector env.

    A recurrent model (RecurrentPPO) keeps one LSTM state per user; :meth:`reset` clears them (for the users
    in ``mask``, through SB3's ``episode_start``).

    Args:
        model: a trained SB3 model whose observation and action spaces match the env's single-user spaces.
        deterministic: act with the policy's mode (the ``K`` best-scored candidates; greedy in Q for DQN);
            False samples a Plackett–Luce slate (ε-greedy at the model's exploration rate for DQN).
    """

    def __init__(self, model: BaseAlgorithm, deterministic: bool = True) -> None:
        self.model = model
        self.deterministic = deterministic
        self.recurrent = isinstance(model.policy, RecurrentActorCriticPolicy)
        self.name = f"sb3-{type(model).__name__.lower()}"
        self._lstm_states: tuple[np.ndarray, ...] | None = None
        self._episode_start: np.ndarray | None = None

    def act(self, observation: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        device = observation["candidates"].device
        batch = int(observation["candidates"].shape[0])
        obs = {key: value.cpu().numpy() for key, value in observation.items()}
        if not self.recurrent:
            actions, _ = self.model.predict(obs, deterministic=self.deterministic)
        else:
            if self._episode_start is None or len(self._episode_start) != batch:
                self._lstm_states, self._episode_start = None, np.ones(batch, dtype=bool)
            actions, self._lstm_states = self.model.predict(
                obs, state=self._lstm_states, episode_start=self._episode_start, deterministic=self.deterministic
            )
            self._episode_start = np.zeros(batch, dtype=bool)
        return torch.as_tensor(actions, dtype=torch.int64, device=device)

    def reset(self, mask: torch.Tensor | None = None) -> None:
        if mask is None:
            self._lstm_states, self._episode_start = None, None
        elif self._episode_start is not None:
            self._episode_start |= mask.cpu().numpy().astype(bool)
