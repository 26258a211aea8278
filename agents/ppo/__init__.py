"""Batched PPO on the native vector environment (see :mod:`metarec.agents.ppo.trainer`).

``config`` holds the hyper-parameters (:class:`PPOUpdateConfig`, shared with RL², and
:class:`PPOConfig`), ``loss`` the clipped objective and its gradient step, ``advantages`` the reward
scale and GAE, ``processes`` what a ``torch.distributed`` run needs, ``trainer`` :class:`BatchedPPO`
and ``recommender`` :class:`PolicyRecommender`.
"""

from metarec.agents.ppo.advantages import RunningMeanStd, generalized_advantages, standardise
from metarec.agents.ppo.config import PPOConfig, PPOUpdateConfig
from metarec.agents.ppo.processes import gather_from_processes, this_process_users
from metarec.agents.ppo.recommender import PolicyRecommender
from metarec.agents.ppo.trainer import BatchedPPO

__all__ = [
    "BatchedPPO",
    "PPOConfig",
    "PPOUpdateConfig",
    "PolicyRecommender",
    "RunningMeanStd",
    "gather_from_processes",
    "generalized_advantages",
    "standardise",
    "this_process_users",
]
