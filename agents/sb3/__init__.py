"""stable-baselines3 support: metarec's vector environments, networks and metrics inside SB3's algorithms.

* :class:`SB3VecEnv`: an SB3 ``VecEnv`` over a native torch vector env (one SB3 "env" per user).
* :class:`SlateActorCriticPolicy` (PPO, A2C), :class:`RecurrentSlatePolicy` (sb3-contrib's RecurrentPPO) and
  :class:`SlateDQNPolicy` (DQN on single-item envs), all built on :class:`~metarec.agents.nn.networks.SlatePolicy`;
  the actor-critic ones draw slates from its logits by Plackett–Luce (distinct items, exact log-probabilities).
* :class:`RecommenderMetricsCallback`: click rate, engagement and returns in TensorBoard; :func:`tensorboard_logger`
  writes SB3's own statistics under the tags of metarec's batched PPO and meta-train.
* :func:`make_sb3_model` picks the policy for an algorithm; :class:`SB3Recommender` evaluates a trained model
  like any other :class:`~metarec.agents.base.Recommender`.
* :func:`load_sb3_weights`, :func:`restore_sb3_counters`, :func:`load_replay_buffer`: a saved model's weights,
  counters and replay buffer as plain data (never unpickled) into a model built from its config.

Needs the ``sb3`` extra (``pip install metarec[sb3]``)::

    env = SB3VecEnv(gym.make_vec("metarec/DriftingUsers-v0", num_envs=16, vectorization_mode="vector_entry_point"))
    model = make_sb3_model("ppo", env, seed=0)
    model.learn(20_000, callback=RecommenderMetricsCallback())
    evaluate("metarec/DriftingUsers-v0", SB3Recommender(model), users=1000)
"""

from metarec.agents.sb3.callbacks import (
    ENGAGEMENT_KEY,
    RecommenderMetricsCallback,
    TensorBoardLog,
    tensorboard_logger,
)
from metarec.agents.sb3.distribution import SlateDistribution, slate_of
from metarec.agents.sb3.policies import (
    ObservationDict,
    RecurrentSlatePolicy,
    SlateActorCriticPolicy,
    SlateDQNPolicy,
    SlateQNetwork,
)
from metarec.agents.sb3.recommender import ALGORITHMS, SB3Recommender, make_sb3_model
from metarec.agents.sb3.vec_env import SB3VecEnv
from metarec.agents.sb3.weights import load_replay_buffer, load_sb3_weights, restore_sb3_counters, save_replay_buffer

__all__ = [
    "ALGORITHMS",
    "ENGAGEMENT_KEY",
    "ObservationDict",
    "RecommenderMetricsCallback",
    "RecurrentSlatePolicy",
    "SB3Recommender",
    "SB3VecEnv",
    "SlateActorCriticPolicy",
    "SlateDQNPolicy",
    "SlateDistribution",
    "SlateQNetwork",
    "TensorBoardLog",
    "load_replay_buffer",
    "load_sb3_weights",
    "make_sb3_model",
    "restore_sb3_counters",
    "save_replay_buffer",
    "slate_of",
    "tensorboard_logger",
]
