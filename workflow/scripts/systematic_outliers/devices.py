"""Where forward passes and training run: the cards a job was granted, or the CPU; never a silent switch.

A job asks for `gpus` cards (a model's `models.<m>.gpus`, a training task's `gpus`: Snakemake's `gpu`
resource, which it only counts). `device(gpus)` then
- with 0, runs on the CPU, whatever the machine has;
- under SLURM, uses the allocation's cards (CUDA_VISIBLE_DEVICES) as given: they are this job's alone;
- elsewhere, claims `gpus` cards no other job of this workflow holds, among the visible ones (all of
  the machine's, or those CUDA_VISIBLE_DEVICES lists), with a lock file per card held until the
  process ends, and makes only those visible, before CUDA starts: concurrent jobs get disjoint
  cards instead of all sharing card 0;
- stops with one line (`DeviceError`) when the cards are not there: what torch sees, its CUDA
  build, and CUDA_VISIBLE_DEVICES.
It prints the device, the CUDA build and the visible cards first, so every rule's log starts with them.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .config import UserError

# Where the per-card lock files live: one folder per machine, shared by every job of every run on it.
LOCKS = Path(os.environ.get("SYSTEMATIC_OUTLIERS_GPU_LOCKS", Path(tempfile.gettempdir()) / "systematic-outliers-gpus"))
_HELD: list = []  # open lock files: a card stays claimed until the process ends


class DeviceError(UserError):
    """A job cannot have the device it asked for; the text says what torch sees and what to do."""


def device(gpus: int = 0, who: str = "this job") -> torch.device:
    """The device for a job granted `gpus` cards (see the module docstring); `who` names it in messages
    (models.<m>, training.tasks.<t>)."""
    if gpus == 0:
        print(f"device: cpu ({who} asks for no GPU); torch {torch.__version__}, {torch.get_num_threads()} threads")
        return torch.device("cpu")
    if "SLURM_JOB_ID" not in os.environ:
        claim(gpus, who)
    if not torch.cuda.is_available() or torch.cuda.device_count() < gpus:
        raise DeviceError(
            f"{who} asks for {gpus} GPU{'s' if gpus > 1 else ''} but torch sees {torch.cuda.device_count() if torch.cuda.is_available() else 'none'} "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not in this build'}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
            f"run it where the GPUs are, with a CUDA build of torch, or set its gpus to 0 to run on the CPU"
        )
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    print(
        f"device: cuda ({names}); torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES'] if 'CUDA_VISIBLE_DEVICES' in os.environ else 'unset'}"
    )
    return torch.device("cuda", 0)


def physical_gpus() -> int:
    """The machine's cards, counted in a child process: counting here would start CUDA in this one,
    after which CUDA_VISIBLE_DEVICES no longer applies."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"], capture_output=True, text=True)
    return int(done.stdout.strip() or 0)


def claim(gpus: int, who: str, wait: float = 5.0) -> list[str]:
    """Lock `gpus` free cards among the visible ones for this process and make only them visible; waits
    while other jobs hold them (Snakemake's gpu resource keeps that short). Returns the cards as
    CUDA_VISIBLE_DEVICES names them (indices of the machine, or the ids it listed)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    cards = [card.strip() for card in visible.split(",") if card.strip()] if visible is not None else list(map(str, range(physical_gpus())))
    count = len(cards)
    if count < gpus:
        return []  # device() says what torch sees
    LOCKS.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        claimed = []
        for card in cards:
            handle = open(LOCKS / f"gpu{card}.lock", "a")  # noqa: SIM115  (held open: the lock lives as long as the file)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            claimed.append((card, handle))
            if len(claimed) == gpus:
                _HELD.extend(handle for _, handle in claimed)
                mine = [card for card, _ in claimed]
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
                print(f"{who}: claimed card{'s' if gpus > 1 else ''} {', '.join(mine)} of {count} ({LOCKS})")
                return mine
        for _, handle in claimed:
            handle.close()  # closing releases the lock
        if not announced:
            print(f"{who}: waiting for {gpus} of {count} cards to be free ({LOCKS})")
            announced = True
        time.sleep(wait)


def free_memory(target: torch.device) -> int:
    """Bytes free on `target`: the GPU's free memory, or the host's MemAvailable."""
    if target.type == "cuda":
        return torch.cuda.mem_get_info(target)[0]
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
