"""The information ladder's Bayesian rungs (``metarec.meta.posterior_rung``): they never read the user's
hidden state, their beliefs find the users' clusters and the items' qualities, they earn more than the
rungs that know less, a seed reproduces them, and bad arguments are refused by name."""

from __future__ import annotations

import pytest
import torch

from metarec.envs.drifting.env import DriftingUsersVectorEnv
from metarec.envs.drifting.params import SimulatorConfig
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.ceiling import InformedOracle
from metarec.meta.posterior_rung import QUALITY, PosteriorOracle, posterior_rungs

STATIC = {"consumption_pull": 0.0, "ou_reversion": 0.0, "ou_noise": 0.0, "shift_hazard": 0.0, "trend_rate": 0.0}


def _task(seed: int, clusters: int, items: int = 60, **population: float) -> SimulatorConfig:
    return SimulatorConfig.model_validate(
        {
            "catalog": {"seed": seed, "num_items": items, "num_topics": 6},
            "population": {"num_clusters": clusters, "quality_weight": 1.5, "cluster_spread": 0.3,
                           "session_budget": 1000.0, **population},
        }
    )  # fmt: skip


def _env(users: int = 32, items: int = 60, **population: float) -> TaskBatchVectorEnv:
    env = TaskBatchVectorEnv([_task(3, 2, items, **population), _task(4, 5, items, **population)],
                             users_per_task=users, autoreset=False)  # fmt: skip
    env.reset(seed=7)
    return env


def _run(env: TaskBatchVectorEnv, rung, steps: int, seed: int = 7) -> tuple[list[torch.Tensor], float]:
    """The rung's slates and the mean expected reward per user-step over ``steps`` steps from ``seed``."""
    _, info = env.reset(seed=seed)
    rung.reset()
    slates, total = [], 0.0
    for _ in range(steps):
        slate = rung.act({}, info)
        slates.append(slate)
        _, reward, terminated, truncated, info = env.step(slate)
        total += float(info["expected_reward"].mean())
        rung.observe(reward, terminated | truncated, info)
    return slates, total / steps


def test_the_rung_never_reads_the_users_hidden_state(monkeypatch: pytest.MonkeyPatch) -> None:
    from metarec.meta.ceiling import RedrawTracker

    env = _env(consumption_pull=0.1, ou_reversion=0.05, ou_noise=0.05, trend_rate=0.5)
    rungs = [PosteriorOracle(env, "learned", seed=0), PosteriorOracle(env, "learned", 0, observable=True)]
    read: list[set[str]] = []
    for rung in rungs:
        plan = rung.planner.choice_model
        monkeypatch.setattr(
            rung.planner, "choice_model", lambda state, *a, plan=plan: read.append(set(state)) or plan(state, *a)
        )
    told = []
    monkeypatch.setattr(
        RedrawTracker, "update", lambda self, state: told.append(self) or torch.zeros(64, dtype=torch.bool)
    )
    _, info = env.reset(seed=7)
    for _ in range(6):
        slates = [rung.act({}, info) for rung in rungs]
        _, reward, terminated, truncated, info = env.step(slates[0])
        rungs[1]._shown["slate"] = slates[0]
        for rung in rungs:
            rung.observe(reward, terminated | truncated, info)
    # what the planner is given: the belief's interest, never the user's state
    assert read and all(keys <= {"candidates", "fatigue", "task", "step", "interest"} for keys in read)
    assert told and all(tracker is rungs[0].redraws for tracker in told)  # only the one told of redraws asks


def test_the_laplace_step_is_a_newton_step_of_the_choice_likelihood() -> None:
    from metarec.meta.bayes_filter import laplace_choice_step

    generator = torch.Generator().manual_seed(0)
    d, k = 4, 3
    mean = torch.randn(1, 1, d, generator=generator, dtype=torch.float64)
    cov = 0.5 * torch.eye(d, dtype=torch.float64)[None, None]
    e = torch.randn(1, k, d, generator=generator, dtype=torch.float64)
    temperature, no_click, position = torch.tensor([0.4], dtype=torch.float64), 2.0, torch.tensor([1.0, 0.8, 0.6])

    def log_lik(theta: torch.Tensor, chosen: int | None) -> torch.Tensor:
        weights = torch.exp(e[0] @ theta / temperature) * position
        numerator = no_click if chosen is None else weights[chosen]
        return torch.log(torch.as_tensor(numerator)) - torch.log(weights.sum() + no_click)

    weights = torch.exp(e[0] @ mean[0, 0] / temperature) * position
    prob = (weights / (weights.sum() + no_click))[None, None]
    for chosen in (1, None):
        picked = e[:, chosen] if chosen is not None else torch.zeros(1, d, dtype=torch.float64)
        new_mean, new_cov = laplace_choice_step(mean, cov, e, prob, picked, temperature)
        gradient = torch.autograd.functional.jacobian(lambda t, c=chosen: log_lik(t, c), mean[0, 0])
        hessian = torch.autograd.functional.hessian(lambda t, c=chosen: log_lik(t, c), mean[0, 0])
        expected_cov = torch.linalg.inv(torch.linalg.inv(cov[0, 0]) - hessian)
        torch.testing.assert_close(new_cov[0, 0], expected_cov)
        torch.testing.assert_close(new_mean[0, 0], mean[0, 0] + expected_cov @ gradient)


