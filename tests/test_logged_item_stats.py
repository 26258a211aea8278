"""``LoggedItemStats(groups=G)``: G independent item-statistics tables stepped as one batch, each block of users
served and logged exactly as a wrapper of its own would serve and log it (one process or split across them),
and the meta-learned arm of ``benchmarks/ab_calibration.py`` built on it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from metarec.abtest.simulate import make_env, simulate_arm
from metarec.agents.registry import make_recommender
from metarec.meta.evaluate import LoggedItemStats
from metarec.parallel import EXACT_SCALE, Shard

ROOT = Path(__file__).parents[1]
ITEMS, CANDIDATES, FEATURES, K = 20, 8, 2, 3


class Ranking:
    """An inner policy whose slate for a user depends only on that user's candidates: the top K by the appended
    item statistics (smoothed CTR plus engagement per impression), ties broken by a feature of their own."""

    name = "ranking"

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def place(self, shard) -> None:
        pass

    def reset(self, mask=None) -> None:
        pass

    def act(self, observation, info):
        candidates = observation["candidates"]
        self.seen.append(candidates[..., -3:].clone())
        score = candidates[..., -3] + candidates[..., -2] + 1e-3 * candidates[..., 0]
        return torch.argsort(score, dim=1, descending=True, stable=True)[:, :K]

    def observe(self, reward, done, info) -> None:
        pass


def _steps(batch: int, steps: int, seed: int = 0):
    """Observations (distinct candidate ids per user), served masks and the feedback's random parts."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.stack([torch.randperm(ITEMS, generator=generator)[:CANDIDATES] for _ in range(batch)])
        observation = {"candidate_ids": ids, "candidates": torch.rand(batch, CANDIDATES, FEATURES, generator=generator)}
        active = torch.rand(batch, generator=generator) < 0.8
        click = torch.rand(batch, generator=generator) < 0.6
        position = torch.randint(K, (batch,), generator=generator)
        reward = torch.rand(batch, generator=generator) * 5
        yield observation, active, click, position, reward


def _feedback(slate, click, position, reward):
    """``chosen_candidate``: the candidate at ``position`` of the slate where the user clicked, else -1."""
    chosen = torch.where(click, slate.gather(1, position[:, None])[:, 0], torch.full_like(position, -1))
    return torch.where(click, reward, torch.zeros_like(reward)), {"chosen_candidate": chosen}


def _rows(tree, rows):
    return {key: value[rows] for key, value in tree.items()}


def _expected_table(log: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]):
    """``[3, ITEMS]`` impressions, clicks and fixed-point engagement of the served users, counted by hand."""
    table = np.zeros((3, ITEMS), dtype=np.int64)
    for ids, slate, active, chosen, reward in log:
        for b in range(ids.shape[0]):
            if not active[b]:
                continue
            for item in {int(ids[b, c]) for c in slate[b]}:  # a repeated candidate counts once
                table[0, item] += 1
            if chosen[b] >= 0:
                item = int(ids[b, chosen[b]])
                table[1, item] += 1
                table[2, item] += int(torch.round(reward[b].to(torch.float32).double() * EXACT_SCALE))
    return table


def test_groups_serve_and_log_each_block_as_its_own_wrapper() -> None:
    groups, per = 3, 4
    grouped = LoggedItemStats(Ranking(), ITEMS, "cpu", groups=groups)
    separate = [LoggedItemStats(Ranking(), ITEMS, "cpu") for _ in range(groups)]
    blocks = [slice(g * per, (g + 1) * per) for g in range(groups)]
    logs: list[list] = [[] for _ in range(groups)]
    for observation, active, click, position, reward in _steps(groups * per, 30):
        slate = grouped.act(observation, {"active": active})
        reward, info = _feedback(slate, click, position, reward)
        grouped.observe(reward, torch.zeros_like(active), {**info, "active": active})
        for g, (block, wrapper) in enumerate(zip(blocks, separate, strict=True)):
            own = wrapper.act(_rows(observation, block), {"active": active[block]})
            assert torch.equal(own, slate[block])
            assert torch.equal(wrapper.inner.seen[-1], grouped.inner.seen[-1][block])  # the same features
            wrapper.observe(reward[block], torch.zeros_like(active[block]),
                            {**_rows(info, block), "active": active[block]})  # fmt: skip
            logs[g].append((observation["candidate_ids"][block], own, active[block], info["chosen_candidate"][block],
                            reward[block]))  # fmt: skip
    assert grouped.table.shape == (3, groups * ITEMS) and grouped.stats().shape == (groups * ITEMS, 3)
    for g, wrapper in enumerate(separate):
        assert torch.equal(grouped.table[:, g * ITEMS : (g + 1) * ITEMS], wrapper.table)
        np.testing.assert_array_equal(wrapper.table.numpy(), _expected_table(logs[g]))
        assert int(wrapper.table[0].sum()) > 0 and int(wrapper.table[1].sum()) > 0
    # the blocks learned different things, so the equalities above do not hold by accident
    assert not torch.equal(separate[0].table, separate[1].table)


