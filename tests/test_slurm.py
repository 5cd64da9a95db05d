"""The cluster path for real: a single-node SLURM on this machine, and the workflow through
profiles/slurm-cpu as the README says to use it.

Where SLURM is missing and the tests run as root with apt-get (as CI here does), the fixture
installs Debian's slurm-wlm and munge, writes a single-node slurm.conf for this host (only if
there is none), starts the daemons that are not running and, at the end, stops exactly those by
their PID files, also when a test fails. Elsewhere it skips and says why."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_model
from test_workflow import TINY_TASK, path_model, small_corpus

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_PID = Path("/run/munge/munged.pid")
MUNGE_KEY = Path("/etc/munge/munge.key")
# a token that must reach the jobs and appear in no file and no output
FAKE_TOKEN = "hf_slurmTestTokenNeverWritten"


def _single_node_conf() -> str:
    """slurm.conf for one node, this host: its CPUs and 90 % of its memory, no accounting
    (status through squeue), processes tracked without cgroups, which containers often lack."""
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    memory_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return f"""# single-node SLURM written by tests/test_slurm.py of the systematic-outliers workflow
ClusterName=single
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb * 9 // 10} State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _conf_value(key: str, default: str) -> str:
    for line in SLURM_CONF.read_text().splitlines():
        name, _, value = line.split("#")[0].partition("=")
        if name.strip().lower() == key.lower():
            return value.strip()
    return default


def _alive(pid_file: Path) -> int | None:
    """The PID in `pid_file` if that process runs."""
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _stop(pid_file: Path) -> None:
    pid = _alive(pid_file)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 20
    while _alive(pid_file) == pid and time.time() < deadline:
        time.sleep(0.1)
    if _alive(pid_file) == pid:
        os.kill(pid, signal.SIGKILL)


def _node_states() -> list[str]:
    if shutil.which("sinfo") is None:
        return []
    try:
        done = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:  # no controller to answer
        return []
    return done.stdout.split() if done.returncode == 0 else []


def _install() -> None:
    """slurm-wlm and munge from Debian (about 10 s here); the package lists are refreshed only if stale."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=True)
        done = subprocess.run(install, capture_output=True, text=True, env=env)
        assert done.returncode == 0, f"apt-get install slurm-wlm munge failed:\n{done.stderr[-2000:]}"


@pytest.fixture(scope="module")
def slurm_partition(request) -> str:
    """A SLURM that answers, with one node idle; returns its default partition."""
    root = os.geteuid() == 0
    if not _node_states():
        if not root:
            pytest.skip("SLURM is not running here, and installing or starting it needs root")
        if shutil.which("sinfo") is None:
            if shutil.which("apt-get") is None:
                pytest.skip("SLURM is not installed and this machine has no apt-get to install it")
            _install()
        if not SLURM_CONF.exists():
            SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
            SLURM_CONF.write_text(_single_node_conf())
        for folder in ("/var/spool/slurmctld", "/var/spool/slurmd", "/var/log/slurm"):
            Path(folder).mkdir(parents=True, exist_ok=True)
        MUNGE_PID.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_PID.parent, "munge", "munge")
        if not MUNGE_KEY.exists():  # Debian's package makes one; a removed one is made again
            subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True, timeout=30)
        daemons = (
            (["runuser", "-u", "munge", "--", "munged"], MUNGE_PID),
            (["slurmctld"], Path(_conf_value("SlurmctldPidFile", "/var/run/slurmctld.pid"))),
            (["slurmd"], Path(_conf_value("SlurmdPidFile", "/var/run/slurmd.pid"))),
        )
        for command, pid_file in daemons:
            if _alive(pid_file) is None:
                request.addfinalizer(lambda pid_file=pid_file: _stop(pid_file))  # registered first: stopped even if the start fails
                subprocess.run(command, check=True, timeout=30)
    deadline = time.time() + 60
    while not {"idle", "mixed"} & set(_node_states()):
        assert time.time() < deadline, f"no SLURM node became idle within a minute; states: {_node_states()}"
        time.sleep(0.5)
    partitions = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, check=True).stdout.split()
    return next(name.rstrip("*") for name in partitions if name.endswith("*"))


def cpu_profile(folder: Path, partition: str) -> Path:
    """profiles/slurm-cpu with its partition set to this cluster's, as the README tells a user to."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm-cpu" / "config.yaml").read_text())
    profile["default-resources"]["slurm_partition"] = partition
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


# the jobs that must run on the cluster; figures, tables and claims are local rules
HEAVY_RULES = {
    "fetch_model",
    "fetch_corpus",
    "cut_windows",
    "dump_prompt",
    "weight_statistics",
    "corpus_statistics",
    "interventions",
    "train_variant",
}