def test_kalman_steps_give_the_batch_posterior_of_a_linear_gaussian_model() -> None:
    from metarec.meta.bayes_filter import kalman_step

    generator = torch.Generator().manual_seed(1)
    d, n, noise = 3, 7, 0.09
    prior_mean, prior_cov = (
        torch.randn(d, generator=generator, dtype=torch.float64),
        0.4 * torch.eye(d, dtype=torch.float64),
    )
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = torch.randn(n, generator=generator, dtype=torch.float64)
    mean, cov, evidence = prior_mean[None, None], prior_cov[None, None], 0.0
    for i in range(n):
        mean, cov, log_lik = kalman_step(
            mean, cov, x[i : i + 1], y[i].reshape(1, 1), torch.tensor([noise], dtype=torch.float64)
        )
        evidence += float(log_lik)
    precision = torch.linalg.inv(prior_cov) + x.T @ x / noise
    batch_cov = torch.linalg.inv(precision)
    torch.testing.assert_close(cov[0, 0], batch_cov)
    torch.testing.assert_close(mean[0, 0], batch_cov @ (torch.linalg.inv(prior_cov) @ prior_mean + x.T @ y / noise))
    marginal = torch.distributions.MultivariateNormal(
        x @ prior_mean, x @ prior_cov @ x.T + noise * torch.eye(n, dtype=torch.float64)
    )
    assert abs(evidence - float(marginal.log_prob(y))) < 1e-9  # the steps' likelihoods chain to the evidence


def test_the_belief_finds_the_users_cluster_and_the_learned_quality_the_items() -> None:
    env = _env(users=48, **STATIC)
    rung = PosteriorOracle(env, "learned", seed=0)
    _run(env, rung, steps=60)
    belief = rung.belief
    guess = belief["cluster"].gather(1, rung.weights().argmax(1, keepdim=True))[:, 0]
    # chance is 0.35 (half the users among 2 clusters, half among 5); some of the 5 centres lie close together
    assert float((guess == env.state["cluster"]).float().mean()) > 0.75
    shown = rung.items.precision > 2 * rung.items.prior_precision  # items the population learned much about
    truth, estimate = env.model.world["item_quality"][shown], rung.items.mean()[shown]
    assert int(shown.sum()) > 20
    assert float(torch.corrcoef(torch.stack([truth, estimate]))[0, 1]) > 0.7


def test_knowing_more_earns_more_and_the_seed_reproduces_the_slates() -> None:
    env = _env(**STATIC)
    earned = {}
    for quality in QUALITY:
        slates, earned[quality] = _run(env, PosteriorOracle(env, quality, seed=3), steps=40)
        again, _ = _run(env, PosteriorOracle(env, quality, seed=3), steps=40)
        assert all(torch.equal(a, b) for a, b in zip(slates, again, strict=True))
    _, population = _run(env, InformedOracle(env, "population", quality=True), steps=40)
    _, oracle = _run(env, InformedOracle(env, "interest", quality=True), steps=40)
    assert earned["none"] < earned["learned"] < earned["true"] <= oracle
    assert population < earned["true"]  # learning the user beats knowing only the population


def test_the_rungs_are_named_and_bad_arguments_refused_by_name() -> None:
    env = _env()
    assert [f(env, 0).name for f in posterior_rungs().values()] == [
        "posterior", "posterior+learned quality", "posterior+quality", "posterior-moments+learned quality",
        "posterior-typical+learned quality", "posterior-typical-topics+learned quality",
        "posterior-typical-topics-pooled+learned quality", "posterior-typical-topics-pooled-observable+learned quality",
        "posterior-typical-topics-pooled-no-fatigue+learned quality",
        "posterior-typical-topics-pooled-no-shifts+learned quality",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"quality: expected one of none, learned, true, got 'some'"):
        PosteriorOracle(env, "some", seed=0)
    with pytest.raises(ValueError, match=r"samples: expected a positive integer, got 0"):
        PosteriorOracle(env, "true", seed=0, samples=0)
    with pytest.raises(TypeError, match="env: expected a TaskBatchVectorEnv, got DriftingUsersVectorEnv"):
        PosteriorOracle(DriftingUsersVectorEnv(num_envs=2), "true", seed=0)  # type: ignore[arg-type]
    rung = PosteriorOracle(env, "true", seed=0)
    env.set_tasks([_task(5, 3), _task(6, 2)])
    env.reset(seed=1)
    with pytest.raises(RuntimeError, match=r"env: its model was rebuilt \(set_tasks\)"):
        rung.act({}, {})
    with pytest.raises(RuntimeError, match=r"observe\(\) called before act\(\)"):
        PosteriorOracle(env, "true", seed=0).observe(torch.zeros(64), torch.zeros(64, dtype=torch.bool), {})


