import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import metarec  # noqa: F401  (registers the environments)

# Two test workers on two cores: one torch thread each keeps them from fighting.
torch.set_num_threads(int(os.environ.get("METAREC_TEST_THREADS", "1")))


@pytest.fixture
def cpu_generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def memory_space() -> Any:
    """A small DriftingUsers observation space for RL²'s memory: 4 candidates of a 2-d embedding and a length,
    ids 0-9, and a history of 3 rows."""
    from gymnasium import spaces

    return spaces.Dict(
        {
            "candidates": spaces.Box(-1e9, 1e9, (4, 2 + 1), "float32"),
            "candidate_ids": spaces.Box(0, 9, (4,), "int64"),
            "history": spaces.Box(-1e9, 1e9, (3, 2 + 3), "float32"),
        }
    )


# ---------------------------------------------------------------------------------------------------------------------
# Headless Chromium for the tests that render HTML (the reports, the documentation site)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DEBIAN_PACKAGES = ("chromium", "chromium-driver")
HOW_TO_INSTALL = (
    f"install Debian's packages `{' '.join(DEBIAN_PACKAGES)}` with the system package manager to run these tests"
)
# The network is closed: no sandbox (root in a container), no GPU, nothing that phones home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1600",
]


# ---------------------------------------------------------------------------------------------------------------------
# Chromium and ChromeDriver


@pytest.fixture(scope="session")
def chrome_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium session of Selenium, with a new empty profile."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install selenium")
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} ({', '.join(missing)} missing): {HOW_TO_INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in [*CHROMIUM_ARGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(arg)
    # With the driver's path given, Selenium Manager (which would download one) is not asked; offline anyway.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()
