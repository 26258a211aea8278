"""The A/B-test report: files written, numbers formatted and present, HTML self-contained and escaped, and the
conclusion following the numbers (significance, guardrail failure, SRM warning)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from metarec.abtest.report import fmt, fmt_ci, fmt_p, fmt_pct, summary_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<b>x</b>"
ARMS = ["popular", "linucb", EVIL]
METRICS = ["engagement", "ctr", "ndcg@5", "retention"]
DAYS = 5
HASH = "3f5a9c0e" * 8


def _effect(absolute: float, relative: float, p: float, significant: bool) -> dict[str, Any]:
    return {
        "absolute": absolute,
        "ci": [absolute - 1.25, absolute + 1.25],
        "relative": relative,
        "relative_ci": [relative - 0.004, relative + 0.004],
        "p_value": p / 3,
        "p_adjusted": p,
        "significant": significant,
        "cuped": False,
    }


def make_results() -> dict[str, Any]:
    """3 arms, 5 days, 4 metrics (one with ``@``), a NaN value, an infinite bound and one failed guardrail."""
    values = {
        "popular": {"engagement": 812.345, "ctr": 0.41, "ndcg@5": 0.3125, "retention": 0.9},
        "linucb": {"engagement": 824.4567, "ctr": 0.4321, "ndcg@5": 0.35, "retention": 0.88},
        EVIL: {"engagement": 811.0, "ctr": 0.405, "ndcg@5": math.nan, "retention": 0.901},
    }
    effects = {
        "linucb": {
            "engagement": _effect(12.1117, 0.01491, 1e-9, True),
            "ctr": _effect(0.0221, 0.0539, 0.0123, True),
            "ndcg@5": _effect(0.0375, 0.12, 0.0004567, True),
            "retention": _effect(-0.02, -0.0222, 0.2, False),
        },
        EVIL: {
            "engagement": _effect(-1.345, -0.001656, 0.73219, False),
            "ctr": _effect(-0.005, -0.0122, 0.5, False),
            "ndcg@5": {**_effect(math.nan, math.nan, math.nan, False), "ci": [None, None]},
            "retention": _effect(0.001, 0.0011, 0.9, False),
        },
    }
    days = list(range(1, DAYS + 1))
    return {
        "name": "abtest_demo",
        "design": "paired",
        "config_hash": HASH,
        "seed": 7,
        "seeds": {"env": {arm: i for i, arm in enumerate(ARMS)}, "agents": {arm: 10 + i for i, arm in enumerate(ARMS)}},
        "days": DAYS,
        "pre_period_days": 2,
        "control": "popular",
        "primary_metric": "engagement",
        "alpha": 0.05,
        "correction": "holm",
        "metrics": {
            "engagement": {"description": "minutes watched per user", "kind": "mean", "higher_is_better": True},
            "ctr": {"description": "clicks per impression", "kind": "ratio", "higher_is_better": True},
            "ndcg@5": {"description": "ranking quality of the top 5", "kind": "mean", "higher_is_better": True},
            "retention": {"description": "share of users still active", "kind": "mean", "higher_is_better": True},
        },
        "arms": {arm: {"agent": arm, "users": 1000, "metrics": values[arm]} for arm in ARMS},
        "srm": {
            "p_value": 0.5321,
            "flagged": False,
            "counts": [1000, 1000, 1000],
            "expected_shares": [1 / 3, 1 / 3, 1 / 3],
        },
        "effects": effects,
        "guardrails": {
            "linucb": {"retention": {"status": "fail", "max_drop": 0.01, "relative_ci": [-0.03, -0.014]}},
            EVIL: {"retention": {"status": "pass", "max_drop": 0.01, "relative_ci": [-0.004, 0.006]}},
        },
        "per_day": {
            "days": days,
            "arms": {arm: {m: [v + 0.01 * d for d in days] for m, v in values[arm].items()} for arm in ARMS},
            "effects": {
                arm: {
                    m: {
                        "absolute": [0.1 * d for d in days],
                        "ci_low": [0.1 * d - 1 for d in days],
                        "ci_high": [0.1 * d + 1 for d in days],
                        "relative": [0.001 * d for d in days],
                    }
                    for m in METRICS
                }
                for arm in ARMS[1:]
            },
        },
        "sequential": {
            "linucb": {
                "metric": "engagement",
                "method": "group-sequential, Lan-DeMets O'Brien-Fleming spending",
                "z": [0.5, 2.0, 4.2, 5.0, 6.1],
                "bounds": [math.inf, 4.3, 3.4, 2.9, 2.5],
                "crossed_day": 3,
                "ci_low": [-1.0, 0.1, 0.5, 0.8, 1.25],
                "ci_high": [3.0, 2.5, 2.2, 2.0, 1.75],
            },
            EVIL: {
                "metric": "engagement",
                "method": "group-sequential, Lan-DeMets O'Brien-Fleming spending",
                "z": [math.nan, -0.3, 0.2, -0.4, -0.1],
                "bounds": [math.inf, 4.3, 3.4, 2.9, 2.5],
                "crossed_day": None,
                "ci_low": [-3.0, -2.0, -1.5, -1.2, -1.0],
                "ci_high": [3.0, 2.0, 1.5, 1.2, 1.0],
            },
        },
        "coverage": {"popular": 0.41, "linucb": 0.87, EVIL: 0.5},
        "wall_seconds": 12.5,
    }


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    # Through JSON as the runner saves it (NaN and Infinity survive with Python's json).
    return json.loads(json.dumps(make_results()))


@pytest.fixture(scope="module")
def report(results: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_report(results, tmp_path_factory.mktemp("report") / "nested" / "out")


@pytest.fixture(scope="module")
def md(report: dict[str, Path]) -> str:
    return report["report.md"].read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def html(report: dict[str, Path]) -> str:
    return report["report.html"].read_text(encoding="utf-8")


def md_row(md: str, *first_cells: str) -> list[str]:
    """The cells of the first Markdown table row whose leading cells are ``first_cells``."""
    for line in md.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[: len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no row starting with {first_cells}")


def section(text: str, title: str) -> str:
    """The Markdown section ``## title`` up to the next section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match is not None, f"no section {title}"
    return match.group(1)


