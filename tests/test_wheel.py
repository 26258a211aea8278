"""The wheel a user installs: it carries the shipped configs, the license and one version, and metarec runs
from it alone (``metarec --version``, ``metarec meta-train metarec:meta_tiny``) outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import metarec
from metarec.cli import main
from metarec.config import config_path

ROOT = Path(__file__).parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv*", "runs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (the build writes nothing into the checkout)."""
    source = tmp_path_factory.mktemp("source") / "metarec"
    shutil.copytree(ROOT, source, ignore=SKIP)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (built,) = out.glob("metarec-*.whl")
    return built


def test_the_wheel_ships_the_configs_the_license_and_one_version(wheel) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(info).decode())
        license_text = archive.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode()
    shipped = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert shipped and {f"metarec/configs/{name}" for name in shipped} <= names
    assert metadata["Version"] == metarec.__version__  # the version is written once, in metarec/__init__.py
    assert metadata["License-Expression"] == "Apache-2.0" and "Apache License" in license_text
    assert metadata.get_all("Classifier") and not any("License ::" in c for c in metadata.get_all("Classifier"))


def test_metarec_runs_from_the_wheel_alone_with_a_shipped_config(wheel, tmp_path) -> None:
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    work = tmp_path / "elsewhere"  # no checkout, no configs/ around
    work.mkdir()

    def metarec_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "metarec", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip

    where = subprocess.run([sys.executable, "-c", "import metarec; print(metarec.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(unpacked)  # the wheel's metarec, not the checkout's
    version = metarec_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"metarec {metarec.__version__}"
    done = metarec_cli(
        "meta-train", "metarec:meta_tiny", "--out", "tiny", "--quiet", "--json", "--set", "methods=[reptile]"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["methods"] == {"reptile": 4}
    assert (work / "tiny" / "methods" / "reptile.pt").is_file()
    demo = metarec_cli("demo", "--help")
    assert demo.returncode == 0 and "metarec:meta_demo" in demo.stdout


def test_a_shipped_config_is_named_metarec_colon_name_and_an_unknown_one_is_listed(capsys, tmp_path) -> None:
    assert config_path("metarec:meta_tiny") == config_path("metarec:meta_tiny.yaml")
    assert config_path("metarec:meta_tiny").read_bytes() == (ROOT / "configs" / "meta_tiny.yaml").read_bytes()
    assert config_path("configs/meta_tiny.yaml") == Path("configs/meta_tiny.yaml")  # a path stays a path
    assert main(["meta-train", "metarec:nope", "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("metarec meta-train: error: config: no shipped config 'metarec:nope'; expected "
                            "metarec:NAME with NAME one of abtest_clickbait, abtest_demo, ")  # fmt: skip
    assert "meta_tiny" in error and "\n" not in error and not (tmp_path / "x").exists()
