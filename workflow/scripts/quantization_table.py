"""Rule quantization_table: every model's loss under each quantization beside full precision, and the two claims."""

import pandas as pd
from systematic_outliers import quantization_report
from systematic_outliers.io import write_table
from systematic_outliers.rules import run_rule


def main(snakemake):
    tables, judged = [], {}
    for model, path in zip(snakemake.params.models, snakemake.input.quantization):
        losses = pd.read_parquet(path)
        tables.append(quantization_report.table(losses, model))
        judged[model] = quantization_report.judged(losses)
    table = pd.concat(tables, ignore_index=True)
    text = quantization_report.table_markdown(table, judged)
    write_table(table, snakemake.output.csv, snakemake.output.markdown, text)
    print(text)


run_rule(snakemake, main)