def test_one_group_is_the_pooled_table_of_every_user() -> None:
    default, one = LoggedItemStats(Ranking(), ITEMS, "cpu"), LoggedItemStats(Ranking(), ITEMS, "cpu", groups=1)
    log = []
    for observation, active, click, position, reward in _steps(10, 20, seed=3):
        slate = default.act(observation, {"active": active})
        assert torch.equal(one.act(observation, {"active": active}), slate)
        reward, info = _feedback(slate, click, position, reward)
        for wrapper in (default, one):
            wrapper.observe(reward, torch.zeros_like(active), {**info, "active": active})
        log.append((observation["candidate_ids"], slate, active, info["chosen_candidate"], reward))
    assert default.groups == 1 and default.table.shape == (3, ITEMS) and default.stats().shape == (ITEMS, 3)
    assert torch.equal(default.table, one.table)
    np.testing.assert_array_equal(default.table.numpy(), _expected_table(log))


def test_groups_of_a_split_run_are_blocks_of_all_its_users() -> None:
    """A process serving rows 2..7 of 12 users in 3 groups of 4 serves group 0's rows 2, 3 and group 1's rows
    4..7 from those groups' tables (no process group here: its table holds only its own users' feedback, as the
    whole run's does when only those users are served)."""
    groups, total, shard = 3, 12, Shard(12, 2, 6)
    rows = slice(shard.offset, shard.offset + shard.size)
    whole = LoggedItemStats(Ranking(), ITEMS, "cpu", groups=groups)
    part = LoggedItemStats(Ranking(), ITEMS, "cpu", groups=groups)
    part.place(shard)
    for observation, active, click, position, reward in _steps(total, 20, seed=5):
        active = active & (torch.arange(total) >= shard.offset) & (torch.arange(total) < shard.offset + shard.size)
        slate = whole.act(observation, {"active": active})
        assert torch.equal(part.act(_rows(observation, rows), {"active": active[rows]}), slate[rows])
        reward, info = _feedback(slate, click, position, reward)
        whole.observe(reward, torch.zeros_like(active), {**info, "active": active})
        part.observe(reward[rows], torch.zeros_like(active[rows]), {**_rows(info, rows), "active": active[rows]})
    assert torch.equal(part.table, whole.table)
    assert int(whole.table[0, :ITEMS].sum()) > 0 and int(whole.table[0, ITEMS : 2 * ITEMS].sum()) > 0
    assert int(whole.table[0, 2 * ITEMS :].sum()) == 0  # group 2's users are all in another process


@pytest.mark.parametrize("groups", [0, -1, 1.5, True, "2", None])
def test_bad_groups_are_refused(groups) -> None:
    with pytest.raises(ValueError, match=f"groups: expected a positive integer, got {groups!r}"):
        LoggedItemStats(Ranking(), ITEMS, "cpu", groups=groups)


def test_a_batch_that_does_not_divide_into_the_groups_is_refused() -> None:
    wrapper = LoggedItemStats(Ranking(), ITEMS, "cpu", groups=5)
    observation = next(_steps(12, 1))[0]
    with pytest.raises(ValueError, match="groups: 5 groups need a batch that divides into them, got 12 users"):
        wrapper.act(observation, {})
    wrapper.place(Shard(12, 0, 10))  # split across processes: all the run's users must divide
    with pytest.raises(ValueError, match="groups: 5 groups need a batch that divides into them, got 12 users"):
        wrapper.act(_rows(observation, slice(0, 10)), {})


ENV, ENV_KWARGS = "metarec/DriftingUsers-v0", {"population": {"session_budget": 8.0}, "catalog": {"num_items": 200}}


