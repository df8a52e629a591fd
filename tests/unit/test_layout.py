"""The package's layout, read from the source with ``ast`` (nothing is imported).

Dependencies point one way: the command line (``anglerank.cli``) over the commands
(``train``, ``curation``, ``integrations``) over the library (``model``, ``rewards``,
``data``, ``curriculum``, ...). Module-level imports form no cycle, and an import
inside a function is kept for an optional dependency, start-up time (``anglerank
--help`` never loads torch) or a true cycle; :func:`function_level_imports` counts them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "anglerank"

# the command line and the commands: the library never imports them
UPPER = ("anglerank.cli", "anglerank.train", "anglerank.curation", "anglerank.integrations")
# the Python API (``anglerank.score``, ``rank``, ``sample``) runs the commands' code, and `make demo` runs
# `anglerank score` itself: entry points above the commands
TOP = {"anglerank", "anglerank.api", "anglerank.demo"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> list[str]:
    """The anglerank modules an import statement loads (``from pkg import sub`` names the submodule)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolved against the importing module's package
            pkg = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
            pkg = pkg[:len(pkg) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return sorted({n for n in names if n == "anglerank" or n.startswith("anglerank.")})


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str) -> list[tuple[str, bool, int]]:
    """(imported anglerank module, whether the import is at module level, line) for one module."""
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((t, top, child.lineno) for t in _targets(child, name))
            elif isinstance(child, ast.If) and _is_type_checking(child):
                continue  # never runs
            else:
                visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(MODULES[name].read_text(), str(MODULES[name])), True)
    return found


def module_graph() -> dict[str, set[str]]:
    return {name: {t for t, top, _ in imports(name) if top and t in MODULES and t != name} for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in sorted(graph):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def _within(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def function_level_imports() -> list[str]:
    """Every import of an anglerank module made inside a function, as ``module:line -> target``."""
    return [f"{name}:{line} -> {target}" for name in sorted(MODULES)
            for target, top, line in imports(name) if not top]


def test_no_import_cycles():
    assert cycles(module_graph()) == []


def test_no_upward_imports():
    """At module or function level: the library (``model``, ``rewards``, ``data``, ``curriculum``, ``scoring``
    and the rest) never reaches up into the commands or the command line, and only the command line and the
    entry points import it."""
    library = [name for name in MODULES if not _within(name, UPPER) and name not in TOP]
    assert {"anglerank.model.loading", "anglerank.rewards", "anglerank.data.reader", "anglerank.curriculum"} <= \
        set(library)
    upward = [f"{name}:{line} -> {target}" for name in sorted(library)
              for target, _, line in imports(name) if _within(target, UPPER)]
    assert upward == []
    into_cli = [f"{name}:{line} -> {target}" for name in sorted(MODULES)
                if not _within(name, ("anglerank.cli",)) and name not in TOP
                for target, _, line in imports(name) if _within(target, ("anglerank.cli",))]
    assert into_cli == []


def test_plots_take_training_data_as_arguments():
    assert [t for t, _, _ in imports("anglerank.plots") if _within(t, ("anglerank.train",))] == []


def test_function_level_imports_are_counted():
    found = function_level_imports()
    print(f"\n{len(found)} function-level imports of anglerank modules:", *found, sep="\n  ")
    assert all(" -> anglerank" in f for f in found)


def test_the_command_line_starts_without_torch():
    """``anglerank --help`` imports the command line and the settings, never torch."""
    code = "import sys, anglerank.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
