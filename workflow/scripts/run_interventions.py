"""Rule interventions: ablate the outliers the statistics located, beside random controls, and read
the scaling factor, on the windows the statistics saw."""

from systematic_outliers import interventions, passes
from systematic_outliers.readers import Evidence
from systematic_outliers.rules import run_rule


def main(snakemake):
    name = snakemake.wildcards.model
    evidence = Evidence.load(name, snakemake.input.stats, snakemake.input.weights)
    model, input_ids = passes.load_for_windows(
        name, snakemake.params.entry, snakemake.input.model, snakemake.input.windows, gpus=snakemake.resources.gpu
    )
    files = {part: getattr(snakemake.output, part) for part in ("losses", "scaling", "points", "record")}
    record = interventions.intervene(name, model, evidence, input_ids, snakemake.params.seeds, files)
    print(record["activation"]["why"], record["sink"]["why"] if record["sink"] else record["sink_not_measured"], sep="\n")


run_rule(snakemake, main)
