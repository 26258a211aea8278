"""Bandit baselines: they learn on stationary users, their statistics are right, and they keep the
recommender protocol (shapes, distinct slates, per-user reset, determinism, named errors)."""

import functools
import math

import gymnasium as gym
import pytest
import torch

from metarec.agents.baselines.bandits import EpsilonGreedyRecommender, GreedyRecommender, slate_targets, top_slate
from metarec.agents.baselines.linear import LinUCBRecommender, ThompsonRecommender
from metarec.agents.baselines.popularity import PopularRecommender
from metarec.agents.evaluation import evaluate
from metarec.agents.registry import RECOMMENDERS, make_recommender
from metarec.envs.drifting.params import UserPopulation
from metarec.registration import CORE_ENVIRONMENTS as ENVIRONMENTS

BANDITS = ("popular", "bts", "greedy", "epsilon-greedy", "linucb", "thompson")
STEPS = 150
# Stationary users (no drift, no fatigue) who stay exactly STEPS steps, shown 3 of a 20-item
# catalog: every item is a candidate at every step, so id-keyed agents can learn per user.
STATIONARY = {
    "population": UserPopulation()
    .without_drift()
    .model_copy(update={"fatigue_rate": 0.0, "session_budget": 1e6, "max_session_steps": STEPS})
    .model_dump(),
    "catalog": {"num_items": 20, "num_topics": 4},
    "num_candidates": 20,
    "slate_size": 3,
}


def make_env(env_id="metarec/DriftingUsers-v0", users=16, **kwargs):
    return gym.make_vec(
        env_id, num_envs=users, vectorization_mode="vector_entry_point", array_backend="torch", **kwargs
    )


def rollout(agent, env, steps, seed=0):
    """Runs ``agent`` for ``steps`` steps as :func:`metarec.agents.evaluation.evaluate` does; returns the
    actions and the per-step mean regret."""
    observation, info = env.reset(seed=seed)
    agent.reset()
    actions, regret = [], []
    for _ in range(steps):
        action = agent.act(observation, info)
        observation, reward, terminated, truncated, info = env.step(action)
        done = terminated | truncated
        agent.observe(reward, done, info)
        if bool(done.any()):
            agent.reset(done)
        actions.append(action)
        regret.append(float(info["regret"].mean()))
    return torch.stack(actions), torch.tensor(regret)


@functools.cache
def stationary_regret(name):
    env = make_env(users=128, **STATIONARY)
    _, regret = rollout(make_recommender(name, env.unwrapped, seed=0), env, STEPS)
    return regret


@pytest.mark.parametrize("name", BANDITS)
def test_regret_falls_on_stationary_users_and_ends_below_random(name):
    regret = stationary_regret(name)
    early, late = regret[:10].mean(), regret[-STEPS // 3 :].mean()
    random_late = stationary_regret("random")[-STEPS // 3 :].mean()
    # Cumulative regret is sublinear: the late per-step regret is a fraction of the early one.
    # The early window is the first 10 steps because popular pools 128 users and learns within it.
    assert late < 0.6 * early, (name, early, late)
    assert late < 0.5 * random_late, (name, late, random_late)
    assert regret.sum() < 0.5 * stationary_regret("random").sum()


def test_feedback_targets_credit_only_the_chosen_position():
    reward = torch.tensor([2.5, 0.0, 1.0])
    info = {"chosen_position": torch.tensor([1, -1, 0]), "clicked": torch.tensor([True, False, True])}
    assert slate_targets(reward, info, 3, "reward").tolist() == [[0, 2.5, 0], [0, 0, 0], [1.0, 0, 0]]
    assert slate_targets(reward, info, 3, "click").tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 0]]


def test_top_slate_takes_the_best_and_breaks_ties_uniformly(cpu_generator):
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    assert top_slate(scores, 3, cpu_generator).tolist() == [[1, 3, 2]]
    ties = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]).expand(8000, 5)
    first = top_slate(ties, 2, cpu_generator)
    counts = torch.bincount(first[:, 0], minlength=5)
    assert counts[4] == 0 and (first[:, 1] != 4).all()
    assert ((counts[:4] - 2000).abs() < 200).all(), counts  # ±4.6 sd of a binomial(8000, 1/4)


def linear_observation(features):
    return {"candidates": features}


