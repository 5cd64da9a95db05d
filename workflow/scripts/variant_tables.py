"""Rule variant_tables: Table 2 (formulations and extra parameters) and the compression table of one task."""

from pathlib import Path

import pandas as pd

from systematic_outliers import variants
from systematic_outliers.io import atomic_file
from systematic_outliers.rules import run_rule


def main(snakemake):
    analysis = Path(snakemake.input.analysis)
    table2 = variants.table2(pd.read_parquet(analysis / "runs.parquet"))
    compression = variants.compression_table(pd.read_parquet(analysis / "compression.parquet"))
    task = snakemake.wildcards.task
    for table, csv_path, markdown_path, text in (
        (table2, snakemake.output.table2_csv, snakemake.output.table2_md,
         variants.markdown_table(table2, f"Table 2: variants of the attention mechanism, task {task}",
                            "Extra parameters are counted from the trained models (the paper's GPT-2 small: (e) adds 9,228 per layer).")),
        (compression, snakemake.output.compression_csv, snakemake.output.compression_md, variants.compression_markdown(compression, task)),
    ):
        with atomic_file(csv_path) as scratch:
            table.to_csv(scratch, index=False)
        with atomic_file(markdown_path) as scratch:
            scratch.write_text(text)
    print(table2.to_string())
    print(compression.to_string())


run_rule(snakemake, main)
