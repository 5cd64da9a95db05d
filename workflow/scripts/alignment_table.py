"""Rule table1_alignment: Table 1, how far weight, activation and attention outliers coincide, per model."""

import pandas as pd
from systematic_outliers import choices, verdicts
from systematic_outliers.io import write_table
from systematic_outliers.readers import Evidence
from systematic_outliers.rules import run_rule


def main(snakemake):
    rows = []
    for model, stats, weights in zip(snakemake.params.models, snakemake.input.stats, snakemake.input.weights):
        evidence = Evidence.load(model, stats, weights)
        rows.append(verdicts.alignment(evidence, choices.for_model(evidence)))
    table = pd.DataFrame(rows)
    write_table(table, snakemake.output.csv, snakemake.output.markdown, verdicts.alignment_markdown(table))
    print(table.to_string())


run_rule(snakemake, main)
