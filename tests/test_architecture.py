"""The layers of metarec, checked on the source: which module may import which, no cycles, short modules.

Every ``import`` counts, at the top of a module or inside a function, so an import moved into a
function to get around a cycle is still seen. The rule, lowest layer first::

    metarec.{config, io, stats, parallel, runs, reporting, registration}
      <- envs <- agents <- meta | abtest | calibration <- metarec.commands <- metarec.cli

A module imports from its own layer or below. ``meta``, ``abtest`` and ``calibration`` are siblings:
none imports another; what two of them share lives a layer down. Saved recommenders of every kind load
through entry-point strings in :mod:`metarec.agents.registry`, which this test does not count as imports
(they are resolved when used, as in Gymnasium's registry).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"metarec": "metarec", "metarec.envs": "envs", "metarec.agents": "agents", "metarec.meta": "meta",
           "metarec.abtest": "abtest", "metarec.calibration": "calibration"}  # fmt: skip
#: The most lines a module of the library may have.
MAX_LINES = 400
#: Package prefix -> layer; the longest prefix that matches a module decides.
LAYERS = {
    "metarec": 0,
    "metarec.envs": 1,
    "metarec.agents": 2,
    "metarec.meta": 3,
    "metarec.abtest": 3,
    "metarec.calibration": 3,
    "metarec.commands": 4,
    "metarec.cli": 5,
    "metarec.__main__": 5,
}
SIBLINGS = ("metarec.meta", "metarec.abtest", "metarec.calibration")


@dataclass(frozen=True)
class Import:
    """``importer`` imports ``target`` (a module of metarec), naming ``names`` from it, at ``line``."""

    importer: str
    target: str
    names: tuple[str, ...]
    line: int


def module_files() -> dict[str, Path]:
    """Every module of the installed package, by dotted name, from the checkout's folders."""
    modules = {}
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if package == "metarec" and parts and f"metarec.{parts[0]}" in FOLDERS:
                continue  # a folder of the checkout, not of metarec/
            modules[name] = path
    return modules


MODULES = module_files()


def owner(name: str) -> str | None:
    """The module that defines ``name`` (a module, or a name inside one), or None outside metarec."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> Iterator[Import]:
    """Every import of a metarec module in ``module``, at any depth of its syntax tree."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = owner(alias.name)
                if target is not None and alias.name.startswith("metarec"):
                    yield Import(module, target, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            if not base.startswith("metarec"):
                continue
            for alias in node.names:  # `from pkg import module` imports that module
                target = owner(f"{base}.{alias.name}") or owner(base)
                if target is not None:
                    names = (alias.name,) if target == owner(base) and f"{base}.{alias.name}" not in MODULES else ()
                    yield Import(module, target, names, node.lineno)


def layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def sibling(module: str) -> str | None:
    return next((s for s in SIBLINGS if module == s or module.startswith(s + ".")), None)


IMPORTS = [edge for module in sorted(MODULES) for edge in imports_of(module) if edge.target != module]


def test_the_walk_sees_every_package_and_imports_inside_functions():
    assert {"metarec.envs.core.model", "metarec.agents.base", "metarec.meta.rl2", "metarec.abtest.analysis",
            "metarec.calibration", "metarec.parallel", "metarec.cli"} <= set(MODULES)  # fmt: skip
    # imports inside functions count: the registry's import of a built-in recommender, say, is seen
    # wherever it sits; the test of the walk itself is that some edge comes from a nested import
    nested = {
        (module, child.lineno)
        for module, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        for child in ast.walk(node)
        if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("metarec")
    }
    assert all(any(e.importer == m and e.line == line for e in IMPORTS) for m, line in nested)


def test_each_module_imports_only_its_own_layer_or_below():
    upward = [f"{e.importer}:{e.line} imports {e.target}" for e in IMPORTS if layer(e.target) > layer(e.importer)]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_meta_abtest_and_calibration_do_not_import_each_other():
    across = [
        f"{e.importer}:{e.line} imports {e.target}"
        for e in IMPORTS
        if sibling(e.importer) and sibling(e.target) and sibling(e.importer) != sibling(e.target)
    ]
    assert not across, "siblings importing each other:\n" + "\n".join(across)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in IMPORTS:
        graph[e.importer].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{e.importer}:{e.line} imports {name} from {e.target}"
        for e in IMPORTS
        for name in e.names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, "\n".join(private)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_short_enough_to_read_in_one_sitting(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines; split it by concern"


def test_the_rule_catches_what_it_should(tmp_path):
    """The checks on an invented graph: an upward import, a sibling import, a cycle."""
    assert layer("metarec.envs.core.model") < layer("metarec.agents.base") < layer("metarec.meta.rl2")
    assert layer("metarec.meta.rl2") == layer("metarec.abtest.simulate") == layer("metarec.calibration.fit")
    assert layer("metarec.io") < layer("metarec.envs") and layer("metarec.cli") > layer("metarec.commands.train")
    assert sibling("metarec.meta.rl2") != sibling("metarec.abtest.runner")
    assert sibling("metarec.agents.base") is None
    assert owner("metarec.agents.base.Recommender") == "metarec.agents.base"
    assert owner("numpy") is None
