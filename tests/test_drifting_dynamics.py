"""The DriftingUsers dynamics do what the model says: choice, engagement, budgets and each drift."""

import numpy as np
import pytest
import torch
from scipy import stats

from metarec.agents.evaluation import evaluate
from metarec.envs.core.backend import ReplayRandom, numpy_backend, torch_backend
from metarec.envs.core.choice import choice_probabilities, revenue_ordered_slate, shown_mask
from metarec.envs.drifting.model import DriftingUsersModel
from metarec.envs.drifting.params import SimulatorConfig, UserPopulation

STILL = UserPopulation().without_drift().model_copy(update={"fatigue_rate": 0.0})


#: What ``model`` puts in the catalog: the drift tests run on a fixed and on a churning catalog (``catalog``).
CATALOG: dict = {}


@pytest.fixture(params=[0.0, 2.0], ids=["fixed-catalog", "churning-catalog"])
def catalog(request, monkeypatch):
    """Runs a test on a fixed catalog and on one where 2 items in 50 are replaced each step."""
    monkeypatch.setitem(CATALOG, "churn_rate", request.param)


def model(population=STILL, **config):
    config = {"catalog": dict(CATALOG), **config}
    return DriftingUsersModel(SimulatorConfig(population=population, **config), torch_backend())


def batch_of_one_user(m, state, users):
    """``users`` copies of user 0 of ``state``."""
    return {k: v[:1].expand(users, *v.shape[1:]).clone() for k, v in state.items()}


def test_choice_frequencies_match_the_logit_probabilities():
    m = model()
    rng = m.backend.make_random(0)
    state = batch_of_one_user(m, m.initial_state(rng, 1), 200_000)
    slate = torch.tensor([[3, 7, 1, 12, 5]]).expand(200_000, 5)
    truth = m.choice_model(state)
    weights = truth.weights[0, slate[0]] * truth.position_weight
    expected = choice_probabilities(m.xp, weights[None], truth.no_click_weight)[0].double().numpy()
    expected /= expected.sum()
    _, outcome = m.step(rng, state, slate)
    position = outcome.info["chosen_position"].numpy()
    observed = np.bincount(np.where(position < 0, 5, position), minlength=6)
    _, p = stats.chisquare(observed, expected * observed.sum())
    assert p > 1e-3, (observed / observed.sum(), expected)


def test_position_bias_favours_earlier_positions():
    m = model(population=STILL.model_copy(update={"position_bias": 1.0}))
    state = m.initial_state(m.backend.make_random(0), 1)
    truth = m.choice_model(state)

    def expected_reward(slate):
        weights = truth.weights[0, slate] * truth.position_weight
        probs = choice_probabilities(m.xp, weights[None], truth.no_click_weight)[0, :-1]
        return float((probs * truth.revenue[0, slate]).sum())

    order = torch.argsort(truth.revenue[0, :5], descending=True)
    assert expected_reward(order) >= expected_reward(torch.arange(5))
    assert expected_reward(order) >= expected_reward(order.flip(0))


def test_repeated_candidates_are_shown_once():
    slate = torch.tensor([[4, 4, 2, 4, 2], [0, 1, 2, 3, 4]])
    assert shown_mask(torch_backend().xp, slate).tolist() == [[True, False, True, False, False], [True] * 5]


def test_oracle_matches_exhaustive_search_without_position_bias():
    """Revenue-ordered assortments are optimal for the MNL when the slate size does not bind."""
    be = numpy_backend()
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = rng.gamma(1.0, 1.0, (1, 6)).astype(np.float32)
        r = rng.uniform(0, 5, (1, 6)).astype(np.float32)
        _slate, value = revenue_ordered_slate(be, w, r, np.float32(1.0), np.ones(6, np.float32), 6)
        best = 0.0
        for mask in range(1, 64):
            chosen = [i for i in range(6) if mask >> i & 1]
            best = max(best, float((w[0, chosen] * r[0, chosen]).sum() / (1 + w[0, chosen].sum())))
        assert value[0] == pytest.approx(best, rel=1e-5)


