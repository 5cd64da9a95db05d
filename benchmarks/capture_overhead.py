"""Cost of the corpus-statistics pass against a plain forward pass and the peers' method.

    .venv/bin/python benchmarks/capture_overhead.py            # after `make figures` fetched the model
    .venv/bin/python benchmarks/capture_overhead.py --count 8 --rounds 3 --out benchmarks/results/capture_overhead_cpu.json
    .venv/bin/python benchmarks/capture_overhead.py --count 4 --waits --out benchmarks/results/device_waits_smollm2.json

Three passes over the same windows of the default model, all with the same (eager,
capturing) attention implementation, interleaved window by window over several rounds;
the median total of each is reported:
- plain: the model's forward pass, no hooks;
- statistics: `CorpusStatistics` reducing on the device inside the hooks (this workflow);
- peers: each captured tensor copied to the CPU as float64 and reduced there by sorting,
  as the official code and massive-activations do.
Each pass is measured for the sites the figures read and for every site.

With --waits it counts instead, per window of the statistics pass at every site, the calls that
make the host wait for the device (benchmarks/syncs.py): inside the hooks, and host transfers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics as stats
import sys
import time
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from syncs import DeviceWaits  # noqa: E402
from systematic_outliers import capture, passes  # noqa: E402
from systematic_outliers.statistics import CorpusStatistics  # noqa: E402

FIGURE_SITES = ("attn_probs", "down_proj_input", "layer_output")


def plain_window(model, tokenizer, window, ids, sites):
    with torch.no_grad():
        model(ids[None].to(model.device), use_cache=False)


_KEPT: dict = {}  # one CorpusStatistics per site set, across windows


def statistics_window(model, tokenizer, window, ids, sites, windows):
    # one CorpusStatistics per site set, kept across windows as in the real pass
    statistics = _KEPT.setdefault(sites, CorpusStatistics(tokenizer, windows=windows))
    with capture.hooks(model, sites, statistics), torch.no_grad():
        statistics.run_window(window, ids, lambda ids: model(ids[None].to(model.device), use_cache=False))


def peers_window(model, tokenizer, window, ids, sites):
    """Copy every captured tensor to the host in float64, then sort and reduce there."""
    captured = []
    with capture.hooks(model, sites, lambda site, layer, tensor: captured.append(tensor.cpu().double())), torch.no_grad():
        model(ids[None].to(model.device), use_cache=False)
    for tensor in captured:
        magnitude = tensor.reshape(tensor.shape[0], -1).abs()
        ordered = magnitude.flatten().sort().values
        ordered[(ordered.numel() - 1) // 2], ordered[-8:], magnitude.mean()
        magnitude.amax(dim=0), magnitude.amax(dim=1)


def count_waits(model, tokenizer, windows, sites) -> dict:
    """The plain pass and the statistics pass over `windows`, counting what would make the host wait
    for a GPU: the model's own code waits too (its masks), so the hooks' share is the difference."""
    counted = {}
    for name in ("plain", "statistics"):
        statistics, waits = CorpusStatistics(tokenizer, windows=len(windows)), DeviceWaits()

        def forward(ids, waits=waits):
            with waits.forward_pass():
                model(ids[None].to(model.device), use_cache=False)

        with capture.hooks(model, sites if name == "statistics" else (), statistics), torch.no_grad(), waits:
            for window, ids in enumerate(windows):
                if name == "plain":
                    forward(ids)
                else:
                    statistics.run_window(window, ids, forward)
        counted[name] = waits.per_window(len(windows))
    return counted


def timed(function, *args) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    function(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resources/models/smollm2-135m")
    parser.add_argument("--windows", default="resources/windows/shakespeare/smollm2-135m")
    parser.add_argument("--count", type=int, default=8, help="windows per pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--waits", action="store_true", help="count the calls that wait for the device instead of timing")
    args = parser.parse_args()

    entry = {"dtype": "float32", "trust_remote_code": False}
    windows = load_file(Path(args.windows) / "input_ids.safetensors")["input_ids"][: args.count]
    model, tokenizer = passes.load("benchmark", entry, Path(args.model), tokens=windows.shape[1])
    every_site = passes.statistics_sites(model)
    if args.waits:
        result = {"model": args.model, "windows": len(windows), "window_length": int(windows.shape[1]), "sites": list(every_site)}
        result["per_window"] = count_waits(model, tokenizer, windows, every_site)
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return
    plain_window(model, tokenizer, 0, windows[0], ())  # warm-up

    # (name, function, sites, rounds): the peers' method is slow, so it runs once
    methods = [
        ("plain", plain_window, (), args.rounds),
        ("statistics_figure_sites", partial(statistics_window, windows=len(windows)), FIGURE_SITES, args.rounds),
        ("statistics_all_sites", partial(statistics_window, windows=len(windows)), every_site, args.rounds),
        ("peers_figure_sites", peers_window, FIGURE_SITES, 1),
        ("peers_all_sites", peers_window, every_site, 1),
    ]
    # Windows interleave the methods, so a slow spell of a shared machine hits them alike.
    seconds = {name: [0.0] * rounds for name, _, _, rounds in methods}
    for round_ in range(args.rounds):
        for window, ids in enumerate(windows):
            for name, function, sites, rounds in methods:
                if round_ < rounds:
                    seconds[name][round_] += timed(function, model, tokenizer, window, ids, sites)
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {v[round_]:.2f} s" for n, v in seconds.items() if round_ < len(v)), flush=True)
    median = {name: stats.median(values) for name, values in seconds.items()}
    result = {
        "model": args.model,
        "windows": int(windows.shape[0]),
        "window_length": int(windows.shape[1]),
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rounds": args.rounds,
        "figure_sites": list(FIGURE_SITES),
        "all_sites": list(every_site),
        "seconds_median": median,
        "seconds_all": seconds,
        "ratio_to_plain": {name: median[name] / median["plain"] for name in median},
    }
    print(json.dumps(result["ratio_to_plain"], indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
