"""Every command line the README shows runs, at a small budget.

The README's ```bash and plain ``` blocks are parsed into command lines (comments and a leading ``$``
dropped). Each line is either in ``COMMANDS``, with the small-budget command this test runs in its
place and what it checks, or in ``EXCLUDED``, with why it does not run here and which test covers it.
A README line in neither table fails ``test_every_readme_command_is_in_a_table``, and so does a table
entry whose line has left the README: the tables cannot fall behind the README.

The commands run in one work directory per test process, with ``configs/`` linked in, so the README's
relative paths (``configs/...``, ``runs/...``) work as written. ``metarec ...`` runs in this process
through ``metarec.cli.main`` (as in tests/test_cli.py); ``torchrun ...`` runs as a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from metarec.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The README and the guides of the documentation site: every command line they show is in a table below.
PAGES = (README, ROOT / "docs" / "index.md", *sorted((ROOT / "docs" / "guide").glob("*.md")))
# The commands the README shows with --device cuda run on a GPU where there is one, else on the CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RUNNABLE = ("metarec ", ".venv/bin/metarec ", "torchrun ")


def readme_commands() -> list[str]:
    """Every command line of the ```bash / ``` blocks of the README and the guides, normalised by shlex."""
    lines = []
    text = "\n".join(page.read_text() for page in PAGES)
    for lang, body in re.findall(r"^```([\w-]*)\n(.*?)^```", text, flags=re.S | re.M):
        if lang not in ("", "bash", "sh", "shell", "console"):
            continue
        for raw in body.replace("\\\n", " ").splitlines():
            raw = raw.strip()
            if raw.startswith("$ "):
                raw = raw[2:]
            words = shlex.split(raw, comments=True)
            if words:
                lines.append(shlex.join(words))
    return lines


@dataclass(frozen=True)
class Done:
    """A command's exit code, standard output and error, and the work directory it ran in."""

    rc: int
    out: str
    err: str
    cwd: Path

    def json(self) -> dict:
        """The last JSON line printed."""
        lines = [line for line in self.out.splitlines() if line.startswith("{")]
        assert lines, f"no JSON line in the output:\n{self.out}\n{self.err}"
        return json.loads(lines[-1])

    def file(self, path: str) -> Path:
        assert (self.cwd / path).exists(), f"{path} was not written"
        return self.cwd / path


# -- what each run must show -------------------------------------------------------------------------


def evaluated(users: int, device: str = "cpu", agent: str | None = None) -> Callable[[Done], None]:
    def check(done: Done) -> None:
        result = done.json()
        assert {"env", "agent", "users", "mean_return", "ci95", "mean_length", "click_rate", "mean_regret"} <= set(
            result
        )
        assert result["users"] == users and result["device"] == device and result["ci95"][1] > result["ci95"][0]
        if agent is not None:
            assert agent in result["agent"]

    return check


def evaluated_as_text(done: Done) -> None:
    pattern = r"agent=ppo:ppo_recsim_ie\s+users=50\s+mean return [\d.]+ \[[\d.]+, [\d.]+\] \(95% CI\)"
    assert re.search(pattern, done.out), done.out


def trained(out: str, algo: str, model: str, device: str = "cpu") -> Callable[[Done], None]:
    def check(done: Done) -> None:
        assert re.search(rf"^{algo} on \S+: mean return [\d.-]+ \[.*\] \(95% CI\).* env steps; run: {out}$", done.out,
                         flags=re.M), done.out  # fmt: skip
        for name in ("config.yaml", "tb", "checkpoints", model, "results.json"):
            done.file(f"{out}/{name}")
        results = json.loads(done.file(f"{out}/results.json").read_text())
        assert results["algo"] == algo
        assert {"env_steps", "mean_return", "ci95", "normalised_return"} <= set(results)
        assert set(results["references"]) == {"random", "oracle"} and results["eval"]["device"] == device

    return check