def test_engagement_and_reward_are_the_watched_minutes():
    m = model()
    rng = m.backend.make_random(1)
    state = m.initial_state(rng, 4096)
    _, outcome = m.step(rng, state, torch.arange(5).expand(4096, 5))
    clicked = outcome.info["clicked"]
    assert torch.equal(outcome.reward, outcome.info["engagement"])
    assert (outcome.reward[~clicked] == 0).all()
    assert (outcome.reward[clicked] > 0).all() and (outcome.reward <= m.config.catalog.max_length).all()


@pytest.mark.usefixtures("catalog")
def test_budgets_end_sessions():
    pop = STILL.model_copy(update={"session_budget": 10.0, "step_cost": 1.0, "budget_bonus": 0.0})
    m = model(population=pop)
    rng = m.backend.make_random(2)
    state = m.initial_state(rng, 512)
    ended_at = torch.full((512,), -1)
    for t in range(12):
        state, outcome = m.step(rng, state, torch.arange(5).expand(512, 5))
        newly = outcome.terminated & (ended_at < 0)
        ended_at[newly] = t + 1
        assert torch.equal(outcome.terminated, state["budget"] <= 0)
    # Browsing alone costs 1 per step, so every session of budget 10 ends within 10 steps.
    assert (ended_at > 0).all() and (ended_at <= 10).all()


@pytest.mark.usefixtures("catalog")
def test_step_limit_truncates():
    pop = STILL.model_copy(update={"max_session_steps": 3, "session_budget": 1000.0})
    m = model(population=pop)
    rng = m.backend.make_random(0)
    state = m.initial_state(rng, 64)
    for _t in range(3):
        state, outcome = m.step(rng, state, torch.arange(5).expand(64, 5))
    assert outcome.truncated.all() and not outcome.terminated.any()


def interest_after(population, steps=20, users=2048, slate=None, seed=0):
    m = model(population=population)
    rng = m.backend.make_random(seed)
    state = m.initial_state(rng, users)
    start = state["interest"].clone()
    slate = torch.arange(5).expand(users, 5) if slate is None else slate
    shifts = torch.zeros(users, dtype=torch.bool)
    for _ in range(steps):
        state, outcome = m.step(rng, state, slate)
        shifts |= outcome.info["regime_shift"]
    return start, state, shifts, m


@pytest.mark.usefixtures("catalog")
def test_every_drift_mechanism_is_inert_at_zero():
    start, state, shifts, _ = interest_after(STILL)
    assert torch.equal(start, state["interest"]) and not shifts.any()


@pytest.mark.usefixtures("catalog")
def test_consumption_pulls_interest_toward_satisfying_items():
    pop = STILL.model_copy(update={"consumption_pull": 0.2})
    m = model(population=pop)
    rng = m.backend.make_random(3)
    state = m.initial_state(rng, 4096)
    before = state["interest"].clone()
    new, outcome = m.step(rng, state, torch.arange(5).expand(4096, 5))
    clicked = outcome.info["clicked"]
    assert torch.equal(new["interest"][~clicked], before[~clicked])
    item = state["candidates"].gather(1, outcome.info["chosen_candidate"].clamp(min=0)[:, None])[:, 0]
    target = pop.interest_scale * m.world["item_embedding"][item]
    s = outcome.info["satisfaction"]
    expected = before + (0.2 * (2 * s - 1))[:, None] * (target - before)
    torch.testing.assert_close(new["interest"][clicked], expected[clicked])


