"""The Snakemake workflow as a user drives it: planning, config errors, lint and format."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from snakemake_runs import SNAKEMAKE, path_model, small_corpus


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True, env=env, cwd=workdir.parent)


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    lines = output.split("Job stats:")[1].splitlines()[3:]
    jobs = {}
    for line in lines:
        if not line.strip() or line.startswith("total"):
            break
        rule, count = line.split()
        jobs[rule] = int(count)
    return jobs


def test_dry_run_of_the_default_config_plans_the_default_target(tmp_path):
    done = snakemake(tmp_path, "-n")
    assert done.returncode == 0, done.stderr
    assert planned_jobs(done.stdout) == {
        "fetch_corpus": 1,
        "fetch_model": 1,
        "cut_windows": 1,
        "dump_prompt": 1,
        "corpus_statistics": 1,
        "weight_statistics": 1,
        "claims": 1,
        "claims_summary": 1,
        "table1_alignment": 1,
        "interventions": 1,
        "intervention_figure": 2,
        "interventions_table": 1,
        "quantization": 1,
        "quantization_table": 1,
        "quantization_figure": 1,
        # the attention variants: 11 × 3 seeds on the testbed, 11 × 1 on characters, each task analysed and drawn
        "prepare_training_text": 1,
        "train_variant": 44,
        "analyse_variants": 2,
        "gpt2_figure": 12,
        "variant_tables": 2,
        "gpt2_claims": 1,
        # the report's pages: Table 1, the interventions, the quantization, the scorecard, the claims; each task's 3 tables, the GPT-2 claims
        "markdown_page": 5 + 2 * 3 + 1,
        "atlas_figure": 1,
        "all": 1,
    }
    assert "results/capture/smollm2-135m/stats/shakespeare" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [".snakemake"]


def test_dry_run_of_the_paper_config_plans_every_model_without_the_network(tmp_path):
    done = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "paper.yaml"))
    assert done.returncode == 0, done.stderr
    assert planned_jobs(done.stdout) == {
        "fetch_corpus": 2,
        "fetch_model": 12,
        "cut_windows": 12,
        "dump_prompt": 12,
        "corpus_statistics": 12,
        "weight_statistics": 12,
        "claims": 12,
        "claims_summary": 1,
        "table1_alignment": 1,
        "interventions": 12,
        "intervention_figure": 24,
        "interventions_table": 1,
        "quantization": 12,
        "quantization_table": 1,
        "quantization_figure": 12,
        # GPT-2 124M on OpenWebText, one seed per variant, 8 GPUs each
        "prepare_training_text": 1,
        "train_variant": 11,
        "analyse_variants": 1,
        "gpt2_figure": 6,
        "variant_tables": 1,
        "gpt2_claims": 1,
        "markdown_page": 4 + 12 + 3 + 1,
        "atlas_figure": 1,
        "all": 1,
    }
    assert "results/training/paper/context_scale/seed1337/model.safetensors" in done.stdout
    assert "results/capture/mixtral-8x7b/stats/redpajama" in done.stdout


def test_the_slurm_profile_plans_the_paper_with_each_rules_gpus_memory_and_runtime(tmp_path):
    done = snakemake(
        tmp_path,
        "-n",
        "--workflow-profile",
        "none",
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--configfile",
        str(REPO / "config" / "paper.yaml"),
    )
    assert done.returncode == 0, done.stderr
    jobs = re.split(r"\n(?=\[\w{3} \w{3} )", done.stdout)  # each job starts with its timestamp
    training = [job for job in jobs if "rule train_variant:" in job]
    assert len(training) == 11 and all("gpu=8" in job and "runtime=2880" in job and "slurm_partition=gpu" in job for job in training)
    capture = [job for job in jobs if re.search(r"rule (corpus_statistics|dump_prompt|interventions):", job)]
    assert len(capture) == 3 * 12 and all("mem_mb=64000" in job for job in capture)
    # GPUs follow the model entry: one card each, two for Mixtral spread with device_map auto; on one node
    assert all(("gpu=2" if "mixtral" in job else "gpu=1") in job for job in capture)
    assert all("nodes=1" in job and "gpu_model" not in job for job in capture + training)
    profile = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    assert [line.strip() for line in profile.splitlines() if "gpu_model:" in line] == ['# gpu_model: "h100"']


LOCAL_RULES = """
import sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings()) as api:
    config = dict(arg.split("=") for arg in sys.argv[2:])
    parsed = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(config={key: value == "True" for key, value in config.items()}),
        snakefile=Path(sys.argv[1]),
    )
    workflow = parsed._workflow  # the parsed workflow: which rules run where Snakemake runs
    print(" ".join(sorted(workflow._localrules)))
