"""The installed package maps the top-level folders, and only them, under ``metarec``."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


TOP_LEVEL = {"metarec": "metarec", "metarec.envs": "envs", "metarec.agents": "agents", "metarec.meta": "meta",
             "metarec.abtest": "abtest", "metarec.calibration": "calibration", "metarec.configs": "configs"}


def folder_of(package: str, mapping: dict[str, str]) -> Path:
    """The folder setuptools installs ``package`` from: its most specific package-dir entry, then the rest."""
    root = max((name for name in mapping if package == name or package.startswith(name + ".")), key=len)
    return ROOT / mapping[root] / package[len(root):].lstrip(".").replace(".", "/")


def test_every_subpackage_is_listed_and_mapped():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    assert mapping == TOP_LEVEL, "package-dir maps each top-level folder, and only them, under metarec"
    listed = set(config["packages"])
    on_disk = {
        ".".join([name, *p.parent.relative_to(ROOT / folder).parts])
        for name, folder in TOP_LEVEL.items()
        for p in (ROOT / folder).rglob("__init__.py")
    }
    assert on_disk == listed, f"in pyproject but not on disk, or the reverse: {sorted(on_disk ^ listed)}"
    for name in listed:
        assert (folder_of(name, mapping) / "__init__.py").exists(), f"{name} has no __init__.py where it maps"


def test_import_paths_resolve_to_the_top_level_folders():
    import metarec.abtest
    import metarec.agents
    import metarec.calibration
    import metarec.envs
    import metarec.meta

    for module, folder in [
        (metarec.envs, "envs"),
        (metarec.agents, "agents"),
        (metarec.meta, "meta"),
        (metarec.abtest, "abtest"),
        (metarec.calibration, "calibration"),
    ]:
        assert Path(module.__file__).resolve().parent == ROOT / folder
