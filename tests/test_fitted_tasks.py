"""Meta-RL tasks drawn from users fitted to logs: groups, held-out users, the draws, the runs, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from metarec.config import validate_config
from metarec.envs.calibrated import save_population
from metarec.envs.drifting.model import make_world
from metarec.envs.drifting.params import SimulatorConfig
from metarec.envs.fitted_task import FittedTask, task_env
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta.fitted_tasks import load_source
from metarec.meta.tasks import TaskDistribution, task_batch

FIELDS = {
    "catalog": {"num_items": 120, "embedding_dim": 6, "num_topics": 5, "seed": 3},
    "population": {"num_clusters": 3, "interest_scale": 3.0, "cluster_spread": 0.5, "session_budget": 8.0,
                   "trend_rate": 0.0},  # anchors stay where they are drawn
}
USERS = 48


def fitted_population(folder: Path, first_seen: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """A population like ``metarec calibrate`` writes, with 48 fitted users near its 3 centres; user ``i`` first
    appears at time ``(7 i) mod 48`` (so the order by time is not the order of the ids)."""
    config = SimulatorConfig.model_validate(FIELDS)
    world = {**make_world(config), "cluster_weight": np.array([0.5, 0.3, 0.2], dtype=np.float32)}
    rng = np.random.default_rng(1)
    cluster = np.arange(USERS) % 3
    interest = world["cluster_centre"][cluster] + 0.2 * rng.normal(size=(USERS, 6))
    users = {"user_id": np.arange(USERS), "interest": interest.astype(np.float32)}
    if first_seen:
        users["first_seen"] = ((7 * np.arange(USERS)) % USERS).astype(np.float64)
    return save_population(folder, config, world, {"note": "drawn, not fitted"}, users), users


def distribution(population: str, split_by: str = "time", groups: int | None = 4, **splits: dict) -> TaskDistribution:
    source = {"population": population, "split_by": split_by, **({"groups": groups} if groups else {})}
    last = (groups or 3) - 1
    default = {
        "meta-train": {"fitted": "logs", "groups": list(range(last))},
        "meta-test": {"fitted": "logs", "groups": [last], "holds_out": ["users"]},
    }
    return validate_config(TaskDistribution, {"fitted": {"logs": source}, "splits": splits or default})


def anchors_and_clusters(env: TaskBatchVectorEnv) -> tuple[np.ndarray, np.ndarray]:
    state = env.unwrapped._state if hasattr(env, "unwrapped") else env._state
    return state["anchor"].numpy(), state["cluster"].numpy()


def which_user(anchors: np.ndarray, interest: np.ndarray) -> np.ndarray:
    """For each anchor, the fitted user it is exactly (-1: none)."""
    same = (np.abs(anchors[:, None, :] - interest[None]) < 1e-6).all(axis=2)
    return np.where(same.any(axis=1), same.argmax(axis=1), -1)


def test_groups_split_users_by_time_at_random_and_by_cluster(tmp_path):
    path, users = fitted_population(tmp_path / "population")
    by_time = load_source("logs", distribution(str(path)).fitted["logs"]).groups
    order = np.argsort(users["first_seen"])
    assert [g.tolist() for g in by_time] == [np.sort(order[12 * k : 12 * (k + 1)]).tolist() for k in range(4)]
    shuffled = load_source("logs", distribution(str(path), "random", 3).fitted["logs"]).groups
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(USERS)) and [len(g) for g in shuffled] == [16] * 3
    assert [g.tolist() for g in shuffled] != [list(range(16 * k, 16 * (k + 1))) for k in range(3)]  # not in id order
    other = distribution(str(path), "random", 3).fitted["logs"].model_copy(update={"seed": 1})
    assert [g.tolist() for g in load_source("logs", other).groups] != [g.tolist() for g in shuffled]
    clusters = load_source("logs", distribution(str(path), "cluster", None).fitted["logs"]).groups
    assert [g.tolist() for g in clusters] == [np.flatnonzero(np.arange(USERS) % 3 == c).tolist() for c in range(3)]


def test_every_new_user_of_a_fitted_task_is_one_of_its_groups_fitted_users(tmp_path):
    path, users = fitted_population(tmp_path / "population")
    tasks = distribution(str(path))
    held_out = task_batch(tasks, "meta-test", 2, seed=0, index=0, sessions=3)
    assert all(isinstance(t, FittedTask) and t.population.num_sessions == 3 for t in held_out)
    group = load_source("logs", tasks.fitted["logs"]).groups[3]
    # a synthetic task of the same shapes shares the batch: its users still come from its clusters
    synthetic = SimulatorConfig.model_validate({**FIELDS, "catalog": {**FIELDS["catalog"], "seed": 9}})
    synthetic = synthetic.model_copy(update={"population": held_out[0].population})
    env = TaskBatchVectorEnv([*held_out, synthetic], 64, item_stats=True)
    _, info = env.reset(seed=0)
    drawn = []
    for _ in range(3):
        anchors, clusters = anchors_and_clusters(env)
        who = which_user(anchors, users["interest"])
        assert set(who[:128].tolist()) <= set(group.tolist())  # the fitted tasks' users: their group's only
        assert np.all(who[128:] == -1)  # the synthetic task's: drawn around its centres
        assert np.array_equal(clusters[:128] % 3, who[:128] % 3)  # in the cluster of the nearest centre
        assert np.all(clusters[:64] < 3) and np.all((clusters[64:128] >= 3) & (clusters[64:128] < 6))
        drawn.extend(who[:128].tolist())
        _, reward, *_ = env.step(info["oracle_slate"])
        assert bool(torch.isfinite(reward).all())
    assert set(drawn) == set(group.tolist())  # every user of the group is drawn, uniformly enough to see them all
    first, second = (TaskBatchVectorEnv([*held_out, synthetic], 64) for _ in range(2))
    first.reset(seed=3), second.reset(seed=3)
    assert np.array_equal(anchors_and_clusters(first)[0], anchors_and_clusters(second)[0])


def test_a_seed_reproduces_a_fitted_task_batch_and_regimes_apply_over_the_fit(tmp_path):
    path, _ = fitted_population(tmp_path / "population")
    values = {
        "fitted": {"logs": {"population": str(path), "split_by": "random", "groups": 4}},
        "prior": {"regimes": {"shifting": {"shift_hazard": 0.05, "trend_rate": 0.0}}},
        "splits": {
            "meta-train": {"fitted": "logs", "groups": [0, 1]},
            "meta-test-regime": {"fitted": "logs", "groups": [2, 3], "regimes": ["shifting"],
                                 "holds_out": ["users", "regimes"]},
        },
    }  # fmt: skip
    tasks = validate_config(TaskDistribution, values)
    first = tasks.sample("meta-test-regime", 6, seed=0)
    assert [t.pool.name for t in first] == [t.pool.name for t in tasks.sample("meta-test-regime", 6, seed=0)]
    assert {t.pool.name for t in first} == {"fitted.logs group 2", "fitted.logs group 3"}
    assert {t.population.shift_hazard for t in first} == {0.05}
    fitted = SimulatorConfig.model_validate(FIELDS).population.shift_hazard
    assert fitted != 0.05 and {t.population.shift_hazard for t in tasks.sample("meta-train", 4, seed=0)} == {fitted}
    rewards = []
    for _ in range(2):
        env = TaskBatchVectorEnv(tasks.sample("meta-test-regime", 2, seed=0), 16)
        _, info = env.reset(seed=5)
        rewards.append(torch.stack([env.step(info["oracle_slate"])[1] for _ in range(4)]))
    assert torch.equal(rewards[0], rewards[1])


def test_a_held_out_fitted_task_runs_as_an_ab_population_on_its_groups_users(tmp_path):
    path, users = fitted_population(tmp_path / "population")
    tasks = distribution(str(path))
    task = tasks.sample("meta-test", 1, seed=0)[0]
    env_id, kwargs = task_env(task)
    assert env_id == "metarec/Calibrated-v0" and kwargs["users"] == task.pool.rows.tolist()
    env = gym.make_vec(env_id, num_envs=200, vectorization_mode="vector_entry_point", array_backend="torch", **kwargs)
    env.reset(seed=0)
    assert env.unwrapped.config == SimulatorConfig.model_validate(task.model_dump())
    who = which_user(env.unwrapped._state["anchor"].numpy(), users["interest"])
    assert set(who.tolist()) == set(task.pool.rows.tolist())
    assert task_env(tasks.sample("meta-train", 1, 0)[0])[0] == "metarec/Calibrated-v0"
    with pytest.raises(ValueError, match="config: a task of fitted users runs on metarec/Calibrated-v0"):
        gym.make("metarec/DriftingUsers-v0", config=task)  # its fields alone would build another world


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ([], "users: expected one of prior, fitted or a list of fitted users' indices"),
        ([0, True], r"users: expected .* \(integers >= 0\)"),
        ([-1], r"\(integers >= 0\)"),
        ([2, 2], "users: expected distinct indices"),
        ([0, 48], "fitted users 0..47, got index 48"),
        ("everyone", "users: expected one of prior, fitted"),
    ],
)
def test_calibrated_env_refuses_bad_user_lists(tmp_path, users, message):
    path, _ = fitted_population(tmp_path / "population")
    with pytest.raises(ValueError, match=message):
        gym.make("metarec/Calibrated-v0", population=str(path), users=users)


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"meta-test": {"fitted": "logs", "groups": [2, 3], "holds_out": ["users"]}},
         r"splits\.meta-test\.groups: holds out groups \[2\] of fitted\.logs, which training split 'meta-train' uses"),
        ({"meta-test": {"fitted": "elsewhere", "groups": [3]}},
         r"splits\.meta-test\.fitted: 'elsewhere' is not a source"),
        ({"meta-test": {"fitted": "logs", "groups": [4]}},
         r"splits\.meta-test\.groups: fitted\.logs has groups 0\.\.3"),
        ({"meta-test": {"fitted": "logs", "groups": [3], "domains": ["default"]}}, "leave domains out"),
        ({"meta-test": {"fitted": "logs", "groups": []}}, "groups: expected distinct group numbers"),
        ({"meta-test": {"fitted": "logs", "groups": [3], "holds_out": ["clusters"]}}, "can hold out users or regimes"),
        ({"meta-test": {"regimes": ["default"], "domains": ["default"], "groups": [1]}},
         r"groups: only a split of fitted users \(`fitted: SOURCE`\) has groups"),
        ({"meta-test": {"regimes": ["default"]}}, r"domains: expected at least one \(or `fitted: SOURCE`"),
    ],
)  # fmt: skip
def test_bad_fitted_splits_name_the_field(tmp_path, splits, message):
    splits = {"meta-train": {"fitted": "logs", "groups": [0, 1, 2]}, **splits}
    with pytest.raises(ValueError, match=message):
        distribution(str(tmp_path), **splits)


def test_bad_sources_are_named_before_any_task_is_drawn(tmp_path):
    path, _ = fitted_population(tmp_path / "population", first_seen=False)
    with pytest.raises(ValueError, match=r"fitted.logs.split_by: 'time' needs each user's first timestamp"):
        distribution(str(path)).sample("meta-train", 1, 0)
    with pytest.raises(ValueError, match=r"fitted.logs.population: .* is not a directory"):
        distribution(str(tmp_path / "nowhere"), "random").sample("meta-train", 1, 0)
    with pytest.raises(ValueError, match=r"fitted.logs.groups: .* has 48 fitted users, fewer than 60 groups"):
        distribution(str(path), "random", 60, train={"fitted": "logs", "groups": [0]}).sample("train", 1, 0)
    with pytest.raises(ValueError, match="groups: a split by cluster has one group per fitted cluster"):
        distribution(str(path), "cluster", 3)
    with pytest.raises(ValueError, match=r"fields.users: not a config override"):
        validate_config(TaskDistribution, {"fitted": {"logs": {"population": str(path), "fields": {"users": "prior"}}},
                                           "splits": {"t": {"fitted": "logs", "groups": [0]}}})  # fmt: skip
    world = dict(np.load(path / "world.npz"))
    save_population(tmp_path / "lopsided", SimulatorConfig.model_validate(FIELDS), world, {},
                    {"user_id": np.arange(3), "interest": world["cluster_centre"][[0, 0, 0]]})  # all nearest to 0
    lopsided = distribution(str(tmp_path / "lopsided"), "cluster", None, train={"fitted": "logs", "groups": [1]})
    with pytest.raises(ValueError, match=r"splits.train: group 1 of fitted.logs has no users"):
        lopsided.sample("train", 1, 0)


def test_calibration_keeps_each_fitted_users_first_timestamp():
    from metarec.calibration.logs import Logs
    from metarec.calibration.run import fitted_users

    logs = Logs(
        user=np.array([2, 0, 2, 1, 0]),
        item=np.array([0, 1, 2, 1, 0]),
        timestamp=np.array([50.0, 20.0, 10.0, 40.0, 30.0]),
        rating=np.full(5, np.nan, dtype=np.float32),
        click=np.array([1.0, 1.0, 1.0, 0.0, 1.0], dtype=np.float32),
        user_ids=np.array(["a", "b", "c"]),
        item_ids=np.arange(3),
        item_features=None,
        item_text=None,
    )
    factors = np.arange(6, dtype=np.float32).reshape(3, 2)
    users = fitted_users(logs, SimpleNamespace(user_factors=factors))
    assert users["user_id"].tolist() == ["a", "c"]  # b never clicked: no fitted factors
    assert users["first_seen"].tolist() == [20.0, 10.0] and np.array_equal(users["interest"], factors[[0, 2]])


def test_meta_train_and_meta_eval_run_on_fitted_users_named_relative_to_the_task_file(tmp_path):
    path, _ = fitted_population(tmp_path / "data" / "population")
    tasks = {
        "fitted": {"logs": {"population": "population", "split_by": "time", "groups": 4}},
        "splits": {
            "meta-train": {"fitted": "logs", "groups": [0, 1, 2]},
            "meta-test": {"fitted": "logs", "groups": [3], "holds_out": ["users"]},
        },
    }
    (tmp_path / "data" / "tasks.yaml").write_text(yaml.safe_dump(tasks))
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "meta_tiny.yaml").read_text())
    config.update(tasks="data/tasks.yaml", methods=["rl2", "maml"], meta_learner="rl2")
    (tmp_path / "meta.yaml").write_text(yaml.safe_dump(config))
    metarec = [sys.executable, "-m", "metarec"]
    done = subprocess.run([*metarec, "meta-train", "meta.yaml", "--out", "run", "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["tasks"]["fitted"]["logs"]["population"] == str(path.resolve())  # absolute: read from anywhere
    done = subprocess.run([*metarec, "meta-eval", "run", "--split", "meta-test", "--json"], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["split"] == "meta-test"
    first = {name: method["normalised_return"][0] for name, method in result["methods"].items()}
    assert {"rl2", "maml", "linucb", "popular", "hbayes"} <= set(first)
    assert all(np.isfinite(value) for value in first.values())
    done = subprocess.run([*metarec, "meta-eval", "run", "--split", "meta-test-domain"], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "task distribution (meta-test, meta-train), got 'meta-test-domain'" in done.stderr


def test_an_ab_test_and_the_robustness_runs_keep_a_fitted_tasks_world_and_users(tmp_path):
    from metarec.abtest.config import ABTestConfig
    from metarec.abtest.runner import run_abtest
    from metarec.meta.robustness import perturbed

    path, _ = fitted_population(tmp_path / "population")
    task = distribution(str(path)).sample("meta-test", 1, seed=0)[0]
    env_id, kwargs = task_env(task)
    config = validate_config(ABTestConfig, {
        "env": env_id, "env_kwargs": kwargs, "arms": {"control": "random", "linucb": "linucb"}, "users": 40,
        "days": 1, "seed": 0,
    })  # fmt: skip
    assert set(run_abtest(config, tmp_path / "ab", quiet=True)["effects"]) == {"linucb"}
    (moved,) = perturbed("choice_temperature x1.5")([task])
    assert isinstance(moved, FittedTask) and moved.pool is task.pool
    assert moved.population.choice_temperature == pytest.approx(1.5 * task.population.choice_temperature)


def test_a_sources_bad_files_or_fields_are_named_by_the_source(tmp_path):
    path, _ = fitted_population(tmp_path / "population")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"fitted\.logs\.population: .*empty keeps no fitted users"):
        distribution(str(tmp_path / "empty"), "random").check_sources()
    (path / "users.npz").rename(tmp_path / "users.npz")
    with pytest.raises(ValueError, match=r"fitted\.logs\.population: .* keeps no fitted users"):
        distribution(str(path), "random").check_sources()
    (tmp_path / "users.npz").rename(path / "users.npz")
    (path / "users.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=r"fitted\.logs\.population: .*users\.npz is not a readable \.npz"):
        distribution(str(path), "random").check_sources()
    path, _ = fitted_population(tmp_path / "other")
    source = {"population": str(path), "split_by": "random", "fields": {"num_candidatez": 3}}
    bad = validate_config(TaskDistribution, {"fitted": {"logs": source},
                                             "splits": {"t": {"fitted": "logs", "groups": [0]}}})  # fmt: skip
    with pytest.raises(ValueError, match=r"fitted\.logs\.fields: (.|\n)*num_candidatez: unknown field"):
        bad.check_sources()


def test_held_out_checks_cannot_be_slipped_past(tmp_path):
    with pytest.raises(ValueError, match="holds out regimes, but the split names none"):
        distribution(str(tmp_path), "random", 4, train={"fitted": "logs", "groups": [0]},
                     test={"fitted": "logs", "groups": [1], "holds_out": ["regimes"]})  # fmt: skip
    twice = {
        "fitted": {"a": {"population": str(tmp_path)}, "b": {"population": str(tmp_path / ".." / tmp_path.name)}},
        "splits": {"train": {"fitted": "a", "groups": [0]},
                   "test": {"fitted": "b", "groups": [1], "holds_out": ["users"]}},
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"splits\.test\.fitted: holds out users of fitted\.b, but training split "
                                         r"'train' draws"):  # fmt: skip
        validate_config(TaskDistribution, twice)


def test_a_split_draws_from_several_sources_each_group_as_likely(tmp_path):
    first, _ = fitted_population(tmp_path / "first")
    second, _ = fitted_population(tmp_path / "second")
    fitted = {"a": {"population": str(first), "split_by": "time", "groups": 4},
              "b": {"population": str(second), "split_by": "random", "groups": 2}}
    splits = {"meta-train": {"fitted": {"a": [0, 1], "b": [0]}},
              "meta-test": {"fitted": {"a": [3], "b": [1]}, "holds_out": ["users"]}}
    tasks = validate_config(TaskDistribution, {"fitted": fitted, "splits": splits})  # fmt: skip
    drawn = [t.pool.name for t in tasks.sample("meta-train", 300, seed=0)]
    counts = {name: drawn.count(name) for name in set(drawn)}
    assert set(counts) == {"fitted.a group 0", "fitted.a group 1", "fitted.b group 0"}
    assert all(70 <= c <= 130 for c in counts.values())  # 100 each expected; 3.9 standard deviations either side
    assert [t.pool.name for t in tasks.sample("meta-train", 300, seed=0)] == drawn  # a seed reproduces them
    held_out = {t.pool.name for t in tasks.sample("meta-test", 40, seed=1)}
    assert held_out == {"fitted.a group 3", "fitted.b group 1"}
    assert tasks.splits["meta-test"].draws == [("a", 3), ("b", 1)]
    tasks.check_sources()  # both read, every group has users
    env = TaskBatchVectorEnv(task_batch(tasks, "meta-train", 3, seed=0, index=0, sessions=2), 8)
    env.reset(seed=0)
    _, reward, *_ = env.step(torch.zeros((24, 5), dtype=torch.int64) + torch.arange(5))
    assert bool(torch.isfinite(reward).all())


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"test": {"fitted": {"a": [1]}, "holds_out": ["users"]}},
         r"splits\.test\.fitted\.a: holds out groups \[1\] of fitted\.a, which training split 'train' uses"),
        ({"test": {"fitted": {"b": [0]}, "holds_out": ["users"]}},
         r"splits\.test\.fitted: holds out users of fitted\.b, but training split 'train' draws users of the same"),
        ({"test": {"fitted": {"a": [2], "c": [0]}}}, r"splits\.test\.fitted: 'c' is not a source of fitted users"),
        ({"test": {"fitted": {"a": [7]}}}, r"splits\.test\.fitted\.a: fitted\.a has groups 0\.\.3, got 7"),
        ({"test": {"fitted": {"a": [2, 2]}}}, r"fitted\.a: expected distinct group numbers >= 0 of fitted\.a"),
        ({"test": {"fitted": {"a": []}}}, r"fitted\.a: expected distinct group numbers"),
        ({"test": {"fitted": {}}}, r"fitted: expected a source's name, or at least one SOURCE"),
        ({"test": {"fitted": {"a": [2]}, "groups": [2]}}, r"groups: a split of several sources lists each one's"),
    ],
)  # fmt: skip
def test_bad_splits_of_several_sources_name_the_source(tmp_path, splits, message):
    fitted = {"a": {"population": str(tmp_path / "one"), "groups": 4},
              "b": {"population": str(tmp_path / "one"), "groups": 4}}  # the same population twice
    with pytest.raises(ValueError, match=message):
        validate_config(TaskDistribution, {"fitted": fitted, "splits": {"train": {"fitted": {"a": [0, 1]}}, **splits}})


def test_sources_of_one_split_that_cannot_share_a_batch_are_named_before_any_work(tmp_path):
    first, _ = fitted_population(tmp_path / "first")
    fields = {**FIELDS, "catalog": {**FIELDS["catalog"], "embedding_dim": 4}}
    config = SimulatorConfig.model_validate(fields)
    world = {**make_world(config), "cluster_weight": np.array([0.5, 0.3, 0.2], dtype=np.float32)}
    interest = world["cluster_centre"][np.arange(USERS) % 3].astype(np.float32)
    save_population(tmp_path / "narrow", config, world, {}, {"user_id": np.arange(USERS), "interest": interest})
    fitted = {"a": {"population": str(first), "split_by": "random", "groups": 2},
              "b": {"population": str(tmp_path / "narrow"), "split_by": "random", "groups": 2}}
    tasks = validate_config(TaskDistribution, {"fitted": fitted, "splits": {"train": {"fitted": {"a": [0], "b": [0]}}}})
    with pytest.raises(ValueError, match=r"splits\.train\.fitted\.b: its tasks share batches with fitted\.a's, so "
                                         r"they need the same .*catalog\.embedding_dim \(\(20, 5, 10, 6\)\), got "
                                         r"\(20, 5, 10, 4\)"):  # fmt: skip
        tasks.check_sources()
