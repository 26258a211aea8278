"""The ranking metrics against the ground truth (one module for evaluate, meta-eval and A/B tests) agree with
scikit-learn's on the same top-K sets, and the prediction errors of a recommender that predicts its users'
responses are what its own estimates give."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from metarec.agents.evaluation import evaluate
from metarec.agents.metrics import Relevance, response_errors

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def fake_env(k: int, no_click_utility: float | None, temperature: float = 0.7) -> SimpleNamespace:
    population = SimpleNamespace(choice_temperature=temperature, no_click_utility=no_click_utility)
    return SimpleNamespace(model=SimpleNamespace(slate_size=k), config=SimpleNamespace(population=population),
                           device=torch.device("cpu"), single_item=False)  # fmt: skip


@pytest.mark.parametrize("no_click_utility", [0.3, None])
def test_ranking_metrics_match_scikit_learn_on_the_same_top_k_sets(no_click_utility):
    generator = torch.Generator().manual_seed(7)
    users, n, k = 64, 12, 4
    utility = torch.randn(users, n, generator=generator)
    slate = torch.stack([torch.randperm(n, generator=generator)[:k] for _ in range(users)])
    ranking = Relevance(fake_env(k, no_click_utility))
    got = {key: value.numpy() for key, value in ranking(utility, slate).items()}
    if no_click_utility is not None:
        relevant = (utility > no_click_utility).numpy()
    else:
        relevant = np.zeros((users, n), bool)
        np.put_along_axis(relevant, utility.topk(k, dim=1).indices.numpy(), True, axis=1)
    gains = torch.softmax(utility / 0.7, dim=1).numpy()
    for b in range(users):
        shown = np.zeros(n, bool)
        shown[slate[b].numpy()] = True
        assert got["precision"][b] == pytest.approx(sklearn_metrics.precision_score(relevant[b], shown))
        if relevant[b].any():
            assert got["recall"][b] == pytest.approx(sklearn_metrics.recall_score(relevant[b], shown))
            assert got["f1"][b] == pytest.approx(sklearn_metrics.f1_score(relevant[b], shown))
            assert got["recall_steps"][b] == 1.0
        else:
            assert got["recall"][b] == got["f1"][b] == got["recall_steps"][b] == 0.0
        # the slate's order as scores: its first item highest; the others below every shown one
        score = np.full(n, -1.0)
        score[slate[b].numpy()] = np.arange(k, 0, -1)
        expected = sklearn_metrics.ndcg_score(gains[b][None], score[None], k=k)
        assert got["ndcg"][b] == pytest.approx(expected, rel=1e-5)


def test_the_oracle_ranks_better_than_random_and_only_a_predicting_recommender_has_errors():
    env = "metarec/DriftingUsers-v0"
    oracle, random, linucb = (evaluate(env, agent, 150, seed=2) for agent in ("oracle", "random", "linucb"))
    for result in (oracle, random, linucb):
        assert result["k"] == 5
        for key in ("precision_at_k", "recall_at_k", "f1_at_k", "ndcg_at_k"):
            assert 0.0 <= result[key] <= 1.0, (key, result[key])
    assert oracle["ndcg_at_k"] > random["ndcg_at_k"] + 0.1
    assert oracle["precision_at_k"] > random["precision_at_k"]
    assert random["prediction_mae"] is None and oracle["prediction_mse"] is None
    assert linucb["prediction_mae"] > 0.0 and linucb["prediction_mae"] ** 2 <= linucb["prediction_mse"]


def test_prediction_errors_are_those_of_linucbs_own_estimates():
    import gymnasium as gym

    from metarec.agents.baselines.bandits import slate_targets
    from metarec.agents.registry import make_recommender

    env = gym.make_vec("metarec/DriftingUsers-v0", num_envs=16, vectorization_mode="vector_entry_point",
                       array_backend="torch", autoreset=False)  # fmt: skip
    agent = make_recommender("linucb", env.unwrapped, 0)
    observation, info = env.reset(seed=1)
    agent.reset()
    for _ in range(6):
        slate = agent.act(observation, info)
        target, predicted, rows = agent.response_prediction()
        assert rows is None and predicted.shape == (16, 5)
        theta = agent.theta  # before the response is learned
        x = torch.cat([observation["candidates"], torch.ones_like(observation["candidates"][..., :1])], -1)
        expected = (x.gather(1, slate[:, :, None].expand(-1, -1, x.shape[-1])) * theta[:, None, :]).sum(-1)
        torch.testing.assert_close(predicted, expected)
        observation, reward, terminated, truncated, info = env.step(slate)
        absolute, squared, count = response_errors((target, predicted, rows), reward, info, 16)
        error = predicted - slate_targets(reward, info, 5, "reward")
        torch.testing.assert_close(absolute, error.abs().sum(1))
        torch.testing.assert_close(squared, (error**2).sum(1))
        assert (count == 5).all()
        agent.observe(reward, terminated | truncated, info)


def test_the_adaptation_protocol_reports_the_metrics_per_session():
    from pathlib import Path

    from metarec.config import load_yaml_config
    from metarec.meta.evaluate import EvalConfig, adaptation_curves
    from metarec.meta.tasks import TaskDistribution

    distribution = load_yaml_config(TaskDistribution, Path(__file__).parents[1] / "configs" / "meta_tasks.yaml")
    config = EvalConfig(tasks=2, users_per_task=8, seeds=2, shift_at=5, window=3, max_steps=30)
    result = adaptation_curves({}, distribution, "meta-test", 3, config, seed=0)
    oracle, random = (result["methods"][name]["metrics"] for name in ("oracle", "random"))
    for metrics in (oracle, random):
        assert metrics["k"] == 5
        for key in ("precision_at_k", "recall_at_k", "f1_at_k", "ndcg_at_k", "ctr"):
            assert len(metrics[key]) == 3 and all(v is None or 0.0 <= v <= 1.0 for v in metrics[key]), key
    # the myopic oracle shows the slate that is best now, so it ranks above random in every session it reaches
    assert all(o > r for o, r in zip(oracle["ndcg_at_k"], random["ndcg_at_k"], strict=True) if None not in (o, r))
    assert oracle["ctr"][0] > random["ctr"][0]


def test_hbayes_predicts_a_click_probability_per_shown_item():
    import gymnasium as gym

    from metarec.agents.registry import make_recommender

    env = gym.make_vec("metarec/DriftingUsers-v0", num_envs=32, vectorization_mode="vector_entry_point",
                       array_backend="torch", autoreset=False)  # fmt: skip
    agent = make_recommender("hbayes", env.unwrapped, 0)
    observation, info = env.reset(seed=4)
    agent.reset()
    predicted, clicked = [], []
    for _ in range(8):
        slate = agent.act(observation, info)
        target, probability, rows = agent.response_prediction()
        assert target == "click" and rows is None and probability.shape == (32, 5)
        assert (probability > 0).all() and (probability.sum(1) < 1).all()  # the rest is the no-click option
        observation, reward, terminated, truncated, info = env.step(slate)
        predicted.append(probability.sum(1))
        clicked.append(info["clicked"].float())
        agent.observe(reward, terminated | truncated, info)
    # calibrated in the large: the predicted click rate of the slates is near the realised one
    assert float(torch.cat(predicted).mean()) == pytest.approx(float(torch.cat(clicked).mean()), abs=0.15)
    result = evaluate("metarec/DriftingUsers-v0", "hbayes", 64, seed=1)
    assert 0 < result["prediction_mae"] < 1 and result["prediction_mse"] <= result["prediction_mae"]
