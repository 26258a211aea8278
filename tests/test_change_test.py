"""RL²'s change test (``rl2.change_test``): a CUSUM of how much better a belief that forgets predicts each slate's
responses than the user's belief does, which restarts the belief (from the forgetting one) and the memory (from
zero) where it passes its threshold. Checked against the Gaussian predictive density, on users who change and
users who do not, for the rows it must leave alone, and for what it refuses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from metarec.meta.beliefs import detect_change, predictive_log_likelihood
from metarec.meta.export_step import RL2Step
from metarec.meta.incontext import InContextConfig
from metarec.meta.policy import Belief, RL2Policy
from metarec.meta.rl2 import RL2Config, RL2Trainer, memory_from, memory_state

F, K = 3, 2


def test_the_predictive_log_likelihood_is_the_ridge_regressions_gaussian_predictive_density() -> None:
    inverse = torch.tensor([[[0.5, 0.1, 0.0], [0.1, 0.4, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    response = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    shown = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)  # the second position is empty
    targets = torch.tensor([[2.0, 7.0]], dtype=torch.float64)
    theta = inverse[0] @ response[0]
    x = shown[0, 0]
    variance = 0.3 * (1.0 + float(x @ inverse[0] @ x))
    expected = torch.distributions.Normal(float(x @ theta), math.sqrt(variance)).log_prob(torch.tensor(2.0))
    got = predictive_log_likelihood(inverse, response, shown, targets, noise=0.3)
    # the Gaussian's log density up to its constant -log(2π)/2, which both sides of the ratio share
    assert float(got[0]) == pytest.approx(float(expected) + 0.5 * math.log(2 * math.pi))


def _fresh(batch: int) -> Belief:
    eye = torch.eye(F, dtype=torch.float64)
    return Belief(eye.expand(batch, F, F).clone(), torch.zeros(batch, F, dtype=torch.float64),
                  torch.zeros(batch, K, F, dtype=torch.float64), 1.0, recent=eye.expand(batch, F, F).clone(),
                  recent_response=torch.zeros(batch, F, dtype=torch.float64),
                  evidence=torch.zeros(batch, dtype=torch.float64))  # fmt: skip


def _learn(belief: Belief, shown: torch.Tensor, targets: torch.Tensor) -> Belief:
    """The belief's own ridge update (as RL2Policy.learn makes it after the test)."""
    gram = torch.linalg.inv(belief.inverse) + shown.transpose(1, 2) @ shown
    response = belief.response + (targets[:, :, None] * shown).sum(1)
    return Belief(torch.linalg.inv(gram), response, belief.shown, belief.ridge, recent=belief.recent,
                  recent_response=belief.recent_response, evidence=belief.evidence)  # fmt: skip


def _run(thetas_before: torch.Tensor, thetas_after: torch.Tensor, change_at: int, steps: int, seed: int,
         threshold: float = 20.0):  # fmt: skip
    """Users answering slates of random items with ``x·θ`` plus noise, ``θ`` switching at ``change_at``; the
    steps at which each user's belief restarted."""
    generator = torch.Generator().manual_seed(seed)
    batch = thetas_before.shape[0]
    belief, restarts = _fresh(batch), [[] for _ in range(batch)]
    for t in range(steps):
        shown = torch.randn(batch, K, F, generator=generator, dtype=torch.float64)
        theta = thetas_before if t < change_at else thetas_after
        noise = 0.1 * torch.randn(batch, K, generator=generator, dtype=torch.float64)
        targets = (shown @ theta[:, :, None])[:, :, 0] + noise
        belief, restart = detect_change(belief, shown, targets, None, discount=0.9, threshold=threshold, noise=0.1)
        belief = _learn(belief, shown, targets)
        for u in torch.nonzero(restart)[:, 0].tolist():
            restarts[u].append(t)
    return belief, restarts


def test_a_user_who_changes_restarts_soon_after_and_one_who_does_not_never_does() -> None:
    before = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    after = torch.tensor([[-2.0, 1.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)  # user 0 changes, user 1 not
    belief, restarts = _run(before, after, change_at=40, steps=80, seed=3)
    assert restarts[1] == []
    assert restarts[0] and 40 <= restarts[0][0] <= 45 and all(t >= 40 for t in restarts[0])
    # after the restart the belief knows the new user; without the test it still mixes the old one in
    unchanged, never = _run(before, after, change_at=40, steps=80, seed=3, threshold=math.inf)
    assert never == [[], []]
    error = (belief.inverse[0] @ belief.response[0] - after[0]).norm()
    stale = (unchanged.inverse[0] @ unchanged.response[0] - after[0]).norm()
    assert float(error) < 0.3 < 1.0 < float(stale)


def test_a_restart_starts_the_belief_from_the_forgetting_one_and_rows_not_served_change_nothing() -> None:
    belief = _fresh(2)
    belief.evidence = torch.tensor([19.5, 19.5], dtype=torch.float64)
    belief.response = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0]], dtype=torch.float64)  # wrong about both
    belief.recent_response = torch.tensor([[0.0, -1.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    shown = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]] * 2, dtype=torch.float64)
    targets = torch.tensor([[0.0, -1.0]] * 2, dtype=torch.float64)
    changed, restart = detect_change(belief, shown, targets, torch.tensor([True, False]), 0.9, 20.0, 0.1)
    assert restart.tolist() == [True, False]
    torch.testing.assert_close(changed.inverse[0], torch.linalg.inv(belief.recent[0]))  # the forgetting belief
    torch.testing.assert_close(changed.response[0], belief.recent_response[0])
    assert float(changed.evidence[0]) == 0.0
    for key in ("inverse", "response", "recent", "recent_response", "evidence"):  # the row not served
        torch.testing.assert_close(getattr(changed, key)[1], getattr(belief, key)[1])
    assert float(belief.evidence[0]) == 19.5  # nothing written in place


