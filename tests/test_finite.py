"""Finite or loud: a population that overflows float32 is refused by name, and every path that steps the dynamics
(single-user env on numpy and torch, the fused one-user step, the vector env, the task batch, a model stepped by
hand) stops with a FloatingPointError naming the quantity that went NaN or infinite."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

import metarec  # noqa: F401  (registers the environments)
from metarec.envs.drifting.env import DriftingUsersVectorEnv
from metarec.envs.drifting.params import SimulatorConfig
from metarec.envs.task_batch import TaskBatchVectorEnv, check_tasks

# the overflows these tests provoke warn (numpy) on their way to the guard
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")  # fmt: skip

DRIFTING = "metarec/DriftingUsers-v0"
IEV = "metarec/RecSimInterestEvolution-v0"


def _random_slates(generator: torch.Generator, num_envs: int, num_candidates: int = 20, k: int = 5) -> torch.Tensor:
    return torch.stack([torch.randperm(num_candidates, generator=generator)[:k] for _ in range(num_envs)])


def _steps_until_error(env: gym.Env, steps: int) -> None:
    """Steps ``env`` (one user) with random slates, resetting finished users, for at most ``steps`` steps."""
    env.action_space.seed(0)
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()


def _users_named(message: str, quantity: str) -> list[int]:
    found = re.search(re.escape(quantity) + r" of \d+ users \(first: \[([\d, ]+)\]\)", message)
    assert found is not None, message
    return [int(u) for u in found.group(1).split(",")]


# ---------------------------------------------------------------------------------------------------------------------
# Refused at validation


POPULATION_FLOATS = [
    ("interest_scale", 1e39), ("cluster_spread", 1e39), ("choice_temperature", 1e39), ("no_click_utility", -1e39),
    ("quality_weight", 1e39), ("position_bias", 1e39), ("engagement_noise", 1e39), ("session_budget", 1e39),
    ("step_cost", 1e39), ("return_bias", -1e39), ("return_sensitivity", 1e39), ("ou_noise", 1e39),
    ("trend_rate", 1e39), ("fatigue_rate", 1e39), ("fatigue_weight", 1e39),
]  # fmt: skip
CATALOG_FLOATS = [("topic_spread", 1e39), ("quality_std", 1e39), ("appeal_std", 1e39), ("min_length", 1e39),
                  ("max_length", 1e39)]  # fmt: skip


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [("population", f, v) for f, v in POPULATION_FLOATS] + [("catalog", f, v) for f, v in CATALOG_FLOATS],
)
def test_a_drifting_float_beyond_float32_is_refused_by_name(section, field, value):
    with pytest.raises(ValueError, match=rf"{section}\.{field}: .*float32's finite range"):
        gym.make(DRIFTING, **{section: {field: value}})


def test_a_task_beyond_float32_is_refused_naming_the_task_and_the_field():
    with pytest.raises(ValueError, match=r"tasks\[1\]\.population\.choice_temperature: .*float32"):
        check_tasks([{}, {"population": {"choice_temperature": 3.5e38}}])
    check_tasks([{}, {"population": {"choice_temperature": 3.4e38}}])  # within range: accepted


@pytest.mark.parametrize(
    ("env_id", "field", "value"),
    [
        (IEV, "min_utility", -1e39),
        (IEV, "time_budget", 1e39),
        ("metarec/RecSimLongTermSatisfaction-v0", "choc_mean", 1e39),
        ("metarec/RecSimInterestExploration-v0", "topic_quality_mean", (1e39, 0.2)),  # a float inside a tuple
        ("metarec/RecSimNGInterestEvolution-v0", "topic_max_utility", 1e39),
        ("metarec/RecSimNGInterestEvolution-v0", "video_length", 1e39),
    ],
)
def test_a_recsim_float_beyond_float32_is_refused_by_name(env_id, field, value):
    with pytest.raises(ValueError, match=rf"{field}: .*float32's finite range"):
        gym.make(env_id, **{field: value})


def test_the_oracle_product_of_length_and_choice_weight_is_bounded():
    # a choice weight is exp(utility / temperature) clamped at e^60; the oracle sums K of weight x length in
    # float32, which overflowed (an infinite oracle value, a NaN regret) for lengths of about 6e11 and more
    with pytest.raises(ValueError, match=r"catalog\.max_length: expected at most 1e\+12 / slate_size \(5\)"):
        SimulatorConfig(catalog={"max_length": 1e12})
    # just within the bound and with every weight at the clamp, the ground truth stays finite
    env = gym.make(DRIFTING, catalog={"max_length": 2e11}, population={"choice_temperature": 1e-3})
    _, info = env.reset(seed=0)
    assert np.isfinite(info["oracle_value"])
    _steps_until_error(env, 20)


def test_a_catalog_that_overflows_float32_when_drawn_is_refused_by_name():
    with pytest.raises(ValueError, match=r"catalog\.quality_std: item qualities .*finite float32"):
        gym.make(DRIFTING, catalog={"quality_std": 3e38})
    with pytest.raises(ValueError, match=r"feature_std: the corpus' squared feature norms .*finite float32"):
        gym.make("metarec/RecSimNGInterestEvolution-v0", feature_std=1e20)


# ---------------------------------------------------------------------------------------------------------------------
# Stopped by the guard


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_single_user_env_stops_where_interests_overflow(backend):
    # within float32's range, but the interest random walk overflows it within a few steps (NaN rewards before)
    env = gym.make(DRIFTING, population={"ou_noise": 1e38}, backend=backend)
    env.reset(seed=0)
    with pytest.raises(FloatingPointError, match=r"simulator: NaN or inf at env step \d+ in .*state\['interest'\]"):
        _steps_until_error(env, 50)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_single_user_env_stops_at_a_reset_whose_users_overflow(backend):
    env = gym.make(DRIFTING, population={"cluster_spread": 3e38}, backend=backend)
    with pytest.raises(FloatingPointError, match=r"env step 0 \(the reset\) in .*state\['interest'\]"):
        env.reset(seed=0)


def test_the_fused_one_user_step_stops_on_its_outputs():
    # alpha_x_intercept near 0 makes the interest step infinite and then the interest NaN (a valid, if absurd, value)
    env = gym.make(IEV, alpha_x_intercept=1e-46)
    assert env.unwrapped._one_user is not None  # the fused step is the one taken
    env.reset(seed=0)
    with pytest.raises(FloatingPointError, match=r"NaN or inf at env step \d+ in .*state\['interest'\]"):
        _steps_until_error(env, 200)


def test_the_fused_one_user_step_names_a_poisoned_budget():
    env = gym.make(IEV).unwrapped
    env.reset(seed=3)
    env.step(np.array([0, 1]))
    env._state = {**env._state, "budget": np.array([np.nan], dtype=np.float32)}
    with pytest.raises(FloatingPointError, match=r"NaN or inf at env step 2 in .*state\['budget'\]"):
        env.step(np.array([0, 1]))


def test_the_vector_env_names_a_poisoned_fatigue_and_its_users():
    # an infinite fatigue leaves the reward finite (the topic's utilities are -inf): only the state shows it
    env = DriftingUsersVectorEnv(16)
    env.reset(seed=9)
    generator = torch.Generator().manual_seed(9)
    env.step(_random_slates(generator, 16))
    fatigue = env.state["fatigue"].clone()
    fatigue[[2, 13], 0] = float("inf")
    env._state = {**env.state, "fatigue": fatigue}
    with pytest.raises(FloatingPointError, match=r"env step 2 in .*state\['fatigue'\] of 2 users \(first: \[2, 13\]\)"):
        env.step(_random_slates(generator, 16))


def test_the_vector_env_stops_where_the_ground_truth_overflows():
    # quality_weight x quality overflows float32 for some candidates: infinite utilities, finite rewards
    env = gym.make_vec(DRIFTING, num_envs=8, vectorization_mode="vector_entry_point", array_backend="torch",
                       population={"quality_weight": 3.4e38})  # fmt: skip
    env.reset(seed=0)
    with pytest.raises(FloatingPointError, match=r"env step 1 in .*info\['candidate_utilities'\] returned before"):
        env.step(_random_slates(torch.Generator().manual_seed(0), 8))


def test_the_task_batch_stops_and_names_the_users_of_the_overflowing_task():
    users_per_task = 6
    env = TaskBatchVectorEnv([{}, {"population": {"quality_weight": 3.4e38}}, {}], users_per_task)
    env.reset(seed=1)
    with pytest.raises(FloatingPointError) as raised:
        env.step(_random_slates(torch.Generator().manual_seed(1), 3 * users_per_task))
    users = _users_named(str(raised.value), "info['candidate_utilities'] returned before this step")
    assert users and all(users_per_task <= u < 2 * users_per_task for u in users)  # task 1's rows only


def test_check_finite_outcome_names_the_quantity_and_the_users_given():
    from metarec.envs.core.finite import check_finite_outcome

    env = DriftingUsersVectorEnv(6)
    env.reset(seed=2)
    model, state = env.model, env.state
    slate = _random_slates(torch.Generator().manual_seed(2), 6)
    new_state, outcome = model.step(env._rng, state, slate)
    check_finite_outcome(model, new_state, outcome, step=1)  # all finite: nothing happens
    budget = new_state["budget"].clone()
    budget[4] = float("nan")
    user_ids = torch.tensor([10, 11, 12, 13, 14, 15])
    with pytest.raises(FloatingPointError, match=r"env step 7 in state\['budget'\] of 1 users \(first: \[14\]\)"):
        check_finite_outcome(model, {**new_state, "budget": budget}, outcome, step=7, users=user_ids)
    regret = torch.zeros(6)
    regret[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"info\['regret'\] of 1 users \(first: \[0\]\)"):
        check_finite_outcome(model, new_state, outcome, step=1, info={**outcome.info, "regret": regret})


def test_finite_values_whose_float32_sum_overflows_are_not_reported():
    from metarec.envs.core.finite import confirmed_finite, finite_flag

    huge = torch.full((4,), 3.0e38)  # each finite, their float32 sum is not
    quantities = [("reward", huge)]
    assert not bool(finite_flag(quantities))  # the fast float32 sum overflows...
    assert confirmed_finite(quantities, finite_flag(quantities))  # ...and the exact check clears it
    assert not confirmed_finite([("reward", torch.tensor([1.0, float("nan")]))], False)
    # in a step: every user's budget near float32's limit, finite, steps on
    env = DriftingUsersVectorEnv(8)
    env.reset(seed=4)
    env._state = {**env.state, "budget": torch.full((8,), 3.0e38)}
    env.step(_random_slates(torch.Generator().manual_seed(4), 8))
    assert torch.isfinite(env.state["budget"]).all()
