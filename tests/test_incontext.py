"""The in-context recommender (``icl``): its imitation loss, that ground truth is a training label only and
never an input, that it learns to imitate the oracle, deterministically, and that bad settings are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metarec.agents.nn.distributions import PlackettLuce
from metarec.config import load_yaml_config
from metarec.envs.core.finite import GUARDED_INFO
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.config import load_meta_config
from metarec.meta.evaluate import RL2Recommender
from metarec.meta.incontext import InContextConfig, InContextPolicy, oracle_log_likelihood
from metarec.meta.incontext_train import InContextTrainer
from metarec.meta.policy import RL2Policy
from metarec.meta.tasks import TaskDistribution, task_batch

ROOT = Path(__file__).parents[1]
SMALL = dict(tasks_per_batch=2, users_per_task=16, rollout_steps=8, num_minibatches=2, hidden=16, window=4,
             layers=1, heads=2)  # fmt: skip


@pytest.fixture(scope="module")
def distribution() -> TaskDistribution:
    return load_yaml_config(TaskDistribution, ROOT / "configs" / "meta_tasks.yaml")


def test_the_imitation_loss_is_plackett_luce_of_the_items_the_oracle_shows() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 9, generator=generator)
    slates = torch.stack([torch.randperm(9, generator=generator)[:4] for _ in range(64)])
    lengths = torch.randint(1, 5, (64,), generator=generator)
    # the oracle's slate shows its first r items and repeats its first item where it shows nothing
    oracle = torch.where(torch.arange(4)[None] < lengths[:, None], slates, slates[:, :1])
    got = oracle_log_likelihood(logits, oracle)
    for row in range(64):
        r = int(lengths[row])
        expected = PlackettLuce(logits[row : row + 1], r).log_prob(slates[row : row + 1, :r])[0]
        torch.testing.assert_close(got[row], expected)
    # a slate of K distinct items is scored whole, as Plackett-Luce scores it
    torch.testing.assert_close(oracle_log_likelihood(logits, slates), PlackettLuce(logits, 4).log_prob(slates))


def _perturbed(info: dict, noise: torch.Generator) -> dict:
    """``info`` with its ground truth replaced by noise: a policy that read it would act otherwise."""
    info = dict(info)
    for key in ("oracle_slate", *GUARDED_INFO):
        if key in info:
            value = info[key]
            info[key] = (torch.randint(0, 20, value.shape, generator=noise) if key == "oracle_slate"
                         else torch.randn(value.shape, generator=noise) * 100)  # fmt: skip
    return info


def _slates(policy: InContextPolicy, env: TaskBatchVectorEnv, steps: int, perturb: bool = False) -> torch.Tensor:
    recommender = RL2Recommender(policy, torch.Generator().manual_seed(0), deterministic=True)
    noise = torch.Generator().manual_seed(99)
    observation, info = env.reset(seed=5)
    recommender.reset()
    shown = []
    for _ in range(steps):
        slate = recommender.act(observation, _perturbed(info, noise) if perturb else info)
        observation, reward, terminated, truncated, info = env.step(slate)
        done = terminated | truncated
        recommender.observe(reward, done, _perturbed(info, noise) if perturb else info)
        recommender.reset(done)
        shown.append(slate)
    return torch.stack(shown)


def test_ground_truth_is_a_label_only_never_an_input(distribution) -> None:
    trainer = InContextTrainer(distribution, "meta-train", InContextConfig(**SMALL, updates=3), sessions=4, seed=0,
                               item_stats=True)  # fmt: skip
    while not trainer.done:
        trainer.step()
    tasks = task_batch(distribution, "meta-test", 2, 0, 3, 4)
    envs = [TaskBatchVectorEnv(tasks, 8, ground_truth=truth, item_stats=True) for truth in (True, True, False)]
    assert "oracle_slate" not in envs[2].reset(seed=5)[1]
    plain = _slates(trainer.policy, envs[0], 40)
    perturbed = _slates(trainer.policy, envs[1], 40, perturb=True)
    blind = _slates(trainer.policy, envs[2], 40)
    assert torch.equal(plain, perturbed) and torch.equal(plain, blind)
    assert len(torch.unique(plain.flatten(0, 1), dim=0)) > 10  # it shows many slates, not one
    # in training too, what the policy reads (its token windows and beliefs) ignores the ground truth, which
    # only labels its decisions (no oracle slates mixed in here: they would change what users see)
    config = InContextConfig(**SMALL, updates=3, oracle_mix=0.0)
    rollouts = []
    for perturb in (False, True):
        trainer = InContextTrainer(distribution, "meta-train", config, sessions=4, seed=0, item_stats=True)
        if perturb:
            step, noise = trainer.env.step, torch.Generator().manual_seed(7)

            def noisy_step(slate, step=step, noise=noise):
                *outcome, info = step(slate)
                return (*outcome, _perturbed(info, noise))

            trainer.env.step = noisy_step
        rollouts.append(trainer.collect_imitation())
    for key in ("tokens", "beliefs"):
        assert torch.equal(rollouts[0][key], rollouts[1][key]), key
    assert not torch.equal(rollouts[0]["labels"], rollouts[1]["labels"])  # the labels did see the noise


def test_the_trainer_learns_to_imitate_the_oracle_deterministically(distribution) -> None:
    config = InContextConfig(**SMALL, updates=12, resample_every=12, oracle_mix=0.0, learning_rate=3e-3)

    def trained() -> InContextTrainer:
        trainer = InContextTrainer(distribution, "meta-train", config, sessions=4, seed=1, item_stats=True)
        while not trainer.done:
            trainer.step()
        return trainer

    first, again = trained(), trained()
    for key, value in first.policy.state_dict().items():
        assert torch.equal(value, again.policy.state_dict()[key]), key
    # the oracle slates of a rollout on held-out populations are likelier under the trained policy than
    # under its start
    fresh = InContextTrainer(distribution, "meta-test", config, sessions=4, seed=5, item_stats=True)
    rollout = fresh.collect_imitation()
    users = torch.arange(fresh.total_users)
    with torch.no_grad():
        before = fresh.nll(rollout, users).mean()
        fresh.policy.load_state_dict(first.policy.state_dict())
        after = fresh.nll(rollout, users).mean()
    assert after < before - 0.3, (float(before), float(after))


def test_a_checkpoint_resumes_to_the_same_parameters(distribution) -> None:
    config = InContextConfig(**SMALL, updates=4, resample_every=2)
    whole = InContextTrainer(distribution, "meta-train", config, sessions=4, seed=2, item_stats=True)
    while not whole.done:
        whole.step()
    part = InContextTrainer(distribution, "meta-train", config, sessions=4, seed=2, item_stats=True)
    for _ in range(3):  # across a new task batch, and part-way through the next
        part.step()
    saved = part.state_dict()
    resumed = InContextTrainer(distribution, "meta-train", config, sessions=4, seed=2, item_stats=True)
    resumed.load_state_dict(saved)
    resumed.step()
    assert resumed.done
    for key, value in whole.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["icl.heads=3"], r"icl: .*heads: must divide hidden = 64, got 3"),
        (["icl.window=0"], r"icl\.window: .*greater than or equal to 1"),
        (["icl.num_minibatches=3"],
         r"icl: .*num_minibatches: must divide tasks_per_batch x users_per_task = 512, got 3"),
        (["icl.oracle_mix=1.5"], r"icl\.oracle_mix: .*less than or equal to 1"),
        (["methods=[rl2,maml]", "meta_learner=icl"], r"meta_learner: 'icl' is not one of methods \(rl2, maml\)"),
        (["meta_learner=linucb"], r"meta_learner: .*'rl2', 'icl', 'maml', 'fomaml' or 'reptile'"),
    ],
)
def test_bad_settings_are_refused_by_name(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_meta_config(ROOT / "configs" / "meta_demo.yaml", overrides)


def test_the_meta_learner_named_before_evaluation_is_the_one_judged(distribution) -> None:
    """meta-eval's paired leads are those of the config's ``meta_learner``, even where another method has the
    best curve of the runs; without one, those of the best."""
    from metarec.agents.registry import make_recommender
    from metarec.meta.evaluate import EvalConfig, adaptation_curves

    methods = {name: (lambda env, seed, name=name: make_recommender(name, env, seed)) for name in ("greedy", "linucb")}
    config = EvalConfig(tasks=1, users_per_task=8, seeds=2, shift_at=4, window=2, max_steps=12)
    # two baselines stand in for meta-learners here: what is checked is which one the leads are read for
    named = adaptation_curves(methods, distribution, "meta-test", 2, config, 0, meta_learner="greedy")
    assert named["meta_learner"] == "greedy" and named["paired"]["method"] == "greedy"
    assert set(named["paired"]["against"]) == {"linucb"}
    refused = r"^meta_learner: 'rl2' is not among the methods evaluated \(greedy, linucb\)$"
    with pytest.raises(ValueError, match=refused):
        adaptation_curves(methods, distribution, "meta-test", 2, config, 0, meta_learner="rl2")


def test_an_oracle_slate_with_empty_positions_is_remembered_as_shown(distribution) -> None:
    """The oracle shows fewer than K items by repeating its first one; mixed into training, the memory then
    holds only the items the user saw (the belief learns nothing at the empty positions)."""
    from metarec.meta.incontext import without_empty_positions

    env = TaskBatchVectorEnv(task_batch(distribution, "meta-train", 1, 0, 0, 4), 3, item_stats=True)
    observation, _ = env.reset(seed=0)
    policy = InContextConfig(**SMALL).make_policy(env.single_observation_space, env.model.slate_size)
    memory = policy.initial_memory(3)
    slate = torch.tensor([[4, 2, 7, 1, 9], [6, 3, 6, 6, 6], [5, 5, 5, 5, 5]])
    remembered = without_empty_positions(policy.remember(memory.hidden, memory.belief, observation, slate),
                                         observation, slate)  # fmt: skip
    features = RL2Policy.shown_features(observation, slate)
    for row, filled in enumerate((5, 2, 1)):
        torch.testing.assert_close(remembered.last_slate[row], features[row, :filled].mean(0))
        assert bool((remembered.belief.shown[row, :filled, -1] == 1).all())  # each with its constant 1
        assert bool((remembered.belief.shown[row, filled:] == 0).all())


def test_the_rl_fine_tuning_moves_the_imitated_policy_and_resumes_exactly(distribution) -> None:
    config = InContextConfig(**SMALL, updates=2, rl_updates=3, resample_every=2)
    whole = InContextTrainer(distribution, "meta-train", config, sessions=4, seed=3, item_stats=True)
    imitated = None
    stats = []
    while not whole.done:
        stats.append(whole.step())
        if whole.update == config.updates:
            imitated = {key: value.clone() for key, value in whole.policy.state_dict().items()}
    assert whole.update == 5 and "imitation_loss" in stats[1] and "policy_loss" in stats[2]
    assert whole.optimizer.param_groups[0]["lr"] == config.rl_learning_rate
    assert any(not torch.equal(value, imitated[key]) for key, value in whole.policy.state_dict().items())
    part = InContextTrainer(distribution, "meta-train", config, sessions=4, seed=3, item_stats=True)
    for _ in range(3):  # into the fine-tuning
        part.step()
    resumed = InContextTrainer(distribution, "meta-train", config, sessions=4, seed=3, item_stats=True)
    resumed.load_state_dict(part.state_dict())
    while not resumed.done:
        resumed.step()
    for key, value in whole.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key
