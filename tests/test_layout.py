"""The source's shape, checked from the source: no import circles, imports that flow one way, short functions.

The graph covers every import of the project's own modules, at module level and inside functions alike (an import
inside a function still runs, and hides a circle as well as it hides a cost).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# checkout folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"tunebench": "tunebench", "methods": "tunebench.methods", "benchmarks": "tunebench.benchmarks"}

# Lowest first. A module may import from its own layer and the ones below it, never from above. The package itself
# (`import tunebench`) sits on top: it hands out the API.
LAYERS = [
    ("foundation", ["errors", "units", "files", "results", "quiet"]),
    ("measurement", ["measure", "optim", "metrics"]),
    ("data", ["data"]),
    ("models", ["models"]),
    ("methods", ["methods"]),
    ("config", ["config"]),
    ("train", ["training"]),
    ("planner", ["planner"]),
    ("harness", ["harness", "scheduler", "cluster"]),
    ("report", ["report"]),
    ("api", ["api"]),
    ("cli", ["cli"]),
    ("scripts", ["benchmarks", "__init__"]),
]
LAYER_OF = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}
# Functions allowed past MAX_FUNCTION_LINES, by qualified name: generated tables and data literals only.
LONG_FUNCTIONS_ALLOWED: set[str] = set()
MAX_FUNCTION_LINES = 80


def source_modules() -> dict[str, Path]:
    """module name -> file, for every Python file the package installs."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER_OF.get(parts[1] if len(parts) > 1 else "__init__")


def test_the_graph_sees_function_level_imports():
    """The parser must see an import inside a function: the api imports the loop only when a run starts."""
    graph = import_graph()
    assert "tunebench.api" in graph["tunebench"]  # tunebench.__getattr__'s lazy import
    assert graph["tunebench.cli"] >= {"tunebench.api"}


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_a_circle_is_found_and_named():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_every_module_has_a_layer():
    unplaced = [m for m in source_modules() if layer(m) is None]
    assert not unplaced


def test_imports_flow_down_the_layers():
    upward = [
        f"{module} ({LAYERS[layer(module)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if layer(target) > layer(module) and module != "tunebench"
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def long_functions(path: Path, limit: int) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and lines > limit and name not in LONG_FUNCTIONS_ALLOWED:
                    found.append(f"{path.relative_to(ROOT)}:{child.lineno} {name} ({lines} lines)")
                walk(child, f"{name}.")

    walk(tree, "")
    return found


@pytest.mark.parametrize("folder", ["tunebench", "methods"])
def test_no_function_over_80_lines(folder):
    found = [f for path in sorted((ROOT / folder).rglob("*.py")) for f in long_functions(path, MAX_FUNCTION_LINES)]
    assert not found, "functions over 80 lines:\n" + "\n".join(found)


def test_the_length_check_counts_a_long_function():
    path = ROOT / "tests" / "_long_function_sample.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path.write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    try:
        assert [f.split(" ", 1)[1] for f in long_functions(path, MAX_FUNCTION_LINES)] == ["long (81 lines)"]
    finally:
        path.unlink()
