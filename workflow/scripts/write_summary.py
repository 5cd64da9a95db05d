"""Rule claims_summary: the scorecard (each claim per model beside the paper's value) and the atlas of where outliers are."""

from systematic_outliers import verdicts
from systematic_outliers.io import atomic_file
from systematic_outliers.rules import run_rule


def main(snakemake):
    measured = [
        verdicts.measure(model, *paths)
        for model, *paths in zip(
            snakemake.params.models,
            snakemake.input.stats,
            snakemake.input.weights,
            snakemake.input.prompts,
            snakemake.input.interventions,
            snakemake.input.quantization,
        )
    ]
    scorecard, atlas, text = verdicts.summary(measured)
    for path, write in (
        (snakemake.output.csv, lambda p: scorecard.to_csv(p, index=False)),
        (snakemake.output.atlas, lambda p: atlas.to_csv(p, index=False)),
        (snakemake.output.markdown, lambda p: p.write_text(text)),
    ):
        with atomic_file(path) as scratch:
            write(scratch)
    print(text)


run_rule(snakemake, main)