def ab_tested(out: str, arms: set[str], device: str = "cpu") -> Callable[[Done], None]:
    def check(done: Done) -> None:
        for name in ("results.json", "report.md", "report.html"):
            done.file(f"{out}/{name}")
        assert list(done.file(f"{out}/plots").glob("*.png")), "no PNG plot"
        results = json.loads(done.file(f"{out}/results.json").read_text())
        assert set(results["effects"]) == arms and results["config"]["device"] == device
        effect = results["effects"]["linucb"]["engagement"]
        assert {"absolute", "ci", "relative", "p_adjusted"} <= set(effect)
        assert "srm" in results and "guardrails" in results and "sequential" in results
        assert f"report: {out}/report.html" in done.out  # after the table

    return check


def meta_trained(out: str, methods: set[str], device: str = "cpu") -> Callable[[Done], None]:
    def check(done: Done) -> None:
        assert f"; run: {out} (metarec meta-eval {out})" in done.out, done.out
        results = json.loads(done.file(f"{out}/results.json").read_text())
        assert set(results["methods"]) == methods and re.fullmatch(r"[0-9a-f]{64}", results["params_sha256"])
        assert f"params_sha256 {results['params_sha256'][:12]}" in done.out and results["device"] == device
        for name in ("methods", "tb", "checkpoints", "config.yaml"):
            done.file(f"{out}/{name}")

    return check


def meta_evaluated_on_fitted_users(done: Done) -> None:
    result = done.json()
    assert result["split"] == "meta-test" and result["sessions"] == [1, 2]
    assert {"random", "oracle", "rl2", "popular", "linucb", "hbayes"} <= set(result["methods"])
    assert all(np.isfinite(m["normalised_return"][0]) for m in result["methods"].values())
    config = done.file("runs/meta_fitted/config.yaml").read_text()
    assert str(done.file("runs/calibrated/population")) in config  # the fitted users of the calibrate line


