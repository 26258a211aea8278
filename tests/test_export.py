"""``metarec export``: the exported file runs where metarec cannot be imported and shows the policy's own
deterministic slates: batched PPO, stable-baselines3, a gradient meta-learner's θ, and RL² with its memory
carried from step to step as inputs and outputs."""

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from metarec.agents.registry import make_recommender
from metarec.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = "metarec/DriftingUsers-v0"
USERS, STEPS = 6, 12

# Runs the exported file with metarec unimportable: torch.export's program, or onnxruntime's session.
RUNNER = r"""
import json, sys
sys.modules["metarec"] = None  # metarec cannot be imported here
try:
    import metarec  # noqa: F401
    raise SystemExit("metarec imported")
except ImportError:
    pass
import numpy as np
path, fmt, data, out = sys.argv[1:5]
steps = np.load(data)
names = json.loads(str(steps["names"]))
memory_names = json.loads(str(steps["memory"]))
memory = {name: steps["start_" + name] for name in memory_names}
if fmt == "torch-export":
    import torch
    program = torch.export.load(path).module()
    def call(inputs):
        return [t.numpy() for t in program(*[torch.from_numpy(inputs[n]) for n in names])]
else:
    import onnxruntime
    session = onnxruntime.InferenceSession(path)
    wanted = [i.name for i in session.get_inputs()]
    def call(inputs):
        return session.run(None, {n: inputs[n] for n in wanted})
slates = []
for t in range(int(steps["steps"])):
    inputs = {n: steps[f"{t}_{n}"] for n in names if n not in memory}
    inputs.update(memory)
    outputs = call(inputs)
    slates.append(outputs[1])
    memory = dict(zip(memory_names, outputs[2:]))
np.save(out, np.stack(slates))
"""