def snakemake_on_slurm(workdir: Path, profile: Path, config: Path, *targets: str) -> subprocess.CompletedProcess:
    """The README's cluster command, from another directory, with the token and offline mode set
    in the submitting shell only; --keep-going, so one failing job leaves the others to finish."""
    command = [
        *(sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)),
        *("--workflow-profile", "none", "--profile", str(profile), "--keep-going"),
        # status every second instead of the plugin's 40 s first wait; successful jobs' logs kept to look at
        *("--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1", "--slurm-keep-successful-logs"),
        *targets,
        *("--configfile", str(config)),  # last: it takes several files
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": FAKE_TOKEN}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir.parent, timeout=600)


def slurm_logs(workdir: Path) -> dict[str, list[Path]]:
    """{rule: its jobs' SLURM log files}, from .snakemake/slurm_logs/rule_<rule>/..."""
    logs = {}
    for log in sorted((workdir / ".snakemake" / "slurm_logs").glob("rule_*/**/*.log")):
        rule = log.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        logs.setdefault(rule, []).append(log)
    return logs


def test_a_run_through_slurm_gives_the_results_of_a_local_run_and_shows_the_log_of_a_failing_job(slurm_partition, smollm2_dir, tmp_path):
    """Capture, statistics, interventions and one tiny training run of a tiny Llama, each job
    submitted to SLURM, give byte for byte the files of the same config run locally. Beside them
    a hub model fetched offline fails inside its job: the run shows that job's log, which says the
    token and offline mode reached the job; the token itself appears in no file and no output."""
    model = path_model(tmp_path / "tiny-llama", tiny_model("llama", vocab_size=49152, max_position_embeddings=256), smollm2_dir[0])
    config = tmp_path / "small.yaml"
    config.write_text(
        json.dumps(
            {
                "models": {
                    "tiny": {"source": f"path:{model}", "dtype": "float32"},
                    "gated": {"source": "hf:meta-llama/Llama-2-7b-hf"},
                },
                "corpora": {
                    "text": {"source": f"path:{small_corpus(tmp_path / 'text')}", "include": "*.txt", "window_length": 64, "windows": 3}
                },
                "targets": {"models": ["tiny"], "corpus": "text"},
                "interventions": {"seeds": [0, 1]},
                "training": {"variants": ["default"], "tasks": {"t": TINY_TASK}, "run": []},
            }
        )
    )
    targets = [
        "results/capture/tiny/prompts/summer.safetensors",
        "results/capture/tiny/weights.parquet",
        "results/capture/tiny/stats/text",
        "results/interventions/tiny/text.parquet",
        "results/training/t/default/seed0/model.safetensors",
    ]
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    local.mkdir(), cluster.mkdir()
    # the local run uses the CPUs while the cluster run waits on SLURM
    local_run = subprocess.Popen(
        [*(sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2", "--directory", str(local)), *targets]
        + ["--configfile", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
    )
    done = snakemake_on_slurm(
        cluster, cpu_profile(tmp_path / "profile", slurm_partition), config, *targets, "results/capture/gated/weights.parquet"
    )
    assert local_run.wait(timeout=600) == 0, local_run.stderr.read()[-3000:]
    output = done.stdout + done.stderr
    assert done.returncode != 0  # the hub model

    # every heavy job went through SLURM, with a log named by its SLURM job id
    logs = slurm_logs(cluster)
    assert set(logs) == HEAVY_RULES, logs
    assert output.count("has been submitted with SLURM jobid") == sum(len(files) for files in logs.values()) == 9
    assert all(log.stem.isdigit() for files in logs.values() for log in files)
    compared = 0
    for path in sorted((local / "results").rglob("*")):
        if path.suffix in (".parquet", ".safetensors"):
            assert path.read_bytes() == (cluster / path.relative_to(local)).read_bytes(), path.relative_to(local)
            compared += 1
    assert compared >= 8

    # the failed job: its log shown (the error is printed inside the job, so only the shown log brings it here)
    assert "error: models.gated.source: cannot reach the Hugging Face hub for meta-llama/Llama-2-7b-hf: HF_HUB_OFFLINE is set" in output
    log = (cluster / "results" / "logs" / "fetch_model" / "gated.log").read_text()
    assert log.startswith(
        "models.gated.source: meta-llama/Llama-2-7b-hf from the hub, with the token in HF_TOKEN, offline (HF_HUB_OFFLINE)\n"
    )
    (slurm_log,) = (log for log in logs["fetch_model"] if log.parent.name == "gated")
    assert str(slurm_log) in output  # where to look for what the job printed
    assert not (cluster / "resources" / "models" / "gated").exists()

    assert FAKE_TOKEN not in output
    for path in cluster.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path.relative_to(cluster)
