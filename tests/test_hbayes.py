"""The hierarchical Bayesian reference (``hbayes``): its conjugate posterior, its population-level
pooling, that it learns new users of held-out populations, and that it reads no ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metarec.agents.baselines.hbayes import BayesPrior, HierarchicalBayesRecommender
from metarec.agents.registry import make_recommender
from metarec.config import load_yaml_config
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.baselines import fit_bayes_prior
from metarec.meta.tasks import TaskDistribution, task_batch

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def distribution() -> TaskDistribution:
    return load_yaml_config(TaskDistribution, ROOT / "configs" / "meta_tasks.yaml")


def held_out_env(distribution: TaskDistribution, users: int = 32, **kwargs) -> TaskBatchVectorEnv:
    tasks = task_batch(distribution, "meta-test", 2, seed=3, index=0, sessions=3)
    return TaskBatchVectorEnv(tasks, users, autoreset=False, **kwargs)


def make(groups: int = 1, d: int = 4, **kwargs) -> HierarchicalBayesRecommender:
    return HierarchicalBayesRecommender(2, 10, d, torch.Generator().manual_seed(0), groups=groups, **kwargs)


def plant_clicks(agent: HierarchicalBayesRecommender, e: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> None:
    """Fills users' remembered clicks directly: ``e`` ``[B, n, d]``, ``y`` ``[B, n]``, ``ids`` ``[B, n]``."""
    agent._allocate(e.shape[0])
    n = e.shape[1]
    agent.clicks_e[:, :n], agent.clicks_y[:, :n], agent.clicks_id[:, :n] = e, y, ids
    agent.count[:] = n