def test_without_the_clusters_the_prior_is_the_populations_moments() -> None:
    from metarec.meta.ceiling import population_mean_interest

    env = _env()
    model, task = env.model, torch.tensor([0, 1])
    known = PosteriorOracle(env, "learned", 0)._prior(task)
    prior = PosteriorOracle(env, "learned", 0, prior="moments")._prior(task)
    mean, _ = population_mean_interest(model)
    torch.testing.assert_close(prior["mean"][:, 0], mean, rtol=0, atol=1e-5)
    for t in range(2):  # the mixture of the clusters and the one Gaussian have the same covariance
        count = int(model.world["num_clusters"][t])
        centres = known["mean"][t, :count]
        spread = float(model.task_params.cluster_spread[t]) ** 2
        second = centres.T @ centres / count - torch.outer(mean[t], mean[t]) + spread * torch.eye(centres.shape[1])
        torch.testing.assert_close(prior["cov"][t, 0], second, rtol=0, atol=1e-5)


def test_the_typical_population_averages_the_parameters_and_leaves_the_model_alone() -> None:
    import math

    from metarec.meta.bayes_filter import typical_population

    env = _env()
    env.set_tasks([_task(3, 2, choice_temperature=0.25, no_click_utility=0.0, quality_weight=0.5),
                   _task(4, 5, choice_temperature=1.0, no_click_utility=2.0, quality_weight=1.5)])  # fmt: skip
    model = env.model
    before = {k: v.clone() for k, v in vars(model.task_params).items()}
    view = typical_population(model)
    torch.testing.assert_close(view.task_params.choice_temperature, torch.tensor([0.625, 0.625]))
    # derived from the mean parameters (exp(1 / 0.625)), not the mean of the tasks' weights (1 and e²)
    torch.testing.assert_close(view.task_params.no_click_weight, torch.full((2,), math.exp(1.6)))
    torch.testing.assert_close(view.task_params.quality_weight, torch.tensor([1.0, 1.0]))
    for key, value in vars(model.task_params).items():
        assert torch.equal(value, before[key])
    assert view.world is model.world


def test_the_family_topic_sets_hold_the_clusters_and_pooling_finds_them() -> None:
    from metarec.meta.bayes_filter import topic_set_centres

    env = _env(users=48, items=600, **STATIC)
    model = env.model
    sets, count = topic_set_centres(model)
    assert count.tolist() == [15, 15]  # 2 of 6 topics
    rung = PosteriorOracle(env, "learned", seed=0, prior="topics", typical=True, pool=True)
    _run(env, rung, steps=40)
    share = rung._share.exp()
    for task in range(2):
        first, size = int(model.world["cluster_offset"][task]), int(model.world["num_clusters"][task])
        centres = model.world["cluster_centre"][first : first + size]
        cosine = torch.nn.functional.normalize(centres, dim=1) @ torch.nn.functional.normalize(sets[task], dim=1).T
        # every cluster is near one of the family's topic sets (each topic's centre estimated from about 100 items)
        assert float(cosine.amax(1).min()) > 0.9
        nearest = cosine.argmax(1).unique()
        # the population's users put most of its weight on its clusters' sets (by chance 2 or 4 of 15 would hold
        # 0.13 or 0.27 of it)
        assert float(share[task, nearest].sum()) > 0.75


@pytest.mark.parametrize(
    ("blind", "fatigue_blind", "shift_blind"),
    [({"observable": True}, True, True), ({"no_fatigue": True}, True, False), ({"no_shifts": True}, False, True)],
)
def test_the_observable_rung_reads_neither_fatigue_nor_shifts_and_each_half_one_of_them(
    blind, fatigue_blind, shift_blind
) -> None:
    from metarec.meta.evaluate import shift_interests

    env = _env(fatigue_rate=0.6, fatigue_weight=2.0)
    told = {"prior": "topics", "typical": True, "pool": True}
    rungs = {seen: PosteriorOracle(env, "learned", 0, **told, **(blind if seen else {})) for seen in (False, True)}
    _, info = env.reset(seed=7)
    for _ in range(12):  # both learn from the same slates and responses
        slate = rungs[True].act({}, info)
        rungs[False].act({}, info)
        rungs[False]._shown["slate"] = slate
        _, reward, terminated, truncated, info = env.step(slate)
        for rung in rungs.values():
            rung.observe(reward, terminated | truncated, info)
    slates = {}
    for tired in (False, True):
        if tired:
            env._state = {**env.state, "fatigue": torch.full_like(env.state["fatigue"], 3.0)}
        for seen, rung in rungs.items():
            rung.generator.manual_seed(5)
            slates[seen, tired] = rung.act({}, info)
    assert torch.equal(slates[True, False], slates[True, True]) == fatigue_blind
    assert not torch.equal(slates[False, False], slates[False, True])
    shift_interests(env, torch.ones(env.num_envs, dtype=torch.bool), seed=3)
    for seen, rung in rungs.items():
        rung.act({}, info)
        # only a rung told of the shift starts afresh
        assert bool((rung.belief["log_lik"] == 0).all()) == (not seen or not shift_blind)