def test_a_restart_clears_that_users_memory_only_and_checkpoints_keep_the_test(memory_space) -> None:
    torch.manual_seed(0)
    policy = RL2Policy(memory_space, 2, 8, belief=True, change_test=20.0)
    observation = {"candidates": torch.rand(2, 4, 3), "candidate_ids": torch.arange(8).reshape(2, 4),
                   "history": torch.zeros(2, 3, 5)}  # fmt: skip
    memory = policy.initial_memory(2)
    memory = policy.remember(torch.ones(2, 8), memory.belief, observation, torch.tensor([[0, 1], [0, 1]]))
    memory.belief.evidence = torch.tensor([1e6, 0.0])  # user 0 has all but passed the threshold
    learned = policy.learn(memory, torch.tensor([1.0, 1.0]), torch.tensor([0, 0]))
    assert torch.all(learned.hidden[0] == 0) and torch.all(learned.hidden[1] == 1)
    assert learned.belief.evidence.tolist()[0] == 0.0
    restored = memory_from(memory_state(learned), policy, "cpu")
    torch.testing.assert_close(restored.belief.recent, learned.belief.recent)
    torch.testing.assert_close(restored.belief.evidence, learned.belief.evidence)
    plain = RL2Policy(memory_space, 2, 8, belief=True)
    with pytest.raises(ValueError, match=r"^checkpoint: its memory has a change test, but rl2.change_test is 0;"):
        memory_from(memory_state(learned), plain, "cpu")
    with pytest.raises(ValueError, match=r"^checkpoint: its memory has no change test, but rl2.change_test is 20"):
        memory_from(memory_state(plain.initial_memory(2)), policy, "cpu")


def test_bad_change_test_settings_are_refused_by_name(memory_space) -> None:
    with pytest.raises(ValidationError, match=r"change_test: the change test restarts the users' beliefs"):
        RL2Config(change_test=20.0, belief=False)
    with pytest.raises(ValidationError, match=r"change_discount"):
        RL2Config(belief=True, change_test=20.0, change_discount=1.0)
    with pytest.raises(ValidationError, match=r"change_test: RL²'s serving only"):
        InContextConfig(change_test=20.0)
    with pytest.raises(ValueError, match=r"^change_test: expected a number of nats >= 0 \(0: no test\), got -1"):
        RL2Policy(memory_space, 2, 8, belief=True, change_test=-1.0)
    with pytest.raises(ValueError, match=r"^change_noise: expected a number > 0, got 0"):
        RL2Policy(memory_space, 2, 8, belief=True, change_test=1.0, change_noise=0.0)
    with pytest.raises(ValueError, match=r"^run: rl2.change_test keeps a second belief"):
        policy = RL2Policy(memory_space, 2, 8, belief=True, change_test=20.0)
        RL2Step(policy, ["candidates", "candidate_ids", "history"])


def test_training_meets_no_restarts_and_serving_tests_every_user(tmp_path) -> None:
    from metarec.config import load_yaml_config
    from metarec.envs.task_batch import TaskBatchVectorEnv
    from metarec.meta.config import MetaTrainConfig
    from metarec.meta.serving import build_method
    from metarec.meta.tasks import TaskDistribution, task_batch

    root = Path(__file__).parents[1]
    distribution = load_yaml_config(TaskDistribution, root / "configs" / "meta_tasks.yaml")
    config = RL2Config(tasks_per_batch=2, users_per_task=8, rollout_steps=4, hidden=8, num_minibatches=2,
                       belief=True, change_test=20.0)  # fmt: skip
    trainer = RL2Trainer(distribution, "meta-train", config, sessions=2, seed=0, item_stats=True)
    assert trainer.policy.change_test == 0.0 and trainer.policy.initial_memory(2).belief.evidence is None
    run_config = MetaTrainConfig(tasks=distribution, methods=["rl2"], rl2=config, sessions=2)
    env = TaskBatchVectorEnv(task_batch(distribution, "meta-test", 2, 0, 1, 2), 8, autoreset=False, item_stats=True)
    weights = {key: value.detach().clone() for key, value in trainer.policy.state_dict().items()}
    served = build_method(run_config, tmp_path, "rl2", weights, env, env.single_observation_space,
                          env.model.slate_size, torch.Generator().manual_seed(0))  # fmt: skip
    assert served.policy.change_test == 20.0
    observation, info = env.reset(seed=0)
    served.act(observation, info)
    assert served.memory.belief.evidence is not None and served.memory.belief.evidence.shape == (16,)
