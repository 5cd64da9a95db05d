"""Rule weight_statistics: max/mean ratios of every decoder-layer matrix, tensor by tensor."""

from systematic_outliers.io import atomic_file
from systematic_outliers.rules import run_rule
from systematic_outliers.weights import weight_statistics


def main(snakemake):
    table = weight_statistics(snakemake.input.model, snakemake.wildcards.model)
    with atomic_file(snakemake.output[0]) as scratch:
        table.to_parquet(scratch, index=False)
    top = table.loc[table.max_ratio.idxmax()]
    print(f"{len(table)} matrices; largest max/mean ratio {top.max_ratio:.0f} in layer {top.layer} {top.module}")


run_rule(snakemake, main)
