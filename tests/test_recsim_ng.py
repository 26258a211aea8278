"""RecSim NG interoperability: ``metarec/RecSimNG-v0`` runs RecSim NG itself, and metarec's port of its
interest-evolution model behaves like the original.

Every test but the first needs the recsim-ng extra (``make test-recsim-ng`` builds its venv).

Statistical level: each parity family (consumed time per step, choice per step, interest mean per
step and topic, interest variance per step and topic) is tested at a family-wise level of 0.001
with Bonferroni's correction over its steps (and topics). The same tests must reject a port with a
perturbed parameter, so they have the power to see a difference.
"""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import stats

import metarec  # noqa: F401  (registers the ids)

ALPHA = 1e-3
USERS, STEPS = 10_000, 100


def recsim_ng_installed() -> bool:
    try:
        import recsim_ng  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def recsim_ng_test(test):
    """Marks a test as needing the recsim-ng extra (and skips it where the extra is missing)."""
    needs = pytest.mark.skipif(not recsim_ng_installed(), reason="needs the recsim-ng extra (make test-recsim-ng)")
    return pytest.mark.recsim_ng(needs(test))


@pytest.mark.skipif(recsim_ng_installed(), reason="the recsim-ng extra is installed here")
def test_without_the_extra_the_env_says_which_extra_to_install():
    with pytest.raises(ImportError, match=r"needs the recsim-ng extra.*pip install .*\[recsim-ng\]"):
        gym.make_vec("metarec/RecSimNG-v0", num_envs=2, vectorization_mode="vector_entry_point")
    with pytest.raises(ImportError, match="needs the recsim-ng extra"):
        gym.make("metarec/RecSimNG-v0")


def trajectories(env_id: str, **kwargs) -> dict[str, np.ndarray]:
    """USERS users for STEPS steps under uniformly random slates (the same slates for every env):
    per step the consumed time, the chosen position (-1: none) and the interests after the step."""
    env = gym.make_vec(
        env_id,
        num_envs=USERS,
        vectorization_mode="vector_entry_point",
        array_backend="torch",
        autoreset=False,
        **kwargs,
    )
    base = env.unwrapped
    env.reset(seed=1)
    slates = torch.Generator().manual_seed(0)
    consumed, position, interest = [], [], []
    for _ in range(STEPS):
        slate = torch.rand(USERS, 100, generator=slates).argsort(dim=1)[:, :2]
        _, reward, _, _, info = env.step(slate)
        consumed.append(reward.numpy().copy())
        position.append(info["chosen_position"].numpy().copy())
        if "user_interest" in info:  # RecSim NG's users
            interest.append(info["user_interest"].numpy().copy())
        else:
            interest.append(base.state["interest"].numpy().copy())
    env.close()
    return {"consumed": np.array(consumed), "position": np.array(position), "interest": np.array(interest)}


