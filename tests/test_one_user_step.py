"""The fused one-user step (``UserModel.one_user``) gives the batched step's trajectories bit for bit."""

from __future__ import annotations

import struct
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import metarec  # noqa: F401
from metarec.envs.core.backend import numpy_backend
from metarec.envs.core.choice import (
    choice_probabilities,
    choose_one,
    revenue_ordered_slate,
    revenue_ordered_slate_one,
    sample_categorical,
    sums_in_order,
)
from metarec.envs.recsim.interest_evolution import InterestEvolutionConfig, InterestEvolutionModel

ENV = "metarec/RecSimInterestEvolution-v0"


def assert_identical(fused: Any, batched: Any, path: str = "") -> None:
    """Equal values of equal types and dtypes, all the way down (the generic step is the reference)."""
    if isinstance(batched, dict):
        assert list(fused) == list(batched), (path, list(fused), list(batched))
        for key in batched:
            assert_identical(fused[key], batched[key], f"{path}/{key}")
    elif isinstance(batched, tuple | list):
        assert len(fused) == len(batched), path
        for i, (a, b) in enumerate(zip(fused, batched, strict=True)):
            assert_identical(a, b, f"{path}[{i}]")
    elif isinstance(batched, np.ndarray):  # the same bytes: -0.0 is not 0.0
        assert (fused.dtype, fused.shape) == (batched.dtype, batched.shape), path
        assert fused.tobytes() == batched.tobytes(), (path, fused, batched)
    elif isinstance(batched, float):
        assert type(fused) is float and struct.pack("<d", fused) == struct.pack("<d", batched), (path, fused, batched)
    else:
        assert type(fused) is type(batched) and fused == batched, (path, fused, batched)


def trajectory(fused: bool, ground_truth: bool, steps: int, reset: bool = True, **overrides: Any) -> tuple[list, dict]:
    env = gym.make(ENV, ground_truth=ground_truth, **overrides)
    if not fused:
        env.unwrapped._one_user = None
    else:
        assert env.unwrapped._one_user is not None
    actions = np.random.default_rng(1)
    space = env.action_space
    out: list = [env.reset(seed=3)]
    for _ in range(steps):  # uniform slates: repeats included, so some positions show nothing
        if isinstance(space, gym.spaces.Discrete):
            action = actions.integers(0, space.n)
        else:
            action = actions.integers(0, space.nvec[0], space.shape)
        result = env.step(action)
        out.append(result)
        if reset and (result[2] or result[3]):
            out.append(env.reset())
    return out, env.unwrapped._state


@pytest.mark.parametrize("ground_truth", [True, False])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"single_item": True}, {"resample_documents": False}, {"slate_size": 5, "num_candidates": 6},
     {"user_quality_factor": 0.5, "no_click_mass": 3.0, "video_length": 7.0}],
    ids=["default", "single-item", "fixed-documents", "slate-5", "other-parameters"],
)  # fmt: skip
def test_fused_step_gives_the_batched_trajectory_bit_for_bit(ground_truth: bool, overrides: dict) -> None:
    # 2,500 steps: about 30 episodes, so resets, clicks, no clicks and budget ends all occur
    fused, fused_state = trajectory(True, ground_truth, 2500, **overrides)
    batched, batched_state = trajectory(False, ground_truth, 2500, **overrides)
    assert_identical(fused, batched)
    assert_identical(fused_state, batched_state)
    clicked = [step[4]["clicked"] for step in batched if len(step) == 5]
    assert 0.1 < np.mean(clicked) < 0.9  # both branches were exercised


def test_fused_step_matches_past_the_end_of_an_episode() -> None:
    # Gymnasium leaves stepping a finished episode undefined; the budget goes negative, and the
    # zeros of the response's watch time are -0.0 in both (0 x a negative watch)
    fused, fused_state = trajectory(True, True, 400, reset=False)
    batched, batched_state = trajectory(False, True, 400, reset=False)
    assert sum(step[2] for step in batched[1:]) > 100
    assert_identical(fused, batched)
    assert_identical(fused_state, batched_state)


