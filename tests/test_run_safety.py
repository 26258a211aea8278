"""Nothing is lost: every command claims its output before any work, refuses what it did not make,
and a damaged checkpoint or a changed config never resumes silently."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from metarec.cli import main
from metarec.runs import MARKER, claim_out, made_by, read_marker, restartable

ROOT = Path(__file__).resolve().parents[1]
TINY_META = ROOT / "configs" / "meta_tiny.yaml"
ABTEST = ROOT / "configs" / "abtest_demo.yaml"
PPO = ROOT / "configs" / "ppo_recsim_ie.yaml"
# per-user arms (no arm learns across users), so one replicate is a valid design
AB_SMALL = ["--set", "users=200", "--set", "days=2", "--set", "arms={control: random, greedy: greedy}", "--quiet"]
PPO_SMALL = ["--set", "total_steps=512", "--set", "ppo.num_envs=32", "--set", "ppo.rollout_steps=8",
             "--set", "eval.users=8", "--set", "checkpoint_every=256", "--quiet"]  # fmt: skip
FIT_SMALL = ["--set", "epochs=1", "--set", "refit_steps=10", "--set", "max_clusters=2", "--set", "embedding_dim=4",
             "--set", "num_topics=2"]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def another_run(folder: Path) -> Path:
    """A directory holding another command's run (a training run's files), made without metarec."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"algo": "ppo", "mean_return": 123.0}))
    (folder / "config.yaml").write_text("algo: ppo\nseed: 7\n")
    (folder / "checkpoints" / "last.pt").write_bytes(b"weights of a long run")
    return folder