def parity_p_values(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Bonferroni-adjusted p-value of each family (the smallest p-value times the number of tests)."""
    steps, _, topics = a["interest"].shape

    def counts(x: np.ndarray) -> np.ndarray:
        return np.bincount(x + 1, minlength=3)

    consumed = [stats.ks_2samp(a["consumed"][t], b["consumed"][t]).pvalue for t in range(steps)]
    choice = [
        stats.chi2_contingency(np.stack([counts(a["position"][t]), counts(b["position"][t])])).pvalue
        for t in range(steps)
    ]
    pairs = [(a["interest"][t, :, j], b["interest"][t, :, j]) for t in range(steps) for j in range(topics)]
    mean = [stats.ttest_ind(x, y, equal_var=False).pvalue for x, y in pairs]
    variance = [stats.levene(x, y, center="median").pvalue for x, y in pairs]
    return {
        name: min(1.0, min(p) * len(p))
        for name, p in {"consumed": consumed, "choice": choice, "mean": mean, "variance": variance}.items()
    }


@pytest.fixture(scope="module")
def recsim_ng_run():
    pytest.importorskip("recsim_ng")
    return trajectories("metarec/RecSimNG-v0", simulation="interest_evolution")


@recsim_ng_test
def test_port_matches_recsim_ng_in_distribution(recsim_ng_run):
    port = trajectories("metarec/RecSimNGInterestEvolution-v0")
    p = parity_p_values(recsim_ng_run, port)
    assert all(value > ALPHA for value in p.values()), p
    # and the runs are not trivially equal: users were moving and choosing
    assert recsim_ng_run["interest"][-1].std() > 0.5 and (recsim_ng_run["position"] >= 0).mean() > 0.3


@recsim_ng_test
@pytest.mark.parametrize(
    ("perturbed", "family"),
    [({"interest_step_size": 0.15}, "variance"), ({"logit_offset": 2.2}, "consumed")],
)
def test_parity_tests_reject_a_perturbed_port(recsim_ng_run, perturbed, family):
    port = trajectories("metarec/RecSimNGInterestEvolution-v0", **perturbed)
    assert parity_p_values(recsim_ng_run, port)[family] < ALPHA


@recsim_ng_test
def test_adapter_seeds_repeat_runs_and_obeys_the_gymnasium_api():
    from gymnasium.utils.env_checker import check_env

    def rollout(seed):
        env = gym.make_vec(
            "metarec/RecSimNG-v0",
            num_envs=64,
            vectorization_mode="vector_entry_point",
            array_backend="torch",
            max_steps=5,
        )
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        trace = [obs["candidates"]]
        for _ in range(7):  # crosses an autoreset
            obs, reward, _, truncated, info = env.step(env.action_space.sample())
            trace += [obs["response"], reward, info["user_interest"]]
        assert truncated.all() is not None
        return trace

    a, b, c = rollout(4), rollout(4), rollout(5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    check_env(gym.make("metarec/RecSimNG-v0", max_steps=10).unwrapped, skip_render_check=True)
    env = gym.make_vec(
        "metarec/RecSimNG-v0", num_envs=3, vectorization_mode="vector_entry_point", array_backend="torch"
    )
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action: candidate indices must lie in \[0, 100\)"):
        env.step(np.full((3, 2), 100))
    with pytest.raises(ValueError, match=r"reset_mask.*lockstep"):
        env.reset(options={"reset_mask": np.ones(3, bool)})
    with pytest.raises(ValueError, match="simulation"):
        gym.make_vec(
            "metarec/RecSimNG-v0",
            num_envs=3,
            vectorization_mode="vector_entry_point",
            array_backend="torch",
            simulation="nope",
        )


def nearest_documents(observation: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """RecSim NG's ``MyopicRecommender`` without provider boosts: the k documents nearest the user."""
    features = observation["candidates"][:, :, :2]
    distance = torch.linalg.vector_norm(features - observation["user"][:, None, :], dim=2)
    return distance.topk(k, dim=1, largest=False).indices


@recsim_ng_test
def test_ecosystem_through_the_adapter_matches_recsim_ng_own_runtime():
    """The adapter splits each network step at the slate; RecSim NG's own runtime (TFRuntime) runs
    its MyopicRecommender. With provider boosts off the two recommend alike, so the users' utilities
    agree in distribution; a policy that ignored this step's documents would not."""
    import tensorflow as tf
    from recsim_ng.applications.ecosystem_simulation import simulation_config
    from recsim_ng.applications.ecosystem_simulation import user as eco_user
    from recsim_ng.core import network as network_lib
    from recsim_ng.lib.tensorflow import runtime

    from metarec.envs.recsim_ng.bridge import numpy_seeded

    users, steps = 2000, 12
    env = gym.make_vec(
        "metarec/RecSimNG-v0",
        num_envs=users,
        vectorization_mode="vector_entry_point",
        array_backend="torch",
        simulation="ecosystem",
    )
    obs, _ = env.reset(seed=3)
    ours = []
    for _ in range(steps):
        obs, reward, _, _, _ = env.step(nearest_documents(obs, 3))
        ours.append(reward.numpy())
    ours = np.array(ours)  # utility of the choice at steps 0..steps-1

    tf.random.set_seed(3)
    with numpy_seeded(0):
        means = eco_user.init_random_provider_clusters(64.0, 2, 40, 2)
    variables = simulation_config.create_viable_provider_simulation_network(
        means, num_users=users, provider_boost_cap=0.0
    )
    trajectory = runtime.TFRuntime(network=network_lib.Network(variables=variables)).trajectory(length=steps + 2)
    # UtilityAsRewardMetrics at network step t reports the utility of the choice at step t - 2
    theirs = trajectory["metrics state"].get("reward").numpy()[2:]
    assert theirs.shape == ours.shape
    p = stats.ttest_ind(ours.mean(axis=0), theirs.mean(axis=0), equal_var=False).pvalue
    assert p > ALPHA, (ours.mean(), theirs.mean())
    # the per-step means move together too (the corpus concentrates on popular providers)
    per_step = [stats.ttest_ind(ours[t], theirs[t], equal_var=False).pvalue for t in range(steps)]
    assert min(per_step) * steps > ALPHA
    random_slates = []
    env.reset(seed=3)
    for _ in range(steps):
        _, reward, _, _, _ = env.step(env.action_space.sample())
        random_slates.append(reward.numpy())
    assert np.mean(random_slates) < ours.mean() - 1.0


@recsim_ng_test
def test_agent_trained_on_the_port_scores_alike_on_recsim_ng(tmp_path):
    from metarec.agents.evaluation import evaluate
    from metarec.agents.training import load_config, train

    config = load_config("configs/ppo_recsim_ng_ie.yaml", ["total_steps=25000", "eval.users=100"])
    train(config, tmp_path / "run", progress=False)
    scores = {
        env_id: evaluate(env_id, str(tmp_path / "run"), 2000, seed=11)
        for env_id in ("metarec/RecSimNGInterestEvolution-v0", "metarec/RecSimNG-v0")
    }
    port, ng = (scores[k]["mean_return"] for k in scores)
    assert abs(ng - port) / port < 0.05, scores


@recsim_ng_test
def test_nothing_but_the_adapter_imports_tensorflow():
    """metarec's own modules leave TensorFlow alone even where it is installed. (stable-baselines3
    is the exception, not metarec's: its logger imports torch.utils.tensorboard, which loads
    TensorFlow whenever it is importable; the core install has none.)"""
    skip = ("metarec.__main__", "metarec.envs.recsim_ng.bridge", "metarec.agents.sb3")
    code = (
        "import pkgutil, importlib, sys, metarec\n"
        "parts = ('metarec', 'metarec.envs', 'metarec.agents', 'metarec.meta', 'metarec.abtest',\n"
        "         'metarec.calibration')\n"
        "names = []\n"
        "def walk(package):\n"
        "    for m in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):\n"
        f"        if m.name in names or m.name.startswith({skip!r}):\n"
        "            continue\n"
        "        names.append(m.name)\n"
        "        module = importlib.import_module(m.name)\n"
        "        if m.ispkg:\n"
        "            walk(module)\n"
        "for p in parts:\n"
        "    walk(importlib.import_module(p))\n"
        "assert len(names) > 20, names\n"
        "assert 'tensorflow' not in sys.modules, [m for m in names if m in sys.modules]\n"
        "import gymnasium as gym\n"
        "gym.make_vec('metarec/RecSimNGInterestEvolution-v0', num_envs=2, vectorization_mode='vector_entry_point')\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@recsim_ng_test
@pytest.mark.parametrize("simulation", ["interest_evolution", "ecosystem"])
def test_metarec_agents_run_unchanged_on_recsim_ng(simulation):
    from metarec.agents.evaluation import evaluate

    kwargs = {"simulation": simulation, "max_steps": 50}
    scores = {a: evaluate("metarec/RecSimNG-v0", a, 300, seed=2, env_kwargs=kwargs) for a in ("random", "linucb")}
    for result in scores.values():
        assert result["mean_length"] == 50 and np.isfinite(result["mean_return"])
    if simulation == "interest_evolution":  # a linear bandit on the documents' features learns who watches what
        linucb, random = scores["linucb"], scores["random"]
        assert linucb["ci95"][0] > random["ci95"][1], scores


@recsim_ng_test
def test_readme_command_evaluates_on_recsim_ng(capsys):
    import json

    from metarec.cli import main

    assert main(["evaluate", "--env", "metarec/RecSimNG-v0", "--agent", "linucb", "--users", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["env"] == "metarec/RecSimNG-v0" and result["users"] == 50 and result["mean_length"] == 100


@recsim_ng_test
def test_gymnasium_vector_wrappers_take_the_default_make_vec():
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    wrapped = RecordEpisodeStatistics(
        gym.make_vec("metarec/RecSimNG-v0", num_envs=3, vectorization_mode="vector_entry_point", max_steps=4)
    )
    obs, _ = wrapped.reset(seed=2)
    assert all(isinstance(value, np.ndarray) for value in obs.values())
    wrapped.action_space.seed(2)
    total = np.zeros(3)
    for _ in range(4):
        _, reward, _, truncated, info = wrapped.step(wrapped.action_space.sample())
        assert isinstance(reward, np.ndarray)
        total += reward
    assert truncated.all() and info["_episode"].all()
    np.testing.assert_allclose(info["episode"]["r"], total, rtol=1e-5)
    assert (info["episode"]["l"] == 4).all()