def _rl2_run(tmp_path: Path, greedy: bool = False, population: bool = False) -> Path:
    """A meta-train run directory holding an (untrained) RL² policy with item statistics that samples its slates
    (shows its most probable one: ``greedy``)."""
    import yaml
    from gymnasium import spaces

    from metarec.meta.config import load_meta_config

    run = tmp_path / (("greedy" if greedy else "sampling") + ("_population" if population else ""))
    (run / "methods").mkdir(parents=True)
    overrides = ["item_stats=true", f"eval.rl2_greedy={str(greedy).lower()}",
                 f"rl2.population={str(population).lower()}"]
    config = load_meta_config(ROOT / "configs" / "meta_tiny.yaml", overrides)
    (run / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = make_env(ENV, ENV_KWARGS, 1, 2, "cpu")
    space = env.single_observation_space
    n, f = space["candidates"].shape
    space = spaces.Dict({**space.spaces, "candidates": spaces.Box(-np.inf, np.inf, (n, f + 3), np.float32)})
    torch.manual_seed(0)
    policy = config.rl2.make_policy(space, int(env.single_action_space.shape[0]))
    torch.save({"policy": policy.state_dict()}, run / "methods" / "rl2.pt")
    return run / "methods" / "rl2.pt"


def _benchmark():
    spec = importlib.util.spec_from_file_location("ab_calibration", ROOT / "benchmarks" / "ab_calibration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_meta_arm_runs_each_block_as_its_own_learner(tmp_path) -> None:
    """``ab_calibration.py --agent RUN/methods/rl2.pt`` steps every learner in one batch: each block of users is
    served as the meta-learned arm alone serves those users (simulated as that block of a split run)."""
    weights, groups, per = _rl2_run(tmp_path), 3, 4
    name = _benchmark().grouped(str(weights), groups)
    whole = simulate_arm(ENV, ENV_KWARGS, name, None, groups * per, 2, 0, 7, 8, 8)
    seed = 8 + 1_000_003  # the registry's seed of a named recommender's generator, which the loader then gets
    parts = [simulate_arm(ENV, ENV_KWARGS, str(weights), None, groups * per, 2, 0, 7, seed, seed,
                          shard=Shard(groups * per, g * per, per)) for g in range(groups)]  # fmt: skip
    np.testing.assert_array_equal(np.concatenate([p.counters for p in parts]), whole.counters)
    # one table for all the users serves them otherwise
    pooled = simulate_arm(ENV, ENV_KWARGS, str(weights), None, groups * per, 2, 0, 7, seed, seed)
    assert not np.array_equal(pooled.counters, whole.counters)


def test_the_benchmarks_meta_arm_keeps_a_population_memory_per_block(tmp_path) -> None:
    """RL² with a population memory pools only its block's users: one population per block."""
    from metarec.meta.evaluate import RL2Recommender

    weights, groups, per = _rl2_run(tmp_path, population=True), 3, 4
    env = make_env(ENV, ENV_KWARGS, groups * per, 2, "cpu")
    served = _benchmark().grouped_meta(str(weights), env, torch.Generator().manual_seed(0), groups)
    assert isinstance(served, LoggedItemStats) and isinstance(served.inner, RL2Recommender)
    assert served.inner.population == per and served.groups == groups
    assert make_recommender(str(weights), env, 0).inner.population == groups * per  # served alone: one population


def test_the_benchmark_refuses_paired_aa_tests_of_identical_arms_and_runs_independent_ones(tmp_path) -> None:
    """A greedy RL² draws no random numbers: on the same users both arms of a paired A/A test are identical."""
    import argparse

    benchmark, weights = _benchmark(), str(_rl2_run(tmp_path, greedy=True))
    args = argparse.Namespace(agent=weights, replicates=3, per_test=5, users=20, days=2, alpha=0.05, draws=1000,
                              seed=0, metric="engagement", chunk=2, design="paired")  # fmt: skip
    with pytest.raises(SystemExit, match="identical and the tests measure nothing; use --design independent"):
        benchmark.shared_state_calibration(args, 0.0)
    result = benchmark.shared_state_calibration(argparse.Namespace(**{**vars(args), "design": "independent"}), 0.0)
    assert result["tests"] == 3 and result["tests_per_batch"] == 2 and result["design"] == "independent"
    for kind in ("fixed", "familywise", "sequential"):
        low, high = result[f"fpr_{kind}_ci95"]
        assert 0 <= low <= result[f"fpr_{kind}"] <= high <= 1
    assert abs(result["power_predicted"] - 0.8) < 1e-6 and result["planted_effect"] > 0
