"""The docs stay true to the checkout: every command they show plans (a dry run, in a scratch copy of
the checkout), every notebook parameter they pass is declared, every file they name and every page
they link exists, and the README stays short."""

import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO

DOCS = sorted(
    [REPO / "README.md", REPO / "config" / "README.md", REPO / "profiles" / "README.md", REPO / "benchmarks" / "README.md"]
    + list((REPO / "docs").glob("*.md"))
)
# what a command in the docs may start with, and how it plans without running
PLANNERS = {".venv/bin/snakemake": [sys.executable, "-m", "snakemake"], "snakemake": [sys.executable, "-m", "snakemake"], "make": ["make"]}
CHECKOUT = ("Snakefile", "Makefile", "pyproject.toml", "workflow", "config", "profiles", "notebooks", "envs")
# a path in the repository, as the docs write it in backticks
REPO_PATH = re.compile(r"`((?:workflow|config|profiles|tests|benchmarks|notebooks|envs|docs)/[^`\s]*|Snakefile|Makefile|pyproject\.toml)`")


def shell_lines(text: str) -> list[str]:
    """The commands of the docs' ```bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def commands() -> list[tuple[str, str]]:
    """(the first doc that shows it, the command), each command once."""
    shown = {}
    for doc in DOCS:
        for line in shell_lines(doc.read_text()):
            shown.setdefault(line, doc.relative_to(REPO).as_posix())
    return [(doc, line) for line, doc in shown.items()]


def test_the_docs_show_commands():  # the checks below can fail: there is something to check
    shown = [line for _, line in commands()]
    assert any(line.startswith(".venv/bin/snakemake") for line in shown) and any(line.startswith("make") for line in shown)


@pytest.mark.parametrize(("doc", "line"), [c for c in commands() if c[1].split()[0] in PLANNERS], ids=lambda v: v[:60])
def test_each_workflow_command_in_the_docs_plans(doc, line, tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in CHECKOUT:
        (checkout / name).symlink_to(REPO / name)
    words = shlex.split(line)
    if words[0] == "make":
        command = ["make", "-n", *words[1:]]
    else:
        command = [*PLANNERS[words[0]], *words[1:], "--dry-run"]
        if "--report" in words:  # a report reads a finished run: plan the run it reports instead
            index = words.index("--report")
            command = [*PLANNERS[words[0]], *words[1:index], *words[index + 2 :], "--dry-run"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{doc}: {line}\n{done.stderr[-2000:]}"


def test_each_notebook_command_in_the_docs_passes_declared_parameters():
    import papermill

    shown = [(doc, line) for doc, line in commands() if "papermill" in line]
    assert shown
    for doc, line in shown:
        words = shlex.split(line)
        notebook = next(word for word in words if word.endswith(".ipynb"))
        declared = papermill.inspect_notebook(str(REPO / notebook))
        passed = [words[i + 1] for i, word in enumerate(words) if word == "-p"]
        assert set(passed) <= set(declared), f"{doc}: {notebook} declares no {set(passed) - set(declared)}"


def test_each_file_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        for path in REPO_PATH.findall(doc.read_text()):
            path = path.split("::")[0].rstrip(".,:;)")  # a test's node id names its file
            if not any(mark in path for mark in "<{*…") and not (REPO / path).exists():
                missing.append(f"{doc.relative_to(REPO)}: {path}")
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(missing)


def test_each_page_the_docs_link_exists():
    missing = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(REPO)}: {target}")
    assert not missing, "the docs link pages that do not exist:\n" + "\n".join(missing)


def test_the_readme_reads_in_five_minutes():
    assert len((REPO / "README.md").read_bytes()) <= 8 * 1024
