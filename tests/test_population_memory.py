"""RL²'s population memory (``rl2.population``): what the beliefs of a population's other users predict for
a user, weighted by how well each explains that user's responses, and their pooled regression. Checked
against brute force on the raw data, for the isolation of populations, and end to end (with the item memory,
which pools users too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.config import load_meta_config
from metarec.meta.eval_run import meta_eval
from metarec.meta.evaluate import RL2Recommender
from metarec.meta.export_step import RL2Step
from metarec.meta.policy import LARGE_POPULATION, Belief, population_predictions, quadratic_fits
from metarec.meta.rl2 import RL2Config
from metarec.meta.serving import build_method, load_method_weights, trained_space
from metarec.meta.tasks import task_batch
from metarec.meta.train import meta_train
from metarec.parallel import Shard

ROOT = Path(__file__).parents[1]
F, RIDGE, NOISE = 4, 2.0, 0.5


def _beliefs(data: list[tuple[torch.Tensor, torch.Tensor]]) -> Belief:
    """Beliefs of users whose responses are ``(X [n, F], y [n])`` (n may be 0), in float64."""
    inverse, response = [], []
    for x, y in data:
        inverse.append(torch.linalg.inv(RIDGE * torch.eye(F, dtype=torch.float64) + x.T @ x))
        response.append(x.T @ y)
    b = torch.stack(response)
    return Belief(torch.stack(inverse), b, torch.zeros(len(data), 1, F, dtype=torch.float64), RIDGE)


def _brute_force(data, population: int, candidates: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The two predictions from the definitions, user by user, on the raw responses."""
    thetas = [torch.linalg.solve(RIDGE * torch.eye(F, dtype=torch.float64) + x.T @ x, x.T @ y) for x, y in data]
    neighbours, pooled = [], []
    for u, (x_u, y_u) in enumerate(data):
        group = range(u - u % population, u - u % population + population)
        others = [v for v in group if v != u and len(data[v][1])]
        if others:
            # the Gaussian log-likelihood of u's responses under each neighbour's estimate
            loglik = torch.stack([-((y_u - x_u @ thetas[v]) ** 2).sum() / (2 * NOISE) for v in others])
            weights = torch.softmax(loglik, 0)
            theta = sum(w * thetas[v] for w, v in zip(weights, others, strict=True))
        else:
            theta = torch.zeros(F, dtype=torch.float64)
        neighbours.append(candidates[u] @ theta)
        x_all = torch.cat([data[v][0] for v in group])
        y_all = torch.cat([data[v][1] for v in group])
        pooled.append(candidates[u] @ torch.linalg.solve(RIDGE * torch.eye(F, dtype=torch.float64) + x_all.T @ x_all,
                                                         x_all.T @ y_all))  # fmt: skip
    return torch.stack(neighbours).numpy(), torch.stack(pooled).numpy()


