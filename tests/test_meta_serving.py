"""Every method of a meta-train run serves as a recommender (``--agent RUN/methods/METHOD.pt``): in
``metarec evaluate`` and as an A/B arm, the gradient methods adapting on the users they serve, with
meta-eval's numbers on meta-eval's envs, and refusals that name ``agent`` before any work."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from metarec.abtest.config import ABTestConfig
from metarec.abtest.runner import run_abtest
from metarec.agents.evaluation import evaluate
from metarec.agents.registry import make_recommender
from metarec.cli import main
from metarec.config import validate_config
from metarec.envs.task_batch import TaskBatchVectorEnv
from metarec.meta import eval_run
from metarec.meta.config import ALL_METHODS, MEMORY_METHODS, load_meta_config
from metarec.meta.evaluate import EVAL_SEED_OFFSET, LoggedItemStats, run_protocol
from metarec.meta.gradient_rl import AdaptingRecommender
from metarec.meta.serving import load_meta_recommender
from metarec.meta.tasks import task_batch
from metarec.meta.train import meta_train
from metarec.parallel import Shard

ROOT = Path(__file__).parents[1]
ENV = "metarec/DriftingUsers-v0"
GRADIENT = [m for m in ALL_METHODS if m not in MEMORY_METHODS]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """``configs/meta_tiny.yaml`` trained (every method, with item statistics: its default), on the test
    process's torch threads (its own two would be kept by every test after it: meta-eval sets them too)."""
    config = load_meta_config(ROOT / "configs" / "meta_tiny.yaml", ["torch_threads=null"])
    out = tmp_path_factory.mktemp("meta") / "tiny"
    meta_train(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def population(run) -> dict:
    """The keyword arguments of a vector env of one held-out population (``meta-test``) of the run."""
    config = load_meta_config(run / "config.yaml")
    return task_batch(config.tasks, config.test_split, 1, config.seed, 77, config.sessions)[0].model_dump()


def _env(population: dict, users: int, **overrides) -> gym.vector.VectorEnv:
    return gym.make_vec(ENV, num_envs=users, vectorization_mode="vector_entry_point", array_backend="torch",
                        autoreset=False, **{**population, **overrides}).unwrapped  # fmt: skip


def _slates(weights: Path, population: dict, seed: int, steps: int = 300) -> torch.Tensor:
    """The slates ``weights`` serves 16 users of the population at a time, ``steps`` in all (a user who
    leaves is replaced), to the same users whatever ``seed`` seeds the recommender."""
    env = gym.make_vec(
        ENV, num_envs=16, vectorization_mode="vector_entry_point", array_backend="torch", **population
    ).unwrapped
    recommender = load_meta_recommender(weights, env, seed)
    observation, info = env.reset(seed=3)
    recommender.reset()
    shown = []
    for _ in range(steps // 16):
        slate = recommender.act(observation, info)
        observation, reward, terminated, truncated, info = env.step(slate)
        done = terminated | truncated
        recommender.observe(reward, done, info)
        recommender.reset(done)
        shown.append(slate)
    return torch.stack(shown)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_each_method_serves_a_held_out_population_reproducibly(run, population, method) -> None:
    weights = run / "methods" / f"{method}.pt"
    first, again, other = (_slates(weights, population, seed) for seed in (0, 0, 1))
    assert first.shape[-1] == 5 and torch.equal(first, again)
    if method in MEMORY_METHODS:  # served greedily (eval.rl2_greedy; icl always): no random numbers drawn
        assert torch.equal(first, other)
    else:  # the gradient methods sample, as their policy-gradient step needs
        assert not torch.equal(first, other)


def test_served_methods_score_on_held_out_users_through_metarec_evaluate(run, population, capsys) -> None:
    """``evaluate`` (what ``metarec evaluate`` runs) serves every method; RL² and the in-context recommender,
    trained for a few updates, score above random on new users of a held-out population (a gradient method of
    this tiny run is near random: 4 meta-steps of a 16-wide policy)."""
    results = {}
    for agent in ("random", *(str(run / "methods" / f"{m}.pt") for m in ALL_METHODS)):
        result = evaluate(ENV, agent, users=32, seed=1, env_kwargs=population)
        results[result["agent"]] = result["mean_return"]
        assert result["users"] == 32 and np.isfinite(result["mean_return"]) and result["mean_length"] > 10
    assert set(results) == {"random", *(f"{m}:tiny" for m in ALL_METHODS)}
    assert results["rl2:tiny"] > 1.05 * results["random"]
    assert results["icl:tiny"] > 1.05 * results["random"]  # six imitation updates
    # the command line takes the same path
    assert main(["evaluate", "--env", ENV, "--agent", str(run / "methods" / "maml.pt"), "--users", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["agent"] == "maml:tiny"


def _serve_window(recommender, env, served: torch.Tensor, tamper: str | None = None) -> None:
    """One adaptation window of ``env``'s users (reset with seed 3), ``served`` marked active. With
    ``tamper``, the recommender is told other data than the env gave: the ``unserved`` users' observations
    and rewards replaced by noise, or the ``served`` users' rewards doubled."""
    noise = torch.Generator().manual_seed(9)
    observation, info = env.reset(seed=3)
    recommender.reset()
    for _ in range(recommender.inner.config.rollout_steps):
        seen = {key: value.clone() for key, value in observation.items()}
        if tamper == "unserved":
            for key in ("candidates", "history"):
                seen[key][~served] = torch.randn(seen[key][~served].shape, generator=noise)
        slate = recommender.act(seen, {**info, "active": served})
        observation, reward, terminated, truncated, info = env.step(slate)
        told = reward.clone()
        if tamper == "unserved":
            told[~served] = 100 * torch.rand(int((~served).sum()), generator=noise)
        elif tamper == "served":
            told[served] = 2 * told[served] + 1
        recommender.observe(told, terminated | truncated, {**info, "active": served})


@pytest.mark.parametrize("method", ["maml", "reptile"])
def test_a_gradient_method_adapts_while_serving_from_the_served_users_only(run, population, method) -> None:
    env = _env(population, 16)
    served = torch.arange(16) < 10  # users 10..15 are another arm's: nothing of theirs may be learned

    def adapted(tamper: str | None = None) -> dict[str, torch.Tensor]:
        recommender = load_meta_recommender(run / "methods" / f"{method}.pt", env, seed=0)
        assert isinstance(recommender, LoggedItemStats) and isinstance(recommender.inner, AdaptingRecommender)
        assert recommender.inner.acting.num_tasks == 1 and recommender.inner.acting.users == 16  # one population
        start = {key: value.clone() for key, value in recommender.inner.params.params.items()}
        _serve_window(recommender, env, served, tamper)
        assert recommender.inner.adaptations == 1
        after = recommender.inner.params.params
        assert any(not torch.equal(start[key], after[key]) for key in start)  # it kept adapting
        return after

    plain, unserved, tampered = adapted(), adapted("unserved"), adapted("served")
    assert all(torch.equal(plain[key], unserved[key]) for key in plain)
    assert any(not torch.equal(plain[key], tampered[key]) for key in plain)


@pytest.fixture(scope="module")
def user_run(tmp_path_factory) -> Path:
    """``configs/meta_tiny.yaml``'s gradient methods trained to adapt per user (without item statistics, so
    nothing served pools users)."""
    overrides = ["torch_threads=null", "methods=[maml,reptile]", "gradient.adapt=user", "item_stats=false"]
    out = tmp_path_factory.mktemp("meta") / "per_user"
    meta_train(load_meta_config(ROOT / "configs" / "meta_tiny.yaml", overrides), out, progress=False)
    return out


def _serve_steps(recommender, env, steps: int, told=lambda t, reward: reward, reset_after: dict | None = None):
    """The slates served to ``env``'s users (reset with seed 3) over ``steps`` steps; ``told(t, reward)`` is
    the reward the recommender is told at step ``t``, and ``reset_after`` maps a step to the rows the
    recommender is told a new user took after it."""
    observation, info = env.reset(seed=3)
    recommender.reset()
    slates = []
    for t in range(steps):
        slate = recommender.act(observation, info)
        slates.append(slate.clone())
        observation, reward, terminated, truncated, info = env.step(slate)
        recommender.observe(told(t, reward.clone()), terminated | truncated, info)
        if reset_after and t in reset_after:
            recommender.reset(reset_after[t])
    return torch.stack(slates)


@pytest.mark.parametrize("method", ["maml", "reptile"])
def test_a_per_user_gradient_method_adapts_each_user_on_their_own_data_only(user_run, population, method) -> None:
    env = _env(population, 16)
    weights = user_run / "methods" / f"{method}.pt"
    steps = load_meta_config(user_run / "config.yaml").gradient.rollout_steps

    def adapted(told=lambda t, reward: reward, reset_after=None) -> dict[str, torch.Tensor]:
        recommender = load_meta_recommender(weights, env, seed=0)
        assert isinstance(recommender, AdaptingRecommender) and not recommender.shares_state_across_users
        assert recommender.acting.num_tasks == 16 and recommender.acting.users == 1  # parameters per user
        _serve_steps(recommender, env, steps, told, reset_after)
        assert recommender.adaptations == 1
        return recommender.params.params

    def tamper_user_5(t, reward):
        reward[5] = 3 * reward[5] + 1 + t
        return reward

    plain, tampered = adapted(), adapted(tamper_user_5)
    initial = load_meta_recommender(weights, env, seed=0).params.params
    for key in plain:
        differs = (plain[key] != tampered[key]).flatten(1).any(dim=1)
        assert differs.tolist() == [row == 5 for row in range(16)] or not differs.any()
    assert any(not torch.equal(plain[key], initial[key]) for key in plain)  # it adapted
    assert any(bool((plain[key][5] != tampered[key][5]).any()) for key in plain)  # user 5's own step changed
    # a new user in row 5 after step 3: what the one before did is not learned from
    new_user = torch.arange(16) == 5

    def tamper_before(t, reward):
        return tamper_user_5(t, reward) if t <= 3 else reward

    fresh, fresh_tampered = adapted(reset_after={3: new_user}), adapted(tamper_before, reset_after={3: new_user})
    assert all(torch.equal(fresh[key], fresh_tampered[key]) for key in fresh)
    assert any(not torch.equal(fresh[key][5], plain[key][5]) for key in fresh)
    recommender = load_meta_recommender(weights, env, seed=0)
    _serve_steps(recommender, env, steps)
    recommender.reset(new_user)  # after its step, a new user in row 5 starts from θ
    assert all(torch.equal(recommender.params.params[key][5], initial[key][5]) for key in initial)
    assert all(torch.equal(recommender.params.params[key][:5], plain[key][:5]) for key in initial)


def test_a_per_user_gradient_method_serves_across_processes_as_in_one(user_run, population) -> None:
    """Each process's users get the slates they get in one process, before and after their own step."""
    weights = user_run / "methods" / "maml.pt"
    steps = 2 * load_meta_config(user_run / "config.yaml").gradient.rollout_steps + 1
    whole = _serve_steps(load_meta_recommender(weights, _env(population, 8), seed=4), _env(population, 8), steps)
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):
        env = _env(population, 4, shard=(8, rows))
        recommender = load_meta_recommender(weights, env, seed=4)
        recommender.place(Shard(8, rows[0], 4))
        assert torch.equal(_serve_steps(recommender, env, steps), whole[:, rows])


@pytest.fixture(scope="module")
def meta_eval_factories(run) -> dict:
    """The factories ``meta-eval`` builds its recommenders with, by method, as it hands them to the protocol."""
    captured = {}

    def capture(methods, *args, **kwargs):
        captured.update(methods)
        raise StopIteration  # the factories are all this needs: nothing runs or is written

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eval_run, "adaptation_curves", capture)
        with pytest.raises(StopIteration):
            eval_run.meta_eval(run, "test")
    assert not (run / "eval_test.json").exists()
    return captured


@pytest.mark.parametrize("method", ALL_METHODS)
def test_serving_on_meta_evals_env_reproduces_meta_eval(run, meta_eval_factories, method) -> None:
    """The saved file served on the env and seed of meta-eval's protocol gives the per-session returns (and
    the shift's expected rewards and regrets) of the factory meta-eval builds, number for number."""
    config = load_meta_config(run / "config.yaml")
    for k in range(config.eval.seeds):  # as adaptation_curves builds each seed's env
        seed = config.seed + EVAL_SEED_OFFSET + k
        tasks = task_batch(config.tasks, config.test_split, config.eval.tasks, config.seed, EVAL_SEED_OFFSET + k,
                           config.sessions)  # fmt: skip
        env = TaskBatchVectorEnv(tasks, config.eval.users_per_task, autoreset=False, item_stats=config.item_stats)
        meta = run_protocol(meta_eval_factories[method](env, seed), env, config.sessions, config.eval, seed)
        served = load_meta_recommender(run / "methods" / f"{method}.pt", env, seed)
        assert not isinstance(served, LoggedItemStats)  # the env logs the item statistics itself
        if method not in MEMORY_METHODS:
            assert (served.acting.num_tasks, served.acting.users) == (config.eval.tasks, config.eval.users_per_task)
        again = run_protocol(served, env, config.sessions, config.eval, seed)
        assert meta["session_return"].sum() > 0
        for key in ("session_return", "expected", "regret"):
            np.testing.assert_array_equal(again[key], meta[key])


def test_a_gradient_method_is_an_ab_arm_that_needs_replicates(run) -> None:
    values = {
        "arms": {"random": "random", "maml": str(run / "methods" / "maml.pt")}, "control": "random",
        "users": 24, "days": 2, "seed": 1, "torch_threads": 1, "replicates": 5,
        "env_kwargs": {"population": {"session_budget": 8.0}, "catalog": {"num_items": 200}},
    }  # fmt: skip
    results = run_abtest(validate_config(ABTestConfig, values), quiet=True)
    assert results["shared_state_arms"] == ["maml"] and results["unit"] == "replicate"
    assert np.isfinite(results["effects"]["maml"]["engagement"]["absolute"])
    with pytest.raises(ValueError, match=r"replicates: arm 'maml' .* learns one model from all its users"):
        run_abtest(validate_config(ABTestConfig, {**values, "replicates": 1}), quiet=True)


def _run_without(run: Path, tmp_path: Path, methods: list[str]) -> Path:
    """A copy of ``run`` whose config trained only ``methods`` (and their weights)."""
    copy = tmp_path / "partial"
    (copy / "methods").mkdir(parents=True)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**config, "methods": methods}))
    for name in methods:
        shutil.copy(run / "methods" / f"{name}.pt", copy / "methods" / f"{name}.pt")
    return copy


