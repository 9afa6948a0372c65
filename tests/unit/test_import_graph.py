"""app/ imports no module cycle: its import graph, built with ast, is a DAG.

Every import counts, those inside functions and ``if TYPE_CHECKING:`` blocks included, relative
ones resolved; ``from package import name`` is an edge to ``package.name`` when that is a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def modules(root: Path) -> dict[str, Path]:
    """Every module under ``root`` by dotted name (a package by its own name)."""
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _known(name: str, known: Mapping[str, Path]) -> str | None:
    """``name`` or its closest enclosing module among ``known``."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, package: str, known: Mapping[str, Path]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (found := _known(alias.name, known)) is not None:
                yield found
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            if (found := _known(f"{base}.{alias.name}", known)) is not None:
                yield found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``root``'s package it imports, anywhere in its body."""
    known = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            graph[name].update(t for t in _targets(node, package, known) if t != name)
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_app_has_no_import_cycle() -> None:
    graph = import_graph(APP)
    assert len(graph) > 100  # the whole package was read
    found = cycles(graph)
    assert not found, "import cycles in app/: " + "; ".join(" <-> ".join(c) for c in found)


def write(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_a_deferred_relative_import_closing_a_loop_is_a_cycle(tmp_path: Path) -> None:
    pkg = write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": "def f():\n    from .high import g\n",
            "pkg/high.py": "from pkg import low\n",
            "pkg/other.py": "import pkg.low\n",
        },
    )
    assert cycles(import_graph(pkg)) == [["pkg.high", "pkg.low"]]


def test_type_checking_imports_count_and_a_dag_has_no_cycle(tmp_path: Path) -> None:
    pkg = write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from ..a import x\n",
            "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import y\n",
            "pkg/b.py": "from pkg.a import x\nfrom pkg import sub\n",
        },
    )
    graph = import_graph(pkg)
    assert graph["pkg.sub"] == {"pkg.a"}
    assert graph["pkg.b"] == {"pkg.a", "pkg.sub"}
    assert cycles(graph) == [["pkg.a", "pkg.sub"]]
    del graph["pkg.a"]
    assert cycles(graph) == []


@pytest.mark.parametrize("level", [1, 2])
def test_relative_imports_resolve_from_the_importing_package(tmp_path: Path, level: int) -> None:
    dots = "." * level
    pkg = write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/a.py": "",
            "pkg/sub/m.py": f"from {dots} import a\n",
        },
    )
    expected = "pkg.sub.a" if level == 1 else "pkg.a"
    assert import_graph(pkg)["pkg.sub.m"] == {expected}