def test_one_broad_component_gives_the_conjugate_gaussian_posterior() -> None:
    prior = BayesPrior(interest_var=0.7, noise_var=0.2, offset_var=1e-9)
    agent = make(prior=prior)
    gen = torch.Generator().manual_seed(1)
    e, y = torch.randn(3, 6, 4, generator=gen), torch.randn(3, 6, generator=gen)
    plant_clicks(agent, e, y, torch.zeros(3, 6, dtype=torch.int64))
    post, log_r, factor = agent.user_posterior()
    for u in range(3):  # ridge regression with prior precision 1 / interest_var and noise variance noise_var
        a = e[u].T @ e[u] / prior.noise_var + torch.eye(4) / prior.interest_var
        expected = torch.linalg.solve(a, e[u].T @ y[u] / prior.noise_var)
        torch.testing.assert_close(post[u, 0], expected, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(factor[u] @ factor[u].T, a, rtol=1e-4, atol=1e-4)
    assert torch.allclose(log_r, torch.zeros_like(log_r))


def test_the_mixture_weighs_each_cluster_by_its_marginal_likelihood() -> None:
    """Responsibilities equal the brute-force posterior over components: weight times the marginal likelihood
    N(y; E μ_k + β, s² E Eᵀ + v I) of the user's clicks, with centres of unequal norms and unequal weights."""
    prior = BayesPrior(cluster_var=0.3, noise_var=0.2, offset_var=1e-9)
    agent = make(prior=prior, components=3)
    centres = torch.tensor([[2.0, 0, 0, 0], [0, -1.0, 0.5, 0], [0.3, 0.3, 0.3, 0.3]])
    weights = torch.tensor([0.5, 0.3, 0.2])
    agent.mixture = (centres[None], weights.log()[None], torch.tensor([0.3]))
    gen = torch.Generator().manual_seed(2)
    e = torch.nn.functional.normalize(torch.randn(2, 5, 4, generator=gen), dim=-1)
    y = torch.einsum("bnd,d->bn", e, centres[1]) + 0.3 * torch.randn(2, 5, generator=gen)
    plant_clicks(agent, e, y, torch.zeros(2, 5, dtype=torch.int64))
    _, log_r, _ = agent.user_posterior()
    for u in range(2):
        cov = 0.3 * e[u] @ e[u].T + prior.noise_var * torch.eye(5)
        log_like = torch.stack(
            [
                torch.distributions.MultivariateNormal(e[u].double() @ c.double(), cov.double()).log_prob(y[u].double())
                for c in centres
            ]
        )
        expected = torch.log_softmax(weights.double().log() + log_like, dim=0)
        torch.testing.assert_close(log_r[u].double(), expected, rtol=1e-3, atol=1e-3)
    assert log_r.exp()[:, 1].min() > 0.5  # the clicks come from the second cluster


def test_refit_recovers_a_populations_clusters_from_its_users() -> None:
    agent = make(components=2, d=4, min_clicks=3, prior=BayesPrior(noise_var=0.01, offset_var=1e-9, cluster_var=0.01))
    centres = torch.tensor([[1.5, 1.5, 0, 0], [0, 0, -1.5, 1.5]])
    gen = torch.Generator().manual_seed(4)
    users = 40
    cluster = torch.arange(users) % 2
    theta = centres[cluster] + 0.05 * torch.randn(users, 4, generator=gen)
    e = torch.nn.functional.normalize(torch.randn(users, 12, 4, generator=gen), dim=-1)
    plant_clicks(agent, e, torch.einsum("bnd,bd->bn", e, theta), torch.zeros(users, 12, dtype=torch.int64))
    agent.refit(iterations=10)
    means = agent.mixture[0][0]
    nearest = torch.cdist(centres, means).min(dim=1).values
    assert torch.all(nearest < 0.3), means


def test_a_population_pools_its_own_users_only() -> None:
    import gymnasium as gym

    env = gym.make_vec(
        "metarec/DriftingUsers-v0", num_envs=32, vectorization_mode="vector_entry_point", array_backend="torch"
    ).unwrapped
    model = env.model
    generator = torch.Generator().manual_seed(0)
    agent = HierarchicalBayesRecommender(
        model.slate_size, model.num_items, model.config.catalog.embedding_dim, generator, groups=2, components=2
    )
    observation, info = env.reset(seed=0)
    active = torch.zeros(env.num_envs, dtype=torch.bool)
    active[16:] = True  # only the second block's users are served: the same catalogue ids as the first's
    for _ in range(40):
        slate = agent.act(observation, {**info, "active": active})
        observation, reward, terminated, truncated, info = env.step(slate)
        agent.observe(reward, terminated | truncated, {**info, "active": active})
    clicks = agent.item_table[0, :-1].reshape(2, -1)  # (the last entry: clicks on replaced items, at the prior)
    assert clicks[0].sum() == 0 and clicks[1].sum() > 0
    assert agent.mixture is not None and agent.fitted.tolist() == [False, True]
    broad = agent.mixture[0][0]
    assert torch.all(broad == 0) and float(agent.mixture[2][0]) == agent.prior.interest_var


#: What a recommender may read of ``info``: the user's response and who is served, never the ground truth.
# and the catalog's arrivals under churn: a recommender's own system knows which items are new
RESPONSE_KEYS = {"clicked", "chosen_position", "chosen_candidate", "engagement", "active", "item_arrived"}


class ResponseOnly(dict):
    """An ``info`` that raises on any key beyond the user's response."""

    def __getitem__(self, key):
        if key not in RESPONSE_KEYS:
            raise AssertionError(f"read info[{key!r}]")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key not in RESPONSE_KEYS:
            raise AssertionError(f"read info.get({key!r})")
        return super().get(key, default)


def run_returns(
    env: TaskBatchVectorEnv, name: str, seed: int, steps: int = 60, strict: bool = False
) -> tuple[float, list]:
    wrap = ResponseOnly if strict else dict
    agent = make_recommender(name, env, seed)
    observation, info = env.reset(seed=seed)
    total, slates = 0.0, []
    alive = torch.ones(env.num_envs, dtype=torch.bool)
    for _ in range(steps):
        slate = agent.act(observation, wrap({**info, "active": alive}))
        slates.append(slate.clone())
        observation, reward, terminated, truncated, info = env.step(slate)
        total += float(reward[alive].sum())
        agent.observe(reward, terminated | truncated, wrap({**info, "active": alive}))
        alive = alive & ~(terminated | truncated)
    return total / env.num_envs, slates


def test_hbayes_learns_held_out_users_above_random_and_is_deterministic(distribution) -> None:
    env = held_out_env(distribution, users=48)
    names = ("random", "popular", "hbayes")
    scores = {name: np.mean([run_returns(env, name, s)[0] for s in (0, 1)]) for name in names}
    assert scores["hbayes"] > 1.2 * scores["random"] and scores["hbayes"] > scores["popular"], scores
    first, again = run_returns(env, "hbayes", 5, steps=20)[1], run_returns(env, "hbayes", 5, steps=20)[1]
    other = run_returns(env, "hbayes", 6, steps=20)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_hbayes_reads_no_ground_truth(distribution) -> None:
    with_truth = run_returns(held_out_env(distribution, users=16), "hbayes", 2, steps=25, strict=True)[1]
    without = run_returns(held_out_env(distribution, users=16, ground_truth=False), "hbayes", 2, steps=25)[1]
    assert all(torch.equal(a, b) for a, b in zip(with_truth, without, strict=True))


def test_the_prior_is_fitted_on_training_populations(distribution) -> None:
    prior = fit_bayes_prior(distribution, "meta-train", seed=0, tasks=16, users_per_task=32)
    ranges = distribution.prior.ranges
    assert ranges["choice_temperature"].low < prior.temperature < ranges["choice_temperature"].high
    assert ranges["position_bias"].low < prior.position_bias < ranges["position_bias"].high
    assert 0 < prior.cluster_var < prior.interest_var  # users spread less around their cluster than overall
    tasks = task_batch(distribution, "meta-train", 16, 0, 20_000, 1)
    spread = np.mean([t.population.cluster_spread**2 for t in tasks])
    offset = np.mean([t.population.quality_weight**2 * t.catalog.quality_std**2 for t in tasks])
    assert prior.cluster_var == pytest.approx(spread, rel=0.15)
    assert prior.offset_var == pytest.approx(offset, rel=0.15)
    with pytest.raises(ValueError, match=r"^split: the prior is fitted on a training split; 'meta-test' holds out"):
        fit_bayes_prior(distribution, "meta-test", seed=0)
    assert prior == fit_bayes_prior(distribution, "meta-train", seed=0, tasks=16, users_per_task=32)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"groups": 0}, "groups"),
        ({"components": True}, "components"),
        ({"window": -1}, "window"),
        ({"prior": BayesPrior}, "prior"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, field) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        make(**kwargs)


