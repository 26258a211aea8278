"""``metarec train`` with stable-baselines3 algorithms: run directories, resume, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import metarec  # noqa: F401
from metarec.agents.evaluation import evaluate
from metarec.agents.training import load_config, train

pytest.importorskip("stable_baselines3")


def config_file(path: Path, algo: str, env: str, **algo_kwargs: object) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "algo": algo,
                "env": env,
                "total_steps": 1024,
                "seed": 0,
                "checkpoint_every": 256,
                "sb3": {
                    "num_envs": 4,
                    "algo_kwargs": algo_kwargs,
                    "policy_kwargs": {"hidden": 8, "history_encoder": "mlp"},
                },
                "eval": {"users": 8},
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("algo", "env", "algo_kwargs"),
    [
        ("sb3-ppo", "metarec/DriftingUsers-v0", {"n_steps": 64, "batch_size": 128, "n_epochs": 1}),
        ("sb3-a2c", "metarec/RecSimLongTermSatisfaction-v0", {"n_steps": 8}),
        ("sb3-dqn", "metarec/DriftingUsersSingle-v0", {"learning_starts": 128, "buffer_size": 2000}),
    ],
)
def test_sb3_run_directory_is_an_agent(tmp_path: Path, algo: str, env: str, algo_kwargs: dict) -> None:
    config = load_config(config_file(tmp_path / "c.yaml", algo, env, **algo_kwargs))
    results = train(config, tmp_path / "run", progress=False)
    assert results["env_steps"] >= 1024 and results["algo"] == algo
    assert json.loads((tmp_path / "run" / "results.json").read_text())["mean_return"] == results["mean_return"]
    assert (tmp_path / "run" / "checkpoints" / "last.zip").is_file()
    evaluated = evaluate(env, str(tmp_path / "run"), users=6, seed=1)
    assert evaluated["agent"] == f"{algo}:run" and evaluated["users"] == 6


def test_sb3_resume_continues_from_the_checkpoint_step(tmp_path: Path) -> None:
    path = config_file(
        tmp_path / "c.yaml", "sb3-dqn", "metarec/DriftingUsersSingle-v0", learning_starts=64, buffer_size=4000
    )
    train(load_config(path), tmp_path / "run", progress=False)
    longer = load_config(path, ["total_steps=2048"])
    with pytest.raises(ValueError, match="differs"):
        train(longer, tmp_path / "run", resume=True, progress=False)
    # A run whose config was changed on purpose (agents/training/run.py refuses an SB3 resume without config.yaml).
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({**saved, "total_steps": 2048}))
    results = train(longer, tmp_path / "run", resume=True, progress=False)
    assert results["env_steps"] >= 2048
    assert (tmp_path / "run" / "checkpoints" / "replay.npz").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "replay.pkl").exists()  # never a pickle


def test_sb3_sigterm_writes_a_checkpoint_and_the_run_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import threading
    import zipfile

    from metarec.agents.sb3 import RecommenderMetricsCallback
    from metarec.parallel import TrainingInterrupted

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    path = config_file(
        tmp_path / "c.yaml", "sb3-dqn", "metarec/DriftingUsersSingle-v0", learning_starts=64, buffer_size=2000
    )
    calls = {"n": 0}
    original = RecommenderMetricsCallback._on_step

    def signalled(self: RecommenderMetricsCallback) -> bool:
        calls["n"] += 1
        if calls["n"] == 40:  # 40 vector steps of 4 users: 160 env steps, before the first scheduled checkpoint
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(RecommenderMetricsCallback, "_on_step", signalled)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at env step 160"):
        train(load_config(path), tmp_path / "run", progress=False)
    monkeypatch.setattr(RecommenderMetricsCallback, "_on_step", original)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.zip"
    assert zipfile.is_zipfile(checkpoint) and (tmp_path / "run" / "checkpoints" / "replay.npz").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "replay.pkl").exists()
    assert not (tmp_path / "run" / "model.zip").exists()
    results = train(load_config(path), tmp_path / "run", resume=True, progress=False)
    assert results["env_steps"] >= 1024 and (tmp_path / "run" / "model.zip").is_file()