def test_linucb_recovers_a_known_linear_model(cpu_generator):
    users, n, f = 8, 10, 4
    theta_true = torch.randn((users, f + 1), generator=cpu_generator)  # last: the constant's weight
    agent = LinUCBRecommender(None, cpu_generator, alpha=0.5)
    agent.reset()
    for _ in range(300):
        x = torch.randn((users, n, f), generator=cpu_generator)
        choice = agent.act(linear_observation(x), {})  # [B] single-item
        chosen = torch.cat([x[torch.arange(users), choice], torch.ones(users, 1)], dim=1)
        reward = (chosen * theta_true).sum(dim=1) + 0.05 * torch.randn(users, generator=cpu_generator)
        info = {"chosen_position": torch.zeros(users, dtype=torch.int64), "clicked": torch.ones(users, dtype=bool)}
        agent.observe(reward, torch.zeros(users, dtype=bool), info)
    assert torch.allclose(agent.theta, theta_true, atol=0.05), (agent.theta - theta_true).abs().max()


def test_sherman_morrison_inverse_equals_the_inverse_of_the_gram_matrix(cpu_generator):
    users, n, f, k = 4, 12, 6, 3
    agent = ThompsonRecommender(k, cpu_generator, ridge=2.0)
    agent.reset()
    gram = 2.0 * torch.eye(f + 1, dtype=torch.float64).expand(users, f + 1, f + 1).clone()
    for _ in range(200):
        x = 1.0 + torch.randn((users, n, f), generator=cpu_generator)
        slate = agent.act(linear_observation(x), {})
        shown = torch.cat([x, torch.ones(users, n, 1)], dim=2).gather(1, slate[:, :, None].expand(-1, -1, f + 1))
        gram += torch.einsum("bki,bkj->bij", shown.double(), shown.double())
        info = {"chosen_position": torch.randint(-1, k, (users,), generator=cpu_generator)}
        agent.observe(torch.rand(users, generator=cpu_generator), torch.zeros(users, dtype=bool), info)
    expected = torch.linalg.inv(gram)
    scale = expected.abs().amax(dim=(1, 2), keepdim=True)
    assert ((agent.inverse.double() - expected).abs() / scale).max() < 1e-4
    assert torch.equal(agent.inverse, agent.inverse.transpose(1, 2))


def user_state(agent):
    if isinstance(agent, PopularRecommender | GreedyRecommender):
        return (agent.successes, agent.impressions)
    return (agent.inverse, agent.response)


@pytest.mark.parametrize("name", ["greedy", "epsilon-greedy", "linucb", "thompson"])
def test_reset_mask_clears_only_the_masked_users(name):
    env = make_env(users=6)
    agent = make_recommender(name, env.unwrapped, seed=0)
    rollout(agent, env, 10)
    fresh = make_recommender(name, env.unwrapped, seed=0)
    rollout(fresh, env, 1)
    fresh.reset(torch.ones(6, dtype=bool))  # the state of a user who has seen nothing
    before = [t.clone() for t in user_state(agent)]
    mask = torch.tensor([True, False, True, False, False, False])
    agent.reset(mask)
    for old, new, empty in zip(before, user_state(agent), user_state(fresh), strict=True):
        assert torch.equal(new[~mask], old[~mask])
        assert torch.equal(new[mask], empty[mask])
        assert not torch.equal(old[mask], empty[mask]), "the masked users had learned something"
    agent.reset()
    assert user_state(agent)[0] is None and agent.batch is None


def test_popular_keeps_its_table_across_resets():
    env = make_env(users=6)
    agent = make_recommender("popular", env.unwrapped, seed=0)
    rollout(agent, env, 5)
    table = [t.clone() for t in user_state(agent)]
    assert table[1].sum() == 6 * 5 * 5  # impressions: users x steps x slate size
    agent.reset(torch.ones(6, dtype=bool))
    agent.reset()
    assert all(torch.equal(a, b) for a, b in zip(table, user_state(agent), strict=True))


@pytest.mark.parametrize("name", BANDITS)
def test_slates_are_distinct_in_range_and_repeat_for_a_seed(name):
    env = make_env(users=32, population={"session_budget": 10.0})  # short sessions: autoreset happens
    actions, _ = rollout(make_recommender(name, env.unwrapped, seed=3), env, 25)
    assert actions.dtype == torch.int64 and actions.shape == (25, 32, 5)
    assert actions.min() >= 0 and actions.max() < 20
    assert (actions.sort(dim=2).values.diff(dim=2) != 0).all(), "a slate repeats a candidate"
    again, _ = rollout(make_recommender(name, env.unwrapped, seed=3), env, 25)
    assert torch.equal(actions, again)
    if name != "linucb":  # linucb draws only to break exact ties
        other, _ = rollout(make_recommender(name, env.unwrapped, seed=4), env, 25)
        assert not torch.equal(actions, other)


