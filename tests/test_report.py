"""The report as a person opens it: a small run of every stage (a planted Llama and two GPT-2 variants),
`snakemake --report`, then the HTML rendered by headless Chromium, which must show each of the paper's
sections, every figure with the paper's number and caption, Table 1, the claims and the scorecard.

Where Chromium is missing and the tests run as root with apt-get (as CI here does), the fixture installs
Debian's `chromium`; without root or apt-get the test skips, saying why."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from paper_families import DELIMITERS, build, corpus, plant, save
from snakemake_runs import SNAKEMAKE, TINY_TASK

SECTIONS = (
    "1 Existence and positions of the outliers (paper section 3)",
    "2 Lifecycle and role of the outliers (paper section 4)",
    "3 GPT-2 attention variants (paper section 5)",
    "4 Claims with their measured numbers and verdicts",
)
CHROMIUM_FLAGS = [  # the closed network refuses Chromium's background connections: ask for none
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no Chromium, and no root with apt-get to install Debian's chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=True, timeout=300)
    apt = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], capture_output=True, text=True, env=env)
    assert apt.returncode == 0, f"apt-get install chromium failed:\n{apt.stderr[-2000:]}"
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A run of a planted Llama-2-shaped model and one tiny training task, and its report."""
    tmp_path = tmp_path_factory.mktemp("report")
    model = build("llama2-7b")
    plant(model, DELIMITERS)
    config = {
        "models": {"planted": {"source": f"path:{save('llama2-7b', tmp_path / 'planted', model)}", "dtype": "float32"}},
        "corpora": {"words": {"source": f"path:{corpus(tmp_path / 'text')}", "include": "*.txt", "window_length": 64, "windows": 4}},
        "prompts": {"summer": {"text": "w50 w61 w70 . w90 w41 w77 ."}},
        "targets": {"models": ["planted"], "corpus": "words"},
        "training": {"variants": ["default", "context_scale", "sigmoid"], "tasks": {"t1": TINY_TASK}, "run": ["t1"]},
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    workdir = tmp_path / "run"
    workdir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for extra in ([], ["--report", "results/report.html"]):
        command = [*SNAKEMAKE, "--cores", "2", "--directory", str(workdir), *extra, "--configfile", str(tmp_path / "config.yaml")]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
    return workdir / "results" / "report.html"


def embedded_results(html: str) -> dict:
    """The report's results as its page script holds them: path -> name, labels, caption, ..."""
    return json.loads(re.search(r"var results = (\{.*?\});\n", html, re.S).group(1))


@pytest.mark.slow
def test_the_report_holds_every_figure_table_and_claim_by_section(report):
    results = embedded_results(report.read_text())
    by_path = {Path(path).as_posix(): entry for path, entry in results.items()}
    # every LLM figure the planted model gives, labelled with the paper's figure number, and its caption
    for stem, number in (("fig01_existence", "Fig 1"), ("fig03_activation_positions", "Fig 3"), ("fig07_emergence", "Fig 7")):
        entry = by_path[f"results/figures/planted/{stem}.png"]
        assert entry["labels"]["paper"].startswith(number), entry["labels"]
        assert "planted" in entry["caption"]
        chose = (report.parent / "figures" / "planted" / f"{stem}.caption.txt").read_text()
        assert chose.split(". ")[0] in entry["caption"]  # what the figure chose from the data, beside what it plots
    assert by_path["results/figures/gpt2/t1/fig10_variants_3d.png"]["labels"] == {"paper": "Fig 10"}
    assert "The atlas of 1 model (planted)" in by_path["results/figures/atlas.png"]["caption"]
    # the Markdown results as pages the report shows inline
    for page in ("tables/table1_alignment", "claims/planted", "claims/summary", "tables/gpt2/t1/ranking", "claims/gpt2"):
        assert by_path[f"results/pages/{page}.html"]["mime_type"] == "text/html", page
    claims = (report.parent / "pages" / "claims" / "planted.html").read_text()
    assert "<table>" in claims and "holds" in claims


@pytest.mark.slow
def test_the_report_opens_in_chromium_with_every_section(report, chromium, tmp_path):
    profile = tmp_path / "profile"
    dumped = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    # the page's script rendered its menu: a folder entry per section (the raw file holds the names only as data)
    for section in SECTIONS:
        assert f"<span>{section}</span>" in dom, section
    assert "<span>" not in report.read_text().split("<body")[1].split("<script")[0]
    shot = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            f"--screenshot={tmp_path / 'report.png'}",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.returncode == 0 and (tmp_path / "report.png").stat().st_size > 20_000
