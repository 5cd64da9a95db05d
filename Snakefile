# Systematic outliers in large language models (An et al., arXiv 2502.06415), rebuilt from raw weights.
#
#   snakemake --cores 2                                  # the default configuration (CPU, no hub)
#   snakemake --cores 2 --configfile config/paper.yaml   # the paper's models and data (GPUs, hub)


from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# The embedded default; --configfile FILE deep-merges FILE over it (lists are replaced).
configfile: Path(workflow.basedir) / "config" / "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/text.smk"
include: "workflow/rules/capture.smk"
include: "workflow/rules/interventions.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/training.smk"


rule all:
    default_target: True
    input:
        default_targets(),
        *figure_targets(),
