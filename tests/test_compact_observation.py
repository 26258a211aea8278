"""The compact observation of ``DriftingUsers-v0``: indices into shared tables that expand to the default
observation bit for bit, so that a policy trained on it learns what it learns on the full one, and
environments that cannot give it say so."""

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import metarec  # noqa: F401
from metarec.agents.evaluation import evaluate
from metarec.agents.ppo import BatchedPPO, PPOConfig
from metarec.agents.sb3 import make_sb3_model

FLAGSHIP = "metarec/DriftingUsers-v0"


def vector_env(users=200, **kwargs):
    kwargs = {"vectorization_mode": "vector_entry_point", "array_backend": "torch", **kwargs}
    return gym.make_vec(FLAGSHIP, num_envs=users, **kwargs)


@pytest.mark.parametrize("population", [{}, {"num_sessions": 3}], ids=["one-session", "sessions"])
def test_a_compact_observation_expands_to_the_full_one_and_nothing_else_moves(population):
    full, compact = vector_env(population=population), vector_env(population=population, compact_observation=True)
    assert set(compact.single_observation_space.spaces) == {"candidate_ids", "history_ids", "history_engagement"}
    assert compact.unwrapped.full_observation_space == full.single_observation_space
    observed = [full.reset(seed=4), compact.reset(seed=4)]
    g = torch.Generator().manual_seed(2)
    finals = 0
    for _ in range(80):
        expanded = compact.unwrapped.expand(observed[1][0])
        assert all(torch.equal(expanded[key], observed[0][0][key]) for key in observed[0][0])
        assert compact.single_observation_space.contains({k: v[0].numpy() for k, v in observed[1][0].items()})
        slate = torch.rand(200, 20, generator=g).argsort(1)[:, :5]
        observed = [full.step(slate), compact.step(slate)]
        assert all(torch.equal(a, b) for a, b in zip(observed[0][1:4], observed[1][1:4], strict=True))
        assert torch.equal(observed[0][4]["oracle_slate"], observed[1][4]["oracle_slate"])
        if "final_obs" in observed[0][4]:
            finals += 1
            last = compact.unwrapped.expand(observed[1][4]["final_obs"])
            rows = observed[0][4]["_final_obs"]
            assert all(torch.equal(last[k][rows], observed[0][4]["final_obs"][k][rows]) for k in last)
    assert finals > 0  # autoreset was exercised


def test_the_observation_is_compact():
    full, compact = vector_env(1000), vector_env(1000, compact_observation=True)
    size = lambda observation: sum(v.element_size() * v.nelement() for v in observation.values())  # noqa: E731
    assert size(compact.reset(seed=0)[0]) * 6 < size(full.reset(seed=0)[0])


def test_ppo_on_compact_observations_learns_the_same_weights():
    def trained(compact):
        env = vector_env(64, ground_truth=False, compact_observation=compact)
        ppo = BatchedPPO(env, PPOConfig(num_envs=64, rollout_steps=8, hidden=16, history_encoder="mlp"), 0, 10_000)
        ppo.train(2 * 64 * 8)
        return ppo

    full, compact = trained(False), trained(True)
    assert compact.policy.compact and not full.policy.compact
    for a, b in zip(full.policy.parameters(), compact.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    assert set(compact.policy.state_dict()) == set(full.policy.state_dict())  # the tables are not weights
    scores = [evaluate(FLAGSHIP, ppo.recommender(), 100, seed=5)["mean_return"] for ppo in (full, compact)]
    on_compact = evaluate(FLAGSHIP, compact.recommender(), 100, seed=5, env_kwargs={"compact_observation": True})
    assert scores[0] == scores[1] == on_compact["mean_return"]


def test_recommenders_are_evaluated_on_compact_envs_as_on_full_ones():
    plain = evaluate(FLAGSHIP, "linucb", 150, seed=3)
    compact = evaluate(FLAGSHIP, "linucb", 150, seed=3, env_kwargs={"compact_observation": True})
    assert plain["mean_return"] == compact["mean_return"]


@pytest.mark.parametrize(
    ("env_id", "kwargs", "message"),
    [
        (FLAGSHIP, {"catalog": {"churn_rate": 1.0}}, "compact_observation: a churning catalog"),
        ("metarec/RecSimNGInterestEvolution-v0", {}, "compact_observation: this environment has none; expected false"),
        (FLAGSHIP, {"compact_observation": "yes"}, "compact_observation: expected true or false, got 'yes'"),
    ],
)
def test_envs_without_a_compact_observation_say_so(env_id, kwargs, message):
    kwargs = {"compact_observation": True, **kwargs}
    with pytest.raises(ValueError, match=message):
        gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **kwargs)


def test_a_full_env_has_no_tables():
    with pytest.raises(AttributeError, match="observation_tables: this env returns full observations"):
        vector_env(2).unwrapped.observation_tables  # noqa: B018


def test_sb3_sees_full_observations_of_a_compact_env_and_learns_the_same_weights():
    def learned(compact):
        env = vector_env(4, ground_truth=False, compact_observation=compact)
        model = make_sb3_model("ppo", env, seed=7, algo_kwargs={"n_steps": 16, "batch_size": 32, "n_epochs": 2})
        assert set(model.observation_space.spaces) == {"candidates", "candidate_ids", "history"}
        model.learn(128)
        return torch.nn.utils.parameters_to_vector(model.policy.parameters())

    assert torch.equal(learned(True), learned(False))


