"""The HTML reports as a reader sees them: rendered by headless Chromium, driven by Selenium.

Runs a small A/B test and a small calibration, opens ``report.html`` and ``fidelity.html`` as ``file://`` URLs and
checks that every plot has loaded, that the page has no script, that the key numbers of ``results.json`` and
``fidelity.json`` are in the rendered text, and that a screenshot is not blank.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``), which the
tests never install: where either is missing they are skipped with a message naming the packages (CI installs them
with the system package manager first, in ``.ci/run``). Selenium is pointed at both binaries, so it never tries to
download a driver or a browser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image as mpimg

from metarec.abtest.report import fmt, fmt_ci, fmt_p, fmt_pct
from metarec.cli import main

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# The runs that write the reports


@pytest.fixture(scope="module")
def abtest_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``metarec abtest configs/abtest_demo.yaml`` with 300 users for 3 days: ``results.json`` and ``report.html``."""
    out = tmp_path_factory.mktemp("abtest")
    overrides = ["users=300", "days=3", "torch_threads=1"]
    argv = ["abtest", str(ROOT / "configs" / "abtest_demo.yaml"), "--out", str(out), "--quiet", "--json"]
    assert main([*argv, *(arg for item in overrides for arg in ("--set", item))]) == 0
    return out


@pytest.fixture(scope="module")
def calibration_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``metarec simulate-logs`` (300 users, 3 days), then a short ``metarec calibrate``: ``fidelity.json`` and
    ``fidelity.html``."""
    out = tmp_path_factory.mktemp("calibration")
    logs = out / "logs.csv"
    assert main(["simulate-logs", "--users", "300", "--days", "3", "--out", str(logs)]) == 0
    overrides = ["epochs=3", "max_clusters=3", "refit_steps=20", "embedding_dim=8"]
    argv = ["calibrate", str(logs), "--format", "csv", "--out", str(out / "calibrated"), "--json"]
    assert main([*argv, *(arg for item in overrides for arg in ("--set", item))]) == 0
    return out / "calibrated"


# ---------------------------------------------------------------------------------------------------------------------
# What the browser shows

IMAGES_JS = """
return Array.from(document.images).map(img => ({
    complete: img.complete, width: img.naturalWidth, height: img.naturalHeight, src: img.src.slice(0, 22),
}));
"""
TABLE_ROWS_JS = "return Array.from(document.querySelectorAll('tr')).map(tr => Array.from(tr.cells, c => c.innerText));"


def open_report(driver: Any, path: Path) -> str:
    """Opens ``path`` and waits until every image has loaded or failed; returns the page's rendered text."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)")
    )
    return driver.execute_script("return document.body.innerText")


def distinct_colours(png: Path) -> int:
    """The number of distinct RGB colours of an image file."""
    rgb = np.round(mpimg.imread(png)[..., :3] * 255).astype(np.uint32)  # [H, W, 3]
    return int(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]).size)


