"""The package's static import graph has no cycles, not even hidden ones.

Every import statement of every module counts: at the top, deferred inside a function, and
under `if TYPE_CHECKING:` (a reader and a type checker see those too). A cycle is reported with
the modules on it and, for each edge, the line that makes it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "trackerdcs"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages: their __init__)."""
    files = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imports_of(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """The project modules `name` imports -> the line of the first statement importing each.
    `from a.b import c` counts as importing `a.b.c` when that is a module, else `a.b`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.setdefault(target, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    members = set(component)
    edges = [
        f"  {a} -> {b} (line {line} of {a})"
        for a in component
        for b, line in sorted(graph[a].items())
        if b in members
    ]
    return "import cycle among " + ", ".join(component) + ":\n" + "\n".join(edges)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """Deferred, TYPE_CHECKING, relative and `from package import module` imports all count."""
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from p.b import x\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.sub import c\n"
    )
    (pkg / "sub" / "c.py").write_text("from .. import a\nimport os\n")
    files = module_files(pkg)
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    assert graph["p.a"] == {"p.b": 2}
    assert graph["p.b"] == {"p.sub": 3, "p.sub.c": 3}
    assert graph["p.sub.c"] == {"p": 1, "p.a": 1}
    assert cycles(graph) == [["p.a", "p.b", "p.sub.c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert graph.get("trackerdcs.config")  # the walk found imports
    found = cycles(graph)
    assert not found, "\n".join(describe(graph, c) for c in found)
