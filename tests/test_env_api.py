"""Every registered id: Gymnasium's checks, make_vec, seeding, pickling, and bad actions."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from metarec.registration import CORE_ENVIRONMENTS as ENVIRONMENTS
from metarec.registration import ENVIRONMENTS as ALL_ENVIRONMENTS

IDS = [entry.id for entry in ENVIRONMENTS]


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.filterwarnings("ignore:.*Box observation space.*:UserWarning")
def test_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", IDS)
def test_make_vec_native_steps_a_batch(env_id):
    env = gym.make_vec(
        env_id, num_envs=16, vectorization_mode="vector_entry_point", array_backend="torch", device="cpu"
    )
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains({k: v.numpy() for k, v in obs.items()})
    for _ in range(5):
        obs, reward, terminated, truncated, _info = env.step(env.action_space.sample())
        assert reward.shape == (16,) and reward.dtype == torch.float32
        assert terminated.dtype == torch.bool and truncated.shape == (16,)
        assert torch.isfinite(reward).all()
    for key, space in env.single_observation_space.items():
        assert tuple(obs[key].shape) == (16, *space.shape)


@pytest.mark.parametrize("env_id", IDS)
def test_single_env_seeded_rollouts_repeat_exactly(env_id):
    def rollout(seed):
        env = gym.make(env_id)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        trace = [obs["candidates"].copy()]
        for _ in range(30):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            trace += [obs["candidates"].copy(), np.array([reward, terminated, truncated])]
            if terminated or truncated:
                obs, _ = env.reset()
        return trace

    a, b, c = rollout(7), rollout(7), rollout(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("env_id", IDS)
def test_vector_env_seeded_rollouts_repeat_exactly(env_id):
    def rollout(seed):
        env = gym.make_vec(env_id, num_envs=32, vectorization_mode="vector_entry_point", array_backend="torch")
        env.reset(seed=seed)
        env.action_space.seed(seed)
        rewards = []
        for _ in range(40):
            _obs, reward, *_ = env.step(env.action_space.sample())
            rewards.append(reward)
        return torch.stack(rewards)

    assert torch.equal(rollout(5), rollout(5))
    assert not torch.equal(rollout(5), rollout(6))


@pytest.mark.parametrize("env_id", IDS)
def test_vector_env_of_one_user_equals_single_env_on_torch(env_id):
    """Where a vector env of B users equals B single envs: B = 1, same seed, same backend."""
    single = gym.make(env_id, backend="torch").unwrapped
    vector = gym.make_vec(env_id, num_envs=1, vectorization_mode="vector_entry_point", array_backend="torch")
    s_obs, _ = single.reset(seed=11)
    v_obs, _ = vector.reset(seed=11)
    single.action_space.seed(0)
    for _ in range(60):
        for key in s_obs:
            np.testing.assert_allclose(s_obs[key], v_obs[key][0].numpy(), rtol=1e-6, atol=1e-6)
        action = np.asarray(single.action_space.sample())
        s_obs, s_r, s_te, s_tr, _ = single.step(action)
        v_obs, v_r, v_te, v_tr, _ = vector.step(torch.as_tensor(action)[None])
        assert s_r == pytest.approx(float(v_r[0]), abs=1e-5)
        assert (s_te, s_tr) == (bool(v_te[0]), bool(v_tr[0]))
        if s_te or s_tr:
            break  # the vector env autoresets; the single env waits for reset()


@pytest.mark.parametrize("env_id", IDS)
def test_pickle_round_trip_keeps_the_trajectory(env_id):
    env = gym.make(env_id).unwrapped
    env.reset(seed=2)
    clone = pickle.loads(pickle.dumps(env))
    action = np.zeros(env.action_space.shape, dtype=np.int64)
    for _ in range(10):
        a = env.step(action)
        b = clone.step(action)
        assert a[1] == b[1]
        np.testing.assert_array_equal(a[0]["candidates"], b[0]["candidates"])
        if a[2] or a[3]:
            break


@pytest.mark.parametrize("env_id", IDS)
def test_every_element_of_the_action_space_is_legal(env_id):
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    repeated = np.zeros(env.action_space.shape, dtype=np.int64)  # the same candidate everywhere
    _, reward, *_, info = env.step(repeated)
    assert np.isfinite(reward)
    assert info["chosen_position"] in (-1, 0), "a repeated candidate is shown once, at its first position"


@pytest.mark.parametrize(
    "action, message",
    [
        (np.array([0.0, 1.0, 2.0, 3.0, 4.0]), "integer candidate indices"),
        (np.array([0, 1, 2]), "a slate of 5 candidate indices"),
        (np.array([[0, 1, 2, 3, 4]]), "a slate of 5 candidate indices"),
        (np.array([0, 1, 2, 3, 20]), r"\[0, 20\), got 20"),
        (np.array([-1, 1, 2, 3, 4]), r"\[0, 20\), got -1"),
        (np.array([True, False, True, False, True]), "integer candidate indices"),
        ("abcde", "integer candidate indices"),
    ],
)
def test_bad_single_actions_name_the_problem(action, message):
    env = gym.make("metarec/DriftingUsers-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_bad_vector_actions_name_the_problem():
    env = gym.make_vec(
        "metarec/DriftingUsers-v0", num_envs=4, vectorization_mode="vector_entry_point", array_backend="torch"
    )
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4, 5\), got shape \(3, 5\)"):
        env.step(torch.zeros((3, 5), dtype=torch.int64))
    with pytest.raises(ValueError, match=r"integer candidate indices, got dtype torch\.float32"):
        env.step(torch.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\[0, 20\), got 25"):
        env.step(torch.full((4, 5), 25))
    single = gym.make("metarec/DriftingUsersSingle-v0")
    single.reset(seed=0)
    with pytest.raises(ValueError, match="one candidate index, got shape"):
        single.step(np.array([1, 2]))
    assert np.isfinite(single.step(3)[1]) and np.isfinite(single.step(np.int64(4))[1])


def test_step_before_reset_is_an_error():
    with pytest.raises(RuntimeError, match="before reset"):
        gym.make("metarec/DriftingUsers-v0").unwrapped.step(np.arange(5))


def test_ground_truth_goes_to_info_never_to_observations():
    env = gym.make("metarec/DriftingUsers-v0")
    obs, info = env.reset(seed=0)
    assert set(obs) == {"candidates", "candidate_ids", "history"}
    assert {"oracle_slate", "oracle_value", "candidate_utilities"} <= set(info)
    _, _, _, _, info = env.step(info["oracle_slate"])
    assert info["regret"] == pytest.approx(0.0, abs=1e-5), "the oracle's slate has no regret"


def _vector_env_kwargs(env_id: str, tmp_path) -> dict:
    """What ``env_id`` needs beyond its defaults: a drawn population for the calibrated env."""
    if env_id == "metarec/RecSimInterestExploration-v0":
        return {"max_steps": 50}  # RecSim's default episode is 27,000 steps
    if env_id != "metarec/Calibrated-v0":
        return {}
    from metarec.envs.calibrated import save_population
    from metarec.envs.drifting.model import make_world
    from metarec.envs.drifting.params import SimulatorConfig

    config = SimulatorConfig.model_validate({"catalog": {"num_items": 60, "embedding_dim": 8, "seed": 5}})
    clusters = config.population.num_clusters
    world = {**make_world(config), "cluster_weight": np.full(clusters, 1.0 / clusters, dtype=np.float32)}
    return {"population": str(save_population(tmp_path / "population", config, world, {}))}


WRAPPED_IDS = [entry.id for entry in ALL_ENVIRONMENTS if entry.extra is None]


@pytest.mark.parametrize("env_id", WRAPPED_IDS)
def test_gymnasium_vector_wrappers_take_the_default_make_vec(env_id, tmp_path):
    """``gym.make_vec`` speaks numpy on CPU, so Gymnasium's RecordEpisodeStatistics works unchanged; the episode
    returns it records are the sums of the rewards the torch backend gives the same users under the same slates."""
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    kwargs = _vector_env_kwargs(env_id, tmp_path)
    users = 6
    wrapped = RecordEpisodeStatistics(
        gym.make_vec(env_id, num_envs=users, vectorization_mode="vector_entry_point", **kwargs)
    )
    native = gym.make_vec(env_id, num_envs=users, vectorization_mode="vector_entry_point", array_backend="torch",
                          **kwargs)  # fmt: skip
    obs, info = wrapped.reset(seed=11)
    native_obs, _ = native.reset(seed=11)
    assert all(isinstance(value, np.ndarray) for value in obs.values())
    assert all(np.array_equal(obs[key], native_obs[key].numpy()) for key in obs)
    assert wrapped.observation_space.contains(obs)
    wrapped.action_space.seed(3)
    running = np.zeros(users)
    finished: list[tuple[float, float]] = []
    for _ in range(400):
        slates = wrapped.action_space.sample()
        obs, reward, terminated, truncated, info = wrapped.step(slates)
        _, native_reward, *_ = native.step(torch.as_tensor(slates))
        assert isinstance(reward, np.ndarray) and np.array_equal(reward, native_reward.numpy())
        running += reward
        done = terminated | truncated
        if done.any():
            assert np.array_equal(info["_episode"], done)
            finished += list(zip(info["episode"]["r"][done], running[done], strict=True))
            running[done] = 0.0
        if len(finished) >= 3:
            break
    assert len(finished) >= 3, "no user finished an episode in 400 steps"
    recorded, summed = np.array(finished).T
    np.testing.assert_allclose(recorded, summed, rtol=1e-5)


def test_array_backend_is_checked_by_name():
    with pytest.raises(ValueError, match=r"^array_backend: expected 'numpy' or 'torch', got 'jax'$"):
        gym.make_vec("metarec/DriftingUsers-v0", num_envs=2, vectorization_mode="vector_entry_point",
                     array_backend="jax")  # fmt: skip


def test_numpy_outputs_are_copies_that_cannot_change_the_simulator():
    env = gym.make_vec("metarec/DriftingUsers-v0", num_envs=3, vectorization_mode="vector_entry_point")
    obs, info = env.reset(seed=0)
    state = {key: value.clone() for key, value in env.unwrapped.state.items()}
    obs["candidate_ids"][:] = 0
    obs["candidates"][:] = 0.0
    info["oracle_value"][:] = 1e9
    assert all(torch.equal(state[key], env.unwrapped.state[key]) for key in state)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert np.all(info["regret"] < 1e6)  # the oracle's value the env keeps was not the one written to


def test_a_recommender_asks_for_the_torch_env_by_name():
    from metarec.agents.registry import make_recommender

    numpy_env = gym.make_vec("metarec/DriftingUsers-v0", num_envs=2, vectorization_mode="vector_entry_point")
    with pytest.raises(ValueError, match=r"^env: expected a metarec vector env on torch, .*array_backend='torch'"):
        make_recommender("linucb", numpy_env, 0)
