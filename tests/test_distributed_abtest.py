"""A/B tests and evaluations split across processes: the users in blocks, one per process, merged
back into exactly what one process computes (same seed, CPU, gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metarec.abtest.config import ABTestConfig
from metarec.abtest.runner import run_abtest
from metarec.abtest.simulate import simulate_arm
from metarec.agents.base import UserDraws
from metarec.agents.evaluation import evaluate
from metarec.cli import main
from metarec.config import validate_config
from metarec.parallel import Shard, blocks, spawn_for_result

SHORT = {"population": {"session_budget": 8.0}, "catalog": {"num_items": 200}}
TIMINGS = ("seconds", "wall_seconds", "processes")


def _config(**overrides) -> ABTestConfig:
    values = {
        # popular, popular-ctr and bts learn one table from every user (and rl2 logs one), the shared state
        # summed over processes; bts, thompson, epsilon-greedy, random and rl2 draw random numbers each step
        "arms": {"popular": "popular", "ctr": "popular-ctr", "bts": "bts", "thompson": "thompson",
                 "eps": "epsilon-greedy", "random": "random"},
        "control": "popular", "users": 101, "days": 3, "pre_period_days": 1, "env_kwargs": SHORT, "seed": 5,
        "torch_threads": 1, "replicates": 5,  # popular shares its table across users: replicates are the unit
    }  # fmt: skip
    return validate_config(ABTestConfig, {**values, **overrides})


def _without_timings(results: dict) -> dict:
    return {key: value for key, value in results.items() if key not in TIMINGS}


def _rl2_run(tmp_path: Path) -> Path:
    """A meta-train run directory holding an (untrained) RL² policy with item statistics, as
    ``metarec meta-train`` writes it: enough to serve it as an A/B arm."""
    import gymnasium as gym
    import yaml
    from gymnasium import spaces

    from metarec.meta.config import load_meta_config

    run = tmp_path / "meta"
    (run / "methods").mkdir(parents=True)
    tiny = Path(__file__).parents[1] / "configs" / "meta_tiny.yaml"
    config = load_meta_config(tiny, ["item_stats=true", "eval.rl2_greedy=false"])  # it samples its slates
    (run / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = gym.make_vec("metarec/DriftingUsersMultiSession-v0", num_envs=1, vectorization_mode="vector_entry_point",
                       array_backend="torch", **SHORT)  # fmt: skip
    space = env.single_observation_space
    n, f = space["candidates"].shape
    space = spaces.Dict({**space.spaces, "candidates": spaces.Box(-np.inf, np.inf, (n, f + 3), np.float32)})
    torch.manual_seed(0)
    policy = config.rl2.make_policy(space, int(env.single_action_space.shape[0]))  # with its belief
    torch.save({"policy": policy.state_dict()}, run / "methods" / "rl2.pt")
    return run / "methods" / "rl2.pt"


def test_two_processes_give_exactly_the_results_of_one(tmp_path):
    config = _config(arms={**_config().model_dump()["arms"], "rl2": str(_rl2_run(tmp_path))})
    one = run_abtest(config, tmp_path / "one", quiet=True)
    two = run_abtest(config, tmp_path / "two", quiet=True, nproc=2)
    assert two["processes"] == 2 and one["processes"] == 1
    assert json.dumps(_without_timings(two), sort_keys=True) == json.dumps(_without_timings(one), sort_keys=True)
    # the arms differ from one another, so equality above is not a property of any run
    effects = [one["effects"][arm]["engagement"]["absolute"] for arm in one["effects"]]
    assert len(set(effects)) == len(effects)


def test_blocks_merge_into_the_one_process_tables():
    """Three processes' blocks, simulated one after another in this process (no group: the shared
    tables are not summed, so this uses recommenders without any), concatenate into the full tables."""
    users, args = 100, ("metarec/DriftingUsersMultiSession-v0", SHORT, "thompson", None)
    whole = simulate_arm(*args, users, 3, 0, 7, 8, 9)
    parts = [
        simulate_arm(*args, users, 3, 0, 7, 8, 9, shard=Shard(users, offset, size)) for offset, size in blocks(users, 3)
    ]
    np.testing.assert_array_equal(np.concatenate([p.counters for p in parts]), whole.counters)
    np.testing.assert_array_equal(sum(p.impressions for p in parts), whole.impressions)
    assert max(p.steps for p in parts) == whole.steps


def test_user_draws_are_keyed_by_user():
    whole = UserDraws(torch.Generator().manual_seed(3), 10).rand(4)
    rows = torch.tensor([1, 4])
    some = UserDraws(torch.Generator().manual_seed(3), 10, rows).rand(4)
    torch.testing.assert_close(some, whole[rows], rtol=0, atol=0)
    block = UserDraws(torch.Generator().manual_seed(3), 3, rows=torch.tensor([0, 2]), shard=Shard(10, 5, 3)).rand(4)
    torch.testing.assert_close(block, whole[torch.tensor([5, 7])], rtol=0, atol=0)
    plain = torch.rand((10, 4), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(whole, plain, rtol=0, atol=0)  # no rows, no shard: the plain draw


@pytest.mark.parametrize(
    "shard, message",
    [
        (Shard(10, 0, 4), "shard: expected 3 users in this process's batch"),
    ],
)
def test_user_draws_check_the_shard(shard, message):
    with pytest.raises(ValueError, match=message):
        UserDraws(torch.Generator(), 3, shard=shard)


def test_bad_shards_and_process_counts_are_named():
    with pytest.raises(ValueError, match="shard: expected 0 <= offset"):
        Shard(10, 8, 4)
    with pytest.raises(ValueError, match="users: expected at least one user per process"):
        blocks(2, 3)
    with pytest.raises(ValueError, match="nproc: expected a positive integer"):
        run_abtest(_config(), nproc=0)


def test_cli_nproc(tmp_path, capsys):
    config = tmp_path / "ab.yaml"
    config.write_text(json.dumps(_config(users=60, days=2, arms={"popular": "popular", "linucb": "linucb"})
                                 .model_dump(mode="json")))  # fmt: skip
    assert main(["abtest", str(config), "--out", str(tmp_path / "run"), "--quiet", "--json", "--nproc", "2"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "linucb" in line["effects"]
    assert json.loads(Path(tmp_path / "run" / "results.json").read_text())["processes"] == 2


EVALUATIONS = [
    ("metarec/DriftingUsers-v0", "popular"),  # a table shared by every user
    ("metarec/DriftingUsers-v0", "thompson"),  # per-user posteriors, random draws each step
    ("metarec/RecSimInterestEvolution-v0", "random"),  # a RecSim port: fresh documents each step
]


def _policy_on_recsim() -> dict | None:
    """An (untrained) PPO policy sampling its slates on RecSim's interest evolution, whose users finish
    at different times: a process whose users have all finished still serves an empty batch."""
    import gymnasium as gym

    from metarec.agents.nn.networks import SlatePolicy
    from metarec.agents.ppo import PolicyRecommender

    env = gym.make_vec(
        "metarec/RecSimInterestEvolution-v0", num_envs=1, vectorization_mode="vector_entry_point", array_backend="torch"
    )
    torch.manual_seed(0)
    policy = SlatePolicy(env.single_observation_space, 2, 16, "mlp")
    agent = PolicyRecommender(policy, deterministic=False, generator=torch.Generator().manual_seed(1))
    return evaluate("metarec/RecSimInterestEvolution-v0", agent, 9, seed=4)


def _evaluations() -> list:
    return [evaluate(env_id, agent, 201, seed=4) for env_id, agent in EVALUATIONS] + [_policy_on_recsim()]


def test_evaluation_split_across_processes_equals_one_process():
    two = spawn_for_result(_evaluations, (), 2)  # one group of two processes runs all three
    for one, split in zip(_evaluations(), two, strict=True):
        assert (one.pop("processes"), split.pop("processes")) == (1, 2)
        assert split == one


def test_evaluation_learns_only_from_users_still_there():
    """Autoreset is off and finished users are inactive: a popularity table counts exactly the
    impressions of the users' own episodes (one slate of K per step)."""
    import gymnasium as gym

    from metarec.agents.baselines.bandits import num_items_of
    from metarec.agents.baselines.popularity import PopularRecommender

    env = gym.make_vec(
        "metarec/DriftingUsers-v0", num_envs=64, vectorization_mode="vector_entry_point", array_backend="torch"
    )
    agent = PopularRecommender(5, num_items_of(env.unwrapped, "popular"), torch.Generator().manual_seed(0))
    result = evaluate("metarec/DriftingUsers-v0", agent, 64, seed=2)
    env.close()
    assert result is not None
    assert float(agent.impressions.sum()) == result["mean_length"] * 64 * 5


def test_cli_evaluate_nproc(tmp_path):
    """In its own process, as a user runs it: with --json, stdout is the one JSON line, whatever the two worker
    processes print (they print to stderr)."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "metarec", "evaluate", "--env", "metarec/DriftingUsers-v0", "--agent", "linucb",
            "--users", "40", "--json", "--nproc", "2"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = done.stdout.splitlines()
    result = json.loads(line)
    assert result["processes"] == 2 and result["users"] == 40