def test_bad_prior_constants_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^prior\.noise_var: expected a finite number > 0"):
        BayesPrior(noise_var=0.0)
    with pytest.raises(ValueError, match=r"^prior\.position_bias: expected a finite number"):
        BayesPrior(position_bias=float("nan"))


def test_hbayes_refuses_an_environment_outside_its_family() -> None:
    import gymnasium as gym

    env = gym.make_vec(
        "metarec/RecSimInterestEvolution-v0", num_envs=2, vectorization_mode="vector_entry_point", array_backend="torch"
    )
    with pytest.raises(ValueError, match=r"^agent: hbayes models the DriftingUsers family"):
        make_recommender("hbayes", env.unwrapped, 0)


def test_observe_recovers_the_satisfaction_logit_of_each_click_and_reset_forgets_users(distribution) -> None:
    env = held_out_env(distribution, users=16)
    agent = make_recommender("hbayes", env, 0)
    observation, info = env.reset(seed=1)
    # a task batch's catalogue ids are distinct across its populations: one item table, indexed by id
    assert agent.groups == 2 and agent.item_table.shape == (2, env.model.num_items + 1)  # + the prior's entry
    observation_ids = observation["candidate_ids"].to(torch.int64)
    slate = agent.act(observation, info)
    observation, reward, terminated, truncated, info = env.step(slate)
    agent.observe(reward, terminated | truncated, info)
    clicked = info["chosen_position"] >= 0
    assert clicked.any() and (~clicked).any()
    satisfaction = info["satisfaction"][clicked].clamp(1e-4, 1 - 1e-4)
    torch.testing.assert_close(agent.clicks_y[clicked, 0], torch.logit(satisfaction), rtol=1e-4, atol=1e-4)
    chosen_ids = observation_ids.gather(1, info["chosen_candidate"].clamp(min=0)[:, None].to(torch.int64))[:, 0]
    assert torch.equal(agent.clicks_id[clicked, 0], chosen_ids[clicked])  # the clicked item's id
    assert torch.all(agent.clicks_id[~clicked] == -1)
    table = agent.item_table.clone()
    mask = torch.zeros(env.num_envs, dtype=torch.bool)
    mask[0] = True
    agent.reset(mask)
    assert agent.count[0] == 0 and torch.all(agent.clicks_id[0] == -1)
    assert torch.equal(agent.item_table, table)  # the population's item offsets outlive the user
    with pytest.raises(ValueError, match=r"^mask: expected 32 booleans"):
        agent.reset(torch.zeros(3, dtype=torch.bool))
