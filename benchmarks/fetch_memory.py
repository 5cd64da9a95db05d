"""Peak host memory of fetch_model against the model's depth: flat, where it used to grow with it.

    .venv/bin/python benchmarks/fetch_memory.py --out benchmarks/results/fetch_memory_cpu.json

A Llama of width 1024 (MLP 2816, 8 heads, a 1,000-token vocabulary: 51 MB of float32 weights a layer)
is saved at each depth as a `path:` source in shards of 200 MB, as hub checkpoints are sharded, and
fetched (`models.fetch_model`: the conversion shard by shard, then the probe that resolves the capture
sites) in a child process, whose peak resident memory (ru_maxrss) is the measure. The probe keeps
models.PROBE_HOST_MEMORY in memory and streams the rest from the safetensors files, so the peak is
about one shard whatever the depth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BUILD = """
import sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
config = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=int(sys.argv[1]), num_attention_heads=8,
                     num_key_value_heads=8, vocab_size=1000, max_position_embeddings=256)
torch.manual_seed(0)
LlamaForCausalLM(config).save_pretrained(sys.argv[2], max_shard_size="200MB")
"""

FETCH = """
import json, resource, sys
sys.path.insert(0, "workflow/scripts")
from systematic_outliers.models import fetch_model
fetch_model("bench", {"source": "path:" + sys.argv[1], "dtype": "float32", "trust_remote_code": False}, sys.argv[2])
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(layers: int) -> dict:
    """Build the source in one process, fetch it in another: the peak is the fetch's alone."""
    with tempfile.TemporaryDirectory(prefix="fetch-memory-") as folder:
        source = Path(folder, "source")
        subprocess.run([sys.executable, "-c", BUILD, str(layers), str(source)], check=True, cwd=REPO, capture_output=True)
        done = subprocess.run(
            [sys.executable, "-c", FETCH, str(source), str(Path(folder, "out"))], check=True, cwd=REPO, capture_output=True, text=True
        )
        weights = sum(p.stat().st_size for p in source.glob("*.safetensors"))
        return {"layers": layers, "weights_mib": round(weights / 2**20), **json.loads(done.stdout.splitlines()[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--out")
    args = parser.parse_args()
    result = {"depths": [measure(layers) for layers in args.depths]}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
