"""Rule claims: each of the paper's claims with the numbers measured for one model, its criterion and verdict."""

from systematic_outliers import verdicts
from systematic_outliers.io import atomic_file
from systematic_outliers.rules import run_rule


def main(snakemake):
    measured = verdicts.measure(
        snakemake.wildcards.model,
        snakemake.input.stats,
        snakemake.input.weights,
        snakemake.input.prompt,
        snakemake.input.interventions,
        snakemake.input.quantization,
    )
    text = verdicts.claims_file(measured)
    with atomic_file(snakemake.output[0]) as scratch:
        scratch.write_text(text)
    print(text)


run_rule(snakemake, main)