def _data(rng: torch.Generator, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two kinds of users (opposite tastes), with ``sizes[u]`` responses each."""
    taste = torch.tensor([[1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 0.5]], dtype=torch.float64)
    data = []
    for u, n in enumerate(sizes):
        x = torch.randn(n, F, generator=rng, dtype=torch.float64)
        y = x @ taste[u % 2] + 0.3 * torch.randn(n, generator=rng, dtype=torch.float64)
        data.append((x, y))
    return data


def test_the_population_memory_is_the_likelihood_weighted_neighbours_and_the_pooled_regression() -> None:
    rng = torch.Generator().manual_seed(0)
    sizes = [6, 0, 3, 9, 0, 5, 0, 0]  # two populations of 4; in the second only user 5 has responses
    data = _data(rng, sizes)
    candidates = torch.randn(8, 5, F, generator=rng, dtype=torch.float64)
    neighbours, pooled = population_predictions(candidates, _beliefs(data), 4, NOISE)
    expected_neighbours, expected_pooled = _brute_force(data, 4, candidates)
    np.testing.assert_allclose(neighbours.numpy(), expected_neighbours, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(pooled.numpy(), expected_pooled, rtol=1e-6, atol=1e-9)
    # user 5 is the only one of the second population with responses: users 6 and 7 get their estimate, and
    # user 5 itself has no neighbour
    assert torch.all(neighbours[5] == 0)
    theta_5 = torch.linalg.solve(RIDGE * torch.eye(F, dtype=torch.float64) + data[5][0].T @ data[5][0],
                                 data[5][0].T @ data[5][1])  # fmt: skip
    torch.testing.assert_close(neighbours[6], candidates[6] @ theta_5)


def test_a_new_user_is_the_populations_average_and_responses_place_them_among_those_alike() -> None:
    rng = torch.Generator().manual_seed(1)
    data = _data(rng, [40] * 7 + [0])  # users 0, 2, 4, 6 have the first taste, 1, 3, 5 the second; 7 is new
    candidates = torch.eye(F, dtype=torch.float64).expand(8, F, F)  # each candidate reads one coefficient
    neighbours, _ = population_predictions(candidates, _beliefs(data), 8, NOISE)
    thetas = torch.stack([torch.linalg.solve(RIDGE * torch.eye(F, dtype=torch.float64) + x.T @ x, x.T @ y)
                          for x, y in data[:7]])  # fmt: skip
    torch.testing.assert_close(neighbours[7], thetas.mean(0))  # nothing known: every neighbour alike
    # ... until user 7 responds like the second taste: it is placed among users 1, 3 and 5
    x = torch.randn(4, F, generator=rng, dtype=torch.float64)
    data[7] = (x, x @ torch.tensor([-1.0, 1.0, 0.0, 0.5], dtype=torch.float64))
    neighbours, _ = population_predictions(candidates, _beliefs(data), 8, NOISE)
    torch.testing.assert_close(neighbours[7], thetas[[1, 3, 5]].mean(0), atol=0.1, rtol=0)


def test_another_population_changes_nothing() -> None:
    rng = torch.Generator().manual_seed(2)
    data = _data(rng, [5, 2, 7, 3, 4, 6])
    candidates = torch.randn(6, 3, F, generator=rng, dtype=torch.float64)
    before = population_predictions(candidates, _beliefs(data), 3, NOISE)
    data[4] = _data(torch.Generator().manual_seed(9), [30])[0]  # a user of the second population of 3
    after = population_predictions(candidates, _beliefs(data), 3, NOISE)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a[:3], b[:3]) and not torch.equal(a[3:], b[3:])


def test_a_large_populations_pairwise_fits_agree_with_the_small_ones() -> None:
    """Past LARGE_POPULATION users the fits are one matrix product (an A/B arm's thousands of users)."""
    rng = torch.Generator().manual_seed(3)
    x = torch.randn(2, LARGE_POPULATION + 44, 6, F, generator=rng)
    gram, theta = x.transpose(-1, -2) @ x, torch.randn(2, LARGE_POPULATION + 44, F, generator=rng)
    expected = torch.einsum("guij,gvi,gvj->guv", gram, theta, theta)
    torch.testing.assert_close(quadratic_fits(gram, theta), expected, rtol=1e-4, atol=1e-3)
    small = torch.einsum("guij,gvi,gvj->guv", gram[:, :50], theta[:, :50], theta[:, :50])
    torch.testing.assert_close(quadratic_fits(gram[:, :50], theta[:, :50]), small, rtol=0, atol=0)  # the einsum itself
    torch.testing.assert_close(small, expected[:, :50, :50], rtol=1e-5, atol=1e-4)


def test_bad_population_settings_are_refused_by_name() -> None:
    with pytest.raises(ValidationError, match=r"population: the population memory pools the users' beliefs"):
        RL2Config(population=True)
    with pytest.raises(ValueError, match=r"^population: expected a number of users that divides the batch of 6"):
        population_predictions(torch.zeros(6, 2, F), _beliefs(_data(torch.Generator(), [1] * 6)), 4, NOISE)


@pytest.mark.parametrize("memory", ["population", "item_memory"])
def test_rl2_with_a_pooled_memory_learns_on_meta_tiny_and_serves_in_one_process(tmp_path, memory) -> None:
    """The population memory and the item memory (``rl2.item_memory``) alike: seeded training that learns, and
    serving that pools a population's users and so stays in one process."""
    overrides = ["torch_threads=null", "methods=[rl2]", f"rl2.{memory}=true"]
    config = load_meta_config(ROOT / "configs" / "meta_tiny.yaml", overrides)
    first = meta_train(config, tmp_path / "a", progress=False)
    assert meta_train(config, tmp_path / "b", progress=False)["params_sha256"] == first["params_sha256"]
    result = meta_eval(tmp_path / "a", "test")
    assert np.mean(result["methods"]["rl2"]["normalised_return"]) > 0.2  # random is 0
    served = load_meta_config(tmp_path / "a" / "config.yaml")
    tasks = task_batch(served.tasks, served.test_split, 2, served.seed, 5, served.sessions)
    env = TaskBatchVectorEnv(tasks, 4, item_stats=True)  # two populations of 4
    space, slate_size = trained_space(served)
    recommender = build_method(served, tmp_path / "a", "rl2", load_method_weights(tmp_path / "a", "rl2"), env, space,
                               slate_size, torch.Generator().manual_seed(0))  # fmt: skip
    assert isinstance(recommender, RL2Recommender)
    assert recommender.shares_state_across_users  # it pools a population's users
    named = memory.replace("_", " ") + (" memory" if memory == "population" else "")
    with pytest.raises(ValueError, match=rf"^agent: rl2's {named} reads every user of a population"):
        recommender.place(Shard(8, 0, 4))
    if memory == "population":
        assert recommender.population == 4
    else:  # its table grows with the catalogue
        with pytest.raises(ValueError, match=r"^run: rl2.item_memory keeps a table over the catalogue"):
            RL2Step(recommender.policy, ["candidates", "candidate_ids", "history"])

