"""RL² with a belief (``rl2.belief``): the per-user ridge regression the policy keeps in its memory is
LinUCB's, it starts over for new users only, and it survives a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from metarec.agents.bandits import LinUCBRecommender
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.policy import RecurrentSlatePolicy
from metarec.meta.rl2 import RL2Config, RL2Trainer, memory_from, memory_state
from metarec.meta.tasks import TaskDistribution, task_batch

from metarec.training import load_yaml_config

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def distribution() -> TaskDistribution:
    return load_yaml_config(TaskDistribution, ROOT / "configs" / "meta_tasks.yaml")


def test_the_belief_is_linucbs_regression_on_the_same_slates(distribution) -> None:
    """Shown LinUCB's slates, the policy's belief holds LinUCB's A⁻¹ and b for every user, and its two
    candidate features add up to LinUCB's scores (mean + std, alpha 1): across clicks, no-clicks and
    session ends, with item statistics among the features."""
    tasks = task_batch(distribution, "meta-test", 2, seed=0, index=0, sessions=3)
    env = TaskBatchVectorEnv(tasks, 16, autoreset=False, item_stats=True)
    observation, info = env.reset(seed=4)
    torch.manual_seed(0)
    policy = RecurrentSlatePolicy(env.single_observation_space, 5, 8, belief=True, belief_ridge=2.0)
    linucb = LinUCBRecommender(5, torch.Generator().manual_seed(0), target="reward", ridge=2.0, alpha=1.0)
    memory = policy.initial_memory(env.num_envs)
    clicks = 0
    for step in range(30):
        belief, beliefs = policy.believe(memory, observation)
        slate = linucb.act(observation, info)
        x = policy.regression_features(observation)
        torch.testing.assert_close(belief.inverse, linucb.inverse)
        torch.testing.assert_close(belief.response, linucb.response)
        torch.testing.assert_close(beliefs.sum(-1), linucb.scores(x, linucb.inverse, linucb.response, None))
        if step == 0:  # nothing seen yet: no prediction, the prior's width
            assert torch.all(beliefs[..., 0] == 0) and torch.all(beliefs[..., 1] > 0)
        memory = policy.remember(torch.zeros(env.num_envs, 8), belief, observation, slate)
        observation, reward, terminated, truncated, info = env.step(slate)
        clicks += int(info["clicked"].sum())
        linucb.observe(reward, terminated | truncated, info)
    assert clicks > 20  # the regression saw clicks, not only zeros
    assert float(beliefs[..., 0].std()) > 0.01  # and says something about the candidates


def test_the_belief_starts_over_for_new_users_only() -> None:
    from gymnasium import spaces

    space = spaces.Dict(
        {
            "candidates": spaces.Box(-1e9, 1e9, (6, 4 + 1), "float32"),
            "history": spaces.Box(-1e9, 1e9, (3, 4 + 3), "float32"),
        }
    )
    policy = RecurrentSlatePolicy(space, 2, 8, belief=True, belief_ridge=0.5)
    memory = policy.initial_memory(4)
    torch.testing.assert_close(memory.belief.inverse, torch.eye(6).expand(4, 6, 6) * 2.0)
    memory.belief.inverse += 1.0
    memory.belief.response += 1.0
    memory.belief.shown += 1.0
    memory.hidden += 1.0
    done = torch.tensor([True, False, True, False])
    reset = RecurrentSlatePolicy.reset_memory(memory, done)
    torch.testing.assert_close(reset.belief.inverse[done], torch.eye(6).expand(2, 6, 6) * 2.0)
    assert torch.all(reset.belief.inverse[~done] == memory.belief.inverse[~done])
    assert torch.all(reset.belief.response[done] == 0) and torch.all(reset.belief.response[~done] == 1)
    assert torch.all(reset.belief.shown[done] == 0) and torch.all(reset.belief.shown[~done] == 1)
    assert torch.all(reset.hidden[done] == 0) and torch.all(reset.hidden[~done] == 1)
    # a policy with a belief needs believe()'s features, one without refuses them
    observation = {"candidates": torch.zeros(4, 6, 5), "history": torch.zeros(4, 3, 7)}
    with pytest.raises(ValueError, match=r"beliefs: expected \[B, N, 2\] from believe\(\), got None"):
        policy.act_from(observation, reset.hidden)
    plain = RecurrentSlatePolicy(space, 2, 8)
    with pytest.raises(ValueError, match=r"beliefs: expected None \(this policy keeps no belief\)"):
        plain.act_from(observation, reset.hidden, torch.zeros(4, 6, 2))
    with pytest.raises(ValueError, match=r"belief_ridge: expected a number > 0, got 0"):
        RecurrentSlatePolicy(space, 2, 8, belief=True, belief_ridge=0)


def test_a_checkpoint_resumes_rl2_with_its_belief(distribution) -> None:
    config = RL2Config(tasks_per_batch=2, users_per_task=8, rollout_steps=4, updates=4, resample_every=3, hidden=8,
                       num_minibatches=2, update_epochs=1, belief=True)  # fmt: skip

    def trainer() -> RL2Trainer:
        return RL2Trainer(distribution, "meta-train", config, sessions=3, seed=5, item_stats=True)

    whole = trainer()
    for _ in range(4):
        whole.step()
    first = trainer()
    first.step()
    first.step()
    saved = first.state_dict()
    assert float((saved["processes"][0]["memory"]["response"]).abs().sum()) > 0  # it learned something
    resumed = trainer()
    resumed.load_state_dict(saved)
    resumed.step()
    resumed.step()
    for a, b in zip(whole.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(resumed.memory.belief.inverse, whole.memory.belief.inverse, rtol=0, atol=0)
    # a memory saved without a belief does not load into a policy that keeps one, and the reverse
    plain = {key: saved["processes"][0]["memory"][key] for key in ("hidden", "last_slate")}
    with pytest.raises(ValueError, match=r"has no belief, but rl2\.belief is True"):
        memory_from(plain, whole.policy, "cpu")
    assert set(memory_state(whole.memory)) == {"hidden", "last_slate", "inverse", "response", "shown"}