def rollout(agent, env, item_stats: bool, memory: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``STEPS`` steps of ``agent`` (greedy) on ``env``: every input the exported program takes at each step,
    and the slates the agent showed."""
    from metarec.meta.evaluate import LoggedItemStats

    observation, info = env.reset(seed=5)
    agent.reset()
    reward = torch.zeros(USERS)
    position = torch.full((USERS,), -1, dtype=torch.int64)
    data, slates = {}, []
    for t in range(STEPS):
        for key, value in observation.items():
            data[f"{t}_{key}"] = value.numpy()
        if item_stats:
            assert isinstance(agent, LoggedItemStats)
            ids = agent.grouped(observation["candidate_ids"].to(torch.int64))
            data[f"{t}_item_stats"] = agent.stats()[ids].numpy()
        if memory:
            data[f"{t}_reward"], data[f"{t}_chosen_position"] = reward.numpy(), position.numpy()
        slate = agent.act(observation, {**info, "active": torch.ones(USERS, dtype=torch.bool)})
        slates.append(slate.numpy())
        observation, reward, terminated, truncated, info = env.step(slate)
        agent.observe(reward, terminated | truncated, {**info, "active": torch.ones(USERS, dtype=torch.bool)})
        position = info["chosen_position"].to(torch.int64)
        assert not (terminated | truncated).any(), "a user left; the comparison assumes the same users throughout"
    return data, np.stack(slates)


def run_exported(path: Path, fmt: str, about: dict, module, data: dict, tmp_path: Path) -> np.ndarray:
    memory = [n for n in about["inputs"] if n in ("hidden", "last_slate", "inverse", "response", "shown")]
    start = {f"start_{name}": t.numpy() for name, t in module.initial_memory(USERS).items()} if memory else {}
    archive = tmp_path / f"{path.stem}-{fmt}.npz"
    np.savez(archive, names=json.dumps(about["inputs"]), memory=json.dumps(memory), steps=STEPS, **data, **start)
    out = tmp_path / f"{path.stem}-{fmt}-slates.npy"
    done = subprocess.run([sys.executable, "-c", RUNNER, str(path), fmt, str(archive), str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A batched-PPO run, an SB3 PPO run and a meta_tiny run (RL² with the belief, MAML)."""
    from metarec.agents.training import load_config, train
    from metarec.meta.config import load_meta_config
    from metarec.meta.train import meta_train

    base = tmp_path_factory.mktemp("runs")
    ppo = base / "ppo.yaml"
    ppo.write_text(yaml.safe_dump({"algo": "ppo", "env": ENV, "total_steps": 512, "seed": 2, "eval": {"users": 8},
                                   "ppo": {"num_envs": 32, "rollout_steps": 8, "hidden": 16}}))  # fmt: skip
    train(load_config(ppo, []), base / "ppo", progress=False)
    sb3 = base / "sb3.yaml"
    sb3.write_text(yaml.safe_dump({"algo": "sb3-ppo", "env": ENV, "total_steps": 128, "eval": {"users": 8},
                                   "sb3": {"num_envs": 8, "algo_kwargs": {"n_steps": 16, "batch_size": 32},
                                           "policy_kwargs": {"hidden": 16}}}))  # fmt: skip
    train(load_config(sb3, []), base / "sb3", progress=False)
    config = load_meta_config(ROOT / "configs" / "meta_tiny.yaml", ["methods=[rl2,icl,maml]", "torch_threads=null"])
    meta_train(config, base / "meta", progress=False)
    return {"ppo": base / "ppo", "sb3": base / "sb3", "maml": base / "meta" / "methods" / "maml.pt",
            "rl2": base / "meta" / "methods" / "rl2.pt"}  # fmt: skip


def users(**kwargs):
    # long sessions, so that no user leaves within the rollout
    return gym.make_vec(ENV, num_envs=USERS, vectorization_mode="vector_entry_point", array_backend="torch",
                        population={"session_budget": 1000.0}, **kwargs)  # fmt: skip


@pytest.mark.parametrize("fmt", ["torch-export", "onnx"])
@pytest.mark.parametrize("name", ["ppo", "sb3", "maml", "rl2"])
def test_the_exported_file_shows_the_policys_slates_without_metarec(name, fmt, runs, tmp_path, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxscript", reason="ONNX export needs the export extra (onnx, onnxscript)")
        pytest.importorskip("onnxruntime", reason="the ONNX file is run by onnxruntime (the export extra)")
    suffix = {"torch-export": ".pt2", "onnx": ".onnx"}[fmt]
    path = tmp_path / f"{name}{suffix}"
    argv = ["export", str(runs[name]), "--format", fmt, "--out", str(path), "--batch", str(USERS), "--json",
            "--env-kwargs", json.dumps({"population": {"session_budget": 1000.0}})]  # fmt: skip
    assert main(argv) == 0
    about = json.loads(capsys.readouterr().out)
    assert about["out"] == str(path) and about["kind"] == ("rl2" if name == "rl2" else "slate-scorer")
    from metarec.agents.export import exportable, with_item_stats

    env = users()
    agent = make_recommender(str(runs[name]), env, 0)
    module = exportable(agent, env)
    inner = getattr(agent, "inner", agent)
    if name == "rl2":
        inner.deterministic = True  # the exported step is the greedy one
    item_stats = "item_stats" in about["inputs"]
    assert item_stats == (name in ("rl2", "maml"))  # meta_tiny's methods read the population's item statistics
    data, expected = rollout(agent, env, item_stats, memory=name == "rl2")
    if name == "maml":  # the exported θ against θ's own most probable slates on the same inputs
        theta = inner.learner.module
        keys = sorted(env.single_observation_space.spaces)
        expected = []
        for t in range(STEPS):
            observation = {key: torch.from_numpy(data[f"{t}_{key}"]) for key in keys}
            stats = torch.from_numpy(data[f"{t}_item_stats"])
            observation["candidates"] = with_item_stats(observation["candidates"], stats)
            with torch.no_grad():
                expected.append(torch.topk(theta(observation)[0], theta.slate_size, dim=-1).indices.numpy())
        expected = np.stack(expected)
    got = run_exported(path, fmt, about, module, data, tmp_path)
    assert got.shape == expected.shape == (STEPS, USERS, 5)
    np.testing.assert_array_equal(got, expected)


def test_bad_export_requests_are_refused_before_anything_is_written(runs, tmp_path, capsys):
    cases = [
        (["--format", "onnx", "--out", str(tmp_path / "x.pt2")], "out: expected a name ending in .onnx"),
        (["--format", "torch-export", "--out", str(tmp_path / "x.pt2"), "--env", "metarec/RecSimInterestEvolution-v0"],
         "agent:"),
    ]
    for extra, message in cases:
        assert main(["export", str(runs["ppo"]), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    (tmp_path / "taken.pt2").write_bytes(b"not mine")
    assert main(["export", str(runs["ppo"]), "--format", "torch-export", "--out", str(tmp_path / "taken.pt2")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "taken.pt2").read_bytes() == b"not mine"
    assert main(["export", str(tmp_path / "nope"), "--format", "state-dict", "--out", str(tmp_path / "w.pt")]) == 2
    assert "run: " in capsys.readouterr().err
    icl = runs["rl2"].parent / "icl.pt"
    assert main(["export", str(icl), "--format", "torch-export", "--out", str(tmp_path / "icl.pt2")]) == 2
    assert "run: InContextPolicy keeps another memory than RL²'s; it does not export yet" in capsys.readouterr().err
    assert not (tmp_path / "icl.pt2").exists()


def test_export_leaves_the_recommender_as_it_was_and_takes_a_batch_of_one(runs, tmp_path):
    from metarec.agents.export import export

    env = users()
    agent = make_recommender(str(runs["ppo"]), env, 0)
    agent.policy.train()
    before = {name: p.requires_grad for name, p in agent.policy.named_parameters()}
    about = export(agent, env, tmp_path / "one.pt2", "torch-export", batch=1)
    assert about["batch"] == "dynamic" and agent.policy.training
    assert {name: p.requires_grad for name, p in agent.policy.named_parameters()} == before
    program = torch.export.load(tmp_path / "one.pt2").module()
    observation, _ = env.reset(seed=1)
    keys = sorted(env.single_observation_space.spaces)
    for batch in (1, 3):
        scores, slate = program(*[observation[key][:batch] for key in keys])
        assert slate.shape == (batch, 5) and scores.shape == (batch, 20)


def test_a_state_dict_export_holds_weights_only(runs, tmp_path):
    path = tmp_path / "rl2.pt"
    assert main(["export", str(runs["rl2"]), "--format", "state-dict", "--out", str(path)]) == 0
    saved = torch.load(path, weights_only=True)
    about = json.loads(saved["about"])
    assert about["kind"] == "rl2" and "policy.cell.weight_ih" in saved["state_dict"]