"""


def test_downloads_run_where_snakemake_runs_when_the_cluster_profile_says_so(tmp_path):
    """profiles/slurm sets fetch_locally (compute nodes often have no internet); without it the
    fetch rules are cluster jobs like the rest (profiles/slurm-cpu, the real SLURM test)."""
    profile = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    assert "config:\n  - fetch_locally=True\n" in profile
    local = {}
    for setting in ("fetch_locally=True", "fetch_locally=False"):
        done = subprocess.run(
            [sys.executable, "-c", LOCAL_RULES, str(REPO / "Snakefile"), setting],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        local[setting] = set(done.stdout.split())
    assert local["fetch_locally=True"] - local["fetch_locally=False"] == {"fetch_model", "fetch_corpus"}


def test_the_cpu_slurm_profile_asks_for_no_gpu_and_polls_squeue(tmp_path):
    done = snakemake(tmp_path, "-n", "--workflow-profile", "none", "--profile", str(REPO / "profiles" / "slurm-cpu"))
    assert done.returncode == 0, done.stderr
    jobs = [job for job in re.split(r"\n(?=\[\w{3} \w{3} )", done.stdout) if "resources:" in job]
    heavy = [job for job in jobs if re.search(r"rule (corpus_statistics|dump_prompt|interventions|train_variant):", job)]
    assert len(heavy) == 3 + 44 and all("gpu=0" in job and "slurm_partition=cpu" in job for job in heavy)
    profile = (REPO / "profiles" / "slurm-cpu" / "config.yaml").read_text()
    assert "slurm-status-command: squeue" in profile  # clusters without accounting have no sacct


def test_once_fetched_a_model_gets_only_the_figures_its_architecture_can_give(tmp_path):
    """Falcon and MPT return their attention probabilities from code of their own: no logits, no
    query, key and value for Falcon, and no gate. The architecture.json that fetch_model resolves is
    written here from the hand table's record, beside each checkpoint's own config.json keys (MPT's
    context in max_seq_len, none in Falcon's, which config/paper.yaml gives)."""
    from paper_families import tiny_config
    from systematic_outliers.architectures import ARCHITECTURES

    for model, model_type in (("falcon-7b", "falcon"), ("mpt-7b", "mpt"), ("llama2-7b", "llama")):
        folder = tmp_path / "resources" / "models" / model
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(
            json.dumps({**tiny_config(model), "max_seq_len": 2048} if model_type == "mpt" else tiny_config(model))
        )
        ARCHITECTURES[model_type].to_json(folder / "architecture.json")
    done = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "paper.yaml"))
    assert done.returncode == 0, done.stderr

    def planned(model):
        return set(re.findall(rf"results/figures/{model}/(\w+)\.png", done.stdout))

    # every model gets Fig 2 and the interventions' and quantization's figures, which say what its architecture lacks
    assert planned("falcon-7b") == {
        "fig01_existence",
        "fig02_layer",
        "fig03_activation_positions",
        "fig04_down_proj_positions",
        "fig05_weight_positions",
        "fig06_attention_positions",
        "interventions",
        "scaling_factor",
        "quantization",
    }
    assert planned("mpt-7b") == planned("falcon-7b")
    assert len(planned("llama2-7b")) == 12
    # the other 9 models are not fetched: their figures are planned once they are (fetch_model is a checkpoint)
    assert planned_jobs(done.stdout)["figure"] == 6 + 6 + 9  # no logits (Fig 8), no gate (Figs 7, 9)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"corpora": {"shakespeare": {"windws": 3}}}, "corpora.shakespeare: unknown key 'windws'; allowed keys:"),
        ({"corpora": {"shakespeare": {"windows": "many"}}}, "corpora.shakespeare.windows: must be of type integer, got 'many'"),
        ({"models": {"smollm2-135m": {"source": "ftp:x"}}}, "models.smollm2-135m.source: 'ftp:x' is not valid"),
        ({"models": {"smollm2-135m": {"gpus": -1}}}, "models.smollm2-135m.gpus: -1 is less than the minimum of 0"),
        ({"targets": {"models": ["llama2-7b"]}}, "targets.models[0]: unknown model 'llama2-7b'; defined under models: smollm2-135m"),
        ({"training": {"run": ["big"]}}, "training.run[0]: unknown task 'big'; defined under training.tasks: backcopy, mini"),
        ({"training": {"variants": ["flash"]}}, "training.variants[0]: 'flash' is not allowed; use one of default, fixed_bias"),
        (
            {"training": {"tasks": {"mini": {"data": {"corpus": "wiki"}}}}},
            "training.tasks.mini.data.corpus: unknown corpus 'wiki'; defined under corpora: shakespeare",
        ),
        (
            {"training": {"tasks": {"backcopy": {"data": {"prompt": "hi"}}}}},
            "training.tasks.backcopy.data: prompt not used by kind 'bigram_backcopy'; remove it",
        ),
        (
            {"training": {"tasks": {"mini": {"model": {"n_head": 3}}}}},
            "training.tasks.mini.model: n_embd 128 is not a multiple of n_head 3",
        ),
    ],
)
def test_bad_config_gives_one_line_and_writes_nothing(tmp_path, config, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(config))
    workdir = tmp_path / "work"
    workdir.mkdir()
    done = snakemake(workdir, "--configfile", str(bad))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("config error:")]
    assert errors == [f"config error: {message}"] or errors[0].startswith(f"config error: {message}")
    assert len(errors) == 1 and "Traceback" not in done.stderr
    # nothing but Snakemake's own run log, which it opens before reading the Snakefile
    written = [p.relative_to(workdir).parts[:2] for p in workdir.rglob("*") if p.is_file()]
    assert set(written) <= {(".snakemake", "log")}


