"""A static walk of the package's imports (AST, nothing imported): which package module a name is,
and every module a source file imports (test_envs, test_layering)."""

import ast
from pathlib import Path

from conftest import REPO

SCRIPTS = REPO / "workflow" / "scripts"
PACKAGE = "systematic_outliers"


def module_path(name: str) -> Path | None:
    """The file of a package module (systematic_outliers.x), or None for anything else."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = SCRIPTS.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py") if base.with_suffix(".py").exists() else None


def imported(tree: ast.AST, package: str | None) -> set[str]:
    """Every module an AST imports, anywhere in it (also inside functions), relative ones resolved."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = f"{package}.{node.module}" if node.level and node.module else package if node.level else node.module
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names if module_path(f"{base}.{alias.name}")}
    return names
