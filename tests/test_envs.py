"""Each rule's conda environment (envs/) lists every third-party package its script can
import: a static walk of the imports (AST, nothing installed), through the package's modules and,
for the notebook rules, the notebooks' code cells."""

import ast
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from import_walk import PACKAGE, imported, module_path

# import names whose distribution is called otherwise
DISTRIBUTIONS = {"yaml": "pyyaml", "huggingface_hub": "huggingface-hub", "markdown_it": "markdown-it-py"}


def rule_blocks():
    """(rule, script, conda env) of every rule and checkpoint that runs a script, read from the rule files."""
    for rule_file in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:)", rule_file.read_text()):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            if name and script:
                conda = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
                env = (rule_file.parent / conda.group(1)).resolve() if conda else None
                yield name.group(1), (rule_file.parent / script.group(1)).resolve(), env


def third_party(sources: list[tuple[str, str | None]]) -> set[str]:
    """Top-level third-party modules reached from `sources` (code, its package), following the package's modules."""
    seen, found, queue = set(), set(), list(sources)
    while queue:
        code, package = queue.pop()
        for name in imported(ast.parse(code), package):
            top = name.split(".")[0]
            if top == PACKAGE:
                path = module_path(name)
                if path and path not in seen:
                    seen.add(path)
                    queue.append((path.read_text(), PACKAGE))
            elif top not in sys.stdlib_module_names and top != "snakemake":  # snakemake runs the script, in any env
                found.add(top)
    return found


def env_packages(env: Path) -> set[str]:
    names = set()
    for dependency in yaml.safe_load(env.read_text())["dependencies"]:
        for item in dependency["pip"] if isinstance(dependency, dict) else [dependency]:
            names.add(re.split(r"[=<>!~ \[]", item)[0].lower().replace("_", "-"))
    return names


def notebook_code() -> list[tuple[str, None]]:
    cells = []
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] == "code":
                cells.append(("".join(cell["source"]), None))
    return cells


RULES = sorted(rule_blocks())
# what an environment may list beyond its imports: the interpreter, pandas' Parquet engine, transformers'
# device_map="auto", and numpy pinned where another package pulls it in
RUNTIME = {"python", "pip", "pyarrow", "accelerate", "numpy"}


def needed(script: Path) -> set[str]:
    """The distributions a rule's script can import, with the notebooks' for the notebook rules."""
    sources = [(script.read_text(), None)]
    if script.name == "run_notebook.py":  # the notebooks run in a kernel of the same environment
        sources += notebook_code() + [("import ipykernel", None)]
    return {DISTRIBUTIONS.get(name, name).lower().replace("_", "-") for name in third_party(sources)}


def test_every_rule_that_runs_a_script_has_an_environment_in_envs():
    declared = sum(len(re.findall(r"^(?:rule|checkpoint) \w+:", f.read_text(), re.M)) for f in (REPO / "workflow" / "rules").glob("*.smk"))
    assert len(RULES) == declared  # every rule runs a script, and the parsing found each
    for rule, script, env in RULES:
        assert env is not None and env.parent == REPO / "envs" and env.exists(), rule
        assert script.exists(), rule


@pytest.mark.parametrize("rule, script, env", RULES, ids=[rule for rule, _, _ in RULES])
def test_each_rule_environment_lists_what_its_script_imports(rule, script, env):
    missing = sorted(needed(script) - env_packages(env))
    assert not missing, f"rule {rule}: {env.relative_to(REPO)} lacks {', '.join(missing)}"


@pytest.mark.parametrize("env", sorted({env for _, _, env in RULES}), ids=lambda env: env.name)
def test_each_environment_lists_nothing_its_rules_do_not_import(env):
    """So the figure and claims environment carries no torch and no transformers: its modules import neither."""
    used = set().union(*(needed(script) for _, script, rule_env in RULES if rule_env == env))
    unused = sorted(env_packages(env) - used - RUNTIME)
    assert not unused, f"{env.relative_to(REPO)} lists {', '.join(unused)}, which none of its rules imports"


def test_the_walk_follows_the_package_and_finds_what_a_module_imports_inside_a_function():
    reached = third_party([("from systematic_outliers import capture", None)])
    assert {"torch", "transformers"} <= reached  # transformers only inside register_capture
    assert "numpy" not in third_party([("import json", None)])
