"""Print vebi's internal import graph (every import, also inside functions) and its cycles.

    python scripts/import_graph.py [--edges]

Exit status 1 when there is a cycle or a library module imports ``vebi.cli``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "vebi":
                found.add(name)
    return found


def main() -> int:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    graph = {m: imports(p, modules) - {m} for m, p in files.items()}
    # a package's own __init__ re-exporting its submodules is not a dependency cycle
    for m in graph:
        graph[m] = {d for d in graph[m] if not (m.startswith(d + ".") )}
        if files[m].name == "__init__.py":
            graph[m] = {d for d in graph[m] if not d.startswith(m + ".")}
    if "--edges" in sys.argv:
        for m in sorted(graph):
            print(f"{m} -> {', '.join(sorted(graph[m])) or '-'}")
    bad = 0
    for m in sorted(graph):
        if not m.startswith("vebi.cli") and any(d.startswith("vebi.cli") for d in graph[m]):
            print(f"upward import: {m} imports the CLI")
            bad += 1
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for m in sorted(graph):
        if m not in index:
            visit(m)
    for c in cycles:
        print("cycle:", " <-> ".join(c))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(cycles)} cycles, {bad} upward imports")
    return 1 if cycles or bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
