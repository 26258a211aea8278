"""Fuzzed input to the ``metarec`` command: generated YAML configs, ``--set`` arguments, argument lists and
corrupt calibrated populations. Every input gives a result (exit code 0) or an error of one line on stderr
with exit code 1 or 2, never a traceback.

The inputs start from tiny configs and change one thing at a time (values from a small pool: a valid
input trains for a few steps), or are junk that fails validation quickly.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarec.cli import main
from metarec.envs.calibrated import save_population
from metarec.envs.drifting.model import make_world
from metarec.envs.drifting.params import SimulatorConfig

FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same inputs every run: a failure here is reproducible
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

BASE = {
    "train": {
        "algo": "ppo",
        "env": "metarec/DriftingUsers-v0",
        "total_steps": 32,
        "checkpoint_every": 16,
        "ppo": {"num_envs": 4, "rollout_steps": 4},
        "sb3": {"num_envs": 2, "algo_kwargs": {"n_steps": 8, "batch_size": 16}},
        "eval": {"users": 4},
    },
    "abtest": {
        "env": "metarec/DriftingUsers-v0",
        "arms": {"control": "random", "treatment": "oracle"},
        "users": 20,
        "days": 1,
        "sequential": False,
    },
    # no meta_tasks.yaml lies next to the fuzzed file: a meta-train config never gets past validation
    "meta-train": {"sessions": 2, "methods": ["scratch"], "eval": {"tasks": 1}},
}
KEYS = {
    "train": [
        "algo", "env", "env_kwargs", "total_steps", "seed", "device", "torch_threads", "checkpoint_every",
        "ppo.num_envs", "ppo.rollout_steps", "ppo.learning_rate", "ppo.gamma", "sb3.num_envs", "sb3.algo_kwargs",
        "sb3.algo_kwargs.n_steps", "sb3.algo_kwargs.gamma", "sb3.policy_kwargs", "eval.users", "eval.seed",
        "eval.every_steps", "env_kwargs.slate_size", "env_kwargs.population", "env_kwargs.population.num_sessions",
        "env_kwargs.num_candidates",
    ],
    "abtest": [
        "name", "env", "env_kwargs", "arms", "arms.control", "control", "users", "days", "pre_period_days",
        "design", "allocation", "primary_metric", "guardrails", "alpha", "correction", "cuped", "bootstrap",
        "sequential", "aa", "replicates", "seed", "device", "max_steps", "env_kwargs.population.num_sessions",
    ],
    "meta-train": [
        "tasks", "train_split", "sessions", "methods", "seed", "device", "checkpoint_every", "rl2.hidden",
        "rl2.updates", "gradient.meta_steps", "eval.tasks", "eval.seeds",
    ],
}  # fmt: skip
SCALARS = [
    -1, 0, 1, 2, 3, 8, 10**12, 2**63, 10**30, 0.5, -1.0, 1e300, math.nan, math.inf, -math.inf, True, False, None,
    "", "x", "ppo", "sb3-a2c", "sb3-dqn", "random", "popular", "cpu", "cuda", "1e-3", "metarec/DriftingUsers-v0",
    "metarec/RecSimInterestEvolution-v0", "metarec/Calibrated-v0", "metarec/RecSimNG-v0", "independent",
]  # fmt: skip
SET_VALUES = [
    "1", "0", "-1", "1e999", "0x10", "true", "~", "", "[", "{a: 1", "'open", "&a 1", "*a", "[1, *a]",
    "!!python/object/apply:os.system ['true']", "!!binary AAAA", "{x: {y: [1, 2]}}", "1000000000000",
    "metarec/Nope-v0", "\x00", "ü", "a: b: c", "- 1", "? x",
]  # fmt: skip


@contextlib.contextmanager
def inside(path: Path) -> Iterator[None]:
    here = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(here)


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``metarec ARGV`` in this process, in ``cwd``: (exit code, stderr)."""
    err, threads = io.StringIO(), torch.get_num_threads()
    with inside(cwd), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as stop:  # --help, or argparse's own exit
            rc = stop.code if isinstance(stop.code, int) else 1
        finally:
            torch.set_num_threads(threads)
    return rc, err.getvalue()


