"""Rule corpus_statistics: one streaming pass over the windows, reductions on the device."""

from pathlib import Path

from systematic_outliers import passes
from systematic_outliers.rules import run_rule


def main(snakemake):
    _, length = passes.windows_shape(snakemake.input.windows)
    model, tokenizer = passes.load(
        snakemake.wildcards.model,
        snakemake.params.entry,
        Path(snakemake.input.model),
        gpus=snakemake.resources.gpu,
        tokens=length,
    )
    manifest = passes.corpus_statistics(
        model,
        tokenizer,
        Path(snakemake.input.windows),
        Path(snakemake.output[0]),
        top_k=snakemake.params.top_k,
        context_length=snakemake.params.context_length,
        name=snakemake.wildcards.model,
    )
    print(f"{manifest['windows']} windows × {manifest['window_length']} tokens on {manifest['device']}")


run_rule(snakemake, main)