@pytest.mark.usefixtures("catalog")
def test_ou_random_walk_reverts_to_the_anchor_with_the_stationary_spread():
    theta, sigma = 0.1, 0.05
    pop = STILL.model_copy(update={"ou_reversion": theta, "ou_noise": sigma})
    _start, state, _, _ = interest_after(pop, steps=150, users=4096)
    deviation = (state["interest"] - state["anchor"]).flatten()
    stationary_std = sigma / np.sqrt(1 - (1 - theta) ** 2)
    assert float(deviation.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(deviation.std()) == pytest.approx(stationary_std, rel=0.05)


@pytest.mark.usefixtures("catalog")
def test_regime_shifts_happen_at_the_hazard_rate():
    hazard, steps, users = 0.02, 20, 8192
    _, _, shifts, _ = interest_after(STILL.model_copy(update={"shift_hazard": hazard}), steps, users)
    expected = 1 - (1 - hazard) ** steps
    assert abs(float(shifts.float().mean()) - expected) < 4 * np.sqrt(expected * (1 - expected) / users)


@pytest.mark.usefixtures("catalog")
def test_population_trend_moves_anchors_along_the_cluster_direction():
    pop = STILL.model_copy(update={"trend_rate": 0.5, "steps_per_day": 10})
    start, state, _, m = interest_after(pop, steps=20)
    moved = state["anchor"] - start
    direction = m.world["trend_direction"][state["cluster"]]
    torch.testing.assert_close(moved, direction * 0.5 * 20 / 10, atol=1e-5, rtol=1e-4)


@pytest.mark.usefixtures("catalog")
def test_fatigue_builds_on_consumed_topics_and_recovers():
    pop = STILL.model_copy(update={"fatigue_rate": 0.5, "fatigue_recovery": 0.2})
    m = model(population=pop)
    rng = m.backend.make_random(4)
    state = m.initial_state(rng, 1024)
    state, outcome = m.step(rng, state, torch.arange(5).expand(1024, 5))
    clicked = outcome.info["clicked"]
    assert torch.allclose(state["fatigue"].sum(1), 0.5 * clicked.float())
    before = state["fatigue"].clone()
    state["budget"][:] = 1e6
    pop_never = pop.model_copy(update={"no_click_utility": 25.0})  # users who never click: pure recovery
    m2 = model(population=pop_never)
    state2, out2 = m2.step(rng, state, torch.arange(5).expand(1024, 5))
    assert not out2.info["clicked"].any()
    torch.testing.assert_close(state2["fatigue"], before * 0.8)


@pytest.mark.usefixtures("catalog")
def test_multi_session_users_return_more_when_satisfied():
    pop = UserPopulation(num_sessions=3, session_budget=8.0, return_bias=0.0, return_sensitivity=10.0)
    m = model(population=pop)
    rng = m.backend.make_random(5)
    state = m.initial_state(rng, 8192)
    returned, satisfaction = [], []
    for _ in range(30):
        mean_s = state["session_satisfaction"] / state["session_clicks"].clamp(min=1)
        state, outcome = m.step(rng, state, torch.arange(5).expand(8192, 5))
        ended = outcome.info["session_ended"] & (state["session"] < 3)
        returned.append(outcome.info["returned"][ended])
        satisfaction.append(mean_s[ended])
    returned = torch.cat(returned).float()
    assert returned.numel() > 1000
    assert 0.05 < float(returned.mean()) < 0.95
    # Users who return are kept, with their drifted interests; their session counter moves on.
    assert int(state["session"].max()) >= 1


def test_numpy_and_torch_backends_agree_given_the_same_draws():
    results = []
    for backend in (numpy_backend(), torch_backend()):
        m = DriftingUsersModel(SimulatorConfig(), backend)
        rng = ReplayRandom(backend, seed=9)
        state = m.initial_state(rng, 8)
        slate = backend.asarray(np.tile(np.array([4, 2, 9, 0, 11]), (8, 1)))
        rewards = []
        for _ in range(40):
            state, outcome = m.step(rng, state, slate)
            rewards.append(backend.to_numpy(outcome.reward))
        results.append((np.stack(rewards), backend.to_numpy(state["interest"])))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)


def test_oracle_beats_random_with_non_overlapping_intervals():
    random = evaluate("metarec/DriftingUsers-v0", "random", 1000, seed=0)
    oracle = evaluate("metarec/DriftingUsers-v0", "oracle", 1000, seed=0)
    assert oracle["ci95"][0] > random["ci95"][1]


