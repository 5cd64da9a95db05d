"""A rehearsal of config/paper.yaml on the CPU: the paper's families that differ in code path, each
built from its checkpoint's own config.json keys with a planted delimiter outlier (tests/paper_families.py),
run by `snakemake` through the whole LLM stage in half precision (fetch from `path:`, windows, prompt
dump, statistics, weights, interventions, every figure, Table 1, the claims and the summary).

Code paths, and the half precision each runs in here: Llama-2 (dense, rotary; float16), Mixtral
(experts; bfloat16), Phi-2 (parallel block, partial rotary; bfloat16), OPT (learned positions, ReLU,
pre-norm flag; float16), MPT (attention code of its own, ALiBi, max_seq_len; float16) and Falcon
(parallel, multi-query attention of its own, no context key; bfloat16). Llama-3 and Mistral run
Llama's and Mistral's code as Llama-2 does: tests/test_paper_families.py runs all eight in both half
precisions against float32."""

import json
import os
import subprocess

import pytest
from paper_families import DELIMITERS, OUTLIER_CHANNEL, build, corpus, plant, save
from snakemake_runs import SNAKEMAKE

REHEARSED = {
    "llama2-7b": "float16",
    "mixtral-8x7b": "bfloat16",
    "phi-2": "bfloat16",
    "opt-6.7b": "float16",
    "mpt-7b": "float16",
    "falcon-7b": "bfloat16",
}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("rehearsal")
    models = {}
    for name, dtype in REHEARSED.items():
        model = build(name)
        plant(model, DELIMITERS)
        entry = {"source": f"path:{save(name, tmp_path / name, model)}", "dtype": dtype, "gpus": 0, "window_length": 64}
        models[name] = {**entry, **({"context_length": 256} if name == "falcon-7b" else {})}
    config = {
        "models": models,
        "corpora": {"words": {"source": f"path:{corpus(tmp_path / 'text')}", "include": "*.txt", "window_length": 64, "windows": 4}},
        "prompts": {"summer": {"text": "w50 w61 w70 . w90 w41 w77 ."}},
        "targets": {"models": list(REHEARSED), "corpus": "words"},
        "training": {"run": []},
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    workdir = tmp_path / "run"
    workdir.mkdir()
    command = [*SNAKEMAKE, "--cores", "2", "--directory", str(workdir), "--configfile", str(tmp_path / "config.yaml")]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_every_paper_family_runs_the_llm_stage_in_half_precision(rehearsal):
    import pandas as pd

    for name, dtype in REHEARSED.items():
        manifest = json.loads((rehearsal / "results" / "capture" / name / "stats" / "words" / "manifest.json").read_text())
        assert manifest["dtype"] == dtype and manifest["device"] == "cpu"
        outliers = pd.read_parquet(rehearsal / "results" / "capture" / name / "stats" / "words" / "activation_outliers.parquet")
        assert set(outliers.query("site == 'layer_output'").channel) == {OUTLIER_CHANNEL}, name  # the planted outlier, found
        figures = {path.stem for path in (rehearsal / "results" / "figures" / name).glob("*.png")}
        assert {"fig01_existence", "fig02_layer", "fig03_activation_positions", "interventions", "scaling_factor"} <= figures, name
        claims = (rehearsal / "results" / "claims" / f"{name}.md").read_text()
        assert "holds" in claims, name
        log = (rehearsal / "results" / "logs" / "corpus_statistics" / name / "words.log").read_text()
        assert log.startswith("device: cpu (models.") and "planned" in log, log[:300]
    table1 = pd.read_csv(rehearsal / "results" / "tables" / "table1_alignment.csv")
    assert set(REHEARSED) <= set(table1.iloc[:, 0]) or set(REHEARSED) <= set(table1.get("model", []))
    summary = (rehearsal / "results" / "claims" / "summary.md").read_text()
    assert all(name in summary for name in REHEARSED)
