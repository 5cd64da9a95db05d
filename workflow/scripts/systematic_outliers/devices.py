"""Where forward passes run: the GPU when there is one, else the CPU (every rule that runs a model)."""

from __future__ import annotations

import os

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def free_memory(target: torch.device) -> int:
    """Bytes free on `target`: the GPU's free memory, or the host's MemAvailable."""
    if target.type == "cuda":
        return torch.cuda.mem_get_info(target)[0]
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
