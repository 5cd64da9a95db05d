"""Rule dump_prompt: every capture site at every layer for one short prompt, in full."""

import json
from pathlib import Path

from systematic_outliers import passes
from systematic_outliers.models import weights_provenance
from systematic_outliers.rules import run_rule


def main(snakemake):
    model, tokenizer = passes.load(
        snakemake.wildcards.model,
        snakemake.params.entry,
        Path(snakemake.input.model),
        gpus=snakemake.resources.gpu,
        tokens=len(snakemake.params.prompt["text"]) + 1,  # a token per character at most, and a BOS
    )
    prompt = snakemake.params.prompt
    manifest = json.loads((Path(snakemake.input.model) / "manifest.json").read_text())
    record = passes.dump_prompt(
        model,
        tokenizer,
        prompt["text"],
        prompt["add_special_tokens"],
        Path(snakemake.output.tensors),
        weights=weights_provenance(manifest),
        record_path=Path(snakemake.output.record),
        name=snakemake.wildcards.model,
    )
    print(f"{len(record['sites'])} sites × {record['layers']} layers on {record['device']}: {record['tokens']}")


run_rule(snakemake, main)
