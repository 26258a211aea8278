"""MkDocs hook: the API reference reads metarec's source as one package tree.

metarec's subpackages live in top-level folders (``envs/`` is ``metarec.envs``; ``pyproject.toml`` maps them), so
before the build this links them into ``build/api-src/metarec``, beside copies of the files of ``metarec/`` itself,
where mkdocstrings (griffe) finds ``metarec.envs`` as it finds any package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def link_tree() -> None:
    """(Re)builds ``build/api-src/metarec``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    tree = ROOT / "build" / "api-src"  # mkdocs.yml's mkdocstrings paths
    package = tree / "metarec"
    if tree.exists():
        shutil.rmtree(tree)
    package.mkdir(parents=True)
    for entry in (ROOT / mapping["metarec"]).iterdir():
        if entry.is_dir() and entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
        elif entry.is_file():  # copied: griffe follows a linked __init__.py back to the folder without the rest
            shutil.copy2(entry, package / entry.name)
    for name, folder in mapping.items():
        if name != "metarec":
            (package / name.removeprefix("metarec.")).symlink_to(ROOT / folder)


# Built when MkDocs loads this hook, while it reads mkdocs.yml: mkdocstrings drops a search path that does not
# exist when it sets up its handler, which comes before any event a hook could use.
link_tree()
