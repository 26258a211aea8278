"""The RecSim ports score what RecSim scores, checked against RecSim's own code (recsim-no-tf).

Each test runs RecSim's environment with its random agent in-process and metarec's port with the
random recommender on many users, then requires (a) no significant difference at level 0.001
(Welch's two-sample t-test) and (b) means within 2% of each other.
"""

import warnings

import numpy as np
import pytest
from scipy import stats

from metarec.agents.evaluation import evaluate

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    recsim = pytest.importorskip("recsim.environments.interest_evolution", reason="recsim-no-tf is a test extra")
    from recsim.agents import random_agent
    from recsim.environments import interest_exploration, long_term_satisfaction


def recsim_returns(module, episodes, seed=0, max_steps=None):
    np.random.seed(seed)  # RecSim's choice models draw from the global numpy state
    env = module.create_environment({"num_candidates": 10, "slate_size": 2, "resample_documents": True, "seed": seed})
    agent = random_agent.RandomAgent(env.action_space, random_seed=seed)
    returns = []
    for _ in range(episodes):
        obs, reward, done, total, steps = env.reset(), 0.0, False, 0.0, 0
        while not done and (max_steps is None or steps < max_steps):
            obs, reward, done, _ = env.step(agent.step(reward, obs))
            total += reward
            steps += 1
        returns.append(total)
    return np.array(returns)


def port_returns(env_id, users, **env_kwargs):
    import gymnasium as gym
    import torch

    from metarec.agents import RandomRecommender

    env = gym.make_vec(
        env_id, num_envs=users, vectorization_mode="vector_entry_point", array_backend="torch", **env_kwargs
    )
    agent = RandomRecommender(2, torch.Generator().manual_seed(1))
    obs, info = env.reset(seed=0)
    total = torch.zeros(users, dtype=torch.float64)
    running = torch.ones(users, dtype=torch.bool)
    while running.any():
        obs, reward, terminated, truncated, info = env.step(agent.act(obs, info))
        total += reward.double() * running
        running &= ~(terminated | truncated)
    return total.numpy()


@pytest.mark.parametrize(
    "module, env_id, episodes, env_kwargs, max_steps",
    [
        ("interest_evolution", "metarec/RecSimInterestEvolution-v0", 400, {}, None),
        ("long_term_satisfaction", "metarec/RecSimLongTermSatisfaction-v0", 600, {}, None),
        # RecSim's interest-exploration users never leave: compare 100-step episodes.
        ("interest_exploration", "metarec/RecSimInterestExploration-v0", 300, {"max_steps": 100}, 100),
    ],
)
def test_random_agent_returns_match_recsim(module, env_id, episodes, env_kwargs, max_steps):
    modules = {
        "interest_evolution": recsim,
        "long_term_satisfaction": long_term_satisfaction,
        "interest_exploration": interest_exploration,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = recsim_returns(modules[module], episodes, max_steps=max_steps)
    ours = port_returns(env_id, 20_000, **env_kwargs)
    _, p_value = stats.ttest_ind(ours, reference, equal_var=False)
    assert p_value > 1e-3, (ours.mean(), reference.mean())
    assert ours.mean() == pytest.approx(reference.mean(), rel=0.02)


@pytest.mark.parametrize(
    "env_id, published",
    [
        ("metarec/RecSimInterestEvolution-v0", 154.0),  # RecSim random agent, 10 candidates, slate 2
        ("metarec/RecSimLongTermSatisfaction-v0", 948.5),  # 946-951
    ],
)
def test_random_agent_scores_the_published_numbers(env_id, published):
    result = evaluate(env_id, "random", 10_000, seed=3)
    assert result["mean_return"] == pytest.approx(published, rel=0.02)
