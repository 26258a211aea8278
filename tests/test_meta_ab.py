"""``benchmarks/meta_ab.py``: the meta-learner's A/B tests on pinned held-out populations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metarec.meta.config import load_meta_config
from metarec.meta.train import meta_train

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "meta_ab.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meta_ab") / "run"
    config = load_meta_config(ROOT / "configs" / "meta_tiny.yaml", ["torch_threads=null", "methods=[rl2]"])
    meta_train(config, out, progress=False)
    return out


def test_the_pinned_config_names_three_held_out_populations_including_the_demos() -> None:
    plan = yaml.safe_load((ROOT / "configs" / "meta_ab.yaml").read_text())
    assert len(set(plan["population_seeds"])) == 3 and 777 in plan["population_seeds"]  # the demo's, seed 0
    assert plan["split"] == "meta-test" and plan["replicates"] >= 5


def test_meta_ab_runs_one_test_per_population_and_prints_one_json_line(run, tmp_path) -> None:
    plan = yaml.safe_load((ROOT / "configs" / "meta_ab.yaml").read_text())
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({**plan, "users": 20, "days": 2}))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(run), "--config", str(small), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert list(line["populations"]) == [str(s) for s in plan["population_seeds"]]
    for seed, test in line["populations"].items():
        assert set(test["effects"]) == {"linucb", "rl2"}
        for effect in test["effects"].values():
            low, high = effect["relative_ci"]
            assert low <= effect["relative"] <= high and 0 <= effect["p_adjusted"] <= 1
        assert set(test["guardrails"]["rl2"]) == {"retention"}
        assert (tmp_path / "out" / seed / "results.json").is_file()
    # the three populations differ, so their tests do
    relatives = {test["effects"]["rl2"]["relative"] for test in line["populations"].values()}
    assert len(relatives) == 3


def test_meta_ab_refuses_a_config_with_unknown_keys_and_a_missing_method(run, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("meta_learner: rl2\nsplit: meta-test\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(run), "--config", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "config: expected the keys meta_learner, split" in proc.stderr
    plan = yaml.safe_load((ROOT / "configs" / "meta_ab.yaml").read_text())
    other = tmp_path / "maml.yaml"
    other.write_text(yaml.safe_dump({**plan, "meta_learner": "maml"}))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(run), "--config", str(other)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "meta_learner:" in proc.stderr and "maml.pt does not exist" in proc.stderr
