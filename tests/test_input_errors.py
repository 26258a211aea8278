"""Bad input is one line that names the field and what was expected, before any work starts; nothing
hangs, crashes with a traceback or allocates until the machine runs out of memory."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from metarec.abtest.config import ABTestConfig
from metarec.agents.evaluation import evaluate
from metarec.agents.training import TrainConfig, load_config
from metarec.cli import main
from metarec.config import load_yaml_config, validate_config
from metarec.envs.calibrated import load_population, save_population
from metarec.envs.drifting.model import make_world
from metarec.envs.drifting.params import SimulatorConfig
from metarec.resources import ENV_VAR, check_memory

TINY_TRAIN = "algo: ppo\nenv: metarec/DriftingUsers-v0\ntotal_steps: 64\nppo: {num_envs: 4, rollout_steps: 4}\n"
TINY_ABTEST = "env: metarec/DriftingUsers-v0\narms: {control: random, treatment: oracle}\nusers: 20\ndays: 1\n"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``metarec ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as stop:
            rc = stop.code if isinstance(stop.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def billion_laughs(depth: int, width: int = 9) -> str:
    """A small YAML document whose aliases expand to ``width ** depth`` strings."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, depth + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# --- the YAML loader ------------------------------------------------------------------------------------


def test_yaml_aliases_are_refused_with_their_line(tmp_path):
    body = "algo: ppo\nenv: metarec/DriftingUsers-v0\ntotal_steps: 64\nenv_kwargs:\n" + "".join(
        f"  {line}\n" for line in billion_laughs(9).splitlines()
    )
    assert len(body) < 1100  # about 1 KB, 9**10 strings once expanded
    path = write(tmp_path / "laughs.yaml", body)
    with pytest.raises(ValueError, match=r"line 5: YAML aliases \(&anchor/\*alias\) are not supported") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_an_expanding_value_is_shown_shortened(tmp_path):
    """validate_config reprs no more than a line of a value, however far it expands."""
    import yaml

    shared = yaml.safe_load(billion_laughs(6))["l6"]  # 9**7 strings behind one shared list
    with pytest.raises(ValueError, match="total_steps: Input should be a valid integer") as info:
        validate_config(TrainConfig, {"algo": "ppo", "env": "metarec/DriftingUsers-v0", "total_steps": shared})
    assert len(str(info.value)) < 300
    with pytest.raises(ValueError) as info:
        validate_config(TrainConfig, {"algo": "ppo", "env": "metarec/DriftingUsers-v0", "total_steps": "x" * 10**6})
    assert len(str(info.value)) < 300


def test_a_key_given_twice_is_named_with_its_lines(tmp_path):
    path = write(tmp_path / "dup.yaml", TINY_TRAIN + "seed: 1\ntotal_steps: 128\n")
    with pytest.raises(ValueError, match=r"dup\.yaml line 6: duplicate key 'total_steps' \(first at line 3\)"):
        load_config(path)


def test_a_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path):
    path = write(tmp_path / "broken.yaml", "algo: ppo\nenv: [metarec/DriftingUsers-v0\ntotal_steps: 64\n")
    with pytest.raises(ValueError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"config: {path} line ") and "\n" not in message
    rc, _, err = run_cli(["train", str(path), "--out", str(tmp_path / "run")])
    assert rc == 2
    assert_one_line_error(err, "metarec train: error: config:", "broken.yaml line")


