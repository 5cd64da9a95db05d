"""Systematic outliers in large language models: the logic behind the Snakemake workflow.

Modules stay importable without torch where the Snakefile needs them at parse time
(`config`); everything heavy is imported by the rule scripts.
"""
