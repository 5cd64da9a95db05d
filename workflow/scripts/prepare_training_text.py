"""Rule prepare_training_text: encode a corpus for a text training task (characters or a hub tokenizer)."""

from pathlib import Path

import pandas as pd
from systematic_outliers.rules import run_rule
from systematic_outliers.tasks import prepare_text


def main(snakemake):
    documents = pd.read_parquet(Path(snakemake.input.corpus) / "documents.parquet").text.tolist()
    vocabulary = prepare_text(snakemake.params.task["data"], documents, snakemake.params.separator, Path(snakemake.output[0]))
    print(
        f"{vocabulary['train_tokens']:,} training and {vocabulary['validation_tokens']:,} validation tokens, vocabulary {vocabulary['vocab_size']}"
    )


run_rule(snakemake, main)
