"""Training tokens per second of each attention variant, relative to default attention (a).

    .venv/bin/python benchmarks/variant_throughput.py                      # the default config's tasks
    .venv/bin/python benchmarks/variant_throughput.py --steps 40 --rounds 3 --out benchmarks/results/variant_throughput_cpu.json

For each task of the config (the text task needs `resources/training/<task>`, written by rule
prepare_training_text), every variant trains the task's model on the task's batches for
`--steps` optimizer steps after two warm-up steps, one thread, the variants interleaved over
`--rounds` rounds; the median time per round is reported. Target: (e) ≥ 0.90 × (a).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics as stats
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

from systematic_outliers import tasks, training  # noqa: E402
from systematic_outliers.variants import VARIANTS  # noqa: E402


def seconds_per_step(task: dict, variant: str, data, vocab_size: int, steps: int) -> float:
    torch.manual_seed(0)
    model = training.GPT(tasks.model_config(task, variant, vocab_size))
    schedule = training.schedule(task, 0)
    optimizer = training.optimizer_for(model, schedule)
    generator = torch.Generator().manual_seed(0)

    def step():
        inputs, targets, mask = data.batch(schedule.batch_size, generator)
        _, loss = model(inputs, targets, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())["training"]
    results = {
        "machine": platform.platform(),
        "torch": torch.__version__,
        "threads": 1,
        "steps": args.steps,
        "rounds": args.rounds,
        "tasks": {},
    }
    for name in config["run"]:
        task = config["tasks"][name]
        data, vocab_size, _, _ = tasks.load_task(task, REPO / "resources" / "training" / name)
        timings = {variant: [] for variant in config["variants"]}
        for _ in range(args.rounds):
            for variant in config["variants"]:
                timings[variant].append(seconds_per_step(task, variant, data, vocab_size, args.steps))
        tokens_per_step = task["schedule"]["batch_size"] * task["data"]["length"]
        default = stats.median(timings["default"])
        results["tasks"][name] = {
            variant: {
                "id": VARIANTS[variant].letter,
                "seconds_per_step": stats.median(t),
                "tokens_per_second": tokens_per_step / stats.median(t),
                "relative_to_default": default / stats.median(t),
                "rounds": t,
            }
            for variant, t in timings.items()
        }
        for variant, row in results["tasks"][name].items():
            print(
                f"{name:10s} {row['id']} {variant:15s} {row['tokens_per_second']:10,.0f} tokens/s  {row['relative_to_default']:.2f} × (a)"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
