"""Rule claims: each of the paper's claims with the numbers measured for one model."""

from systematic_outliers import figures, findings
from systematic_outliers.io import atomic_file
from systematic_outliers.rules import run_rule


def main(snakemake):
    evidence = findings.Evidence.load(snakemake.wildcards.model, snakemake.input.stats, snakemake.input.weights)
    prompt, tokens = figures.read_prompt(snakemake.input.prompt, ("layer_output",))
    text = findings.claims(evidence, prompt, tokens, figures.read_prompt_record(snakemake.input.prompt), snakemake.params.overrides)
    with atomic_file(snakemake.output[0]) as scratch:
        scratch.write_text(text)
    print(text)


run_rule(snakemake, main)
