"""The cluster path for real: a single-node SLURM on this machine, and the workflow through
profiles/slurm-cpu as the README says to use it.

Where SLURM is missing and the tests run as root with apt-get (as CI here does), the fixture
installs Debian's slurm-wlm and munge, writes a single-node slurm.conf for this host, starts the
daemons that are not running and, at the end, cancels the jobs left, stops exactly the daemons
it started and removes its slurm.conf, also when a test fails. A SLURM it did not configure (a real cluster's login
node) is left alone: the test skips, as it does without root or apt-get, and says why."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_model
from snakemake_runs import TINY_TASK, path_model, small_corpus

SLURM_CONF = Path("/etc/slurm/slurm.conf")
PARTITION = "cpu"
CONF_HEADER = "# single-node SLURM written by tests/test_slurm.py of the systematic-outliers workflow\n"
MUNGE_PID = Path("/run/munge/munged.pid")
SLURMCTLD_PID = Path("/run/slurmctld.pid")
SLURMD_PID = Path("/run/slurmd.pid")
MUNGE_KEY = Path("/etc/munge/munge.key")
# a token that must reach the jobs and appear in no file of the run and no output
FAKE_TOKEN = "hf_slurmTestTokenNeverWritten"


def _single_node_conf() -> str:
    """slurm.conf for one node, this host: its CPUs and 90 % of its memory, no accounting
    (status through squeue), processes tracked without cgroups, which containers often lack."""
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    memory_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return f"""{CONF_HEADER}ClusterName=single
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile={SLURMCTLD_PID}
SlurmdPidFile={SLURMD_PID}
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
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _ours() -> bool:
    return SLURM_CONF.exists() and SLURM_CONF.read_text().startswith(CONF_HEADER)


def _running_pid(pid_file: Path, name: str) -> int | None:
    """The PID in `pid_file` if a process called `name` has it (not a stale file's reused PID)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        return pid if Path(f"/proc/{pid}/comm").read_text().strip() == name else None
    except (OSError, ValueError, IndexError):
        return None


def _stop(pid_file: Path, name: str) -> None:
    pid = _running_pid(pid_file, name)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 20
    while _running_pid(pid_file, name) == pid and time.time() < deadline:
        time.sleep(0.1)
    if _running_pid(pid_file, name) == pid:
        os.kill(pid, signal.SIGKILL)


def _cancel_jobs() -> None:
    """Cancel what a failed or timed-out run left queued, and wait (30 s at most) until no job is left."""
    deadline = time.time() + 30
    try:
        subprocess.run(["scancel", "--user", "root"], capture_output=True, timeout=20)
        while (
            time.time() < deadline and subprocess.run(["squeue", "--noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        ):
            time.sleep(0.5)
    except subprocess.TimeoutExpired:  # a controller that no longer answers has no jobs to wait for
        pass


def _node_states() -> list[str]:
    if shutil.which("sinfo") is None:
        return []
    try:
        sinfo = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:  # no controller to answer
        return []
    return sinfo.stdout.split() if sinfo.returncode == 0 else []


def _install() -> None:
    """slurm-wlm and munge from Debian (about 10 s here), with the services' start at install
    blocked (policy-rc.d), so that the daemons running afterwards are the ones the fixture starts;
    the package lists are refreshed only if stale."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]
    policy = Path("/usr/sbin/policy-rc.d")
    blocked = not policy.exists()
    if blocked:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        if subprocess.run(install, capture_output=True, env=env, timeout=300).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=True, timeout=300)
            apt = subprocess.run(install, capture_output=True, text=True, env=env, timeout=300)
            assert apt.returncode == 0, f"apt-get install slurm-wlm munge failed:\n{apt.stderr[-2000:]}"
    finally:
        if blocked:
            policy.unlink()


