"""Who may import whom: no cycle between modules, and the packages in layers.

``yl_core`` is the bottom layer; ``publisher`` is what a GUI embeds and stays light (paho,
psutil, PyYAML); ``bridge`` and ``status_app`` never import each other; only ``yl_status``
(the command line and its tooling) may import every component.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGES = ("yl_core", "publisher", "bridge", "status_app", "yl_status")
ALLOWED: dict[str, set[str]] = {
    "yl_core": set(),
    "publisher": {"yl_core"},
    "bridge": {"yl_core"},
    "status_app": {"yl_core"},
    "yl_status": {"yl_core", "publisher", "bridge", "status_app"},
}
NEVER_IN_A_GUI = ("bridge", "status_app", "yl_status", "flask", "werkzeug", "waitress",
                  "granian", "httptools", "orjson", "psycopg", "sqlite3", "prometheus_client",
                  "rich", "asyncio")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports, wherever in the file the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {m for m in project_imports(path) if m in modules and m != name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt in on_stack:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(edges):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_no_module_imports_itself_round_a_cycle() -> None:
    edges = {m: {d for d in deps if not m.startswith(d + ".") and d != m.split(".")[0]}
             for m, deps in graph().items()}
    assert find_cycle(edges) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = sorted(
        f"{module} imports {dep}"
        for module, deps in graph().items() if module.split(".")[0] == package
        for dep in deps
        if dep.split(".")[0] != package and dep.split(".")[0] not in ALLOWED[package])
    assert wrong == []


def test_a_gui_that_embeds_the_publisher_loads_no_server_code() -> None:
    code = ("import sys, publisher, publisher.qt, yl_core.link\n"
            f"bad = {NEVER_IN_A_GUI!r}\n"
            "print(sorted({m for m in sys.modules if m.split('.')[0] in bad}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"
