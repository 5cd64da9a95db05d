"""Rule analyse_variants: magnitudes, attention sinks, scaling factors and compression of every trained variant of a task."""

from pathlib import Path

import torch
from systematic_outliers import tasks, variant_analysis
from systematic_outliers.rules import run_rule


def main(snakemake):
    torch.set_num_threads(snakemake.threads)
    task = snakemake.params.task
    data, _, prompt_ids, prompt_labels = tasks.load_task(task, snakemake.input.data or None)
    runs = {
        (variant, int(seed)): Path(model).parent
        for variant, seed, model in zip(snakemake.params.variants, snakemake.params.seeds, snakemake.input.models)
    }
    variant_analysis.analyse(
        task, runs, data, prompt_ids, prompt_labels, Path(snakemake.output[0]), gpus=getattr(snakemake.resources, "gpu", 0)
    )


run_rule(snakemake, main)
