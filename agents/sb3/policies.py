"""metarec's networks as SB3 policies: PPO / A2C, sb3-contrib's RecurrentPPO and DQN, all on
:class:`~metarec.agents.nn.networks.SlatePolicy`, and the features extractor they share."""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.dqn.policies import DQNPolicy

from metarec.agents.nn.networks import HistoryKind, SlatePolicy
from metarec.agents.sb3.distribution import SlateDistribution, slate_of


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