def check_self_contained_page(driver: Any, screenshots: Path) -> None:
    """At least one image, every one loaded from a ``data:image/png`` URI, no script, screenshots that are not blank:
    of the window (``screenshots/page.png``) and of the first plot as drawn on the page (``screenshots/plot.png``)."""
    from selenium.webdriver.common.by import By

    images = driver.execute_script(IMAGES_JS)
    assert images, "the report shows no plot"
    broken = [image for image in images if not (image["complete"] and image["width"] > 0 and image["height"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert {image["src"] for image in images} == {"data:image/png;base64,"}
    assert driver.execute_script("return document.scripts.length") == 0
    screenshots.mkdir(parents=True, exist_ok=True)
    page, plot = screenshots / "page.png", screenshots / "plot.png"
    assert driver.save_screenshot(str(page))
    assert min(mpimg.imread(page).shape[:2]) >= 400, f"{page} is too small"
    assert distinct_colours(page) > 1, f"{page} is blank"
    # a plot has axes, text and coloured lines: far more than a few colours once it is really drawn
    assert driver.find_element(By.TAG_NAME, "img").screenshot(str(plot))
    assert distinct_colours(plot) > 16, f"{plot} shows no plot"


def table_row(driver: Any, *first_cells: str) -> list[str]:
    """The cells of the one table row that begins with ``first_cells``."""
    rows = [row for row in driver.execute_script(TABLE_ROWS_JS) if tuple(row[: len(first_cells)]) == first_cells]
    assert len(rows) == 1, f"expected one table row starting with {first_cells}, found {rows}"
    return rows[0]


# ---------------------------------------------------------------------------------------------------------------------
# Tests


def test_abtest_report_renders_its_plots_and_primary_effects(abtest_run, chrome_driver, tmp_path):
    results = json.loads((abtest_run / "results.json").read_text())
    text = open_report(chrome_driver, abtest_run / "report.html")
    check_self_contained_page(chrome_driver, tmp_path)

    assert f"A/B test report: {results['name']}" in text
    primary = results["primary_metric"]
    treatments = [arm for arm in results["arms"] if arm != results["control"]]
    assert treatments
    for arm in treatments:
        effect = results["effects"][arm][primary]
        expected = [
            fmt(effect["absolute"]),
            fmt_ci(effect["ci"]),
            fmt_pct(effect["relative"]),
            fmt_p(effect["p_adjusted"]),
        ]
        for shown in expected:
            assert shown in text, f"{arm}: {shown!r} is not on the page"
        # the results table: metric, arm, control, treatment, abs. effect, CI, lift, p (adj.), sig.
        assert table_row(chrome_driver, primary, arm)[4:8] == expected


def test_fidelity_report_renders_its_plots_and_targets(calibration_run, chrome_driver, tmp_path):
    fidelity = json.loads((calibration_run / "fidelity.json").read_text())
    text = open_report(chrome_driver, calibration_run / "fidelity.html")
    check_self_contained_page(chrome_driver, tmp_path)

    assert "Calibration fidelity: logs.csv" in text
    ks, gini_real, gini_sim = (
        fmt(fidelity[key]) for key in ("rating_ks", "popularity_gini_real", "popularity_gini_sim")
    )
    assert f"KS distance between the real and simulated ratings {ks}" in text
    assert f"simulated {gini_sim} vs real {gini_real}" in text
    # the Numbers tables: real and simulated side by side, then the other numbers
    assert table_row(chrome_driver, "popularity_gini") == ["popularity_gini", gini_real, gini_sim]
    assert table_row(chrome_driver, "rating_ks") == ["rating_ks", ks]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``metarec demo`` on 200 users with ``configs/meta_tiny.yaml``: ``report.html`` of the whole job."""
    out = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--out", str(out), "--users", "200", "--meta-config", str(ROOT / "configs" / "meta_tiny.yaml")]
    assert main(argv) == 0
    return out


def test_demo_report_renders_adaptation_and_the_ab_test(demo_run, chrome_driver, tmp_path):
    summary = json.loads((demo_run / "results.json").read_text())
    text = open_report(chrome_driver, demo_run / "report.html")
    check_self_contained_page(chrome_driver, tmp_path)
    assert len(chrome_driver.execute_script(IMAGES_JS)) >= 2  # the adaptation curves and the daily effects
    adaptation = summary["meta"]["adaptation"]
    best = adaptation["best_meta_method"]
    first = adaptation["methods"][best]["normalised_return"][0]
    assert f"The best meta-learner is {best}: {fmt(first)} of the way from random to the oracle" in text
    # the adaptation table, session 1 (the guardrail table may have a row starting with the method too)
    rows = [row for row in chrome_driver.execute_script(TABLE_ROWS_JS) if row[:1] == [best]]
    assert any(row[1].startswith(fmt(first)) for row in rows), rows
    ab = json.loads((demo_run / "abtest" / "results.json").read_text())
    effect = ab["effects"]["rl2"][ab["primary_metric"]]
    assert table_row(chrome_driver, ab["primary_metric"], "rl2")[4:8] == [
        fmt(effect["absolute"]),
        fmt_ci(effect["ci"]),
        fmt_pct(effect["relative"]),
        fmt_p(effect["p_adjusted"]),
    ]