def test_choose_one_is_the_batched_choice_for_every_draw() -> None:
    rng = np.random.default_rng(0)
    for k in range(1, 7):
        for _ in range(200):
            weights = (rng.random((1, k)) * rng.integers(0, 2, (1, k))).astype(np.float32)  # empty positions too
            no_click = np.float32(rng.random() * 3)
            u = float(rng.random(dtype=np.float32))
            probs = choice_probabilities(np, weights, no_click)
            expected = sample_categorical(np, _Fixed(u), probs)[0]
            index, fused_probs = choose_one(u, list(weights[0]), no_click)
            assert index == expected
            np.testing.assert_array_equal(np.array(fused_probs, dtype=np.float32), probs[0])


def test_one_user_oracle_is_the_batched_oracle_ties_included() -> None:
    be, rng = numpy_backend(), np.random.default_rng(0)
    for k in (1, 2, 3, 5):
        for _ in range(200):
            # few distinct values, so equal revenues and equal weights are common
            weights = rng.integers(0, 4, (1, 10)).astype(np.float32) / 3
            revenue = rng.integers(1, 4, (1, 10)).astype(np.float32)
            position = (1.0 / (1.0 + rng.random(k))).astype(np.float32)
            no_click = np.float32(rng.random() * 2)
            slate, value = revenue_ordered_slate(be, weights, revenue, no_click, position, k)
            fused_slate, fused_value = revenue_ordered_slate_one(weights[0], revenue[0], no_click, position, k)
            np.testing.assert_array_equal(fused_slate, slate[0])
            assert fused_value.tobytes() == value[0].tobytes()


def test_one_user_oracle_follows_numpy_on_nan_inf_and_signed_zeros() -> None:
    # weights of either sign (a min_normalizer above -1), infinities and NaN from overflowing
    # parameters: numpy's max, argmax and sort rules, which Python's max and sort do not follow
    be, rng = numpy_backend(), np.random.default_rng(0)
    pool = np.array([0.0, -0.0, 1.0, -1.0, 2.0, 3.0, 1e38, -1e38, 1e-40, np.inf, -np.inf, np.nan], dtype=np.float32)
    with np.errstate(all="ignore"):
        for _ in range(3000):
            n = int(rng.integers(2, 10))
            k = int(rng.integers(1, min(n, 6) + 1))
            weights, revenue = rng.choice(pool, (1, n)), rng.choice(pool, (1, n))
            if rng.random() < 0.5:
                revenue[:] = revenue[0, 0]  # one revenue for all, as in interest evolution
            no_click, position = np.float32(rng.choice(pool)), np.ones(k, dtype=np.float32)
            slate, value = revenue_ordered_slate(be, weights, revenue, no_click, position, k)
            fused_slate, fused_value = revenue_ordered_slate_one(weights[0], revenue[0], no_click, position, k)
            np.testing.assert_array_equal(fused_slate, slate[0], err_msg=f"{weights} {revenue} {no_click}")
            assert fused_value.tobytes() == value[0].tobytes(), (weights, revenue, no_click)


def test_only_numpy_models_with_small_slates_have_a_fused_step() -> None:
    from metarec.envs.core.backend import torch_backend

    assert InterestEvolutionModel(InterestEvolutionConfig(), numpy_backend()).one_user() is not None
    assert InterestEvolutionModel(InterestEvolutionConfig(), torch_backend("cpu")).one_user() is None
    # numpy sums 8 floats or more pairwise, not in order: such slates take the batched step
    big = InterestEvolutionConfig(num_candidates=12, slate_size=7)
    assert InterestEvolutionModel(big, numpy_backend()).one_user() is None
    env = gym.make(ENV, num_candidates=12, slate_size=7)
    env.reset(seed=0)
    assert env.unwrapped._one_user is None and np.isfinite(env.step(np.arange(7))[1])
    assert gym.make(ENV, backend="torch").unwrapped._one_user is None

    class Edited(InterestEvolutionModel):  # other dynamics: the fused step would bypass them
        def observe(self, state: dict) -> dict:
            return super().observe(state)

    assert Edited(InterestEvolutionConfig(), numpy_backend()).one_user() is None


def test_numpy_sums_few_floats_in_order() -> None:
    # what the fused choice relies on; sums_in_order() turns the fused step off if numpy changes
    assert all(sums_in_order(n) for n in range(1, 8))
    assert not sums_in_order(9)


class _Fixed:
    """A Random whose uniform draw is given."""

    def __init__(self, u: float) -> None:
        self.u = u

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.full(shape, self.u, dtype=np.float32)
