"""Devices that never surprise: the CPU when a job asks for no GPU, one line when it asks for GPUs that
are not there, disjoint cards for concurrent jobs on one machine (a faked card count), SLURM's as given."""

import subprocess
import sys

import pytest
import torch
from conftest import REPO
from systematic_outliers import devices, passes
from systematic_outliers.devices import DeviceError


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine with four cards (counted as devices.physical_gpus counts them) and its own lock folder."""
    monkeypatch.setattr(devices, "LOCKS", tmp_path / "locks")
    monkeypatch.setattr(devices, "physical_gpus", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    yield
    for handle in devices._HELD:
        handle.close()
    devices._HELD.clear()


def test_no_gpu_asked_runs_on_the_cpu_and_says_so(capsys):
    assert devices.device(0, "models.tiny") == torch.device("cpu")
    assert capsys.readouterr().out.startswith("device: cpu (models.tiny asks for no GPU); torch ")


def test_a_job_asking_for_a_gpu_that_is_not_there_stops_with_one_line(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _, folder = tiny_model_dir("llama")
    with pytest.raises(DeviceError) as error:
        passes.load("tiny", {"dtype": "float32", "trust_remote_code": False}, folder, gpus=1)
    assert str(error.value) == (
        f"models.tiny asks for 1 GPU but torch sees none (torch {torch.__version__}, CUDA {torch.version.cuda or 'not in this build'}, "
        "CUDA_VISIBLE_DEVICES=unset); run it where the GPUs are, with a CUDA build of torch, or set its gpus to 0 to run on the CPU"
    )
    monkeypatch.setenv("SLURM_JOB_ID", "17")  # a SLURM allocation: its cards are used as given, none claimed
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(devices, "claim", lambda *args: pytest.fail("claimed cards inside an allocation"))
    with pytest.raises(DeviceError, match=r"^training.tasks.paper asks for 2 GPUs but torch sees none .*CUDA_VISIBLE_DEVICES=2,3\)"):
        devices.device(2, "training.tasks.paper")


def test_concurrent_jobs_claim_disjoint_cards(machine, monkeypatch):
    import os

    def job(gpus, who):  # each job is a process of its own, started with the shell's environment
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        return devices.claim(gpus, who)

    assert job(2, "models.a") == ["0", "1"]
    assert job(1, "models.b") == ["2"]
    assert job(1, "models.c") == ["3"] and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    # a fourth job waits until a card is free again: the first job ends, and its cards come back
    first = devices._HELD[:2]
    monkeypatch.setattr(devices.time, "sleep", lambda seconds: [handle.close() for handle in first])
    assert job(2, "models.d") == ["0", "1"]


def test_a_workstation_that_shows_some_cards_claims_among_those(machine, monkeypatch):
    """CUDA_VISIBLE_DEVICES set in the shell (not by SLURM) limits the cards; jobs still share none."""
    import os

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert devices.claim(1, "models.a") == ["1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")  # the next job's shell
    assert devices.claim(1, "models.b") == ["3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no card at all: device() says what torch sees
    assert devices.claim(1, "models.c") == []


def test_a_claim_holds_across_processes(machine, tmp_path):
    """Another process (another Snakemake job) gets the cards this one does not hold."""
    assert devices.claim(3, "models.a") == ["0", "1", "2"]
    script = (
        "import sys; sys.path.insert(0, 'workflow/scripts'); from pathlib import Path; from systematic_outliers import devices; "
        f"devices.LOCKS = Path({str(tmp_path / 'locks')!r}); devices.physical_gpus = lambda: 4; "
        "print(devices.claim(1, 'models.b')[0])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60, env={"PATH": ""})
    assert done.stdout.splitlines()[-1] == "3", done.stderr