# ---------------------------------------------------------------------------------------------------------------------
# Formatting


def test_formatting_helpers() -> None:
    assert fmt(812.345) == "812.3"
    assert fmt(0.0123456) == "0.01235"
    assert fmt(-1.345) == "-1.345"
    assert fmt(None) == fmt(math.nan) == fmt("x") == "—"
    assert (fmt(math.inf), fmt(-math.inf)) == ("∞", "-∞")
    assert (fmt_p(0.01234), fmt_p(1e-9), fmt_p(1.0), fmt_p(None)) == ("0.0123", "<1e-4", "1.0000", "—")
    assert fmt_p(math.inf) and fmt_pct(math.inf)  # never raises
    assert (fmt_pct(0.015), fmt_pct(-0.001656), fmt_pct(math.nan)) == ("+1.50%", "-0.17%", "—")
    assert fmt_ci([1.0, 2.5]) == "[1, 2.5]"
    assert fmt_ci([None, math.nan]) == fmt_ci(None) == "—"
    assert fmt_ci([-0.03, 0.02], fmt_pct) == "[-3.00%, +2.00%]"


# ---------------------------------------------------------------------------------------------------------------------
# Files


def test_returns_every_file(report: dict[str, Path]) -> None:
    assert set(report) == {
        "report.md",
        "report.html",
        "daily_engagement.png",
        "daily_effect_engagement.png",
        "effects.png",
        "sequential.png",
    }
    for name, path in report.items():
        assert path.is_file() and path.name == name
        if name.endswith(".png"):
            assert path.parent.name == "plots"
            assert path.read_bytes()[:8] == PNG_MAGIC
            assert path.stat().st_size > 5000  # something was drawn


# ---------------------------------------------------------------------------------------------------------------------
# Content


@pytest.mark.parametrize("document", ["md", "html"])
def test_documents_hold_the_numbers(document: str, results: dict[str, Any], request: pytest.FixtureRequest) -> None:
    text = request.getfixturevalue(document)
    for arm, per_metric in results["effects"].items():
        for effect in per_metric.values():
            if not math.isnan(effect["absolute"]):
                assert fmt(effect["absolute"]) in text
                assert fmt_ci(effect["ci"]) in text
                assert fmt_pct(effect["relative"]) in text
        assert arm in text or arm == EVIL
    for value in (
        "abtest_demo",
        HASH,
        "paired",
        "holm",
        fmt_p(results["srm"]["p_value"]),
        "0.5321",
        "not crossed",
        "day 3",
        "fail",
        "ndcg@5",
        "Design",
        "Results",
        "Guardrails",
        "Effects over time",
        "Sequential monitoring",
        "Conclusion",
    ):
        assert value in text, value


