"""Serving RL² in the time unit of the catalogues it trained on (``rl2.rescale_time``): minutes inside the
training catalogues' range of mean item lengths, the nearest end of the range outside it, measured per population
on what its users were shown; a catalogue whose every length is four times longer is then, to the policy, the
catalogue itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gymnasium import spaces

from metarec.meta.evaluate import RL2Recommender
from metarec.meta.policy import RL2Policy
from metarec.meta.time_unit import TimeUnit, length_range

ROOT = Path(__file__).parents[1]
D, N, H = 2, 4, 3  # embedding dimensions, candidates, history rows


def _observation(lengths: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Candidates (embedding, length, CTR, engagement per impression, log impressions) and a history whose
    engagement counts minutes at the same scale as ``lengths`` ``[B, N]``."""
    generator = torch.Generator().manual_seed(seed)
    batch = lengths.shape[0]
    embedding = torch.randn(batch, N, D, generator=generator)
    ctr = torch.rand(batch, N, 1, generator=generator)
    per_impression = ctr * lengths[..., None] / 2.0
    candidates = torch.cat([embedding, lengths[..., None], ctr, per_impression, torch.ones(batch, N, 1)], -1)
    history = torch.cat([torch.randn(batch, H, D, generator=generator), lengths[:, :H, None] / 2.0,
                         torch.ones(batch, H, 2)], -1)  # fmt: skip
    return {"candidates": candidates, "candidate_ids": torch.arange(batch * N).reshape(batch, N) % 6,
            "history": history}  # fmt: skip


def _space() -> spaces.Dict:
    """Candidates with the item statistics (embedding, length, CTR, engagement per impression, log impressions)."""
    return spaces.Dict({"candidates": spaces.Box(-9, 9, (N, D + 4)), "candidate_ids": spaces.Box(0, 5, (N,)),
                        "history": spaces.Box(-9, 9, (H, D + 3))})  # fmt: skip


def test_the_unit_is_minutes_inside_the_range_and_its_nearest_end_outside_per_population() -> None:
    unit = TimeUnit(2.0, 4.0, D, item_stats=True, population=2)
    lengths = torch.tensor([3.0, 3.0, 10.0, 10.0, 1.0, 1.0])[:, None].expand(6, N)  # three populations of two
    got = unit.scale(_observation(lengths, 0))
    assert got.tolist() == [1.0, 1.0, 2.5, 2.5, 0.5, 0.5]
    # the mean is over every candidate a population has been shown: the first one's is now (3 + 7) / 2 = 5
    lengths = torch.tensor([7.0, 7.0, 10.0, 10.0, 1.0, 1.0])[:, None].expand(6, N)
    assert unit.scale(_observation(lengths, 1)).tolist() == [1.25, 1.25, 2.5, 2.5, 0.5, 0.5]
    unit.reset()
    assert unit.scale(_observation(lengths, 1)).tolist() == [1.75, 1.75, 2.5, 2.5, 0.5, 0.5]


def test_only_what_counts_minutes_is_divided_and_nothing_is_written_in_place() -> None:
    observation = _observation(torch.full((2, N), 8.0), 0)
    before = {key: value.clone() for key, value in observation.items()}
    scaled = TimeUnit(2.0, 4.0, D, item_stats=True, population=None).apply(observation, torch.tensor([2.0, 4.0]))
    for key in before:
        assert torch.equal(observation[key], before[key])
    factor = torch.tensor([2.0, 4.0])
    for column in range(D + 4):
        expected = before["candidates"][..., column] / (factor[:, None] if column in (D, D + 2) else 1.0)
        assert torch.equal(scaled["candidates"][..., column], expected), column
    for column in range(D + 3):
        expected = before["history"][..., column] / (factor[:, None] if column == D else 1.0)
        assert torch.equal(scaled["history"][..., column], expected), column
    plain = TimeUnit(2.0, 4.0, D, item_stats=False, population=None).apply(observation, factor)
    assert torch.equal(plain["candidates"][..., D + 2], before["candidates"][..., D + 2])


