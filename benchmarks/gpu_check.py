"""GPU check: the corpus-statistics pass on a LLaMA-2-7B-shaped model, against a plain forward pass.

    python benchmarks/gpu_check.py --gpus 1 --out benchmarks/results/gpu_check_float16.json    # one GPU, fp16, 10 × 4096 tokens
    python benchmarks/gpu_check.py --gpus 1 --dtype bfloat16 --out benchmarks/results/gpu_check_bfloat16.json
    python benchmarks/gpu_check.py --layers 2 --length 512 --windows 2 --dtype float16        # a 2-layer cut on the CPU
    python benchmarks/gpu_check.py --shape small --out x.json                                   # the same code in seconds (the tests run this)

Nothing comes from the hub: the model is built from its config with random weights and one planted
outlier (channel OUTLIER_CHANNEL of the delimiter tokens' embeddings at OUTLIER_VALUE, which the
residual stream carries through every layer, so the outlier paths of the statistics run), saved with
a word-level tokenizer, and loaded as the capture rules load a model (`passes.load`: the device the
job was granted, the memory plan, the capturing attention). The windows are random token ids with
delimiters. Two passes over the same windows, interleaved window by window:
- plain: the model's forward with its eager attention, no hooks;
- statistics: the capture hooks of every statistics site reducing into `CorpusStatistics`, as rule
  corpus_statistics does.
Prints and writes the ratio of the two, the peak device memory of each against the plan, tokens per
second, the calls per window that make the host wait for the device (benchmarks/syncs.py), and the
outlier tokens found. Target: statistics ≤ 1.15 × plain on a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from syncs import DeviceWaits  # noqa: E402
from systematic_outliers import capture, memory, passes  # noqa: E402
from systematic_outliers.statistics import CorpusStatistics  # noqa: E402

SHAPES = {
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "small": dict(
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=512,
        max_position_embeddings=256,
    ),
}
DELIMITERS = (13, 29)  # token ids planted as delimiters ("." and "\n" of the word tokenizer)
OUTLIER_CHANNEL, OUTLIER_VALUE = 1415, 2_000.0  # in float16's range; the channel taken modulo the width


def save_model(shape: str, layers: int | None, dtype: torch.dtype, folder: Path) -> Path:
    """The random model with its planted outlier, saved in `dtype` with architecture.json and a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    config = LlamaConfig(**{**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[list(DELIMITERS), OUTLIER_CHANNEL % config.hidden_size] = OUTLIER_VALUE
    model.save_pretrained(folder)
    capture.architecture_of(model).to_json(folder / "architecture.json")
    words = {f"t{i}": i for i in range(config.vocab_size)}
    words |= {".": DELIMITERS[0], "\\n": DELIMITERS[1]}
    del words[f"t{DELIMITERS[0]}"], words[f"t{DELIMITERS[1]}"]
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0").save_pretrained(folder)
    return folder


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="llama2-7b")
    parser.add_argument("--layers", type=int, default=None, help="a cut of the shape to this many layers")
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    parser.add_argument("--gpus", type=int, default=0, help="cards to run on (0: the CPU), as a model entry's gpus")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    args.length = min(args.length, SHAPES[args.shape]["max_position_embeddings"])
    dtype = getattr(torch, args.dtype)
    scratch = tempfile.TemporaryDirectory(prefix="gpu-check-")
    folder = save_model(args.shape, args.layers, dtype, Path(scratch.name) / "model")
    entry = {"dtype": args.dtype, "trust_remote_code": False}
    model, tokenizer = passes.load("gpu-check", entry, folder, gpus=args.gpus, tokens=args.length)
    device = model.device
    planned = memory.plan(folder, args.dtype, args.length)
    generator = torch.Generator().manual_seed(0)
    windows = torch.randint(100, SHAPES[args.shape]["vocab_size"], (args.windows, args.length), generator=generator)
    windows[:, torch.randint(1, args.length, (max(args.length // 200, 2),), generator=generator)] = DELIMITERS[0]
    windows[:, 0] = DELIMITERS[1]
    sites = passes.statistics_sites(model)
    statistics, waits = CorpusStatistics(tokenizer, windows=args.windows, model="gpu-check"), DeviceWaits()
    seconds, peak = {"plain": 0.0, "statistics": 0.0}, {"plain": 0, "statistics": 0}

    def forward(ids):
        with waits.forward_pass():
            model(ids[None].to(device), use_cache=False)

    with torch.no_grad():
        model(windows[:1, :16].to(device))  # warm-up: kernels, allocator
        for window, ids in enumerate(windows):  # interleaved: a slow spell of a shared machine hits both alike
            for name in seconds:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                synchronize(device)
                started = time.perf_counter()
                if name == "plain":
                    model(ids[None].to(device), use_cache=False)
                else:
                    with capture.hooks(model, sites, statistics), waits:
                        statistics.run_window(window, ids, forward)
                synchronize(device)
                seconds[name] += time.perf_counter() - started
                if device.type == "cuda":
                    peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device))
    tables = statistics.tables()
    outliers = tables["activation_outliers"].query("site == 'layer_output'")
    tokens = args.windows * args.length
    result = {
        "shape": args.shape,
        "layers": model.config.num_hidden_layers,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": args.dtype,
        "windows": args.windows,
        "length": args.length,
        "sites": list(sites),
        "seconds": seconds,
        "ratio": seconds["statistics"] / seconds["plain"],
        "tokens_per_second": {name: tokens / value for name, value in seconds.items()},
        "peak_gib": {name: value / memory.GIB for name, value in peak.items()} if device.type == "cuda" else None,
        "planned_gib": {"total": planned.total / memory.GIB, "working": (planned.total - planned.weights) / memory.GIB},
        "waits_per_window": waits.per_window(args.windows),
        "outlier_tokens": {"layer_output rows": len(outliers), "channels": sorted(set(outliers.channel.tolist()))},
        "rows": {name: len(table) for name, table in tables.items()},
        "torch": torch.__version__,
        "machine": platform.platform(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
