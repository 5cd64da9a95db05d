"""The Snakemake workflow as a user drives it: planning, config errors, lint and format."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1"]


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
        # the attention variants: 6 × 3 seeds on the testbed, 6 × 1 on characters, each task analysed and drawn
        "prepare_training_text": 1,
        "train_variant": 24,
        "analyse_variants": 2,
        "gpt2_figure": 10,
        "variant_tables": 2,
        "gpt2_claims": 1,
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
        # GPT-2 124M on OpenWebText, one seed per variant, 8 GPUs each
        "prepare_training_text": 1,
        "train_variant": 6,
        "analyse_variants": 1,
        "gpt2_figure": 5,
        "variant_tables": 1,
        "gpt2_claims": 1,
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
    assert len(training) == 6 and all("gpu=8" in job and "runtime=2880" in job and "slurm_partition=gpu" in job for job in training)
    capture = [job for job in jobs if re.search(r"rule (corpus_statistics|dump_prompt|interventions):", job)]
    assert len(capture) == 3 * 12 and all("mem_mb=64000" in job for job in capture)
    # GPUs follow the model entry: one card each, two for Mixtral spread with device_map auto
    assert all(("gpu=2" if "mixtral" in job else "gpu=1") in job for job in capture)


def test_the_cpu_slurm_profile_asks_for_no_gpu_and_polls_squeue(tmp_path):
    done = snakemake(tmp_path, "-n", "--workflow-profile", "none", "--profile", str(REPO / "profiles" / "slurm-cpu"))
    assert done.returncode == 0, done.stderr
    jobs = [job for job in re.split(r"\n(?=\[\w{3} \w{3} )", done.stdout) if "resources:" in job]
    heavy = [job for job in jobs if re.search(r"rule (corpus_statistics|dump_prompt|interventions|train_variant):", job)]
    assert len(heavy) == 3 + 24 and all("gpu=0" in job and "slurm_partition=cpu" in job for job in heavy)
    profile = (REPO / "profiles" / "slurm-cpu" / "config.yaml").read_text()
    assert "slurm-status-command: squeue" in profile  # clusters without accounting have no sacct


def test_once_fetched_a_model_gets_only_the_figures_its_architecture_can_give(tmp_path):
    """Falcon and MPT return their attention probabilities from code of their own: no logits, no
    query, key and value for Falcon, and no gate. The architecture.json that fetch_model resolves is
    written here from the hand table's record."""
    from systematic_outliers.architectures import ARCHITECTURES

    for model, model_type in (("falcon-7b", "falcon"), ("mpt-7b", "mpt"), ("llama2-7b", "llama")):
        folder = tmp_path / "resources" / "models" / model
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": model_type, "max_position_embeddings": 4096}))
        ARCHITECTURES[model_type].to_json(folder / "architecture.json")
    done = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "paper.yaml"))
    assert done.returncode == 0, done.stderr

    def planned(model):
        return set(re.findall(rf"results/figures/{model}/(\w+)\.png", done.stdout))

    # every model gets Fig 2 and the interventions' figures, which say what its architecture lacks
    assert planned("falcon-7b") == {
        "fig01_existence",
        "fig02_layer",
        "fig03_activation_positions",
        "fig04_down_proj_positions",
        "fig05_weight_positions",
        "fig06_attention_positions",
        "interventions",
        "scaling_factor",
    }
    assert planned("mpt-7b") == planned("falcon-7b")
    assert len(planned("llama2-7b")) == 11
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


def small_corpus(folder: Path) -> Path:
    """Four documents of 600 words drawn from a few, with delimiters: a corpus for `path:`."""
    folder.mkdir()
    words = "summer winter warm cold . the and of is , \n".split(" ")
    for number in range(4):
        rng = __import__("random").Random(number)
        (folder / f"doc{number}.txt").write_text(" ".join(rng.choice(words) for _ in range(600)))
    return folder


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


TINY_TASK = {
    "data": {"kind": "bigram_backcopy", "length": 16, "vocab_size": 16, "triggers": 2, "task_seed": 0},
    "model": {"n_layer": 1, "n_head": 1, "n_embd": 16},
    "schedule": {
        "steps": 4,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "min_learning_rate": 1e-4,
        "warmup_steps": 1,
        "decay_steps": 4,
        "weight_decay": 0.0,
        "eval_interval": 2,
        "eval_batches": 1,
        "checkpoint_interval": 4,
    },
    "seeds": [0],
}


def path_model(folder: Path, model, tokenizer_dir: Path) -> Path:
    """A tiny random model saved for `path:`, with SmolLM2's tokenizer."""
    import shutil

    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


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
    for model, count in (("smollm2", 11), ("random-llama", 11), ("random-falcon", 8), ("tiny-gpt-oss", 9), ("tiny-jamba", 9)):
        assert len(list((results / "figures" / model).glob("*.png"))) == count, model
    claims = (results / "claims" / "random-llama.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in claims.splitlines() if line.startswith("| ")}
    for claim in ("Activation outliers exist", "Weight outliers exist", "Attention outliers exist"):
        assert next(line for text, line in rows.items() if text.startswith(claim)).endswith("| **does not hold** |"), claim
    real = (results / "claims" / "smollm2.md").read_text()
    assert next(line for line in real.splitlines() if line.startswith("| Activation outliers exist")).endswith("| **holds** |")
    table1 = pd.read_csv(results / "tables" / "table1_alignment.csv").set_index("model")
    assert table1.activation_outlier_tokens["random-llama"] == 0 and table1.activation_outlier_tokens["smollm2"] > 0
    summary = pd.read_csv(results / "claims" / "summary.csv")
    assert set(summary.model) == set(MODELS) and len(summary) == len(MODELS) * 15
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
    after_fetch = {"fetch_model", "cut_windows", "dump_prompt", "corpus_statistics", "interventions", "intervention_figure", "claims"}
    assert {(rule, "random-llama") for rule in after_fetch} <= jobs
    assert {model for rule, model in jobs if model in ("smollm2", "random-falcon")} == set()

    windows = changed(config, **{"corpora.text.windows": 3})
    rules = {rule for rule, _ in planned_for(run("-n", config=windows).stdout)}
    assert {"cut_windows", "corpus_statistics", "interventions", "figure", "claims"} <= rules
    assert not rules & {"fetch_model", "fetch_corpus", "dump_prompt", "weight_statistics"}

    schedule = changed(config, **{"training.tasks.t1.schedule.steps": 6})
    assert planned_for(run("-n", *training, config=schedule).stdout) == {("train_variant", "t1")}


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
