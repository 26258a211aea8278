"""Hyper-parameters of PPO: the ones every PPO update here shares, and those of :class:`BatchedPPO`.

:class:`PPOUpdateConfig` declares the settings of the rollout, the advantages and the clipped update
(CleanRL's names where they exist); :class:`PPOConfig` (batched PPO) and
:class:`~metarec.meta.rl2.RL2Config` (RL²) extend it, overriding a default where theirs differs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metarec.config import FrozenConfig


class PPOUpdateConfig(FrozenConfig):
    """The settings of PPO's rollouts, advantages and clipped updates (see :mod:`metarec.agents.ppo.loss`)."""

    rollout_steps: int = Field(32, ge=1, description="Steps per user in each rollout.")
    learning_rate: float = Field(3e-4, gt=0, description="Adam step size.")
    gamma: float = Field(0.99, ge=0, le=1, description="Discount factor.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    num_minibatches: int = Field(4, ge=1, description="Minibatches per epoch.")
    update_epochs: int = Field(4, ge=1, description="Passes over each rollout.")
    clip_coef: float = Field(0.2, gt=0, description="PPO ratio clip.")
    ent_coef: float = Field(0.01, ge=0, description="Entropy bonus weight.")
    vf_coef: float = Field(0.5, ge=0, description="Value loss weight.")
    max_grad_norm: float = Field(0.5, gt=0, description="Global gradient norm clip.")


class PPOConfig(PPOUpdateConfig):
    """Hyper-parameters of :class:`~metarec.agents.ppo.trainer.BatchedPPO` (CleanRL's names where they exist)."""

    num_envs: int = Field(1024, ge=1, description="Users stepping in parallel.")
    anneal_lr: bool = Field(True, description="Decay the learning rate linearly to 0 over training.")
    clip_value: bool = Field(False, description="Clip the value loss like the policy ratio.")
    target_kl: float | None = Field(None, gt=0, description="Stop an update's epochs once approx KL exceeds this.")
    normalize_advantages: bool = Field(True, description="Standardise advantages per minibatch.")
    normalize_rewards: bool = Field(
        True, description="Divide rewards by a running std of the discounted return (as Gymnasium's NormalizeReward)."
    )
    hidden: int = Field(64, ge=1, description="Width of the policy/value network.")
    history_encoder: Literal["gru", "transformer", "mlp"] = Field("gru", description="Encoder of `history`.")
