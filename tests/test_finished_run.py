"""One finished run of a mixed config from an empty folder, shared by the tests that read it: a
module of its own, so that pytest-xdist runs it beside the other workflow tests."""

import json
import os
import re
import subprocess

import pytest
from snakemake_runs import SNAKEMAKE, TINY_TASK, path_model, small_corpus

MODELS = ("smollm2", "random-llama", "random-falcon", "tiny-gpt-oss", "tiny-jamba")


def tiny_family_model(model_type: str):
    """A tiny random model of a transformers family (tests/tiny_families.py) with SmolLM2's vocabulary."""
    from tiny_families import tiny_config
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type)
    config.vocab_size = 49152
    __import__("torch").manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def finished_run(smollm2_dir, tmp_path_factory):
    """One run from an empty folder of a mixed config, each model from `path:`: SmolLM2, a random
    Llama (dense, no outlier of any kind), a random Falcon (attention code of its own: no edits), a tiny gpt-oss
    (mixture of experts, a learned sink) and a tiny Jamba (a hybrid: Mamba, then softmax attention
    with experts), plus two tiny training tasks run by their targets. Returns (workdir, config, run)."""
    import transformers
    from conftest import tiny_model

    tmp_path = tmp_path_factory.mktemp("finished")
    folder, _ = smollm2_dir
    random_llama = path_model(
        tmp_path / "random-llama",
        tiny_model("llama", seed=1, num_hidden_layers=4, vocab_size=49152, max_position_embeddings=256),
        folder,
    )
    __import__("torch").manual_seed(0)  # the Falcon weights
    falcon_config = transformers.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=49152)
    random_falcon = path_model(tmp_path / "random-falcon", transformers.AutoModelForCausalLM.from_config(falcon_config), folder)
    gpt_oss = tiny_family_model("gpt_oss")  # mixture-of-experts MLPs and a learned sink, planted to take the attention
    with __import__("torch").no_grad():
        for layer in gpt_oss.model.layers:
            layer.self_attn.sinks.fill_(12.0)
    tiny_gpt_oss = path_model(tmp_path / "tiny-gpt-oss", gpt_oss, folder)
    tiny_jamba = path_model(tmp_path / "tiny-jamba", tiny_family_model("jamba"), folder)  # Mamba, then attention with experts
    config = {
        "models": {
            "smollm2": {"source": f"path:{folder}", "dtype": "float32"},
            "random-llama": {"source": f"path:{random_llama}", "dtype": "float32"},
            "random-falcon": {"source": f"path:{random_falcon}", "dtype": "float32"},
            "tiny-gpt-oss": {"source": f"path:{tiny_gpt_oss}", "dtype": "float32"},
            "tiny-jamba": {"source": f"path:{tiny_jamba}", "dtype": "float32"},
        },
        "corpora": {"text": {"source": f"path:{small_corpus(tmp_path / 'text')}", "include": "*.txt", "window_length": 128, "windows": 4}},
        "targets": {"models": [*MODELS], "corpus": "text"},
        "training": {"variants": ["default", "context_scale"], "tasks": {"t1": TINY_TASK, "t2": TINY_TASK}, "run": []},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(config))
    workdir = tmp_path / "run"
    workdir.mkdir()

    def run(*args, config=config):
        config_path.write_text(json.dumps(config))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        # --configfile last: it takes several files; both cores for the real runs
        command = [*SNAKEMAKE, "--cores", "2", "--directory", str(workdir), *args, "--configfile", str(config_path)]
        # the user's umask decides the outputs' modes: the usual 022 here
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, preexec_fn=lambda: os.umask(0o022))

    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    training = [
        f"results/training/{task}/{variant}/seed0/model.safetensors" for task in ("t1", "t2") for variant in ("default", "context_scale")
    ]
    done = run(*training)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, config, run, training