def test_a_catalogue_four_times_longer_is_served_as_the_catalogue_itself() -> None:
    space = _space()
    torch.manual_seed(0)
    policy = RL2Policy(space, 2, 8, belief=True, population=True, item_memory=True, change_test=5.0)

    def served(unit: TimeUnit | None) -> RL2Recommender:
        return RL2Recommender(policy, torch.Generator().manual_seed(0), population=2, time_unit=unit)

    trained, longer = served(TimeUnit(2.0, 3.0, D, True, 2)), served(TimeUnit(2.0, 3.0, D, True, 2))
    plain = served(None)
    generator = torch.Generator().manual_seed(1)
    for step in range(6):
        lengths = torch.tensor([2.0, 3.0, 4.0, 3.0]).repeat(4, 1)  # mean 3: the top of the range, served in minutes
        observation, stretched = _observation(lengths, step), _observation(4.0 * lengths, step)
        slates = trained.act(observation, {}), longer.act(stretched, {}), plain.act(stretched, {})
        assert torch.equal(slates[0], slates[1]), step
        assert longer.unit is not None and longer.unit.tolist() == [4.0] * 4
        reward = torch.rand(4, generator=generator) * 3.0
        position = torch.randint(-1, 2, (4,), generator=generator)
        trained.observe(reward, torch.zeros(4, dtype=torch.bool), {"chosen_position": position})
        for recommender in (longer, plain):
            recommender.observe(4.0 * reward, torch.zeros(4, dtype=torch.bool), {"chosen_position": position})
    for key in ("inverse", "response", "items", "evidence"):
        assert torch.equal(getattr(trained.memory.belief, key), getattr(longer.memory.belief, key)), key
    # served in minutes, the same policy reads the longer catalogue as another one
    assert not torch.allclose(trained.memory.belief.response, plain.memory.belief.response)


def test_the_range_is_the_training_catalogues_and_bad_settings_are_refused() -> None:
    from metarec.config import load_yaml_config
    from metarec.envs.task_batch import TaskBatchVectorEnv
    from metarec.meta.config import MetaTrainConfig
    from metarec.meta.rl2 import RL2Config
    from metarec.meta.serving import build_method
    from metarec.meta.tasks import TaskDistribution, task_batch

    distribution = load_yaml_config(TaskDistribution, ROOT / "configs" / "meta_tasks.yaml")
    low, high = length_range(distribution, "meta-train", seed=0)
    # clips last U(0.5, 3) minutes and videos U(1, 6): catalogue means near 1.75 and 3.5
    assert low == pytest.approx(1.75, abs=0.1) and high == pytest.approx(3.5, abs=0.15)
    films, _ = length_range(distribution, "meta-test-domain", seed=0, tasks=16)
    assert films > 15.0  # U(5, 30): far above the range, so films are served in units of films / high minutes
    # a run's RL² serves with the range of its own training split, measured per population of the served env
    config = RL2Config(users_per_task=4, hidden=8, belief=True, rescale_time=True)
    env = TaskBatchVectorEnv(task_batch(distribution, "meta-test-domain", 2, 0, 1, 2), 4, autoreset=False,
                             item_stats=True)  # fmt: skip
    weights = config.make_policy(env.single_observation_space, env.model.slate_size).state_dict()
    run = MetaTrainConfig(tasks=distribution, methods=["rl2"], rl2=config, sessions=2)
    served = build_method(run, ROOT, "rl2", weights, env, env.single_observation_space, env.model.slate_size,
                          torch.Generator().manual_seed(0))  # fmt: skip
    assert served.time_unit is not None and (served.time_unit.low, served.time_unit.high) == (low, high)
    observation, info = env.reset(seed=0)
    served.act(observation, info)
    assert served.unit is not None and served.unit.shape == (8,) and bool((served.unit > 15.0 / high).all())
    off = build_method(run.model_copy(update={"rl2": config.model_copy(update={"rescale_time": False})}), ROOT, "rl2",
                       weights, env, env.single_observation_space, env.model.slate_size, torch.Generator())  # fmt: skip
    assert off.time_unit is None
    with pytest.raises(ValueError, match=r"^low, high: expected 0 < low <= high \(minutes\), got 3.0 and 2.0$"):
        TimeUnit(3.0, 2.0, D, True, None)
    with pytest.raises(ValueError, match=r"^population: 3 users a population do not divide a batch of 4$"):
        TimeUnit(1.0, 2.0, D, True, 3).scale(_observation(torch.ones(4, N), 0))
    space = _space()
    recommender = RL2Recommender(RL2Policy(space, 2, 8, belief=True), torch.Generator(),
                                 time_unit=TimeUnit(1.0, 2.0, D, True, None))  # fmt: skip
    with pytest.raises(ValueError, match=r"^run: rl2.rescale_time measures each population's time as it serves"):
        recommender.export_module(["candidates", "candidate_ids", "history"])
