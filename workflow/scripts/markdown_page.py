"""Rule markdown_page: a Markdown result (claims, scorecard, a table) as an HTML page for the report."""

from pathlib import Path

from systematic_outliers.io import atomic_file
from systematic_outliers.pages import markdown_page
from systematic_outliers.rules import run_rule


def main(snakemake):
    with atomic_file(snakemake.output[0]) as scratch:
        scratch.write_text(markdown_page(Path(snakemake.input[0]).read_text(), snakemake.params.title))


run_rule(snakemake, main)
