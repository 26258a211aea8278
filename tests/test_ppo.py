"""metarec's batched PPO and the ``metarec train`` driver: learning, determinism, exact resume,
TensorBoard tags, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest
import torch
import yaml

import metarec  # noqa: F401
from metarec.agents.evaluation import evaluate
from metarec.agents.ppo import BatchedPPO, PPOConfig
from metarec.agents.training import load_config, train
from metarec.cli import main
from metarec.runs import load_checkpoint

LTS = "metarec/RecSimLongTermSatisfaction-v0"


def make_ppo(num_envs: int = 64, seed: int = 0, env_id: str = LTS, **overrides: object) -> BatchedPPO:
    env = gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", array_backend="torch", ground_truth=False
    )
    config = PPOConfig(num_envs=num_envs, rollout_steps=16, hidden=32, history_encoder="mlp", **overrides)
    return BatchedPPO(env, config, seed=seed, total_steps=100_000)


def flat_params(ppo: BatchedPPO) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in ppo.policy.parameters()])


def test_ppo_learns_long_term_satisfaction() -> None:
    torch.set_num_threads(1)
    ppo = make_ppo(num_envs=256, learning_rate=1e-3, ent_coef=0.0)
    ppo.train(60_000)
    trained = evaluate(LTS, ppo.recommender(), users=400, seed=99)
    random = evaluate(LTS, "random", users=400, seed=99)
    assert trained["ci95"][0] > random["ci95"][1] + 30


def test_same_seed_same_weights_and_other_seed_differs() -> None:
    runs = []
    for seed in (0, 0, 1):
        ppo = make_ppo(seed=seed)
        ppo.train(3 * 64 * 16)
        runs.append(flat_params(ppo))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_resume_from_state_dict_continues_exactly(tmp_path: Path) -> None:
    straight = make_ppo(env_id="metarec/DriftingUsers-v0")
    straight.train(4 * 64 * 16)

    first = make_ppo(env_id="metarec/DriftingUsers-v0")
    first.train(2 * 64 * 16)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    del first
    resumed = make_ppo(env_id="metarec/DriftingUsers-v0", seed=123)  # a different seed: all state comes from disk
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))  # plain tensors and containers
    resumed.train(4 * 64 * 16)
    assert resumed.global_step == straight.global_step
    assert torch.equal(flat_params(resumed), flat_params(straight))
    for key, value in straight.observation.items():
        assert torch.equal(resumed.observation[key], value)


def test_config_mismatches_are_named() -> None:
    env = gym.make_vec(LTS, num_envs=8, vectorization_mode="vector_entry_point", array_backend="torch")
    with pytest.raises(ValueError, match="num_envs"):
        BatchedPPO(env, PPOConfig(num_envs=16), seed=0, total_steps=10)
    with pytest.raises(ValueError, match="num_minibatches"):
        BatchedPPO(env, PPOConfig(num_envs=8, rollout_steps=3, num_minibatches=5), seed=0, total_steps=10)
    no_reset = gym.make_vec(
        LTS, num_envs=8, vectorization_mode="vector_entry_point", array_backend="torch", autoreset=False
    )
    with pytest.raises(ValueError, match="autoreset"):
        BatchedPPO(no_reset, PPOConfig(num_envs=8), seed=0, total_steps=10)


def write_config(path: Path, **overrides: object) -> Path:
    config = {
        "algo": "ppo",
        "env": "metarec/DriftingUsers-v0",
        "total_steps": 4 * 32 * 8,
        "seed": 3,
        "checkpoint_every": 32 * 8,
        "ppo": {"num_envs": 32, "rollout_steps": 8, "hidden": 16, "history_encoder": "gru"},
        "eval": {"users": 16, "every_steps": 2 * 32 * 8},
    }
    for key, value in overrides.items():
        config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_writes_results_tensorboard_and_a_loadable_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--quiet", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    assert printed["mean_return"] == results["mean_return"] and results["env_steps"] == 4 * 32 * 8
    assert results["requested_env_steps"] == 4 * 32 * 8 and "steps_note" not in results
    assert set(results["references"]) == {"random", "oracle"} and "normalised_return" in results
    events = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"charts/episode_return", "charts/ctr", "charts/steps_per_second", "losses/policy_loss"}
    expected |= {
        "losses/value_loss",
        "losses/entropy",
        "losses/approx_kl",
        "eval/mean_return",
        "eval/normalised_return",
    }
    assert expected <= scalars
    assert any("hyperparameters" in tag for tag in events.Tags()["tensors"])
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "model.pt").is_file()
    # The run directory is an agent.
    assert main(["evaluate", "--env", "metarec/DriftingUsers-v0", "--agent", str(out), "--users", "20", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["agent"] == "ppo:run" and evaluated["users"] == 20
    # Another environment takes it only if its spaces are the same.
    assert evaluate("metarec/DriftingUsersMultiSession-v0", str(out), users=4)["agent"] == "ppo:run"
    with pytest.raises(ValueError, match="trained on metarec/DriftingUsers-v0, whose observation or action space"):
        evaluate("metarec/RecSimInterestEvolution-v0", str(out), users=4)


def test_a_run_says_when_it_did_other_steps_than_asked_and_when_no_score_is_defined(tmp_path, capsys) -> None:
    from metarec.agents.training.config import normalisation_note, normalised

    config = write_config(tmp_path / "odd.yaml", total_steps=3 * 32 * 8 + 5)  # not whole rollouts of 32 x 8
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["env_steps"] == 4 * 32 * 8 and printed["requested_env_steps"] == 3 * 32 * 8 + 5
    assert ("metarec train: ran 1,024 env steps (773 asked): training runs whole rollouts of ppo.num_envs x "
            "ppo.rollout_steps = 256 env steps") in captured.err  # fmt: skip
    # where the oracle does not beat random, the scale means nothing: no score, and a reason
    below = {"random": {"mean_return": 57.7}, "oracle": {"mean_return": 28.1}}
    assert normalised(40.0, below) is None
    assert normalisation_note(below) == ("undefined: the myopic oracle's return (28.1) is not above random's (57.7) "
                                         "on this env, so compare mean_return itself")  # fmt: skip
    above = {"random": {"mean_return": 10.0}, "oracle": {"mean_return": 20.0}}
    assert normalised(15.0, above) == 0.5 and normalisation_note(above) is None


def test_killed_run_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write_config(tmp_path / "tiny.yaml", eval={"users": 4}))
    train(config, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    original = BatchedPPO.learn

    def dying_learn(self: BatchedPPO, rollout: dict) -> dict:
        calls["n"] += 1
        if calls["n"] == 3:  # killed in the middle of the third update (after 2 checkpoints)
            raise KeyboardInterrupt
        return original(self, rollout)

    monkeypatch.setattr(BatchedPPO, "learn", dying_learn)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", progress=False)
    monkeypatch.setattr(BatchedPPO, "learn", original)
    assert not (tmp_path / "killed" / "model.pt").exists()
    with pytest.raises(ValueError, match="--resume"):
        train(config, tmp_path / "killed", progress=False)
    train(config, tmp_path / "killed", resume=True, progress=False)
    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["policy"]
    resumed = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["policy"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    other = load_config(write_config(tmp_path / "other.yaml", seed=4, eval={"users": 4}))
    with pytest.raises(ValueError, match="differs"):
        train(other, tmp_path / "killed", resume=True, progress=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ppo.learning_rat=0.1"], "ppo.learning_rat: unknown field"),
        (["ppo.learning_rate=-1"], "ppo.learning_rate: Input should be greater than 0"),
        (["ppo.num_envs=many"], "ppo.num_envs: Input should be a valid integer"),
        (["algo=dqn"], "algo: Input should be"),
        (["env=CartPole-v1"], "env: Value error, expected one of"),
        (["total_steps"], "--set: expected KEY=VALUE"),
    ],
)
def test_bad_config_stops_before_any_work_naming_the_key(tmp_path: Path, overrides: list[str], message: str) -> None:
    config = write_config(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_config(config, overrides)
    code = main(["train", str(config), "--out", str(tmp_path / "never"), *[f"--set={o}" for o in overrides]])
    assert code == 2 and not (tmp_path / "never").exists()


def test_shipped_configs_validate() -> None:
    configs = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert {c.name for c in configs} >= {"ppo_recsim_ie.yaml", "ppo_recsim_lts.yaml", "ppo_drifting.yaml"}
    for path in configs:
        if not path.name.startswith(
            ("abtest_", "meta_")
        ):  # tested in test_abtest_runner / test_meta_tasks / test_meta_rl
            load_config(path)


def test_sigterm_checkpoints_the_last_update_and_resume_ends_where_a_straight_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal
    import threading

    from metarec.parallel import TrainingInterrupted

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    config = load_config(write_config(tmp_path / "tiny.yaml", eval={"users": 4}, checkpoint_every=10**9))
    train(config, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    original = BatchedPPO.learn

    def signalled_learn(self: BatchedPPO, rollout: dict) -> dict:
        calls["n"] += 1
        if calls["n"] == 2:  # a SIGTERM arrives in the middle of the second update
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, rollout)

    monkeypatch.setattr(BatchedPPO, "learn", signalled_learn)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at env step"):
        train(config, tmp_path / "stopped", progress=False)
    monkeypatch.setattr(BatchedPPO, "learn", original)
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")  # its digest checked
    assert calls["n"] == 2 and saved["global_step"] == 2 * config.ppo.num_envs * config.ppo.rollout_steps
    assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back
    train(config, tmp_path / "stopped", resume=True, progress=False)
    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["policy"]
    resumed = torch.load(tmp_path / "stopped" / "model.pt", weights_only=True)["policy"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_nan_guard_names_where_it_arose() -> None:
    ppo = make_ppo(num_envs=8, env_id="metarec/DriftingUsers-v0")
    rollout = ppo.collect()
    rollout["returns"][3, 2] = float("nan")  # as a broken simulator would hand over
    with pytest.raises(FloatingPointError, match=r"the rollout's returns is NaN or infinite at update 1"):
        ppo.learn(rollout)

    rollout = ppo.collect()
    with torch.no_grad():
        next(ppo.policy.parameters()).fill_(float("inf"))  # weights gone bad mid-run
    with pytest.raises(FloatingPointError, match=r"a minibatch's \w+ is NaN or infinite"):
        ppo.learn(rollout)


def test_two_gloo_processes_train_the_parameters_of_one(tmp_path: Path) -> None:
    """Batched PPO split across two processes (each a block of the users, the gradients summed) ends
    where one process with the same users, draws and minibatches does (keyed_resets: newcomers are
    drawn for every row each step, as the split run must); the evaluation is split too."""
    env_kwargs = {"population": {"session_budget": 6.0}}  # users finish and are replaced within the run
    config = load_config(write_config(tmp_path / "tiny.yaml", env_kwargs={**env_kwargs, "keyed_resets": True},
                                      eval={"users": 24, "every_steps": 0}))  # fmt: skip
    one = train(config, tmp_path / "one", progress=False)
    two = train(config, tmp_path / "two", progress=False, nproc=2)
    assert (one["processes"], two["processes"]) == (1, 2)
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["policy"]
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["policy"]
    moved = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved < 1e-5, moved
    assert two["env_steps"] == one["env_steps"] and abs(two["mean_return"] - one["mean_return"]) < 1e-3
    with pytest.raises(ValueError, match=r"ppo\.num_envs: must divide among 3 processes, got 32"):
        train(config, tmp_path / "three", progress=False, nproc=3)
    with pytest.raises(ValueError, match="nproc: only algo ppo"):
        train(load_config(write_config(tmp_path / "sb3.yaml", algo="sb3-ppo")), tmp_path / "sb3", nproc=2)