def assert_result_or_one_line_error(rc: int, err: str, argv: list[str]) -> None:
    assert "Traceback" not in err, (argv, err)
    if rc == 0:
        return
    assert rc in (1, 2), (argv, rc, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith("metarec") and ": error: " in lines[0], (argv, err)


@pytest.fixture(scope="module", autouse=True)
def quiet_imports() -> None:
    """Third-party notices printed on first import (gym's, when stable-baselines3 imports it) are not
    metarec's output: import them before the fuzzing."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(ImportError):
        import sb3_contrib  # noqa: F401
        import stable_baselines3  # noqa: F401


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def near(key: str) -> st.SearchStrategy[str]:
    """``key``, or a typo of it (a letter dropped, doubled, upper-cased; an s added)."""
    variants = {key + "s", key.upper(), key.replace("_", "-"), key[:-1], key + key[-1]} - {key, ""}
    return st.just(key) | st.sampled_from(sorted(variants))


values = st.recursive(
    st.sampled_from(SCALARS) | st.text(max_size=12) | st.integers(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def put(document: dict, dotted: str, value: object) -> dict:
    node = document
    *parents, last = dotted.split(".")
    for key in parents:
        child = node.get(key)
        node[key] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[last] = value
    return document


@st.composite
def config_texts(draw: st.DrawFn, command: str) -> str:
    """A YAML config for ``command``: the tiny base with a few keys (near the real ones) changed, or
    random junk; then perhaps damaged as text (truncated, a key twice, aliases, stray characters)."""
    if draw(st.integers(0, 4)) == 0:
        document: object = draw(values)
    else:
        document = yaml.safe_load(yaml.safe_dump(BASE[command]))
        for _ in range(draw(st.integers(1, 2))):
            key = draw(st.sampled_from(KEYS[command]).flatmap(near))
            put(document, key, draw(values))
    text = yaml.safe_dump(document, sort_keys=False)
    damage = draw(st.sampled_from(["none", "none", "truncate", "duplicate", "alias", "laughs", "garbage"]))
    lines = text.splitlines(keepends=True)
    if damage == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "duplicate" and lines:
        text += lines[draw(st.integers(0, len(lines) - 1))]
    elif damage == "alias":
        text += "extra: &a [1, 2]\nmore: *a\n"
    elif damage == "laughs":
        text += "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'lol'] * 9)}]\n" for i in range(10))
    elif damage == "garbage":
        at = draw(st.integers(0, len(text)))
        text = (
            text[:at] + draw(st.sampled_from(["\t", ":", "- ", "{", "]", "'", "\x00", "&", "*", "!!", "%"])) + text[at:]
        )
    return text


def command_argv(command: str, config: Path, out: Path) -> list[str]:
    quiet = ["--quiet"] if command != "evaluate" else []
    return [command, str(config), "--out", str(out), *quiet]


@pytest.mark.parametrize("command", ["train", "abtest", "meta-train"])
def test_generated_yaml_configs(command: str, workdir: Path) -> None:
    counter = iter(range(10**6))

    @FUZZ
    @given(text=config_texts(command))
    def check(text: str) -> None:
        n = next(counter)
        config = workdir / f"{command}-{n}.yaml"
        config.write_text(text)
        argv = command_argv(command, config, workdir / f"{command}-run-{n}")
        rc, err = run_cli(argv, workdir)
        assert_result_or_one_line_error(rc, err, argv)

    check()


@pytest.mark.parametrize("command", ["train", "abtest", "meta-train"])
def test_random_set_arguments(command: str, workdir: Path) -> None:
    config = workdir / f"{command}-base.yaml"
    config.write_text(yaml.safe_dump(BASE[command]))
    keys = st.sampled_from(KEYS[command]).flatmap(near) | st.text(max_size=10)
    sets = st.builds(lambda k, v: f"{k}={v}", keys, st.sampled_from(SET_VALUES) | st.text(max_size=8)) | st.text(
        max_size=12
    )
    counter = iter(range(10**6))

    @FUZZ
    @given(overrides=st.lists(sets, min_size=1, max_size=3))
    def check(overrides: list[str]) -> None:
        argv = command_argv(command, config, workdir / f"{command}-set-{next(counter)}")
        for text in overrides:
            argv += ["--set", text]
        rc, err = run_cli(argv, workdir)
        assert_result_or_one_line_error(rc, err, argv)

    check()


FLAG_VALUES = {
    "--users": ["0", "-1", "1", "3", "x", "1e9", "1000000000000", "50000000", ""],
    "--nproc": ["0", "-1", "x", "1"],
    "--seed": ["0", "-5", "x", "99999999999999999999999"],
    "--device": ["cpu", "cuda", "tpu", "cuda:x", "meta", ""],
    "--env": ["metarec/DriftingUsers-v0", "metarec/Nope-v0", "metarec/Calibrated-v0", "metarec/RecSimNG-v0", ""],
    "--agent": ["random", "oracle", "nope", ".", "/nonexistent/run", ""],
    "--set": ["seed=1", "x", "=", "users=0", "total_steps=true", "env_kwargs.bogus=1"],
    "--split": ["test", "train", "x"],
    "--seeds": ["0", "2", "x"],
    "--out": ["OUT"],
}


@st.composite
def argument_lists(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(["train", "abtest", "meta-train", "evaluate", "meta-eval", "bogus", "--bogus"]))
    argv = [command]
    if command in ("train", "abtest", "meta-train", "meta-eval"):
        argv.append(draw(st.sampled_from(["BASE", "BASE", "missing.yaml", ".", "", "--x"])))
    if command == "evaluate" and draw(st.integers(0, 3)):
        argv += ["--env", draw(st.sampled_from(FLAG_VALUES["--env"]))]
        argv += ["--agent", draw(st.sampled_from(FLAG_VALUES["--agent"]))]
    for _ in range(draw(st.integers(0, 4))):
        flag = draw(st.sampled_from([*FLAG_VALUES, "--json", "--resume", "--quiet", "--bogus", "-h"]))
        argv.append(flag)
        if flag in FLAG_VALUES and draw(st.integers(0, 5)):
            argv.append(draw(st.sampled_from(FLAG_VALUES[flag])))
    return argv


def test_random_argument_lists(workdir: Path) -> None:
    for command, base in BASE.items():
        (workdir / f"argv-{command}.yaml").write_text(yaml.safe_dump(base))
    counter = iter(range(10**6))

    @FUZZ
    @given(argv=argument_lists())
    def check(argv: list[str]) -> None:
        n = next(counter)
        base = str(workdir / f"argv-{argv[0]}.yaml")
        argv = [base if a == "BASE" else str(workdir / f"argv-out-{n}") if a == "OUT" else a for a in argv]
        if "--quiet" not in argv and argv[0] in ("train", "abtest", "meta-train"):
            argv.append("--quiet")
        if "-h" in argv:
            return  # help: argparse prints it and exits 0
        rc, err = run_cli(argv, workdir)
        assert_result_or_one_line_error(rc, err, argv)

    check()


@pytest.fixture(scope="module")
def population_bytes(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    config = SimulatorConfig()
    world = make_world(config)
    world["cluster_weight"] = np.full(config.population.num_clusters, 1 / config.population.num_clusters)
    path = save_population(tmp_path_factory.mktemp("population") / "population", config, world)
    return (path / "population.json").read_bytes(), (path / "world.npz").read_bytes()


def test_random_bytes_as_world_npz(population_bytes: tuple[bytes, bytes], workdir: Path) -> None:
    document, world = population_bytes
    config = workdir / "calibrated.yaml"
    config.write_text(yaml.safe_dump({**BASE["train"], "env": "metarec/Calibrated-v0"}))
    counter = iter(range(10**6))
    damaged = st.one_of(
        st.binary(max_size=2000),
        st.binary(max_size=200).map(lambda tail: b"PK\x03\x04" + tail),
        st.binary(max_size=200).map(lambda tail: b"\x93NUMPY\x01\x00" + tail),
        st.integers(0, len(world)).map(lambda n: world[:n]),
        st.tuples(st.integers(0, len(world) - 1), st.integers(0, 255)).map(
            lambda flip: world[: flip[0]] + bytes([flip[1]]) + world[flip[0] + 1 :]
        ),
    )

    @FUZZ
    @given(data=damaged)
    def check(data: bytes) -> None:
        n = next(counter)
        population = workdir / f"population-{n}"
        population.mkdir()
        (population / "population.json").write_bytes(document)
        (population / "world.npz").write_bytes(data)
        argv = ["train", str(config), "--out", str(workdir / f"calibrated-run-{n}"), "--quiet"]
        rc, err = run_cli([*argv, "--set", f"env_kwargs.population={population}"], workdir)
        assert_result_or_one_line_error(rc, err, argv)

    check()
