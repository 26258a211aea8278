"""RL² with a belief (``rl2.belief``): the per-user ridge regression the policy keeps in its memory is
LinUCB's, it starts over for new users only, and it survives a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gymnasium import spaces

from metarec.agents.baselines.linear import LinUCBRecommender
from metarec.config import load_yaml_config
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.evaluate import RL2Recommender
from metarec.meta.policy import RL2Policy
from metarec.meta.rl2 import RL2Config, RL2Trainer, memory_from, memory_state
from metarec.meta.tasks import TaskDistribution, task_batch

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
    policy = RL2Policy(env.single_observation_space, 5, 8, belief=True, belief_ridge=2.0)
    linucb = LinUCBRecommender(5, torch.Generator().manual_seed(0), target="reward", ridge=2.0, alpha=1.0)
    memory = policy.initial_memory(env.num_envs)
    clicks = 0
    for step in range(30):
        beliefs = policy.believe(memory, observation)
        slate = linucb.act(observation, info)
        x = policy.regression_features(observation)
        torch.testing.assert_close(memory.belief.inverse, linucb.inverse)
        torch.testing.assert_close(memory.belief.response, linucb.response)
        torch.testing.assert_close(beliefs.sum(-1), linucb.scores(x, linucb.inverse, linucb.response, None))
        if step == 0:  # nothing seen yet: no prediction, the prior's width
            assert torch.all(beliefs[..., 0] == 0) and torch.all(beliefs[..., 1] > 0)
        memory = policy.remember(torch.zeros(env.num_envs, 8), memory.belief, observation, slate)
        observation, reward, terminated, truncated, info = env.step(slate)
        memory = policy.learn(memory, reward, info["chosen_position"])
        clicks += int(info["clicked"].sum())
        linucb.observe(reward, terminated | truncated, info)
    assert clicks > 20  # the regression saw clicks, not only zeros
    assert float(beliefs[..., 0].std()) > 0.01  # and says something about the candidates


def _space() -> spaces.Dict:
    """A DriftingUsers-like space: 6 candidates of d = 4 (embedding and length), 3 history rows."""
    return spaces.Dict(
        {
            "candidates": spaces.Box(-1e9, 1e9, (6, 4 + 1), "float32"),
            "history": spaces.Box(-1e9, 1e9, (3, 4 + 3), "float32"),
        }
    )


def _small_policy() -> RL2Policy:
    return RL2Policy(_space(), 2, 8, belief=True, belief_ridge=0.5)


def test_the_belief_learns_the_clicked_position_once_and_only_for_the_rows_told() -> None:
    """Two shown items with the same features: the click is credited once, at the position clicked;
    a row outside ``rows`` learns nothing; learning twice from one response changes nothing more."""
    policy = _small_policy()
    memory = policy.initial_memory(3)
    candidates = torch.zeros(3, 6, 5)
    candidates[:, :2] = torch.tensor([0.6, 0.8, 0.0, 0.0, 2.0])  # candidates 0 and 1 look the same
    candidates[:, 2] = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0])
    observation = {"candidates": candidates, "history": torch.zeros(3, 3, 7)}
    slate = torch.tensor([[0, 1], [1, 2], [0, 1]])
    memory = policy.remember(torch.zeros(3, 8), memory.belief, observation, slate)
    reward, position = torch.tensor([0.7, 0.0, 0.7]), torch.tensor([1, -1, 1])
    learned = policy.learn(memory, reward, position, rows=torch.tensor([True, True, False]))
    x = torch.tensor([0.6, 0.8, 0.0, 0.0, 2.0, 1.0])
    torch.testing.assert_close(learned.belief.response[0], 0.7 * x)  # once, not twice
    assert torch.all(learned.belief.response[1] == 0)  # no click: zeros, but the items were seen
    assert not torch.equal(learned.belief.inverse[1], memory.belief.inverse[1])
    assert torch.equal(learned.belief.inverse[2], memory.belief.inverse[2])  # not in rows: nothing learned
    assert torch.all(learned.belief.response[2] == 0)
    again = policy.learn(learned, reward, position)
    assert torch.equal(again.belief.inverse, learned.belief.inverse)
    assert torch.equal(again.belief.response, learned.belief.response)


def test_the_belief_starts_over_for_new_users_only() -> None:
    policy = _small_policy()
    memory = policy.initial_memory(4)
    torch.testing.assert_close(memory.belief.inverse, torch.eye(6).expand(4, 6, 6) * 2.0)
    memory.belief.inverse += 1.0
    memory.belief.response += 1.0
    memory.belief.shown += 1.0
    memory.hidden += 1.0
    done = torch.tensor([True, False, True, False])
    reset = RL2Policy.reset_memory(memory, done)
    torch.testing.assert_close(reset.belief.inverse[done], torch.eye(6).expand(2, 6, 6) * 2.0)
    assert torch.all(reset.belief.inverse[~done] == memory.belief.inverse[~done])
    assert torch.all(reset.belief.response[done] == 0) and torch.all(reset.belief.response[~done] == 1)
    assert torch.all(reset.belief.shown[done] == 0) and torch.all(reset.belief.shown[~done] == 1)
    assert torch.all(reset.hidden[done] == 0) and torch.all(reset.hidden[~done] == 1)
    # a policy with a belief needs believe()'s features, one without refuses them
    observation = {"candidates": torch.zeros(4, 6, 5), "history": torch.zeros(4, 3, 7)}
    with pytest.raises(ValueError, match=r"beliefs: expected \[B, N, 2\] from believe\(\), got None"):
        policy.act_from(observation, reset.hidden)
    plain = RL2Policy(_space(), 2, 8)
    with pytest.raises(ValueError, match=r"beliefs: expected None \(this policy keeps no belief\)"):
        plain.act_from(observation, reset.hidden, torch.zeros(4, 6, 2))
    with pytest.raises(ValueError, match=r"belief_ridge: expected a number > 0, got 0"):
        RL2Policy(_space(), 2, 8, belief=True, belief_ridge=0)


def test_rl2_recommender_learns_only_from_the_users_it_serves(distribution) -> None:
    tasks = task_batch(distribution, "meta-test", 1, seed=0, index=0, sessions=3)
    env = TaskBatchVectorEnv(tasks, 8, autoreset=False)
    observation, info = env.reset(seed=2)
    torch.manual_seed(0)
    agent = RL2Recommender(RL2Policy(env.single_observation_space, 5, 8, belief=True),
                           torch.Generator().manual_seed(0))  # fmt: skip
    served = torch.tensor([True, False] * 4)
    for _ in range(6):
        slate = agent.act(observation, {**info, "active": served})
        observation, reward, terminated, truncated, info = env.step(slate)
        agent.observe(reward, terminated | truncated, {**info, "active": served})
    prior = torch.eye(agent.memory.belief.inverse.shape[-1]).expand(4, -1, -1)
    assert torch.equal(agent.memory.belief.inverse[~served], prior)  # the other arm's users taught nothing
    assert not torch.equal(agent.memory.belief.inverse[served], prior)
    agent.reset(served)
    assert torch.equal(agent.memory.belief.inverse, torch.eye(prior.shape[-1]).expand(8, -1, -1))


def test_replay_gives_the_rollouts_log_probs_with_a_belief(distribution) -> None:
    """PPO's ratio starts at 1: replaying a rollout (users replaced within it) through the memory gives
    the log-probabilities and values the rollout recorded."""
    config = RL2Config(tasks_per_batch=2, users_per_task=8, rollout_steps=40, hidden=8, num_minibatches=2,
                       belief=True)  # fmt: skip
    trainer = RL2Trainer(distribution, "meta-train", config, sessions=1, seed=3, item_stats=True)
    rollout = trainer.collect()
    assert float(rollout["dones"].sum()) > 0  # some users were replaced within the window
    with torch.no_grad():
        log_prob, _, value = trainer.replay(rollout, torch.arange(16))
    torch.testing.assert_close(log_prob, rollout["log_probs"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(value, rollout["values"], rtol=1e-5, atol=1e-5)


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
    plain_policy = RL2Config(hidden=8).make_policy(whole.env.single_observation_space, 5)
    with pytest.raises(ValueError, match=r"has belief, but rl2\.belief is False"):
        memory_from(saved["processes"][0]["memory"], plain_policy, "cpu")
    assert set(memory_state(whole.memory)) == {"hidden", "last_slate", "inverse", "response", "shown"}
