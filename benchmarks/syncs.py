"""Counting what makes the host wait for the device, on any device (the CPU included).

On CUDA every `.item()`, `.tolist()`, `.cpu()`, `nonzero` or boolean-mask indexing waits until the
device has finished all work queued before it: inside a capture hook that stalls the forward pass
once per call. `DeviceWaits` counts those calls by name (a TorchFunctionMode sees every tensor call,
so the count is the same on the CPU, where nothing waits), split into the calls made while the
forward pass runs (inside the hooks) and the others (after it), plus the host transfers
(`.cpu()`, `.to("cpu")`) of the whole window. `.numpy()` is left out: it raises on a CUDA tensor,
so only a CPU-only path (the median's numpy introselect) calls it.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

WAITING = {
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.cpu: "cpu",
    torch.Tensor.__bool__: "bool",
    torch.Tensor.__int__: "int",
    torch.Tensor.__float__: "float",
    torch.Tensor.__index__: "index",
    torch.nonzero: "nonzero",
    torch.Tensor.nonzero: "nonzero",
    torch.argwhere: "nonzero",
    torch.masked_select: "masked_select",
    torch.Tensor.masked_select: "masked_select",
    torch.unique: "unique",
    torch.Tensor.unique: "unique",
}


def _to_host(args, kwargs) -> bool:
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return str(target).startswith("cpu") or (isinstance(target, torch.device) and target.type == "cpu")


def _bool_index(index) -> bool:
    indices = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class DeviceWaits(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.in_pass, self.after_pass, self.transfers = Counter(), Counter(), 0
        self.passing = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = WAITING.get(func)
        if func is torch.Tensor.to and _to_host(args, kwargs):
            name = "cpu"
        elif func is torch.Tensor.__getitem__ and _bool_index(args[1]):
            name = "bool_index"
        if name:
            (self.in_pass if self.passing else self.after_pass)[name] += 1
            self.transfers += name == "cpu"
        return func(*args, **kwargs)

    @contextmanager
    def forward_pass(self):
        """Mark the calls made inside: those of the hooks."""
        self.passing = True
        try:
            yield
        finally:
            self.passing = False

    def per_window(self, windows: int) -> dict:
        """Per window: the waiting calls inside the pass, by name and in all, and the host transfers
        of the whole window (the calls after the pass read what those transfers brought)."""
        return {
            "in_pass": {name: count / windows for name, count in sorted(self.in_pass.items())},
            "in_pass_total": sum(self.in_pass.values()) / windows,
            "host_transfers": self.transfers / windows,
        }