def test_markdown_results_rows(md: str, results: dict[str, Any]) -> None:
    effect = results["effects"]["linucb"]["engagement"]
    assert md_row(md, "engagement", "linucb") == [
        "engagement",
        "linucb",
        "812.3",
        "824.5",
        "12.11",
        "[10.86, 13.36]",
        "+1.49%",
        "<1e-4",
        "*",
    ]
    assert md_row(md, "ctr", "linucb")[7:] == ["0.0123", "*"]
    assert md_row(md, "retention", EVIL)[8] == ""  # not significant: no mark
    # The NaN value of the third arm and its missing effect print as a dash.
    assert md_row(md, "ndcg@5", EVIL)[3:8] == ["—"] * 5
    assert fmt_ci(effect["relative_ci"], fmt_pct) in md  # the conclusion quotes the relative interval
    # The primary metric is the first row of the results table.
    assert md.index("| engagement | linucb |") < md.index("| ctr | linucb |")


def test_markdown_guardrails_and_sequential(md: str) -> None:
    assert md_row(md, "linucb", "retention", "fail")[3:] == ["1.00%", "[-3.00%, -1.40%]"]
    assert md_row(md, EVIL, "retention", "pass")
    assert md_row(md, "linucb", "engagement", "day 3")[3:] == ["6.1", "2.5", "[1.25, 1.75]"]
    assert md_row(md, EVIL, "engagement", "not crossed")
    assert "![" in md and "(plots/daily_engagement.png)" in md and "(plots/sequential.png)" in md


def test_conclusion_follows_the_numbers(md: str) -> None:
    text = section(md, "Conclusion")
    assert "linucb increased engagement by 1.49%" in text
    assert "significant after holm correction" in text
    assert "Guardrail failed: retention." in text
    assert f"{EVIL} did not change engagement significantly" in text
    assert "not trustworthy" not in text


def test_html_is_self_contained(html: str, report: dict[str, Path]) -> None:
    plots = [name for name in report if name.endswith(".png")]
    assert html.count("data:image/png;base64,") == len(plots) == 4
    assert 'src="http' not in html and "<script" not in html.lower()
    assert "<link" not in html and "<style>" in html
    assert html.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in html


def test_html_escapes_names(html: str) -> None:
    assert EVIL not in html
    assert html.count("&lt;b&gt;x&lt;/b&gt;") >= 5  # the arm shows up, escaped, in tables and paragraphs
    assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in html


def test_summary_table(results: dict[str, Any]) -> None:
    table = summary_table(results)
    for name in [*ARMS, *METRICS]:
        assert name in table
    header = table.splitlines()[0].split()
    assert header[:4] == ["metric", "arm", "control", "treatment"] and "95%" in header and "p (adj.)" in table
    row = next(line for line in table.splitlines() if line.startswith("engagement") and "linucb" in line)
    assert row.split()[2:] == ["812.3", "824.5", "12.11", "[10.86,", "13.36]", "+1.49%", "<1e-4", "*"]
    assert "SRM" in table and "p = 0.5321" in table and "no mismatch" in table
    assert "Guardrails: 1 fail (linucb: retention), 1 pass." in table


# ---------------------------------------------------------------------------------------------------------------------
# Optional parts and warnings


def test_flagged_srm_and_empty_optional_parts(results: dict[str, Any], tmp_path: Path) -> None:
    flagged = copy.deepcopy(results)
    flagged["srm"].update(p_value=1e-7, flagged=True, counts=[1000, 1000, 800])
    flagged.update(sequential={}, guardrails={}, coverage={}, primary_metric="ndcg@5")
    files = write_report(flagged, tmp_path)
    assert set(files) == {"report.md", "report.html", "daily_ndcg_5.png", "daily_effect_ndcg_5.png", "effects.png"}
    md = files["report.md"].read_text(encoding="utf-8")
    conclusion = section(md, "Conclusion")
    assert "Warning: the sample-ratio mismatch check flagged (p <1e-4)" in conclusion
    assert "not trustworthy" in conclusion
    assert "FLAGGED" in section(md, "Results") and "800" in section(md, "Results")
    assert "No sequential monitoring" in section(md, "Sequential monitoring")
    assert "none configured" in section(md, "Guardrails")
    html = files["report.html"].read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3
    assert '<p class="warning">' in html
    assert "FLAGGED" in summary_table(flagged)


def test_null_values_from_strict_json(results: dict[str, Any], tmp_path: Path) -> None:
    """A results.json written without NaN/Infinity (nulls instead) still renders, with dashes."""
    nulled = copy.deepcopy(results)
    nulled["arms"]["linucb"]["metrics"]["ctr"] = None
    nulled["effects"]["linucb"]["ctr"].update(absolute=None, ci=None, p_adjusted=None)
    nulled["sequential"]["linucb"]["bounds"][0] = None
    nulled["per_day"]["arms"]["popular"]["engagement"][2] = None
    row = md_row(write_report(nulled, tmp_path)["report.md"].read_text(encoding="utf-8"), "ctr", "linucb")
    assert row[3:6] == ["—", "—", "—"] and row[7] == "—"
