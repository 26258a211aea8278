"""Nothing loaded from an SB3 run directory runs code: weights only (``weights_only=True``), plain JSON numbers
and plain arrays (``allow_pickle=False``), never pickle."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import pickle
import shutil
import signal
import threading
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import metarec  # noqa: F401
from metarec.agents.evaluation import evaluate
from metarec.agents.training import load_config, train
from metarec.cli import main

pytest.importorskip("stable_baselines3")

ENV = "metarec/DriftingUsersSingle-v0"
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def config_file(path: Path, total_steps: int = 256, buffer_size: int = 400) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "algo": "sb3-dqn",
                "env": ENV,
                "total_steps": total_steps,
                "seed": 0,
                "checkpoint_every": 256,
                "sb3": {
                    "num_envs": 4,
                    "algo_kwargs": {"learning_starts": 64, "buffer_size": buffer_size},
                    "policy_kwargs": {"hidden": 8, "history_encoder": "mlp"},
                },
                "eval": {"users": 4},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny DQN run (copy it before changing it)."""
    root = tmp_path_factory.mktemp("safe")
    train(load_config(config_file(root / "c.yaml")), root / "run", progress=False)
    return root / "run"


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def rewrite_zip(path: Path, change: dict[str, bytes | None]) -> None:
    """Rewrites the zip ``path`` with its entries replaced (bytes) or dropped (None) as ``change`` says."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    for name, data in change.items():
        if data is None:
            entries.pop(name, None)
        else:
            entries[name] = data
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


class Exploit:
    """Unpickling this touches ``marker``: what a crafted ``:serialized:`` value could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def exploit_payload(marker: Path) -> str:
    return base64.b64encode(pickle.dumps(Exploit(marker))).decode()


def test_a_crafted_model_zip_runs_no_code_under_evaluate(trained_run: Path, tmp_path: Path, capsys) -> None:
    control, marker = tmp_path / "control", tmp_path / "pwned"
    pickle.loads(base64.b64decode(exploit_payload(control)))  # the payload is live: unpickling it runs code
    assert control.exists()
    run = copy_run(trained_run, tmp_path)
    with zipfile.ZipFile(run / "model.zip") as archive:
        data = json.loads(archive.read("data"))
    for key in ("policy_class", "exploit"):  # an entry SB3 always decodes, and one it has never seen
        data[key] = {":type:": "<class 'object'>", ":serialized:": exploit_payload(marker)}
    rewrite_zip(run / "model.zip", {"data": json.dumps(data).encode()})

    try:
        code = main(["evaluate", "--env", ENV, "--agent", str(run), "--users", "4", "--json"])
    finally:  # checked first: a loader that unpickles may also fail afterwards, on what the payload returned
        assert not marker.exists(), "loading the run directory unpickled its model.zip"
    assert code == 0
    assert json.loads(capsys.readouterr().out)["agent"] == "sb3-dqn:run"


def test_the_safe_load_has_the_weights_sb3_saved(trained_run: Path) -> None:
    from stable_baselines3 import DQN

    from metarec.agents.training import load_recommender

    env = gym.make_vec(ENV, num_envs=2, vectorization_mode="vector_entry_point", array_backend="torch")
    loaded = load_recommender(trained_run, env).model
    reference = DQN.load(trained_run / "model.zip", device="cpu")  # our own file: SB3's load as the reference
    expected = reference.policy.state_dict()
    assert loaded.policy.state_dict().keys() == expected.keys()
    for key, value in loaded.policy.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert loaded.exploration_rate == reference.exploration_rate


def broken_run(trained_run: Path, tmp_path: Path, kind: str) -> Path:
    run = copy_run(trained_run, tmp_path)
    if kind == "no policy.pth":
        rewrite_zip(run / "model.zip", {"policy.pth": None})
    elif kind == "weights that do not fit":
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["sb3"]["policy_kwargs"]["hidden"] = 16
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    else:  # a policy.pth that is a pickle of something other than tensors
        rewrite_zip(run / "model.zip", {"policy.pth": pickle.dumps(Exploit(tmp_path / "pwned"), protocol=2)})
    return run


@pytest.mark.parametrize("kind", ["no policy.pth", "weights that do not fit", "pickle in policy.pth"])
def test_a_model_zip_without_usable_weights_is_a_one_line_error(trained_run: Path, tmp_path: Path, kind: str) -> None:
    run = broken_run(trained_run, tmp_path, kind)
    with pytest.raises(ValueError) as caught:
        evaluate(ENV, str(run), users=2, seed=0)
    message = str(caught.value)
    assert str(run / "model.zip") in message and "policy.pth" in message
    assert "\n" not in message
    assert not (tmp_path / "pwned").exists()


def buffer_contents(buffer: Any) -> dict[str, np.ndarray]:
    """Copies of every array of an SB3 (Dict)ReplayBuffer, with its position and fullness."""
    contents = {"pos": np.asarray(buffer.pos), "full": np.asarray(buffer.full)}
    for name in BUFFER_ARRAYS:
        value = getattr(buffer, name)
        if isinstance(value, dict):
            contents.update({f"{name}/{key}": np.array(array) for key, array in value.items()})
        else:
            contents[name] = np.array(value)
    return contents


def test_a_resumed_dqn_run_has_the_replay_buffer_it_was_interrupted_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metarec.agents.sb3 import RecommenderMetricsCallback
    from metarec.parallel import TrainingInterrupted

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    path = config_file(tmp_path / "c.yaml", total_steps=512, buffer_size=2000)
    original = RecommenderMetricsCallback._on_step
    seen: dict[str, dict[str, np.ndarray]] = {}
    calls = {"n": 0}

    def interrupted(self: RecommenderMetricsCallback) -> bool:
        calls["n"] += 1
        if calls["n"] == 40:  # 160 env steps, before the first scheduled checkpoint; nothing is stored after it
            seen["before"] = buffer_contents(self.model.replay_buffer)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    def resumed(self: RecommenderMetricsCallback) -> bool:
        # The first step of the resumed run: the transition it made is stored after the callbacks.
        seen.setdefault("after", buffer_contents(self.model.replay_buffer))
        return original(self)

    monkeypatch.setattr(RecommenderMetricsCallback, "_on_step", interrupted)
    with pytest.raises(TrainingInterrupted, match="at env step 160"):
        train(load_config(path), tmp_path / "run", progress=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not (checkpoints / "replay.pkl").exists()
    with np.load(checkpoints / "replay.npz", allow_pickle=False) as saved:  # plain arrays, no objects
        assert int(saved["pos"]) == int(seen["before"]["pos"]) > 0

    monkeypatch.setattr(RecommenderMetricsCallback, "_on_step", resumed)
    results = train(load_config(path), tmp_path / "run", resume=True, progress=False)
    assert results["env_steps"] >= 512
    before, after = seen["before"], seen["after"]
    assert before.keys() == after.keys() and {"observations/candidates", "next_observations/candidates"} <= set(after)
    for name, array in before.items():
        assert after[name].dtype == array.dtype and np.array_equal(after[name], array), name
    assert before["rewards"].any() and before["observations/candidates"].any()
