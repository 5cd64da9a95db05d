"""The memory a capture job needs on its device, planned from the fetched model's config.json and the
work at hand before anything is loaded, so that a job that cannot fit is refused with the numbers
instead of failing an hour in (or, with device_map auto, spilling layers to the CPU or disk).

Per job, in bytes (dtype: the model's; T: tokens of one pass):
- weights: the safetensors files as fetched;
- eager attention, at its peak in one layer: heads × T² scores twice in the model's dtype (the
  scores, then masked), once in float32 (the softmax) and, in half precision, once more as the
  probabilities cast back;
- the logits and their float32 copy for the loss: T × vocabulary × (dtype + 2 × 4);
- activations of one layer: the MLP's intermediate T × d_ff (three tensors: gate, up, product) and the
  statistics' float32 copies of the residual stream (T × d_model, four);
- the interventions' replay caches: one layer output per window for each layer an edited pass starts
  from (at most three: the two activation ablations and the sink ablation);
- the quantization's copy of the full-precision weights, in host memory (`host_copy`): on the
  device itself when the job runs on the CPU, beside it when it runs on GPUs (passes.check_fits).

tests/test_memory.py compares the plan with the measured peak of a tiny model (within a factor of 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
REPLAY_STARTS = 3  # at most: once, held and sink each start at their first edited layer
GIB = 2**30


@dataclass(frozen=True)
class Plan:
    weights: int
    attention: int
    logits: int
    activations: int
    caches: int = 0
    host_copy: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def __str__(self) -> str:
        parts = [
            f"{f.name.replace('caches', 'replay caches').replace('host_copy', 'weights copied to the host')} {readable(getattr(self, f.name))}"
            for f in fields(self)
            if getattr(self, f.name)
        ]
        return f"{readable(self.total)} ({', '.join(parts)})"


def readable(size: int) -> str:
    """Bytes as GiB from 1 GiB on, else as MiB."""
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / 2**20:.1f} MiB"


def _size(model_config: dict, *keys: str) -> int:
    """The first of `keys` in config.json or its text_config (multimodal models)."""
    for section in (model_config, model_config.get("text_config") or {}, model_config.get("attn_config") or {}):
        for key in keys:
            if isinstance(section.get(key), int):
                return section[key]
    raise KeyError(f"config.json names none of {', '.join(keys)}")


def plan(model_dir: Path, dtype: str, tokens: int, cached_windows: int = 0, host_copy: bool = False) -> Plan:
    """The plan of one job on the fetched model in `model_dir`: passes of `tokens` tokens in `dtype`,
    keeping `cached_windows` layer outputs for replays (and with `host_copy` the weights once more)."""
    model_config = json.loads((Path(model_dir) / "config.json").read_text())
    size = DTYPE_BYTES[dtype]
    heads = _size(model_config, "num_attention_heads", "n_heads", "n_head", "num_heads")
    width = _size(model_config, "hidden_size", "d_model", "n_embd", "dim")
    vocabulary = _size(model_config, "vocab_size", "padded_vocab_size")
    try:
        inner = _size(model_config, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "d_ff")
    except KeyError:  # MPT: expansion_ratio × d_model; GPT-2 and others: 4 × d_model
        inner = int(model_config.get("expansion_ratio", 4) * width)
    weights = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    return Plan(
        weights=weights,
        attention=heads * tokens * tokens * (2 * size + 4 + (size if size < 4 else 0)),
        logits=tokens * vocabulary * (size + 8),
        activations=tokens * (3 * inner * size + 4 * width * 4),
        caches=cached_windows * REPLAY_STARTS * tokens * width * size,
        host_copy=weights if host_copy else 0,
    )
