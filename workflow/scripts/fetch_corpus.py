"""Rule fetch_corpus: resources/text/{corpus}/documents.parquet plus manifest.json."""

from systematic_outliers.rules import run_rule
from systematic_outliers.text import fetch_corpus


def main(snakemake):
    fetch_corpus(snakemake.wildcards.corpus, snakemake.params.entry, snakemake.output[0])


run_rule(snakemake, main)
