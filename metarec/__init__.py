"""metarec: simulated users whose preferences drift, and recommenders that adapt to them.

Importing the package registers the environments under the ``metarec/`` namespace::

    import gymnasium as gym
    import metarec  # noqa: F401

    env = gym.make("metarec/DriftingUsers-v0")
"""

from metarec.registration import ENVIRONMENTS, register_envs

__version__ = "0.1.0"
__all__ = ["ENVIRONMENTS", "__version__", "register_envs"]

register_envs()