@pytest.mark.slow
def test_a_model_without_outliers_gets_every_output_beside_one_with_them(finished_run):
    """The negative control through the whole workflow: the random Llama gets every figure, a
    claims file, a Table 1 row and a scorecard row beside SmolLM2, and its existence claims do not
    hold; the random Falcon gets what its architecture can give, from a first run that planned
    its figures only after fetching it."""
    import pandas as pd

    workdir, _, _, _ = finished_run
    results = workdir / "results"
    # the MoE models lack Figs 7 and 9 (gate, up and act inside the experts are not captured)
    for model, count in (("smollm2", 12), ("random-llama", 12), ("random-falcon", 9), ("tiny-gpt-oss", 10), ("tiny-jamba", 10)):
        assert len(list((results / "figures" / model).glob("*.png"))) == count, model
    claims = (results / "claims" / "random-llama.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in claims.splitlines() if line.startswith("| ")}
    for claim in ("Activation outliers exist", "Weight outliers exist", "Attention outliers exist"):
        assert next(line for text, line in rows.items() if text.startswith(claim)).endswith("| **does not hold** |"), claim
    real = (results / "claims" / "smollm2.md").read_text()
    assert next(line for line in real.splitlines() if line.startswith("| Activation outliers exist")).endswith("| **holds** |")
    table1 = pd.read_csv(results / "tables" / "table1_alignment.csv").set_index("model")
    assert table1.activation_outlier_tokens["random-llama"] == 0 and table1.activation_outlier_tokens["smollm2"] > 0
    from systematic_outliers import verdicts

    summary = pd.read_csv(results / "claims" / "summary.csv")
    assert set(summary.model) == set(MODELS) and len(summary) == len(MODELS) * len(verdicts.all_claims())
    quantization_claims = {claim.text for claim in verdicts.QUANTIZATION_CLAIMS}
    assert (summary[summary.claim.isin(quantization_claims)].groupby("model").size() == 2).all()
    # what the outliers do: SmolLM2 needs them (positive control), the random model has none to need
    verdict = summary.set_index(["model", "claim"]).verdict
    needed = "The activation outliers are needed: zeroing them breaks the model"
    assert verdict["smollm2", needed] == "holds" and verdict["random-llama", needed] == "does not hold"
    # 4 windows of 128 tokens of a made-up text: removing the sink hurts beyond the controls, by less than at 512 tokens
    assert verdict["smollm2", "The attention sink is needed: heads park attention there"] in ("holds", "partly")
    assert verdict["random-falcon", "The attention sink is needed: heads park attention there"] == "not measured"
    interventions = pd.read_csv(results / "tables" / "interventions.csv")
    assert set(interventions.model) == set(MODELS)
    caption = (results / "figures" / "random-llama" / "fig01_existence.caption.txt").read_text()
    assert "No activation outlier was found in the corpus" in caption
    caption = (results / "figures" / "smollm2" / "scaling_factor.caption.txt").read_text()
    assert "over 4 windows of 128 tokens. Outlier keys: from layer" in caption
    # what the outliers cost a quantizer: each model's figure; the random model has no outlier token to keep
    caption = (results / "figures" / "random-llama" / "quantization.caption.txt").read_text()
    assert "the statistics flag no outlier token (Sun et al.'s rule), so the kept pass keeps nothing" in caption


@pytest.mark.slow
def test_experts_learned_sinks_and_hybrids_get_every_output_their_architecture_gives(finished_run):
    """The MoE model names its W_down columns by expert, its planted learned sink takes the attention,
    and the hybrid's attention claims and figures come from its one softmax layer."""
    import pandas as pd

    workdir, _, _, _ = finished_run
    results = workdir / "results"
    verdict = pd.read_csv(results / "claims" / "summary.csv").set_index(["model", "claim"])
    sink = "Attention outliers are an implicit sink: given an explicit one, attention parks there instead"
    assert verdict.verdict["tiny-gpt-oss", sink] == "holds"
    assert verdict.verdict["smollm2", sink] == verdict.verdict["tiny-jamba", sink] == "not measured"
    assert verdict.measured["tiny-gpt-oss", "Weight outliers exist: single down-projection columns with a large max/mean ratio"].startswith(
        "expert "
    )
    assert (results / "capture" / "tiny-gpt-oss" / "stats" / "text" / "attention_sink.parquet").exists()
    assert "Squares: the learned sink" in (results / "figures" / "tiny-gpt-oss" / "fig06_attention_positions.caption.txt").read_text()
    claims = (results / "claims" / "tiny-jamba.md").read_text()
    assert "layers with softmax attention (of 2)" in claims
    caption = (results / "figures" / "tiny-jamba" / "fig01_existence.caption.txt").read_text()
    assert "(d) attention probabilities averaged over heads at layer 2" in caption
    layer = (results / "figures" / "tiny-jamba" / "fig02_layer.caption.txt").read_text()
    assert "not captured in layers 1: its token mixer (JambaMambaMixer)" in layer
    assert "down_proj_input is read at feed_forward.experts inside the experts, per expert in layers 2" in layer


@pytest.mark.slow
def test_outputs_have_the_modes_of_ordinary_files(finished_run):
    workdir, _, _, _ = finished_run
    for root in ("results", "resources"):
        for path in (workdir / root).rglob("*"):
            expected = 0o755 if path.is_dir() else 0o644
            assert path.stat().st_mode & 0o777 == expected, f"{path.relative_to(workdir)}: {oct(path.stat().st_mode & 0o777)}"


def planned_for(output: str) -> set[tuple[str, str]]:
    """(rule, the job's model, corpus or task wildcard) of every job a dry run plans."""
    jobs = set()
    for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:)", output):
        rule = re.match(r"(?:rule|checkpoint) (\w+):", block)
        if rule:
            wildcards = re.search(r"wildcards: (.*)", block)
            named = dict(pair.split("=", 1) for pair in wildcards.group(1).split(", ")) if wildcards else {}
            jobs.add((rule.group(1), named.get("model") or named.get("task") or named.get("corpus") or ""))
    return jobs


