"""The ``metarec`` command: every subcommand shown in the README runs, and bad input is named."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metarec.cli import main
from metarec.registration import ENVIRONMENTS

ROOT = Path(__file__).resolve().parents[1]


def test_envs_lists_every_id_with_a_description(capsys):
    assert main(["envs"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [e.id for e in ENVIRONMENTS]
    assert all(len(line.split(maxsplit=1)[1]) > 20 for line in lines)


def test_evaluate_prints_one_json_line_with_the_documented_fields(capsys):
    assert main(["evaluate", "--env", "metarec/DriftingUsers-v0", "--agent", "oracle", "--users", "50", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert {"env", "agent", "users", "mean_return", "ci95"} <= set(result)
    assert result["users"] == 50 and result["agent"] == "oracle" and result["ci95"][1] > result["ci95"][0]


def test_evaluate_is_reproducible_for_a_seed(capsys):
    args = ["evaluate", "--env", "metarec/RecSimInterestEvolution-v0", "--agent", "random", "--users", "64", "--json"]
    main([*args, "--seed", "4"])
    main([*args, "--seed", "4"])
    main([*args, "--seed", "5"])
    a, b, c = (json.loads(line)["mean_return"] for line in capsys.readouterr().out.strip().splitlines())
    assert a == b and a != c


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--env", "metarec/DriftingUsers-v0", "--agent", "no-such-agent"], "agent: expected one of"),
        (["evaluate", "--env", "metarec/DriftingUsers-v0", "--agent", "random", "--device", "tpu"], "device"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_evaluate_and_simulate_logs_take_the_envs_keyword_arguments(tmp_path, capsys):
    from metarec.agents.evaluation import evaluate
    from metarec.calibration.synthetic import simulate_logs

    kwargs = {"population": {"session_budget": 4.0}}
    argv = ["evaluate", "--env", "metarec/DriftingUsers-v0", "--agent", "random", "--users", "20", "--json"]
    assert main([*argv, "--env-kwargs", json.dumps(kwargs)]) == 0
    shorter = json.loads(capsys.readouterr().out)
    expected = evaluate("metarec/DriftingUsers-v0", "random", 20, env_kwargs=kwargs)
    assert shorter["mean_return"] == expected["mean_return"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["mean_length"] > shorter["mean_length"]  # the default budget is longer
    out = tmp_path / "logs.csv"
    assert main(["simulate-logs", "--users", "5", "--days", "2", "--out", str(out), "--json", "--env-kwargs",
                 json.dumps(kwargs)]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["events"] == len(simulate_logs(
        "metarec/DriftingUsers-v0", 5, 2, env_kwargs=kwargs)["user"])  # fmt: skip
    for bad, message in [("[1]", "expected a JSON object, got list"), ("{", "expected a JSON object, got '{'"),
                         ('{"a": NaN}', "(NaN is not a number JSON allows)")]:  # fmt: skip
        assert main([*argv, "--env-kwargs", bad]) == 2
        error = capsys.readouterr().err
        assert "argument --env-kwargs: " in error and message in error and error.count("\n") == 1
    assert main([*argv, "--env-kwargs", '{"bogus": 1}']) == 2
    assert "bogus: unknown field" in capsys.readouterr().err


def test_bad_numbers_are_rejected_by_the_parser():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "metarec",
            "evaluate",
            "--env",
            "metarec/DriftingUsers-v0",
            "--agent",
            "random",
            "--users",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "expected a positive integer, got 0" in proc.stderr


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    """Every ```python block of the README and the documentation's pages runs as written; the SB3 snippet logs
    to TensorBoard what it says."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    blocks = [(page, block) for page in pages
              for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]  # fmt: skip
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    for page, block in blocks:
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), {})
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / "sb3_snippet" / "tb")).Reload()
    assert {"charts/ctr", "charts/engagement", "charts/episode_return", "charts/steps_per_second"} <= set(
        events.Tags()["scalars"]
    )


def test_demo_runs_end_to_end_with_an_ab_test(tmp_path, capsys):
    tiny = Path(__file__).parents[1] / "configs" / "meta_tiny.yaml"
    assert main(["demo", "--out", str(tmp_path), "--users", "200", "--meta-config", str(tiny), "--json"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    captured = capsys.readouterr()
    # --json: one line of strict JSON on stdout; the tables and progress go to stderr
    lines = captured.out.splitlines()
    assert len(lines) == 1, captured.out
    line = json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert line["results"] == str(tmp_path / "results.json") and line["seconds"] == results["seconds"]
    assert line["environments"]["metarec/DriftingUsers-v0"]["oracle"] == results["results"][0]["oracle"]["mean_return"]
    curves = results["meta"]["adaptation"]["methods"]
    assert line["meta"]["normalised_return"]["rl2"] == curves["rl2"]["normalised_return"]
    assert line["abtest"]["rl2"]["relative"] == results["abtest"]["rl2"]["relative"]
    assert {row["env"] for row in results["results"]} >= {"metarec/DriftingUsers-v0"}
    # the A/B test serves the meta-learned RL² recommender to users of a held-out population
    assert set(results["abtest"]) == {"linucb", "rl2", "report"}
    report = (tmp_path / "abtest" / "report.html").read_text()
    assert "rl2" in report and "meta-test" in report and "data:image/png;base64," in report
    printed = captured.err
    assert "A/B test: popular (control) vs linucb vs rl2" in printed
    meta = results["meta"]["adaptation"]
    assert meta["split"] == "meta-test" and meta["best_meta_method"] in ("rl2", "icl", "maml", "fomaml", "reptile")
    assert (tmp_path / "meta" / "adaptation_test.png").is_file()
    # the other held-out splits: a drift regime and a catalogue domain never trained on
    others = results["meta"]["other_splits"]
    assert set(others) == {"meta-test-regime", "meta-test-domain"}
    assert all(others[name]["split"] == name for name in others)
    assert (tmp_path / "meta" / "adaptation_meta-test-domain.png").is_file()
    assert f"Best meta-learner: {meta['best_meta_method']}" in printed
    # one report for the whole job: what was simulated, adaptation with intervals, the A/B test, a conclusion
    page = (tmp_path / "report.html").read_text()
    headings = ("What was simulated", "Adaptation to new users", "Adaptation on meta-test-regime",
                "Adaptation on meta-test-domain", "A/B test", "Guardrails", "Conclusion")  # fmt: skip
    for heading in headings:
        assert f"<h2>{heading}</h2>" in page
    assert page.count("data:image/png;base64,") >= 4 and "<script" not in page
    assert f"The best meta-learner is {meta['best_meta_method']}" in page
    assert (tmp_path / "report.md").is_file() and "the report:" in printed


def test_every_command_takes_json_and_every_option_says_what_it_is_and_its_default():
    import argparse

    from metarec.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"envs", "evaluate", "train", "abtest", "meta-train", "meta-eval", "calibrate", "validate",
                             "validate-ab", "export", "simulate-logs", "demo"}  # fmt: skip
    for name, command in commands.items():
        assert "--json" in command._option_string_actions, f"metarec {name} has no --json"
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            option = action.option_strings[0]
            assert action.help, f"metarec {name} {option} has no help"
            if action.default is not None and action.default is not False:
                assert "default" in action.help or f"(default: {action.default})" in text, f"metarec {name} {option}"


def test_json_keeps_stdout_to_one_line_while_progress_bars_run(tmp_path):
    """With progress on (no --quiet), stable-baselines3's progress bar and the run's notes go to stderr, and
    stdout is the one JSON line."""
    import contextlib
    import io

    pytest.importorskip("stable_baselines3")
    config = tmp_path / "sb3.yaml"
    config.write_text("algo: sb3-ppo\nenv: metarec/DriftingUsers-v0\ntotal_steps: 64\nsb3: {num_envs: 4, "
                      "algo_kwargs: {n_steps: 16, batch_size: 32}}\neval: {users: 8}\n")  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["train", str(config), "--out", str(tmp_path / "run"), "--json"]) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, out.getvalue()
    result = json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert result["algo"] == "sb3-ppo" and result["out"] == str(tmp_path / "run")
    assert err.getvalue(), "no progress on stderr"
