"""Rule train_variant: one attention variant on one task with one seed; resumes from its checkpoint.

With `gpus` above one in the task, the training runs under torchrun (DDP), one process per GPU.
"""

import json
import subprocess
import sys
from pathlib import Path

import torch
from systematic_outliers import devices, tasks, training
from systematic_outliers.rules import run_rule


def run(task: dict, variant: str, seed: int, data_dir, folder, gpus: int = 0) -> None:
    data, vocab_size, _, _ = tasks.load_task(task, data_dir)
    rows = training.train(tasks.model_config(task, variant, vocab_size), training.schedule(task, seed), data, Path(folder), gpus=gpus)
    if rows:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()})


def main(snakemake):
    torch.set_num_threads(snakemake.threads)
    task, folder = snakemake.params.task, Path(snakemake.output.model).parent
    arguments = [json.dumps(task), snakemake.wildcards.variant, snakemake.wildcards.seed, snakemake.input.data or "", str(folder)]
    gpus = snakemake.resources.gpu
    if gpus > 1:
        devices.device(gpus, f"training.tasks.{snakemake.wildcards.task}")  # claims the cards the processes share, or stops
        # every process's output into the rule's log, where run_rule has pointed sys.stdout and sys.stderr
        sys.stdout.flush()
        subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", __file__, *arguments],
            check=True,
            stdout=sys.stdout,
            stderr=sys.stderr,
        )
    else:
        run(task, snakemake.wildcards.variant, int(snakemake.wildcards.seed), snakemake.input.data or None, folder, gpus)


if __name__ == "__main__" and "snakemake" not in globals():  # one torchrun process
    task, variant, seed, data_dir, folder = sys.argv[1:]
    run(json.loads(task), variant, int(seed), data_dir or None, folder)
else:
    run_rule(snakemake, main)
