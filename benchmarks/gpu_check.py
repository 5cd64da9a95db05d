"""GPU check: the corpus-statistics pass on a LLaMA-2-7B-shaped model, against a plain forward pass.

    python benchmarks/gpu_check.py                          # on one GPU: LLaMA-2-7B shape, fp16, 10 × 4096 tokens
    python benchmarks/gpu_check.py --shape small --out x.json   # the same code on the CPU in seconds (the tests run this)

Nothing comes from the hub: the model is built from its config with random weights, and the
windows are random token ids. Two passes over the same windows, interleaved window by window:
- plain: the model's forward with its eager attention, no hooks;
- statistics: the capture hooks of every statistics site (residuals, MLP, q/k/v, attention
  probabilities) reducing into `CorpusStatistics`, as rule corpus_statistics does.
Prints and writes the ratio of the two, the peak GPU memory of each, and tokens per second.
Target: statistics ≤ 1.15 × plain on a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

from systematic_outliers import capture, devices, passes  # noqa: E402
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


class Labels:
    """Token labels without a tokenizer: the id itself."""

    @staticmethod
    def decode(ids):
        return f"t{ids[0]}"


def build(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape])
    capture.register_capture()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=capture.ATTENTION_CAPTURE)
    return model.eval()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="llama2-7b")
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    device = devices.device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.shape == "small":
        args.length = min(args.length, SHAPES["small"]["max_position_embeddings"])
    model = build(args.shape, device, dtype)
    windows = torch.randint(0, model.config.vocab_size, (args.windows, args.length), generator=torch.Generator().manual_seed(0))
    sites = passes.statistics_sites(model)
    statistics = CorpusStatistics(Labels(), windows=args.windows)
    seconds = {"plain": 0.0, "statistics": 0.0}
    peak = {}
    with torch.no_grad():
        model(windows[:1, :16].to(device))  # warm-up: kernels, allocator
        for name in seconds:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for window, ids in enumerate(windows):
                synchronize(device)
                started = time.perf_counter()
                if name == "plain":
                    model(ids[None].to(device), use_cache=False)
                else:
                    with capture.hooks(model, sites, statistics):
                        statistics.run_window(window, ids, lambda ids: model(ids[None].to(device), use_cache=False))
                synchronize(device)
                seconds[name] += time.perf_counter() - started
            peak[name] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    tables = statistics.tables()
    tokens = args.windows * args.length
    result = {
        "shape": args.shape,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(dtype).removeprefix("torch."),
        "windows": args.windows,
        "length": args.length,
        "sites": list(sites),
        "seconds": seconds,
        "ratio": seconds["statistics"] / seconds["plain"],
        "tokens_per_second": {name: tokens / value for name, value in seconds.items()},
        "peak_gib": peak,
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
