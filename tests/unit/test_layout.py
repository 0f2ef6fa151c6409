"""The floors point one way: no circle of calls between the C core's files,
no circle of imports between the Python layer's modules, and nothing below
the tools imports them (docs/design.md, "Map")."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
PKG = ROOT / "src" / "swarmheap"


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of two or more nodes (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                members.append(top)
                if top == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(set(graph) | {n for targets in graph.values() for n in targets}):
        if node not in index:
            visit(node)
    return found


def test_circles_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": {"c"}}) == []


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("nm") is None, reason="needs cc and nm")
def test_c_core_files_call_one_way(tmp_path: Path) -> None:
    defined: dict[str, str] = {}
    used: dict[str, set[str]] = defaultdict(set)
    for source in sorted(CSRC.glob("*.c")):
        obj = tmp_path / (source.stem + ".o")
        subprocess.run(
            ["cc", "-std=c11", "-D_GNU_SOURCE", "-O1", "-I", str(CSRC), "-c", str(source), "-o", str(obj)],
            check=True,
        )
        symbols = subprocess.run(["nm", str(obj)], check=True, capture_output=True, text=True).stdout
        for line in symbols.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[1] in "TDBRC":
                defined[fields[2]] = source.stem
            elif len(fields) == 2 and fields[0] == "U":
                used[source.stem].add(fields[1])
    calls = {f: {defined[s] for s in names if defined.get(s, f) != f} for f, names in used.items()}
    assert len(defined) > 100  # the objects really were read
    assert _circles(calls) == []


def _imports(module: Path) -> set[str]:
    """Modules of the package that `module` imports when it runs, at any depth
    of its code (imports for type annotations only are not arrows)."""
    names: set[str] = set()
    package = module.parent.relative_to(PKG.parent).as_posix().replace("/", ".")
    tree = ast.parse(module.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("swarmheap"):
                names.add(target)
                names.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("swarmheap"))
    return names


def _python_graph() -> dict[str, set[str]]:
    modules = {
        ".".join(p.relative_to(PKG.parent).with_suffix("").parts): p
        for p in PKG.rglob("*.py")
        if p.name != "__init__.py"
    }
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_python_modules_import_one_way() -> None:
    graph = _python_graph()
    assert "swarmheap.heap" in graph and graph["swarmheap.agents"]
    assert _circles(graph) == []


def test_nothing_below_the_tools_imports_them() -> None:
    graph = _python_graph()
    upward = {
        m: sorted(t for t in targets if t.startswith("swarmheap.tools")) for m, targets in graph.items()
    }
    # __main__ is `python -m swarmheap`, the command line's door: a tool itself
    tools = ("swarmheap.tools", "swarmheap.__main__")
    below = {m: t for m, t in upward.items() if t and not m.startswith(tools)}
    assert below == {}
    assert upward["swarmheap.__main__"] == ["swarmheap.tools.cli"]
