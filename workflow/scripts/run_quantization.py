"""Rule quantization: the next-token loss with 8-bit weights and activations, the outliers the statistics
located kept in full precision beside random controls, on the windows the statistics saw."""

from systematic_outliers import passes, quantization
from systematic_outliers.readers import Evidence
from systematic_outliers.rules import run_rule


def main(snakemake):
    name = snakemake.wildcards.model
    evidence = Evidence.load(name, snakemake.input.stats, snakemake.input.weights)
    model, input_ids = passes.load_for_windows(
        name, snakemake.params.entry, snakemake.input.model, snakemake.input.windows, gpus=snakemake.resources.gpu, host_copy=True
    )
    files = {part: getattr(snakemake.output, part) for part in ("losses", "record")}
    record = quantization.quantize(name, model, evidence, input_ids, snakemake.params.seeds, files)
    print(record["seconds"], record["replayed_from"], record["outlier_columns"], record["columns_not_found"], sep="\n")


run_rule(snakemake, main)
