"""Rule cut_windows: the corpus tokenized by one model and cut into windows, with provenance."""

import json
from pathlib import Path

import pandas as pd
from systematic_outliers.config import check_window_length, window_length
from systematic_outliers.rules import run_rule
from systematic_outliers.text import cut_windows, write_windows
from transformers import AutoTokenizer


def main(snakemake):
    model, corpus = snakemake.wildcards.model, snakemake.wildcards.corpus
    config = {"models": {model: snakemake.params.model_entry}, "corpora": {corpus: snakemake.params.corpus_entry}}
    model_dir = Path(snakemake.input.model)
    check_window_length(config, model, corpus, json.loads((model_dir / "config.json").read_text()))
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=config["models"][model]["trust_remote_code"])
    documents = pd.read_parquet(Path(snakemake.input.text) / "documents.parquet")
    entry, length = config["corpora"][corpus], window_length(config, model, corpus)
    input_ids, provenance = cut_windows(corpus, entry, documents, tokenizer, length, model)
    manifest = {
        "corpus": corpus,
        "model": model,
        "window_length": length,
        "windows": entry["windows"],
        "seed": entry["seed"],
        "separator": entry["separator"],
        "documents_drawn": entry.get("documents"),
        "add_special_tokens": entry["add_special_tokens"],
        "bos_token": tokenizer.bos_token if entry["add_special_tokens"] else None,
    }
    write_windows(snakemake.output[0], input_ids, provenance, manifest)
    print(f"{input_ids.shape[0]} windows of {length} tokens from {provenance.document.nunique()} documents")


run_rule(snakemake, main)
