"""Training runs of ``metarec train``: metarec's batched PPO or a stable-baselines3 algorithm."""

from metarec.agents.training.config import SB3Config, TrainConfig, TrainEvalConfig, load_config
from metarec.agents.training.run import load_recommender, train

__all__ = ["SB3Config", "TrainConfig", "TrainEvalConfig", "load_config", "load_recommender", "train"]
