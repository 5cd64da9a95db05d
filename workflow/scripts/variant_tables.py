"""Rule variant_tables: Table 2 (formulations and extra parameters), the compression table and the ranking on the field's metrics of one task."""

from pathlib import Path

from systematic_outliers import variant_report
from systematic_outliers.io import write_table
from systematic_outliers.readers import read_table
from systematic_outliers.rules import run_rule


def main(snakemake):
    analysis = Path(snakemake.input.analysis)
    table2 = variant_report.table2(read_table(analysis, "runs"))
    compression = variant_report.compression_table(read_table(analysis, "compression"))
    ranking = variant_report.ranking(variant_report.measures(analysis))
    task = snakemake.wildcards.task
    for table, csv_path, markdown_path, text in (
        (
            table2,
            snakemake.output.table2_csv,
            snakemake.output.table2_md,
            variant_report.markdown(table2, f"Table 2: variants of the attention mechanism, task {task}", variant_report.TABLE2_NOTE),
        ),
        (
            compression,
            snakemake.output.compression_csv,
            snakemake.output.compression_md,
            variant_report.markdown(compression, f"Compression of the attention variants, task {task}", variant_report.COMPRESSION_NOTE),
        ),
        (ranking, snakemake.output.ranking_csv, snakemake.output.ranking_md, variant_report.ranking_file(ranking, task, analysis)),
    ):
        write_table(table, csv_path, markdown_path, text)
    print(table2.to_string())
    print(compression.to_string())
    print(ranking.to_string())


run_rule(snakemake, main)
