"""The installed package maps the top-level folders, and only them, under ``metarec``."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_and_mapped():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    listed = set(config["packages"])
    on_disk = {"metarec"} | {
        f"metarec.{p.parent.relative_to(ROOT).as_posix().replace('/', '.')}"
        for folder in ("envs", "agents", "meta", "abtest")
        for p in (ROOT / folder).rglob("__init__.py")
    }
    on_disk |= {f"metarec.{p.parent.name}" for p in (ROOT / "metarec").glob("*/__init__.py")}
    assert on_disk <= listed, f"packages missing from pyproject: {sorted(on_disk - listed)}"
    assert listed <= set(mapping), f"packages without a package-dir entry: {sorted(listed - set(mapping))}"
    for name, folder in mapping.items():
        assert (ROOT / folder / "__init__.py").exists(), f"{name} -> {folder} has no __init__.py"


def test_import_paths_resolve_to_the_top_level_folders():
    import metarec.abtest
    import metarec.agents
    import metarec.envs
    import metarec.meta

    for module, folder in [
        (metarec.envs, "envs"),
        (metarec.agents, "agents"),
        (metarec.meta, "meta"),
        (metarec.abtest, "abtest"),
    ]:
        assert Path(module.__file__).resolve().parent == ROOT / folder