def meta_evaluated(done: Done) -> None:
    result = done.json()
    assert result["split"] == "meta-test" and result["sessions"] == [1, 2, 3, 4]
    baselines = {"popular", "linucb", "thompson", "greedy", "finetune", "scratch"}
    meta_learners = {"rl2", "icl", "maml", "fomaml", "reptile"}
    assert {"random", "oracle", "hbayes"} | meta_learners | baselines == set(result["methods"])
    assert result["best_meta_method"] in ("rl2", "icl", "maml", "fomaml", "reptile")
    assert {"normalised_return", "ci95", "regret_after", "shift", "metrics"} <= set(result["methods"]["rl2"])
    metrics = result["methods"]["oracle"]["metrics"]
    assert metrics["k"] == 5 and all(0 <= v <= 1 for v in metrics["ndcg_at_k"] + metrics["precision_at_k"])
    assert metrics["ndcg_at_k"][0] > result["methods"]["random"]["metrics"]["ndcg_at_k"][0]
    assert result["paired"]["method"] == result["best_meta_method"]
    assert set(result["paired"]["against"]) == baselines | {"hbayes"}
    done.file("runs/meta_demo/eval_test.json")
    assert done.file("runs/meta_demo/adaptation_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def same_parameters_as(other: str) -> Callable[[Done], None]:
    """Two processes under torchrun end with the parameters of two processes under --nproc 2."""

    def check(done: Done) -> None:
        meta_trained("runs/meta_demo_torchrun", {"maml"})(done)
        assert len([line for line in done.out.splitlines() if line.startswith("meta-trained")]) == 1  # rank 0 speaks
        mine = json.loads(done.file("runs/meta_demo_torchrun/results.json").read_text())
        theirs = json.loads(done.file(f"{other}/results.json").read_text())
        assert mine["processes"] == theirs["processes"] == 2
        assert mine["params_sha256"] == theirs["params_sha256"]

    return check


def sharded_ab_test_equals_one_process(done: Done) -> None:
    ab_tested("runs/abtest_demo_2p", {"linucb", "greedy"})(done)
    two = json.loads(done.file("runs/abtest_demo_2p/results.json").read_text())
    one = json.loads(done.file("runs/abtest_demo/results.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    for key in ("metrics", "effects", "srm", "guardrails", "per_day", "sequential"):
        floats, others = _leaves(two[key]), _leaves(one[key])
        assert floats[1] == others[1], key
        assert floats[0] == pytest.approx(others[0], rel=1e-9, abs=1e-12), key


def trained_in_two_processes(done: Done) -> None:
    trained("runs/ppo_drifting_2p", "ppo", "model.pt")(done)
    results = json.loads(done.file("runs/ppo_drifting_2p/results.json").read_text())
    assert results["processes"] == 2 and re.fullmatch(r"[0-9a-f]{64}", results["params_sha256"])


def evaluated_in_two_processes(done: Done) -> None:
    evaluated(200, agent="linucb")(done)
    assert done.json()["processes"] == 2


def _leaves(value: object, path: str = "") -> tuple[list[float], list[tuple[str, object]]]:
    """A nested JSON value's floats, in order, and its other leaves with where they are."""
    if isinstance(value, dict):
        parts = [_leaves(value[k], f"{path}.{k}") for k in sorted(value)]
    elif isinstance(value, list):
        parts = [_leaves(v, f"{path}[{i}]") for i, v in enumerate(value)]
    else:
        return ([value], []) if isinstance(value, float) else ([], [(path, value)])
    return [x for f, _ in parts for x in f], [x for _, o in parts for x in o]


def exported(path: str, kind: str) -> Callable[[Done], None]:
    def check(done: Done) -> None:
        assert done.file(path).stat().st_size > 0
        assert re.search(rf"^exported \S+ \({kind}\) as \S+ to {path}: inputs ", done.out, flags=re.M), done.out

    return check


def feedback_written(done: Done) -> None:
    assert re.search(r"^wrote [\d,]+ impressions \([\d,]+ slates\) of 30 users over 2 days to runs/feedback.npz "
                     r"\(obp\)$", done.out, flags=re.M), done.out  # fmt: skip
    with np.load(done.file("runs/feedback.npz"), allow_pickle=False) as feedback:
        assert int(feedback["n_rounds"]) == len(feedback["action"]) > 0 and int(feedback["len_list"]) == 5


def logs_written(done: Done) -> None:
    assert re.fullmatch(r"wrote [\d,]+ events of 50 users over 3 days to runs/logs.csv", done.out.strip()), done.out
    header = done.file("runs/logs.csv").read_text().splitlines()[0].split(",")
    assert {"user", "item", "timestamp"} <= set(header) and {"rating", "click"} & set(header)


def impressions_written(path: str, agent: str) -> Callable[[Done], None]:
    def check(done: Done) -> None:
        assert re.search(rf"^wrote [\d,]+ impressions \([\d,]+ slates\) of 40 users over 1 days to {path} "
                         r"\(parquet\)$", done.out, flags=re.M), done.out  # fmt: skip
        import pyarrow.parquet as pq

        table = pq.read_table(done.file(path))
        assert {"user", "item", "timestamp", "click"} <= set(table.column_names)
        assert json.loads(table.schema.metadata[b"metarec"])["agent"] == agent

    return check


def ab_validated(done: Done) -> None:
    result = done.json()
    assert result["control"]["agent"] == "random" and result["treatment"]["agent"] == "bts"
    for part in ("observed", "predicted"):
        low, high = result[part]["ci"]
        assert low <= result[part]["lift"] <= high, result[part]
    assert result["predicted"]["unit"] == "replicate" and result["predicted"]["replicates"] == 5
    done.file("runs/validated_ab/validate_ab.json")
    done.file("runs/validated_ab/abtest/report.html")


def validated(done: Done) -> None:
    result = done.json()
    assert set(result["recommenders"]) == {"random", "popularity", "recent-popularity", "item-knn", "als"}
    assert result["users_evaluated"] > 0 and {"sim_offline_ndcg", "sim_ndcg"} == set(result["agreement"])
    done.file("runs/validated/validation.json")
    assert "<html" in done.file("runs/validated/validation.html").read_text()


def calibrated(done: Done) -> None:
    result = done.json()
    assert result["population"] == "runs/calibrated/population"
    assert {"rating_ks", "popularity_gini_real", "popularity_gini_sim", "recall@10_sim"} <= set(result["fidelity"])
    done.file("runs/calibrated/fidelity.json")
    assert "<html" in done.file("runs/calibrated/fidelity.html").read_text()
    # the README: the population loads as gym.make("metarec/Calibrated-v0", population=...)
    env = gym.make("metarec/Calibrated-v0", population=str(done.file("runs/calibrated/population")))
    env.reset(seed=0)
    env.step(env.action_space.sample())
    env.close()


# -- the tables ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    run: str  # what runs in place of the README's line; {device} is cuda where there is a GPU, else cpu
    check: Callable[[Done], None]
    needs: tuple[str, ...] = ()  # README lines whose outputs this one reads (run first)


THREADS = "--set torch_threads=1"  # two test workers share two cores
PPO_SMALL = f"--set total_steps=2048 --set ppo.num_envs=64 --set eval.users=50 {THREADS} --quiet"
SB3_SMALL = f"--set total_steps=512 --set sb3.num_envs=4 --set sb3.algo_kwargs.n_steps=64 --set eval.users=50 {THREADS}"
AB_SMALL = f"--set users=200 --set days=2 {THREADS} --quiet"
META_2P = f"--set methods=[maml] {THREADS} --quiet"
GPU_META_SMALL = (
    "--set device={device} --set methods=[rl2,icl,maml] --set sessions=2 "
    "--set rl2.tasks_per_batch=4 --set rl2.users_per_task=8 --set rl2.rollout_steps=8 --set rl2.updates=2 "
    "--set rl2.num_minibatches=2 --set rl2.hidden=16 --set gradient.tasks_per_batch=2 "
    "--set gradient.users_per_task=8 --set gradient.rollout_steps=4 --set gradient.meta_steps=2 "
    "--set gradient.hidden=16 --set icl.tasks_per_batch=4 --set icl.users_per_task=8 --set icl.rollout_steps=8 "
    "--set icl.updates=2 --set icl.num_minibatches=2 --set icl.hidden=16 --set icl.heads=2 --set icl.window=4 "
    f"--set icl.layers=1 {THREADS} --quiet"
)

TRAIN_IE = "metarec train configs/ppo_recsim_ie.yaml --out runs/ppo_recsim_ie"
TRAIN_SB3 = "metarec train configs/sb3_ppo_drifting.yaml --out runs/sb3_ppo_drifting"
ABTEST = "metarec abtest configs/abtest_demo.yaml --out runs/abtest_demo"
META_TRAIN = "metarec meta-train configs/meta_demo.yaml --out runs/meta_demo"
META_2P_CMD = "metarec meta-train configs/meta_demo.yaml --out runs/meta_demo_2p --nproc 2"
META_FITTED = "metarec meta-train configs/meta_fitted.yaml --out runs/meta_fitted"
META_FITTED_SMALL = (
    "--set methods=[rl2] --set meta_learner=rl2 --set sessions=2 --set rl2.tasks_per_batch=4 "
    "--set rl2.users_per_task=8 --set rl2.rollout_steps=8 --set rl2.updates=2 --set rl2.num_minibatches=2 "
    "--set rl2.hidden=16 --set eval.tasks=2 --set eval.users_per_task=4 --set eval.seeds=2 --set eval.shift_at=6 "
    f"--set eval.window=3 --set eval.max_steps=20 {THREADS} --quiet"
)
LOGS = "metarec simulate-logs --users 1000 --days 10 --out runs/logs.csv"
AB_RANDOM = "metarec simulate-logs --users 300 --days 1 --agent random --format parquet --out runs/ab_random.parquet"
AB_BTS = "metarec simulate-logs --users 300 --days 1 --agent bts --format parquet --out runs/ab_bts.parquet"
OBP_LOGS = "metarec simulate-logs --users 1000 --days 10 --format obp --out runs/feedback.npz"
EXPORT_RL2 = "metarec export runs/meta_demo/methods/rl2.pt --format torch-export --out runs/rl2.pt2"
EXPORT_SB3 = "metarec export runs/sb3_ppo_drifting --format onnx --out runs/sb3_ppo_drifting.onnx"

# README line -> the small-budget command run in its place, and its check.
COMMANDS: dict[str, Case] = {
    # Evaluate a recommender
    "metarec evaluate --env metarec/DriftingUsers-v0 --agent oracle --users 1000 --seed 0 --json": Case(
        "metarec evaluate --env metarec/DriftingUsers-v0 --agent oracle --users 50 --seed 0 --json",
        evaluated(50, agent="oracle"),
    ),
    # Train a recommender
    TRAIN_IE: Case(f"{TRAIN_IE} {PPO_SMALL}", trained("runs/ppo_recsim_ie", "ppo", "model.pt")),
    "metarec evaluate --env metarec/RecSimInterestEvolution-v0 --agent runs/ppo_recsim_ie --users 4000": Case(
        "metarec evaluate --env metarec/RecSimInterestEvolution-v0 --agent runs/ppo_recsim_ie --users 50",
        evaluated_as_text,
        needs=(TRAIN_IE,),
    ),
    TRAIN_SB3: Case(f"{TRAIN_SB3} {SB3_SMALL} --quiet", trained("runs/sb3_ppo_drifting", "sb3-ppo", "model.zip")),
    "metarec evaluate --env metarec/DriftingUsers-v0 --agent runs/sb3_ppo_drifting --users 2000 --json": Case(
        "metarec evaluate --env metarec/DriftingUsers-v0 --agent runs/sb3_ppo_drifting --users 50 --json",
        evaluated(50, agent="sb3"),
        needs=(TRAIN_SB3,),
    ),
    # A/B test
    ABTEST: Case(f"{ABTEST} {AB_SMALL}", ab_tested("runs/abtest_demo", {"linucb", "greedy"})),
    # Meta-learning: meta_tiny.yaml is meta_demo.yaml's every method at tiny budgets
    META_TRAIN: Case(
        f"metarec meta-train configs/meta_tiny.yaml --out runs/meta_demo {THREADS} --quiet",
        meta_trained("runs/meta_demo", {"rl2", "icl", "maml", "fomaml", "reptile", "finetune", "scratch"}),
    ),
    "metarec meta-eval runs/meta_demo --split test --json": Case(
        "metarec meta-eval runs/meta_demo --split test --json", meta_evaluated, needs=(META_TRAIN,)
    ),
    OBP_LOGS: Case("metarec simulate-logs --users 30 --days 2 --format obp --out runs/feedback.npz",
                   feedback_written),
    # Export
    EXPORT_RL2: Case(EXPORT_RL2, exported("runs/rl2.pt2", "rl2"), needs=(META_TRAIN,)),
    EXPORT_SB3: Case(EXPORT_SB3, exported("runs/sb3_ppo_drifting.onnx", "slate-scorer"), needs=(TRAIN_SB3,)),
    # Calibration
    LOGS: Case("metarec simulate-logs --users 50 --days 3 --out runs/logs.csv", logs_written),
    "metarec calibrate runs/logs.csv --format csv --holdout-frac 0.2 --out runs/calibrated --json": Case(
        "metarec calibrate runs/logs.csv --format csv --holdout-frac 0.2 --out runs/calibrated --json "
        "--set epochs=2 --set refit_steps=20",
        calibrated,
        needs=(LOGS,),
    ),
    "metarec validate runs/logs.csv --format csv --holdout-frac 0.2 --out runs/validated --json": Case(
        "metarec validate runs/logs.csv --format csv --holdout-frac 0.2 --out runs/validated --json "
        "--set fit.epochs=2 --set fit.refit_steps=20 --set bootstrap=50 --set max_steps=5",
        validated,
        needs=(LOGS,),
    ),
    META_FITTED: Case(f"{META_FITTED} {META_FITTED_SMALL}", meta_trained("runs/meta_fitted", {"rl2"}),
                      needs=("metarec calibrate runs/logs.csv --format csv --holdout-frac 0.2 --out runs/calibrated "
                             "--json",)),
    "metarec meta-eval runs/meta_fitted --split meta-test --json": Case(
        "metarec meta-eval runs/meta_fitted --split meta-test --json", meta_evaluated_on_fitted_users,
        needs=(META_FITTED,),
    ),
    AB_RANDOM: Case(AB_RANDOM.replace("--users 300", "--users 40"),
                    impressions_written("runs/ab_random.parquet", "random")),
    AB_BTS: Case(AB_BTS.replace("--users 300", "--users 40"), impressions_written("runs/ab_bts.parquet", "bts")),
    "metarec validate-ab runs/ab_random.parquet runs/ab_bts.parquet --format csv --out runs/validated_ab --json": Case(
        "metarec validate-ab runs/ab_random.parquet runs/ab_bts.parquet --format csv --out runs/validated_ab --json "
        "--set fit.epochs=2 --set fit.refit_steps=20 --set replicates=5 --set bootstrap=100",
        ab_validated,
        needs=(AB_RANDOM, AB_BTS),
    ),
    # GPU: the same command lines on the CPU where there is no GPU
    "metarec evaluate --env metarec/DriftingUsers-v0 --agent linucb --users 100000 --device cuda --json": Case(
        "metarec evaluate --env metarec/DriftingUsers-v0 --agent linucb --users 200 --device {device} --json",
        evaluated(200, DEVICE, agent="linucb"),
    ),
    "metarec train configs/ppo_drifting.yaml --out runs/ppo_drifting_gpu --set device=cuda": Case(
        "metarec train configs/ppo_drifting.yaml --out runs/ppo_drifting_gpu --set device={device} " + PPO_SMALL,
        trained("runs/ppo_drifting_gpu", "ppo", "model.pt", DEVICE),
    ),
    "metarec abtest configs/abtest_demo.yaml --out runs/abtest_demo_gpu --set device=cuda": Case(
        "metarec abtest configs/abtest_demo.yaml --out runs/abtest_demo_gpu --set device={device} " + AB_SMALL,
        ab_tested("runs/abtest_demo_gpu", {"linucb", "greedy"}, DEVICE),
    ),
    "metarec meta-train configs/meta_gpu.yaml --out runs/meta_gpu": Case(
        "metarec meta-train configs/meta_gpu.yaml --out runs/meta_gpu " + GPU_META_SMALL,
        meta_trained("runs/meta_gpu", {"rl2", "icl", "maml"}, DEVICE),
    ),
    # Several processes (gloo on the CPU)
    META_2P_CMD: Case(
        f"metarec meta-train configs/meta_tiny.yaml --out runs/meta_demo_2p --nproc 2 {META_2P}",
        meta_trained("runs/meta_demo_2p", {"maml"}),
    ),
    "torchrun --nproc-per-node 2 -m metarec meta-train configs/meta_demo.yaml --out runs/meta_demo_torchrun": Case(
        "torchrun --standalone --nproc-per-node 2 -m metarec meta-train configs/meta_tiny.yaml "
        f"--out runs/meta_demo_torchrun {META_2P}",
        same_parameters_as("runs/meta_demo_2p"),
        needs=(META_2P_CMD,),
    ),
    "metarec train configs/ppo_drifting.yaml --out runs/ppo_drifting_2p --nproc 2": Case(
        f"metarec train configs/ppo_drifting.yaml --out runs/ppo_drifting_2p --nproc 2 {PPO_SMALL}",
        trained_in_two_processes,
    ),
    "metarec evaluate --env metarec/DriftingUsers-v0 --agent linucb --users 100000 --nproc 2 --json": Case(
        "metarec evaluate --env metarec/DriftingUsers-v0 --agent linucb --users 200 --nproc 2 --json",
        evaluated_in_two_processes,
    ),
    "metarec abtest configs/abtest_demo.yaml --out runs/abtest_demo_2p --nproc 2": Case(
        f"metarec abtest configs/abtest_demo.yaml --out runs/abtest_demo_2p --nproc 2 {AB_SMALL}",
        sharded_ab_test_equals_one_process,
        needs=(ABTEST,),
    ),
}

# README line -> why it does not run here, and the test that covers it.
EXCLUDED: dict[str, str] = {
    "make demo": "builds .venv and runs the full demo (about 14 minutes); tests/test_cli.py::"
    "test_demo_runs_end_to_end_with_an_ab_test runs `metarec demo` small, tests/test_report_browser.py its report",
    "make test": "this is the test run itself",
    "metarec demo --device cuda": "the demo even at its smallest takes minutes; tests/test_cli.py::"
    "test_demo_runs_end_to_end_with_an_ab_test runs `metarec demo --users 200 --meta-config configs/meta_tiny.yaml`",
    "make test-recsim-ng": "builds .venv-recsim-ng (TensorFlow 2.15) and runs tests/test_recsim_ng.py",
    ".venv-recsim-ng/bin/metarec evaluate --env metarec/RecSimNG-v0 --agent linucb --users 500": "needs the "
    "recsim-ng extra; tests/test_recsim_ng.py::test_readme_command_evaluates_on_recsim_ng runs it at 50 users "
    "(make test-recsim-ng)",
}


def test_every_readme_command_is_in_a_table():
    shown = readme_commands()
    assert shown, "no command lines found in the README"
    missing = [line for line in shown if line not in COMMANDS and line not in EXCLUDED]
    assert not missing, f"README commands in neither COMMANDS nor EXCLUDED of {__file__}: {missing}"
    stale = [line for line in (*COMMANDS, *EXCLUDED) if line not in shown]
    assert not stale, f"table entries whose command is no longer in the README: {stale}"
    assert not set(COMMANDS) & set(EXCLUDED)
    assert all(line.startswith(RUNNABLE) for line in COMMANDS)
    for case in COMMANDS.values():
        assert case.run.startswith(RUNNABLE) and all(need in COMMANDS for need in case.needs)


# -- running -------------------------------------------------------------------------------------------

_DONE: dict[str, Done] = {}


@contextlib.contextmanager
def _inside(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _run(command: str, cwd: Path) -> Done:
    argv = shlex.split(command.format(device=DEVICE))
    if argv[0] == "torchrun":
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", *argv[1:]],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return Done(proc.returncode, proc.stdout, proc.stderr, cwd)
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with _inside(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv[1:])
        except SystemExit as stop:  # argparse: an unknown flag or a bad value
            rc = stop.code if isinstance(stop.code, int) else 1
        finally:
            torch.set_num_threads(threads)
    return Done(rc, out.getvalue(), err.getvalue(), cwd)


def run_readme_command(line: str, workdir: Path) -> Done:
    """Runs a README line's small variant once per test process (after what it needs) and returns it."""
    if line not in _DONE:
        case = COMMANDS[line]
        for need in case.needs:
            assert run_readme_command(need, workdir).rc == 0, f"{need!r}, needed by {line!r}, failed"
        _DONE[line] = _run(case.run, workdir)
    return _DONE[line]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("readme")
    (path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    return path


@pytest.mark.parametrize("line", list(COMMANDS), ids=list(COMMANDS))
def test_readme_command_runs_at_a_small_budget(line: str, workdir: Path) -> None:
    done = run_readme_command(line, workdir)
    assert done.rc == 0, f"{COMMANDS[line].run!r} exited {done.rc}:\n{done.out[-3000:]}\n{done.err[-3000:]}"
    COMMANDS[line].check(done)


def headings_of(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings."""
    return {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)
    }


def test_readme_links_and_pictures_exist():
    """Every local link of the README names a file, and a heading there where it names one; pictures are PNGs
    under 200 kB."""
    links = re.findall(r"(!?)\[[^\]]*\]\(([^)\s]+)\)", README.read_text())
    assert any(bang for bang, _ in links), "the README shows no picture"
    for bang, target in links:
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        path = ROOT / file if file else README
        assert path.is_file(), f"the README links to {target}, which does not exist"
        if anchor:
            assert anchor in headings_of(path), f"no heading for the link {target}"
        if bang:
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 200_000, target
