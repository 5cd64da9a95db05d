"""Rule fetch_model: resources/models/{model}/ in Hugging Face format plus manifest.json."""

from systematic_outliers.models import fetch_model
from systematic_outliers.rules import run_rule


def main(snakemake):
    manifest = fetch_model(snakemake.wildcards.model, snakemake.params.entry, snakemake.output[0])
    print({key: manifest[key] for key in ("model", "source", "dtype", "dequantized")})


run_rule(snakemake, main)
