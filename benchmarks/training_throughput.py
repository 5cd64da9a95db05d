"""Training tokens per second on one core, the whole loop (data, forward, backward, optimizer,
evaluation, checkpoints), before and after the speed work, side by side.

    .venv/bin/python benchmarks/training_throughput.py --out benchmarks/results/training_throughput_cpu.json

For each task of the config (the text task needs `resources/training/<task>`, written by rule
prepare_training_text), default attention (a) trains for `--steps` steps of the task's schedule
(with its evaluation and checkpoint intervals, so that they take the share of a full run) with:

- `before`: the testbed's sequences drawn as they were until 2026-12-02, one `torch.multinomial`
  per position (the text task's data is unchanged);
- `after`: the task's data as the workflow draws it now.

The two interleave over `--rounds` rounds; the median is reported. `--bfloat16` adds the
schedule's bfloat16 autocast on the after data, a lever measured for the record and not used
(benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics as stats
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

from systematic_outliers import tasks, training  # noqa: E402


class MultinomialBackcopy(tasks.BigramBackcopy):
    """The testbed's sampler before: the same chain, one multinomial draw per position."""

    def sequences(self, count, generator):
        tokens = torch.empty(count, self.length + 1, dtype=torch.long)
        tokens[:, 0] = tasks.BOS
        tokens[:, 1] = torch.randint(1, self.vocab_size, (count,), generator=generator)
        for t in range(1, self.length):
            drawn = torch.multinomial(self.table[tokens[:, t]], 1, generator=generator).squeeze(1)
            copy = self.is_trigger[tokens[:, t]] & (t >= 2)
            tokens[:, t + 1] = torch.where(copy, tokens[:, t - 1], drawn)
        return tokens


def seconds(task: dict, data, vocab_size: int, steps: int, precision: str) -> float:
    schedule = training.schedule(task, 0)  # its evaluation and checkpoint intervals: their share of a full run
    schedule.steps = schedule.decay_steps = steps
    schedule.precision = precision
    config = tasks.model_config(task, "default", vocab_size)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        training.train(config, schedule, data, Path(folder))
        return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    parser.add_argument("--steps", type=int, help="steps per run (default: a tenth of each task's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bfloat16", action="store_true", help="also bfloat16 autocast (after's data)")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())["training"]
    results = {"machine": platform.platform(), "torch": torch.__version__, "threads": 1, "rounds": args.rounds, "tasks": {}}
    for name in config["run"]:
        task = config["tasks"][name]
        data, vocab_size, _, _ = tasks.load_task(task, REPO / "resources" / "training" / name)
        before = (
            MultinomialBackcopy(**{k: v for k, v in task["data"].items() if k != "kind"})
            if isinstance(data, tasks.BigramBackcopy)
            else data
        )
        steps = args.steps or max(10, task["schedule"]["steps"] // 10)
        methods = {"before": (before, "float32"), "after": (data, "float32")}
        if args.bfloat16:
            methods["after, bfloat16 autocast"] = (data, "bfloat16")
        timings = {method: [] for method in methods}
        for _ in range(args.rounds):
            for method, (source, precision) in methods.items():
                timings[method].append(seconds(task, source, vocab_size, steps, precision))
        tokens = steps * task["schedule"]["batch_size"] * task["data"]["length"]
        baseline = stats.median(timings["before"])
        results["tasks"][name] = {
            method: {
                "steps": steps,
                "seconds": stats.median(t),
                "tokens_per_second": tokens / stats.median(t),
                "speedup": baseline / stats.median(t),
                "rounds": t,
            }
            for method, t in timings.items()
        }
        for method, row in results["tasks"][name].items():
            print(f"{name:10s} {method:28s} {row['tokens_per_second']:10,.0f} tokens/s  {row['speedup']:.2f} × before")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