def test_epsilon_greedy_with_full_exploration_fills_a_slate_of_every_candidate(cpu_generator):
    agent = EpsilonGreedyRecommender(5, 50, cpu_generator, epsilon=1.0)
    ids = torch.stack([torch.randperm(50, generator=cpu_generator)[:5] for _ in range(100)])
    slate = agent.act({"candidate_ids": ids, "candidates": torch.zeros(100, 5, 2)}, {})
    assert torch.equal(slate.sort(dim=1).values, torch.arange(5).expand(100, 5))
    assert len({tuple(row) for row in slate.tolist()}) > 50  # random orders, not the greedy one


@pytest.mark.parametrize("name", BANDITS)
def test_single_item_environments_get_one_index_per_user(name):
    env = make_env("metarec/DriftingUsersSingle-v0", users=8)
    actions, _ = rollout(make_recommender(name, env.unwrapped, seed=0), env, 5)
    assert actions.shape == (5, 8) and actions.dtype == torch.int64


@pytest.mark.parametrize("env_id", [e.id for e in ENVIRONMENTS if "RecSim" in e.id])
@pytest.mark.parametrize("name", ["popular", "greedy", "epsilon-greedy"])
def test_id_keyed_agents_name_the_missing_candidate_ids(env_id, name):
    env = make_env(env_id, users=4)
    with pytest.raises(ValueError, match=f"^{name} needs candidate_ids in the observation"):
        make_recommender(name, env.unwrapped, seed=0)


def test_id_keyed_agents_reject_an_observation_without_candidate_ids(cpu_generator):
    agent = GreedyRecommender(2, 10, cpu_generator)
    with pytest.raises(ValueError, match=r"^greedy needs candidate_ids"):
        agent.act({"candidates": torch.zeros(3, 10, 2)}, {})


@pytest.mark.parametrize("env_id", [e.id for e in ENVIRONMENTS])
@pytest.mark.parametrize("name", ["linucb", "thompson"])
def test_linear_agents_run_on_every_environment(env_id, name):
    env = make_env(env_id, users=4)
    rollout(make_recommender(name, env.unwrapped, seed=0), env, 5)


def test_observe_before_act_is_an_error(cpu_generator):
    with pytest.raises(RuntimeError, match="observe"):
        LinUCBRecommender(2, cpu_generator).observe(torch.zeros(2), torch.zeros(2, dtype=bool), {})


BAD_ARGUMENTS = [
    (LinUCBRecommender, {"slate_size": 0}, "slate_size"),
    (LinUCBRecommender, {"slate_size": 2.0}, "slate_size"),
    (LinUCBRecommender, {"target": "clicks"}, "target"),
    (LinUCBRecommender, {"ridge": 0.0}, "ridge"),
    (LinUCBRecommender, {"alpha": -1.0}, "alpha"),
    (LinUCBRecommender, {"alpha": math.nan}, "alpha"),
    (ThompsonRecommender, {"scale": 0}, "scale"),
    (ThompsonRecommender, {"generator": 0}, "generator"),
    (PopularRecommender, {"num_items": 0}, "num_items"),
    (GreedyRecommender, {"prior_successes": 0.0}, "prior_successes"),
    (GreedyRecommender, {"prior_failures": -1}, "prior_failures"),
    (EpsilonGreedyRecommender, {"epsilon": 1.5}, "epsilon"),
    (EpsilonGreedyRecommender, {"epsilon": True}, "epsilon"),
]


@pytest.mark.parametrize(("cls", "bad", "argument"), BAD_ARGUMENTS)
def test_bad_arguments_raise_errors_that_name_them(cls, bad, argument, cpu_generator):
    kwargs = {"slate_size": 2, "generator": cpu_generator}
    if cls in (PopularRecommender, GreedyRecommender, EpsilonGreedyRecommender):
        kwargs["num_items"] = 10
    with pytest.raises(ValueError, match=f"^{argument}: "):
        cls(**{**kwargs, **bad})


@pytest.mark.parametrize("name", BANDITS)
def test_evaluate_runs_every_bandit(name):
    assert name in RECOMMENDERS
    result = evaluate("metarec/DriftingUsers-v0", name, users=64, seed=0)
    assert result["agent"] == name and result["users"] == 64
    assert math.isfinite(result["mean_return"]) and result["mean_return"] > 0
