"""The documentation site: ``mkdocs build --strict`` passes (every page in the navigation, no broken link, the API
reference generated from the docstrings), and headless Chromium renders its index and an API page."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra (mkdocs, mkdocstrings) is not installed")
    pytest.importorskip("mkdocstrings", reason="the docs extra (mkdocs, mkdocstrings) is not installed")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_the_site_builds_strict_with_every_guide_and_the_api_reference(site):
    for page in ("index.html", "ARCHITECTURE/index.html", "benchmarks/index.html"):
        assert (site / page).is_file(), page
    for guide in sorted((ROOT / "docs" / "guide").glob("*.md")):
        assert (site / "guide" / guide.stem / "index.html").is_file(), guide.name
    envs = (site / "api" / "envs" / "index.html").read_text()
    assert "UserSimVectorEnv" in envs and "array_backend" in envs  # the docstrings, rendered
    assert "Export a recommender" in (site / "guide" / "export" / "index.html").read_text()
    assert "Simulator throughput against RecSim NG" in (site / "benchmarks" / "index.html").read_text()


@pytest.mark.browser
def test_chromium_renders_the_index_and_an_api_page(site, chrome_driver):
    from selenium.webdriver.common.by import By

    chrome_driver.get((site / "index.html").as_uri())
    assert "metarec" in chrome_driver.title
    assert chrome_driver.find_element(By.TAG_NAME, "h1").text == "metarec"
    links = {a.text for a in chrome_driver.find_elements(By.CSS_SELECTOR, "nav a, .wy-menu a")}
    assert {"Environments", "Meta-learning", "metarec.envs"} <= links, links
    chrome_driver.get((site / "api" / "envs" / "index.html").as_uri())
    headings = [h.text for h in chrome_driver.find_elements(By.CSS_SELECTOR, "h2, h3")]
    assert any("UserSimVectorEnv" in text for text in headings), headings
    body = chrome_driver.find_element(By.TAG_NAME, "body")
    assert body.size["height"] > 1000  # laid out, not an empty page
