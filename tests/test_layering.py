"""How the package is layered: measurement (torch) below, judgement and drawing (no torch) above,
definitions and the verdict engine at the bottom, and no module importing one that imports it back."""

import ast
import json
import subprocess
import sys

import pytest
from conftest import REPO
from import_walk import PACKAGE, SCRIPTS, imported, module_path

# What the figure notebooks and the claims and table rules import (figures.yaml has no torch).
JUDGING_AND_DRAWING = (
    "choices",
    "definitions",
    "field_metrics",
    "figures",
    "intervention_report",
    "readers",
    "variant_report",
    "variants",
    "verdict_engine",
    "verdicts",
)


def package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in it (also inside functions)."""
    graph = {}
    for path in sorted((SCRIPTS / PACKAGE).glob("*.py")):
        name = f"{PACKAGE}.{path.stem}" if path.stem != "__init__" else PACKAGE
        names = imported(ast.parse(path.read_text()), PACKAGE)
        graph[name] = {n for n in names if module_path(n) and n != name and n != PACKAGE}
    return graph


def test_judging_and_drawing_modules_load_no_torch_or_transformers():
    code = (
        "import sys\n"
        + "".join(f"import {PACKAGE}.{name}\n" for name in JUDGING_AND_DRAWING)
        + "print(sorted(m for m in ('torch', 'transformers', 'tqdm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


def test_the_measurement_modules_do_load_torch():  # the check above can fail
    code = f"import sys, {PACKAGE}.statistics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle of `graph`, each once, as the modules along it."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_package_has_no_import_cycle():
    assert cycles(package_imports()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("leaf", ["definitions", "verdict_engine", "variants", "field_metrics"])
def test_definitions_and_the_verdict_engine_import_nothing_of_the_package(leaf):
    assert package_imports()[f"{PACKAGE}.{leaf}"] == set()


def test_sun_et_al_s_massive_test_is_written_once():
    """One definition (> SUN_FLOOR and > SUN_RATIO × the median): every other module calls definitions.is_massive."""
    written = []
    for path in sorted((SCRIPTS / PACKAGE).glob("*.py")) + sorted((REPO / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        if path.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "code")
        code = [line for line in text.splitlines() if '"""' not in line and not line.strip().startswith(("-", "#"))]
        written += [path.name for line in code if "SUN_RATIO *" in line and "{SUN_RATIO" not in line]
    assert written == ["definitions.py"]


def test_the_layout_page_names_every_top_level_entry_and_package_module():
    layout = (REPO / "docs" / "layout.md").read_text()
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    top = {path.split("/")[0] for path in tracked if not path.startswith(".")} - {"README.md", "Makefile", "pyproject.toml"}
    missing = sorted(entry for entry in top if entry not in layout)
    modules = sorted(p.stem for p in (SCRIPTS / PACKAGE).glob("*.py") if p.stem != "__init__")
    missing += [module for module in modules if module not in layout]
    assert not missing, f"docs/layout.md does not name {', '.join(missing)}"
    assert "workflow/envs" not in layout and (REPO / "envs").is_dir()