def changed(config: dict, **paths) -> dict:
    """A deep copy of `config` with each "a.b.c" key set."""
    config = json.loads(json.dumps(config))
    for path, value in paths.items():
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    return config


@pytest.mark.slow
def test_a_config_change_reruns_exactly_what_it_affects(finished_run):
    workdir, config, run, training = finished_run
    assert "Nothing to be done" in run("-n").stdout

    override = changed(config, figures={"overrides": {"smollm2": {"emergence_layer": 13}}})
    jobs = planned_for(run("-n", config=override).stdout)
    assert jobs == {("figure", "smollm2"), ("all", "")}  # the figures it steers; the claims judge the data's own choices

    dtype = changed(config, **{"models.random-llama.dtype": "bfloat16"})
    jobs = planned_for(run("-n", config=dtype).stdout)
    # its figures follow once the checkpoint has run again: a dry run lists what depends on it statically
    after_fetch = {
        "fetch_model",
        "cut_windows",
        "dump_prompt",
        "corpus_statistics",
        "interventions",
        "quantization",
        "intervention_figure",
        "quantization_figure",
        "claims",
    }
    assert {(rule, "random-llama") for rule in after_fetch} <= jobs
    assert {model for rule, model in jobs if model in ("smollm2", "random-falcon")} == set()

    windows = changed(config, **{"corpora.text.windows": 3})
    rules = {rule for rule, _ in planned_for(run("-n", config=windows).stdout)}
    assert {"cut_windows", "corpus_statistics", "interventions", "quantization", "figure", "claims", "atlas_figure"} <= rules
    assert not rules & {"fetch_model", "fetch_corpus", "dump_prompt", "weight_statistics"}

    schedule = changed(config, **{"training.tasks.t1.schedule.steps": 6})
    assert planned_for(run("-n", *training, config=schedule).stdout) == {("train_variant", "t1")}