#: method, what the env changes, and the refusal (after "agent: METHOD of RUN ").
UNLIKE = [
    ("rl2", {"slate_size": 3}, "was trained on slates of 5; this env takes slates of 3"),
    ("maml", {"single_item": True, "slate_size": 1}, "was trained on slates of 5; this env takes one item per step"),
    ("maml", {"num_candidates": 30}, "was trained on 20 candidates per step; this env offers 30"),
    ("reptile", {"catalog": {"embedding_dim": 8}},
     "was trained on candidates of 17 features, plus the 3 item statistics it logs itself; this env's have 9"),
    ("rl2", {"history_length": 4}, "was trained on history of shape (10, 19); this env's has shape (4, 19)"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "env_kwargs", "message"), UNLIKE)
def test_an_env_unlike_the_runs_tasks_is_refused(run, population, method, env_kwargs, message, monkeypatch) -> None:
    env = _env(population, 4, **env_kwargs)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("weights loaded before the env was checked"))
    expected = f"agent: {method} of {run} {message}"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        make_recommender(str(run / "methods" / f"{method}.pt"), env, 0)


def test_a_method_the_run_did_not_train_or_a_missing_file_is_refused(run, tmp_path, population) -> None:
    env = _env(population, 4)
    partial = _run_without(run, tmp_path, ["rl2", "maml"])
    for name in ("reptile", "best"):
        weights = partial / "methods" / f"{name}.pt"
        expected = f"agent: {weights} names '{name}', which {partial} did not train (its methods: rl2, maml)"
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            make_recommender(str(weights), env, 0)  # a missing .pt goes to the meta loader, which says why
    (partial / "methods" / "maml.pt").unlink()
    weights = partial / "methods" / "maml.pt"
    expected = f"agent: {weights} is missing; {partial} trains 'maml': finish meta-train first"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        make_recommender(str(weights), env, 0)
    with pytest.raises(ValueError, match=r"^agent: .*model\.pt is not RUN/methods/METHOD\.pt of a meta-train run$"):
        make_recommender(str(tmp_path / "model.pt"), env, 0)
    assert sorted(p.name for p in partial.rglob("*")) == ["config.yaml", "methods", "rl2.pt"]  # nothing written


def test_a_gradient_method_is_refused_when_split_across_processes(run, population) -> None:
    env = _env(population, 4)
    recommender = load_meta_recommender(run / "methods" / "fomaml.pt", env, 0)
    expected = "agent: fomaml:tiny adapts one policy to all its users' data, so it serves in one process"
    ending = "; run it without --nproc, or meta-train it with gradient.adapt: user"
    with pytest.raises(ValueError, match=f"^{re.escape(expected + ending)}$"):
        recommender.place(Shard(8, 0, 4))
    recommender.place(None)  # one process: fine
    split = _env(population, 4, shard=(8, [0, 1, 2, 3]))  # the env of one process's users (metarec evaluate --nproc)
    with pytest.raises(ValueError, match=f"^{re.escape(expected.replace('fomaml:tiny', 'maml'))}"):
        load_meta_recommender(run / "methods" / "maml.pt", split, 0)
    assert isinstance(load_meta_recommender(run / "methods" / "rl2.pt", split, 0), LoggedItemStats)  # RL² splits