@pytest.fixture(scope="module")
def single_node_slurm(request) -> None:
    """The single-node SLURM this test configures, answering with its node idle."""
    if _node_states():
        if not _ours():
            pytest.skip(f"a SLURM this test did not configure answers here ({SLURM_CONF}); the test runs only on its own single node")
    else:
        if os.geteuid() != 0:
            pytest.skip("SLURM is not running here, and installing or starting it needs root")
        if shutil.which("sinfo") is None:
            if shutil.which("apt-get") is None:
                pytest.skip("SLURM is not installed and this machine has no apt-get to install it")
            _install()
        if SLURM_CONF.exists() and not _ours():
            pytest.skip(f"{SLURM_CONF} exists and was not written by this test; it leaves a SLURM it did not configure alone")
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(_single_node_conf())  # anew: the host may have changed since
        # removed at the end (this finalizer runs last): with a slurm.conf and no controller, every
        # `scontrol show config` waits 10 s, and the SLURM plugin runs one whenever Snakemake starts
        request.addfinalizer(lambda: SLURM_CONF.unlink(missing_ok=True))
        for folder in ("/var/spool/slurmctld", "/var/spool/slurmd", "/var/log/slurm"):
            Path(folder).mkdir(parents=True, exist_ok=True)
        MUNGE_PID.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_PID.parent, "munge", "munge")
        if not MUNGE_KEY.exists():  # Debian's package makes one; a removed one is made again
            subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True, timeout=30)
        daemons = (
            ("munged", ["runuser", "-u", "munge", "--", "munged"], MUNGE_PID),
            ("slurmctld", ["slurmctld"], SLURMCTLD_PID),
            ("slurmd", ["slurmd"], SLURMD_PID),
        )
        started = []

        def stop_what_was_started():
            if "slurmctld" in (name for name, _ in started):
                _cancel_jobs()  # no job outlives the controller
            for name, pid_file in reversed(started):
                _stop(pid_file, name)

        # registered before the starts, so that daemons started before a failing one are stopped too
        request.addfinalizer(stop_what_was_started)
        for name, command, pid_file in daemons:
            if _running_pid(pid_file, name) is None:
                started.append((name, pid_file))
                subprocess.run(command, check=True, timeout=30)
    deadline = time.time() + 60
    while not {"idle", "mixed"} & set(_node_states()):
        assert time.time() < deadline, f"no SLURM node became idle within a minute; states: {_node_states()}"
        time.sleep(0.5)


def cpu_profile(folder: Path) -> Path:
    """profiles/slurm-cpu set up for this cluster as the README tells a user to: its partition,
    and slurm-no-account instead of an account, since it has no accounts."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm-cpu" / "config.yaml").read_text())
    profile["default-resources"]["slurm_partition"] = PARTITION
    del profile["default-resources"]["slurm_account"]
    profile["slurm-no-account"] = True
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


# one run takes about 2 minutes here
RUN_SECONDS = 300
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
    # a hung run ends here; the fixture cancels its jobs
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir.parent, timeout=RUN_SECONDS)


def slurm_logs(workdir: Path) -> dict[str, list[Path]]:
    """{rule: its jobs' SLURM log files}, from .snakemake/slurm_logs/rule_<rule>/..."""
    logs = {}
    for log in sorted((workdir / ".snakemake" / "slurm_logs").glob("rule_*/**/*.log")):
        rule = log.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        logs.setdefault(rule, []).append(log)
    return logs


@pytest.mark.slow
def test_a_run_through_slurm_gives_the_results_of_a_local_run_and_shows_the_log_of_a_failing_job(single_node_slurm, smollm2_dir, tmp_path):
    """Capture, statistics, interventions and one tiny training run of a tiny Llama, each job
    submitted to SLURM, give byte for byte the files of the same config run locally. Beside them
    a hub model fetched offline fails inside its job: the run shows that job's logs, the rule log
    saying that the token and offline mode reached the job; the token is in no file of the run."""
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
    local_log = tmp_path / "local.log"
    with local_log.open("w") as log:
        # the local run uses the CPUs while the cluster run waits on SLURM
        local_run = subprocess.Popen(
            [*(sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2", "--directory", str(local))]
            + [*targets, "--configfile", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            cwd=tmp_path,
        )
        try:
            cluster_run = snakemake_on_slurm(
                cluster, cpu_profile(tmp_path / "profile"), config, *targets, "results/capture/gated/weights.parquet"
            )
            assert local_run.wait(timeout=RUN_SECONDS) == 0, local_log.read_text()[-3000:]
        finally:
            local_run.kill()
    output = cluster_run.stdout + cluster_run.stderr
    assert set(re.findall(r"Error in rule (\w+):", output)) == {"fetch_model"}, output[-3000:]  # the hub model's only

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

    # the failed job's rule log and SLURM log, both shown; the error is printed inside the job, so only they bring it here
    (slurm_log,) = (log for log in logs["fetch_model"] if log.parent.name == "gated")
    assert "Logfile results/logs/fetch_model/gated.log:" in output and f"Logfile {slurm_log}:" in output
    assert "error: models.gated.source: cannot reach the Hugging Face hub for meta-llama/Llama-2-7b-hf: HF_HUB_OFFLINE is set" in output
    log = (cluster / "results" / "logs" / "fetch_model" / "gated.log").read_text()
    assert log.startswith(
        "models.gated.source: meta-llama/Llama-2-7b-hf from the hub, with the token in HF_TOKEN, offline (HF_HUB_OFFLINE)\n"
    )
    assert not (cluster / "resources" / "models" / "gated").exists()

    assert FAKE_TOKEN not in output
    for path in cluster.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path.relative_to(cluster)