def test_window_longer_than_a_known_context_stops_before_running(tmp_path):
    model = tmp_path / "resources" / "models" / "smollm2-135m"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 256}))
    done = snakemake(tmp_path, "-n")
    assert done.returncode == 1
    assert (
        "config error: corpora.shakespeare.window_length: 512 tokens is longer than the context of model 'smollm2-135m' (256); use at most 256"
        in done.stderr.splitlines()
    )
    assert not (tmp_path / ".snakemake").exists()


def test_lint_is_clean_and_code_and_rules_are_formatted():
    lint = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    rule_files = ["Snakefile", *map(str, sorted((REPO / "workflow" / "rules").glob("*.smk")))]
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *rule_files], capture_output=True, text=True, cwd=REPO)
    assert fmt.returncode == 0, fmt.stderr
    for command in (["check"], ["format", "--check"]):  # the Python code, by pyproject.toml's [tool.ruff]
        ruff = subprocess.run([sys.executable, "-m", "ruff", *command], capture_output=True, text=True, cwd=REPO)
        assert ruff.returncode == 0, ruff.stdout + ruff.stderr


def _job_process(session: int, script: str) -> int | None:
    """The pid of the Python process running rule script `script` in process session `session`."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getsid(int(proc.name)) == session and script in (proc / "cmdline").read_bytes().decode():
                return int(proc.name)
        except (OSError, ProcessLookupError):
            continue
    return None


@pytest.mark.slow
def test_a_run_whose_capture_job_is_killed_finishes_with_the_same_command_and_results(smollm2_dir, tmp_path):
    """Kill the corpus_statistics job mid-capture (as the OOM killer or a node failure would);
    the same command then finishes the run (the workflow profile sets rerun-incomplete) with
    statistics identical to a run never interrupted, and the killed job left nothing that
    looks complete."""
    import signal
    import time

    folder, _ = smollm2_dir
    text = small_corpus(tmp_path / "text")
    config = tmp_path / "small.yaml"
    config.write_text(
        json.dumps(
            {
                "models": {"small": {"source": f"path:{folder}", "dtype": "float32"}},
                "corpora": {"text": {"source": f"path:{text}", "include": "*.txt", "window_length": 128, "windows": 6}},
                "targets": {"models": ["small"], "corpus": "text"},
                "training": {"run": []},
            }
        )
    )
    target = "results/capture/small/stats/text"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = {}
    for name in ("killed", "straight"):
        workdir = tmp_path / name
        workdir.mkdir()
        command = [*SNAKEMAKE, target, "--directory", str(workdir), "--configfile", str(config)]  # --configfile takes many
        if name == "killed":
            child = subprocess.Popen(
                command, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            log = workdir / "results" / "logs" / "corpus_statistics" / "small" / "text.log"
            deadline = time.time() + 300
            while not (log.exists() and "windows:" in log.read_text(errors="ignore")):
                assert child.poll() is None and time.time() < deadline, "the run ended before capture started"
                time.sleep(0.05)
            job = _job_process(child.pid, "corpus_statistics")
            assert job is not None
            os.kill(job, signal.SIGKILL)
            assert child.wait() != 0  # Snakemake reports the failed job and stops
            assert not (workdir / target).exists()
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = workdir / target
    for table in sorted(runs["straight"].glob("*.parquet")):
        assert table.read_bytes() == (runs["killed"] / table.name).read_bytes(), table.name
    assert sorted(p.name for p in runs["killed"].iterdir()) == sorted(p.name for p in runs["straight"].iterdir())


@pytest.mark.slow
def test_a_model_without_decoder_layers_stops_at_fetch_and_writes_nothing(tmp_path, smollm2_dir):
    import transformers

    # XLM maps to a causal-LM head but is an encoder: the probe finds no decoder layers
    xlm = transformers.AutoModelForCausalLM.from_config(
        transformers.XLMConfig(emb_dim=32, n_layers=2, n_heads=4, vocab_size=49152, is_decoder=True)
    )
    folder = path_model(tmp_path / "xlm", xlm, smollm2_dir[0])
    config = tmp_path / "xlm.yaml"
    config.write_text(
        json.dumps({"models": {"xlm": {"source": f"path:{folder}"}}, "targets": {"models": ["xlm"]}, "training": {"run": []}})
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    done = snakemake(workdir, "results/capture/xlm/weights.parquet", "--configfile", str(config))
    assert done.returncode != 0
    assert "error: models.xlm: xlm: no decoder layers found: no ModuleList of 2 modules" in done.stderr
    assert not (workdir / "resources" / "models" / "xlm").exists()