def test_a_policy_trained_on_compact_observations_is_an_agent_on_either_observation(tmp_path):
    from metarec.cli import main

    config = {
        "algo": "ppo", "env": FLAGSHIP, "env_kwargs": {"compact_observation": True}, "total_steps": 2 * 32 * 8,
        "seed": 3, "ppo": {"num_envs": 32, "rollout_steps": 8, "hidden": 16, "history_encoder": "gru"},
        "eval": {"users": 16},
    }  # fmt: skip
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"), "--quiet", "--json"]) == 0
    run = str(tmp_path / "run")
    full = evaluate(FLAGSHIP, run, 40, seed=1)
    compact = evaluate(FLAGSHIP, run, 40, seed=1, env_kwargs={"compact_observation": True})
    assert full["agent"] == compact["agent"] == "ppo:run" and full["mean_return"] == compact["mean_return"]
    # it exports from either observation, as the same weights
    saved = []
    for name, kwargs in (("full", "{}"), ("compact", '{"compact_observation": true}')):
        out = tmp_path / f"{name}.pt"
        assert main(["export", run, "--format", "state-dict", "--out", str(out), "--env-kwargs", kwargs, "--json"]) == 0
        saved.append(torch.load(out, weights_only=True))
    assert saved[0]["about"] == saved[1]["about"]
    assert all(torch.equal(a, saved[1]["state_dict"][key]) for key, a in saved[0]["state_dict"].items())


def test_logs_of_a_compact_env_are_those_of_the_full_one():
    from metarec.calibration.offline import collect

    def same(a, b, where):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            return sum(same(a[k], b[k], f"{where}.{k}") for k in a)
        if isinstance(a, list | tuple):
            assert len(a) == len(b), where
            return sum(same(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True)))
        if isinstance(a, np.ndarray | torch.Tensor):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
            return 1
        assert a == b, where
        return 0

    plain = collect(FLAGSHIP, 30, 2, seed=4, agent="popular", episodes=True)
    compact = collect(FLAGSHIP, 30, 2, seed=4, agent="popular", episodes=True, env_kwargs={"compact_observation": True})
    assert compact["spaces"][0] == plain["spaces"][0] and "candidates" in plain["spaces"][0].spaces
    assert same(plain, compact, "logs") > 10  # the impressions, the items' context and every step's observation


def test_a_calibrated_population_takes_the_compact_observation(tmp_path):
    from metarec.envs.calibrated import save_population
    from metarec.envs.drifting.model import make_world
    from metarec.envs.drifting.params import SimulatorConfig

    config = SimulatorConfig.model_validate({"catalog": {"num_items": 60, "embedding_dim": 8, "seed": 5}})
    clusters = config.population.num_clusters
    world = {**make_world(config), "cluster_weight": np.full(clusters, 1.0 / clusters, dtype=np.float32)}
    population = str(save_population(tmp_path / "population", config, world, {}))
    kwargs = {"vectorization_mode": "vector_entry_point", "array_backend": "torch", "population": population}
    full = gym.make_vec("metarec/Calibrated-v0", num_envs=16, **kwargs)
    compact = gym.make_vec("metarec/Calibrated-v0", num_envs=16, compact_observation=True, **kwargs)
    assert set(compact.single_observation_space.spaces) == {"candidate_ids", "history_ids", "history_engagement"}
    seen, indices = full.reset(seed=2)[0], compact.reset(seed=2)[0]
    expanded = compact.unwrapped.expand(indices)
    assert all(torch.equal(seen[key], expanded[key]) for key in seen)


def test_numpy_observations_expand_to_numpy_ones():
    kwargs = {"vectorization_mode": "vector_entry_point"}  # on a CPU, Gymnasium's conversion to NumPy
    full = gym.make_vec(FLAGSHIP, num_envs=8, **kwargs)
    compact = gym.make_vec(FLAGSHIP, num_envs=8, compact_observation=True, **kwargs)
    seen, indices = full.reset(seed=6)[0], compact.reset(seed=6)[0]
    assert isinstance(indices["history_ids"], np.ndarray)
    expanded = compact.unwrapped.expand(indices)
    assert set(expanded) == set(seen)
    for key in seen:
        assert isinstance(expanded[key], np.ndarray)
        np.testing.assert_array_equal(expanded[key], seen[key], err_msg=key)


def test_the_memory_check_counts_the_expanded_observation():
    from metarec.agents.evaluation import PROBE_ABOVE_USERS, check_users_fit
    from metarec.resources import bytes_per_user

    small, large = vector_env(1, compact_observation=True), vector_env(1)
    compact_bytes = bytes_per_user(small.single_observation_space)
    full_bytes = bytes_per_user(large.single_observation_space)
    assert compact_bytes < full_bytes
    users = 4 * PROBE_ABOVE_USERS
    limit = users * (compact_bytes + full_bytes) / 2 / 2**30  # room for compact observations only
    with pytest.raises(ValueError, match=r"^users: "):
        check_users_fit(FLAGSHIP, users, {"compact_observation": True}, memory_limit_gib=limit)
