"""SB3 models with metarec's policies: :func:`make_sb3_model` builds one for an algorithm,
:class:`SB3Recommender` evaluates a trained one like any other :class:`~metarec.agents.base.Recommender`."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import VecEnv

from metarec.agents.base import Recommender
from metarec.agents.sb3.policies import RecurrentSlatePolicy, SlateActorCriticPolicy, SlateDQNPolicy
from metarec.agents.sb3.vec_env import SB3VecEnv

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

    def slate_propensity(self, num_candidates: int) -> float | None:
        return 1.0 if self.deterministic else None

    def export_module(self, keys: list[str]) -> torch.nn.Module:
        """The slate network of PPO or A2C (its K best candidates), or DQN's Q-network (its best one)."""
        from metarec.agents.export import SlateScorer

        if self.recurrent:
            raise ValueError(f"run: {self.name} is recurrent (sb3-contrib's RecurrentPPO), which does not export yet")
        q_net = getattr(self.model, "q_net", None)
        if q_net is not None:
            return SlateScorer(q_net.slate_net, keys, 1)
        return SlateScorer(self.model.policy.slate_net, keys, self.model.policy.slate_size)
