"""The package's layout: no import cycles, no hidden ones behind function-local imports, and the record light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "resnets"
# Only these modules import other modules of the package inside functions: the command line and its commands, and the
# package's lazy names (PEP 562), so that `resnets --help` and a mistyped option do not wait for torch and fastai.
LAZY = {"cli", "commands", "__init__", "__main__"}
LOCAL_OK: dict = {}  # (resnets.deploy was resnets.export, a module the function `resnets.export` shadowed)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    "The package modules `path` imports at module level, and those it imports inside functions."
    tree = ast.parse(path.read_text())
    top, local = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            (top if node in tree.body else local).update(n.split(".")[0] for n in names)
    return top, local


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p)[0] for p in PACKAGE.glob("*.py")}


def test_no_import_cycles():
    graph, done, path = _graph(), set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(m):], m]))
        if m in done:
            return
        path.append(m)
        for n in sorted(graph.get(m, ())):
            visit(n)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    assert {"config", "training", "callbacks", "evaluate", "budget", "timing"} <= set(graph)


def test_the_package_s_functions_are_not_shadowed_by_its_modules():
    "No name the package exports is one of its modules' (importing that module would rebind the name to it)."
    import resnets

    assert not set(resnets._WHERE) & {p.stem for p in PACKAGE.glob("*.py")}
    import resnets.deploy  # noqa: F401
    import resnets.training  # noqa: F401  (imports most of the package)

    assert callable(resnets.export) and callable(resnets.run) and callable(resnets.interpret)


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    "The check itself can fail: a graph with a cycle is reported."
    monkeypatch.setitem(globals(), "_graph", lambda: {"a": {"b"}, "b": {"a"}})
    with pytest.raises(AssertionError, match="a -> b -> a"):
        test_no_import_cycles()


def test_no_function_local_imports_of_the_package():
    found = {p.stem: sorted(_imports(p)[1]) for p in PACKAGE.glob("*.py") if p.stem not in LAZY and _imports(p)[1]}
    assert found == LOCAL_OK


def test_timing_is_a_leaf_that_imports_only_torch():
    tree = ast.parse((PACKAGE / "timing.py").read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert roots - {"__future__", "contextlib", "statistics", "time", "collections"} == {"torch"}
    assert _imports(PACKAGE / "timing.py") == (set(), set())


@pytest.mark.slow
def test_the_record_and_the_recipes_import_no_torch():
    code = ("import sys, resnets.config, resnets.recipes, resnets.cli, resnets.commands; "
            "print('torch' in sys.modules, 'fastai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_the_code_passes_the_lint():
    "`make lint` (ruff check of the package, the tests and the scripts) in the test run, so CI keeps it clean."
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is a dev dependency: pip install -e .[dev]")
    p = subprocess.run([str(ruff), "check", "resnets", "tests", "scripts"], cwd=PACKAGE.parent, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout[-3000:]