def no_work(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Makes ``target`` (the function that does a command's work) fail the test if it is called."""

    def called(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{target} ran before --out was checked")

    monkeypatch.setattr(target, called)


def flip_a_byte(path: Path) -> None:
    """Flips one bit in the middle of the largest record (tensor data) of the torch zip file ``path``."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    at = info.header_offset  # the local header: 30 bytes, then the name and the extra field
    name, extra = (int.from_bytes(data[at + k : at + k + 2], "little") for k in (26, 28))
    start = at + 30 + name + extra
    data[start + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


# --- abtest, calibrate, simulate-logs, demo: another run's directory is refused ---------------------


def test_abtest_refuses_another_runs_directory_and_overwrite_replaces_only_its_files(tmp_path, monkeypatch, capsys):
    out = another_run(tmp_path / "run")
    before = snapshot(out)
    with monkeypatch.context() as patch:
        no_work(patch, "metarec.commands.abtest.run_abtest")
        assert main(["abtest", str(ABTEST), "--out", str(out), *AB_SMALL]) == 2
    captured = capsys.readouterr()
    assert f"out: {out} is not empty" in captured.err and "--overwrite" in captured.err and not captured.out
    assert snapshot(out) == before  # byte-identical, nothing added

    assert main(["abtest", str(ABTEST), "--out", str(out), *AB_SMALL, "--overwrite", "--json"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["design"] == "paired" and set(results["effects"]) == {"greedy"}
    after = snapshot(out)
    for name in ("config.yaml", "checkpoints/last.pt"):  # what abtest does not write is left alone
        assert after[name] == before[name]
    assert (out / "report.html").is_file() and read_marker(out) == {"command": "abtest", "created": False}


def test_a_directory_one_command_made_is_refused_by_another(tmp_path, capsys):
    out = tmp_path / "ab"
    claim_out(out, "abtest")
    (out / "results.json").write_text("{}")  # an earlier abtest's results
    assert made_by(out, "abtest") and not made_by(out, "calibrate")
    assert main(["calibrate", "logs.csv", "--format", "csv", "--out", str(out)]) == 2
    assert "not made by metarec calibrate (it holds a run of metarec abtest)" in capsys.readouterr().err


def test_calibrate_refuses_another_runs_directory_and_overwrite_works(tmp_path, monkeypatch, capsys):
    logs = tmp_path / "logs.csv"
    assert main(["simulate-logs", "--users", "50", "--days", "3", "--out", str(logs)]) == 0
    out = another_run(tmp_path / "run")
    before = snapshot(out)
    capsys.readouterr()
    with monkeypatch.context() as patch:
        no_work(patch, "metarec.commands.calibrate.run_calibration")
        assert main(["calibrate", str(logs), "--format", "csv", "--out", str(out), *FIT_SMALL]) == 2
    assert f"out: {out} is not empty" in capsys.readouterr().err
    assert snapshot(out) == before

    argv = ["calibrate", str(logs), "--format", "csv", "--out", str(out), *FIT_SMALL, "--overwrite", "--json"]
    assert main(argv) == 0
    assert json.loads((out / "fidelity.json").read_text())["holdout_events"] > 0
    after = snapshot(out)
    for name in ("results.json", "config.yaml", "checkpoints/last.pt"):  # what calibrate does not write is left alone
        assert after[name] == before[name]


def test_simulate_logs_refuses_an_existing_file_unless_overwrite(tmp_path, monkeypatch, capsys):
    logs = tmp_path / "logs.csv"
    logs.write_text("precious,logs\n")
    with monkeypatch.context() as patch:
        no_work(patch, "metarec.calibration.synthetic.browse")  # the simulation of every format
        assert main(["simulate-logs", "--users", "5", "--days", "1", "--out", str(logs)]) == 2
        assert f"out: {logs} exists; pass --overwrite" in capsys.readouterr().err
        assert logs.read_text() == "precious,logs\n"
        assert main(["simulate-logs", "--users", "5", "--days", "1", "--out", str(tmp_path)]) == 2
        assert f"out: {tmp_path} is a directory; expected a file" in capsys.readouterr().err
    assert main(["simulate-logs", "--users", "5", "--days", "1", "--out", str(logs), "--overwrite"]) == 0
    assert logs.read_text().startswith("user,item,timestamp,rating,click\n")


@pytest.mark.parametrize("made_by_demo", [False, True])
def test_demo_refuses_a_meta_folder_it_did_not_make(tmp_path, monkeypatch, capsys, made_by_demo):
    """``metarec demo --out .`` in the checkout must not delete the ``meta/`` source package."""
    out = tmp_path / "checkout"
    if made_by_demo:  # OUT is the demo's, but OUT/meta is not
        claim_out(out, "demo")
    sentinel = out / "meta" / "__init__.py"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("# the meta source package\n")
    before = snapshot(out)
    no_work(monkeypatch, "metarec.commands.demo.evaluate")
    no_work(monkeypatch, "metarec.commands.demo.meta_train")
    assert main(["demo", "--out", str(out), "--users", "200", "--meta-config", str(TINY_META)]) == 2
    err = capsys.readouterr().err
    where = out / "meta" if made_by_demo else out
    assert f"out: {where} is not empty and was not made by metarec demo" in err
    assert snapshot(out) == before and sentinel.read_text() == "# the meta source package\n"


# --- an --out that is a file, or cannot be written, stops every command before any work --------------


@pytest.mark.parametrize(
    ("argv", "work"),
    [
        (["abtest", str(ABTEST), *AB_SMALL], "metarec.commands.abtest.run_abtest"),
        (["calibrate", "logs.csv", "--format", "csv"], "metarec.commands.calibrate.run_calibration"),
        (["validate", __file__, "--format", "csv"], "metarec.commands.validate.run_validation"),
        (["validate-ab", __file__, __file__, "--format", "csv"], "metarec.commands.validate_ab._validate"),
        (["demo", "--users", "200", "--meta-config", "none"], "metarec.commands.demo.evaluate"),
        (["train", str(PPO), *PPO_SMALL], "metarec.agents.training.run.train_batched_ppo"),
        (["meta-train", str(TINY_META), "--quiet"], "metarec.meta.train.MetaTrainRun"),
    ],
    ids=["abtest", "calibrate", "validate", "validate-ab", "demo", "train", "meta-train"],
)
def test_out_that_is_a_file_exits_2_before_any_work(tmp_path, monkeypatch, capsys, argv, work):
    target = tmp_path / "results.txt"
    target.write_text("not a directory\n")
    no_work(monkeypatch, work)
    assert main([*argv, "--out", str(target)]) == 2
    captured = capsys.readouterr()
    assert f"out: {target} is a file; expected a directory" in captured.err and not captured.out
    assert target.read_text() == "not a directory\n" and sorted(tmp_path.iterdir()) == [target]
    # a path under a file cannot be written either
    assert main([*argv, "--out", str(target / "run")]) == 2
    assert f"out: cannot write to {target / 'run'}" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == [target]


# --- training runs: restart before the first checkpoint, digests, the saved config -------------------


@pytest.mark.parametrize("resume", [False, True], ids=["again", "resume"])
def test_meta_train_killed_before_its_first_checkpoint_starts_again_in_place(tmp_path, monkeypatch, resume):
    from metarec.meta.rl2 import RL2Trainer

    out = tmp_path / "run"
    argv = ["meta-train", str(TINY_META), "--out", str(out), "--quiet", "--set", "methods=[rl2]"]

    def killed(self: RL2Trainer) -> dict:
        raise KeyboardInterrupt  # as a kill in the first update: no checkpoint yet

    with monkeypatch.context() as patch:
        patch.setattr(RL2Trainer, "step", killed)
        with pytest.raises(KeyboardInterrupt):
            main(argv)
    assert not (out / "checkpoints" / "last.pt").exists() and (out / "config.yaml").is_file()
    assert main([*argv, *(["--resume"] if resume else [])]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["rl2"]["updates"] == 6
    events = [p for p in (out / "tb").rglob("events.out.tfevents.*")]
    assert len(events) == 1  # the killed start's events went with it
    # a finished run is not started over: only --resume continues it
    assert main(argv) == 2


def test_a_directory_holding_only_a_marker_is_empty_for_every_command(tmp_path):
    out = tmp_path / "run"
    claim_out(out, "abtest")  # an abtest that failed at start
    claim_out(out, "train")
    assert read_marker(out) == {"command": "train", "created": True}
    (out / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ValueError, match="is not empty and was not made by metarec abtest"):
        claim_out(out, "abtest")  # config.yaml of a training start: not abtest's to replace
    assert restartable(out, "train") and not restartable(out, "meta-train")
    (out / "tb").mkdir()
    (out / "tb" / "events.out.tfevents.1.host").write_bytes(b"events of the start")
    assert restartable(out, "train")
    claim_out(out, "train")  # a fresh train may start there again, without the leftovers of the start
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    (out / "results.json").write_text("{}")
    assert not restartable(out, "train")


@pytest.fixture(scope="module")
def finished_train_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", str(PPO), "--out", str(out), *PPO_SMALL]) == 0
    return out


def test_a_checkpoint_with_a_flipped_byte_is_refused_by_name(finished_train_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_train_run, out)
    assert main(["train", str(PPO), "--out", str(out), *PPO_SMALL, "--resume"]) == 0  # intact: resumes
    capsys.readouterr()
    checkpoint = out / "checkpoints" / "last.pt"
    flip_a_byte(checkpoint)
    results = (out / "results.json").read_bytes()
    assert main(["train", str(PPO), "--out", str(out), *PPO_SMALL, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {checkpoint} is corrupt" in err and len(err.strip().splitlines()) == 1
    assert (out / "results.json").read_bytes() == results


def test_resume_without_config_yaml_checks_the_checkpoints_config(finished_train_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_train_run, out)
    (out / "config.yaml").unlink()
    changed = ["--set", "seed=1", "--set", "ppo.learning_rate=0.01"]
    assert main(["train", str(PPO), "--out", str(out), *PPO_SMALL, *changed, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "config: ppo, seed differs from the config saved in checkpoint" in err
    assert not (out / "config.yaml").exists()  # the refused config was not written down
    # the same config resumes (a key marked resumable may change) and config.yaml is back
    assert main(["train", str(PPO), "--out", str(out), *PPO_SMALL, "--set", "torch_threads=1", "--resume"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 0
    # and a new run may not start in it
    assert main(["train", str(PPO), "--out", str(out), *PPO_SMALL]) == 2
    assert "pass --resume" in capsys.readouterr().err
