"""Rule gpt2_claims: whether the paper's attention-variant claims hold on every trained task, with the numbers."""

from systematic_outliers import variant_report
from systematic_outliers.io import atomic_file
from systematic_outliers.rules import run_rule


def main(snakemake):
    text = variant_report.claims(dict(zip(snakemake.params.tasks, snakemake.input.analyses)))
    with atomic_file(snakemake.output[0]) as scratch:
        scratch.write_text(text)
    print(text)


run_rule(snakemake, main)