def test_a_bad_set_value_is_one_line(tmp_path):
    path = write(tmp_path / "c.yaml", TINY_TRAIN)
    with pytest.raises(ValueError, match=r"--set 'seed=\[1' line 1: expected ',' or '\]'") as info:
        load_config(path, ["seed=[1"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["true", "false"])
def test_a_bool_is_not_an_integer(tmp_path, value):
    path = write(tmp_path / "c.yaml", TINY_TRAIN.replace("total_steps: 64", f"total_steps: {value}"))
    with pytest.raises(ValueError, match="total_steps: Input should be a number, not a bool"):
        load_config(path)
    with pytest.raises(ValueError, match="users: Input should be a number, not a bool"):
        load_yaml_config(ABTestConfig, write(tmp_path / "ab.yaml", TINY_ABTEST), [f"users={value}"])
    with pytest.raises(ValueError, match=r"ppo\.learning_rate: Input should be a number, not a bool"):
        load_config(write(tmp_path / "c2.yaml", TINY_TRAIN), [f"ppo.learning_rate={value}"])


def test_bools_still_go_where_bools_are_expected(tmp_path):
    config = load_yaml_config(ABTestConfig, write(tmp_path / "ab.yaml", TINY_ABTEST), ["cuped=false", "aa=true"])
    assert config.cuped is False and config.aa is True


# --- sizes that cannot fit -----------------------------------------------------------------------------


def test_a_batch_of_1e12_users_is_refused_before_allocating(tmp_path):
    with pytest.raises(ValueError, match=r"num_envs: 1000000000000 users need about .* GiB, more than"):
        gym.make_vec(
            "metarec/DriftingUsers-v0", num_envs=10**12, vectorization_mode="vector_entry_point", array_backend="torch"
        )
    with pytest.raises(ValueError, match=r"users: 1000000000000 users need about"):
        evaluate("metarec/DriftingUsers-v0", "random", 10**12)
    path = write(tmp_path / "c.yaml", TINY_TRAIN)
    for key in ("ppo.num_envs", "sb3.num_envs", "eval.users"):
        with pytest.raises(ValueError, match=re.escape(key) + r": .*1000000000000 users need about"):
            load_config(path, [f"{key}=1000000000000"])
    with pytest.raises(ValueError, match=r"users: .*1000000000000 users need about"):
        load_yaml_config(ABTestConfig, write(tmp_path / "ab.yaml", TINY_ABTEST), ["users=1000000000000"])


def test_evaluate_refuses_more_users_than_the_memory_limit(monkeypatch, tmp_path):
    """``metarec evaluate --users 50000000`` used to allocate until the machine ran out of memory."""
    monkeypatch.setenv(ENV_VAR, "4")
    rc, out, err = run_cli(
        ["evaluate", "--env", "metarec/DriftingUsers-v0", "--agent", "random", "--users", "50000000"]
    )
    assert rc == 2 and out == ""
    assert_one_line_error(err, "users: 50000000 users need about", f"more than {ENV_VAR}'s 4 GiB", ENV_VAR)
    # the estimate comes from the observation space: 50k users of 20 KB each are ~1 GiB
    with pytest.raises(ValueError, match=r"users: 50000 users need about [\d.]+ GiB, more than the memory limit 0\.5"):
        evaluate("metarec/DriftingUsers-v0", "random", 50_000, memory_limit_gib=0.5)
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(ValueError, match=f"{ENV_VAR}: expected a positive number of GiB"):
        evaluate("metarec/DriftingUsers-v0", "random", 50_000_000)


def test_the_memory_limit_can_be_raised():
    check_memory("users", 10**6, 1024, limit_gib=1.0)  # 0.95 GiB: fits
    expected = r"users: 2000000 users need about 1\.91 GiB, more than the memory limit 1 GiB"
    with pytest.raises(ValueError, match=expected):
        check_memory("users", 2 * 10**6, 1024, limit_gib=1.0)


# --- corrupt files, failed writes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> Path:
    config = SimulatorConfig()
    world = make_world(config)
    world["cluster_weight"] = np.full(config.population.num_clusters, 1 / config.population.num_clusters)
    return save_population(tmp_path_factory.mktemp("pop") / "population", config, world)


@pytest.mark.parametrize("damage", ["truncated", "random", "npy", "zip-like", "header", "huge-shape"])
def test_a_corrupt_world_npz_is_a_value_error_naming_the_file(population, tmp_path, damage):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "population.json").write_bytes((population / "population.json").read_bytes())
    data = (population / "world.npz").read_bytes()
    if damage == "truncated":
        (bad / "world.npz").write_bytes(data[: len(data) // 2])
    elif damage == "random":
        (bad / "world.npz").write_bytes(np.random.default_rng(0).bytes(1000))
    elif damage == "npy":
        np.save(bad / "world.npy", np.arange(3))
        (bad / "world.npy").rename(bad / "world.npz")
    elif damage == "header":  # a NUL in the first array's header: numpy's header parser fails
        (bad / "world.npz").write_bytes(data[:128] + b"\x00" + data[129:])
    elif damage == "huge-shape":  # the header declares far more data than the file holds
        huge = data.replace(b"(1000, 16), }" + b" " * 10, b"(99999999999999, 16), }", 1)
        assert huge != data
        (bad / "world.npz").write_bytes(huge)
    else:
        (bad / "world.npz").write_bytes(b"PK\x03\x04" + data[4:2000])
    with pytest.raises(ValueError, match=rf"population: {bad / 'world.npz'} is not a readable \.npz"):
        load_population(bad)
    config = write(tmp_path / "c.yaml", TINY_TRAIN.replace("DriftingUsers", "Calibrated"))
    argv = ["train", str(config), "--out", str(tmp_path / "run"), "--set", f"env_kwargs.population={bad}"]
    rc, _, err = run_cli(argv)
    assert rc == 2
    assert_one_line_error(err, "world.npz is not a readable .npz")
    assert not (tmp_path / "run").exists()


def test_a_population_json_that_is_not_an_object_is_named(population, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "world.npz").write_bytes((population / "world.npz").read_bytes())
    (bad / "population.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"population\.json has format 'list'"):
        load_population(bad)


def test_a_write_failure_is_one_line_and_exit_code_1(tmp_path, monkeypatch):
    config = write(tmp_path / "c.yaml", TINY_TRAIN + "eval: {users: 8}\ncheckpoint_every: 16\n")
    blocker = write(tmp_path / "a-file", "")
    rc, _, err = run_cli(["train", str(config), "--out", str(blocker / "run"), "--quiet"])
    assert rc in (1, 2)  # refused before the run starts (bad --out) or when it writes
    assert_one_line_error(err, "metarec train: error:", "cannot write", "a-file")

    replace = os.replace

    def refuse_checkpoints(src, dst):  # the run directory turns read-only once the run has started
        if Path(dst).parent.name == "checkpoints" or Path(dst).name.startswith("model"):
            raise PermissionError(13, "Permission denied", str(dst))
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_checkpoints)
    rc, _, err = run_cli(["train", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 1
    assert_one_line_error(err, "metarec train: error: cannot write", "Permission denied")


# --- keyword arguments checked before the run ---------------------------------------------------------


def test_an_unknown_env_kwarg_fails_at_config_load(tmp_path):
    config = write(tmp_path / "c.yaml", TINY_TRAIN)
    with pytest.raises(ValueError, match=r"env_kwargs\.bogus: unknown argument of metarec/DriftingUsers-v0 \(known: "):
        load_config(config, ["env_kwargs.bogus=1"])
    rc, _, err = run_cli(["train", str(config), "--out", str(tmp_path / "run"), "--set", "env_kwargs.bogus=1"])
    assert rc == 2
    assert_one_line_error(err, "env_kwargs.bogus: unknown argument of metarec/DriftingUsers-v0", "slate_size")
    assert not (tmp_path / "run").exists()


def test_a_bad_env_kwarg_value_fails_at_config_load(tmp_path):
    config = write(tmp_path / "c.yaml", TINY_TRAIN)
    with pytest.raises(ValueError, match=r"env_kwargs: .*population\.num_sessions: Input should be greater"):
        load_config(config, ["env_kwargs.population.num_sessions=-1"])
    with pytest.raises(ValueError, match=r"env_kwargs\.device: set by the run's device"):
        load_config(config, ["env_kwargs.device=cpu"])


def test_an_unknown_abtest_env_kwarg_fails_at_config_load(tmp_path):
    path = write(tmp_path / "ab.yaml", TINY_ABTEST)
    rc, _, err = run_cli(["abtest", str(path), "--out", str(tmp_path / "run"), "--set", "env_kwargs.bogus=1"])
    assert rc == 2
    assert_one_line_error(err, "env_kwargs.bogus: unknown argument of metarec/DriftingUsers-v0")
    assert not (tmp_path / "run").exists()


def test_an_unknown_sb3_algo_kwarg_fails_at_config_load(tmp_path):
    pytest.importorskip("stable_baselines3")
    config = write(tmp_path / "c.yaml", TINY_TRAIN.replace("algo: ppo", "algo: sb3-ppo"))
    with contextlib.redirect_stderr(io.StringIO()):  # gym's notice on import, not metarec's output
        import stable_baselines3  # noqa: F401
    rc, _, err = run_cli(["train", str(config), "--out", str(tmp_path / "run"), "--set", "sb3.algo_kwargs.nope=1"])
    assert rc == 2
    assert_one_line_error(err, "sb3.algo_kwargs.nope: unknown argument of PPO (known: ", "n_steps")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"sb3\.algo_kwargs\.seed: set by the config's seed"):
        load_config(config, ["sb3.algo_kwargs.seed=3"])
    load_config(config, ["sb3.algo_kwargs.n_steps=8"])  # a real one passes


def test_a_keyword_an_sb3_policy_does_not_take_is_exit_code_2(tmp_path):
    """A TypeError from a keyword a constructor does not take is bad input (2, one line), not a crash."""
    pytest.importorskip("stable_baselines3")
    with contextlib.redirect_stderr(io.StringIO()):  # gym's notice on import, not metarec's output
        import stable_baselines3  # noqa: F401
    config = write(tmp_path / "c.yaml", TINY_TRAIN.replace("algo: ppo", "algo: sb3-ppo"))
    argv = ["train", str(config), "--out", str(tmp_path / "run"), "--quiet", "--set", "sb3.policy_kwargs.bogus=1"]
    rc, _, err = run_cli(argv)
    assert rc == 2
    assert_one_line_error(err, "metarec train: error:", "unexpected keyword argument 'bogus'")


# --- the command line ---------------------------------------------------------------------------------


def test_evaluate_json_for_one_user_is_strict_json():
    rc, out, _ = run_cli(
        ["evaluate", "--env", "metarec/DriftingUsers-v0", "--agent", "random", "--users", "1", "--json"]
    )
    assert rc == 0
    result = json.loads(out, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert result["users"] == 1 and result["ci95"] == [None, None]


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--env", "metarec/DriftingUsers-v0", "--agent", "random", "--users", "0"],
        ["evaluate"],
        ["no-such-command"],
        ["train"],
    ],
)
def test_argument_errors_are_one_line(argv):
    rc, _, err = run_cli(argv)
    assert rc == 2
    assert_one_line_error(err, "error:", "--help")