def test_population_parameters_are_validated_with_the_field_named():
    from metarec.config import validate_config

    with pytest.raises(ValueError, match=r"population.choice_temperature: Input should be greater than 0"):
        validate_config(SimulatorConfig, {"population": {"choice_temperature": 0}})
    with pytest.raises(ValueError, match=r"population.shfit_hazard: unknown field \(known: .*shift_hazard"):
        validate_config(SimulatorConfig, {"population": {"shfit_hazard": 0.1}})
    with pytest.raises(ValueError, match=r"slate_size: expected <= num_candidates \(20\), got 30"):
        validate_config(SimulatorConfig, {"slate_size": 30})
    import gymnasium as gym

    with pytest.raises(ValueError, match=r"population.budget_bonus: Input should be less than or equal to 1"):
        gym.make("metarec/DriftingUsers-v0", population={"budget_bonus": 2})
    with pytest.raises(ValueError, match=r"num_envs: expected a positive integer, got 0"):
        gym.make_vec(
            "metarec/DriftingUsers-v0", num_envs=0, vectorization_mode="vector_entry_point", array_backend="torch"
        )
    with pytest.raises(ValueError, match=r"device: expected a torch device"):
        gym.make_vec(
            "metarec/DriftingUsers-v0",
            num_envs=2,
            vectorization_mode="vector_entry_point",
            array_backend="torch",
            device="gpu-please",
        )


def test_appeal_draws_clicks_but_not_satisfaction():
    """Item appeal multiplies an item's choice weight by exp(appeal / T) and leaves its true utility and
    expected engagement alone; the rest of the world is the same with appeal on or off."""
    from metarec.envs.drifting.params import CatalogConfig

    plain = model()
    bait = model(catalog=CatalogConfig(appeal_std=1.5))
    for key, value in plain.world_numpy.items():
        if key != "item_appeal":
            np.testing.assert_array_equal(value, bait.world_numpy[key], err_msg=key)
    assert not plain.world_numpy["item_appeal"].any() and bait.world_numpy["item_appeal"].std() > 1.0
    state = plain.initial_state(plain.backend.make_random(0), 64)
    truth, tempted = plain.choice_model(state), bait.choice_model(state)
    torch.testing.assert_close(tempted.utilities, truth.utilities)
    torch.testing.assert_close(tempted.revenue, truth.revenue)
    appeal = torch.as_tensor(bait.world_numpy["item_appeal"])[state["candidates"]]
    temperature = SimulatorConfig().population.choice_temperature
    torch.testing.assert_close(tempted.weights, truth.weights * torch.exp(appeal / temperature), rtol=1e-4, atol=0)


def test_row_subset_random_gives_each_row_the_full_batch_draw():
    from metarec.envs.core.backend import RowSubsetRandom

    full = torch_backend().make_random(5)
    subset = RowSubsetRandom(torch_backend().make_random(5), 6, torch.tensor([1, 4]))
    expected = full.normal((6, 3))
    torch.testing.assert_close(subset.normal((2, 3)), expected[[1, 4]])
    torch.testing.assert_close(subset.integers(9, (2,)), full.integers(9, (6,))[[1, 4]])
    with pytest.raises(ValueError, match="leading size of 2 rows"):
        subset.uniform((3,))


@pytest.mark.usefixtures("catalog")
def test_return_luck_is_drawn_once_per_user_and_session():
    """Multi-session users carry one uniform draw per session that decides whether they come back, so the
    same user has the same luck under any policy; single-session users carry none."""
    m = model(population=UserPopulation(num_sessions=4, session_budget=3.0))
    rng = m.backend.make_random(0)
    state = m.initial_state(rng, 500)
    draws = state["return_draw"].clone()
    assert draws.shape == (500, 4)
    for _ in range(20):
        session = state["session"].clone()
        slate = torch.arange(m.slate_size).expand(500, -1)
        state, outcome = m.step(rng, state, slate)
        torch.testing.assert_close(state["return_draw"], draws)
        ended = outcome.info["session_ended"] & (session < 3)
        luck = draws.gather(1, session[:, None])[:, 0]
        # the return probability lies in [0.12, 0.983] here: a draw below 0.1 always brings the user
        # back, one above 0.99 never does
        assert bool(outcome.info["returned"][ended & (luck < 0.1)].all())
        assert not bool(outcome.info["returned"][ended & (luck > 0.99)].any())
    assert "return_draw" not in model().initial_state(rng, 3)
