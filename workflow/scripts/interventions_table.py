"""Rule interventions_table: every model's losses under each intervention beside its controls, and the scaling-factor reading."""

from systematic_outliers import intervention_report
from systematic_outliers.io import write_table
from systematic_outliers.readers import Evidence, InterventionResults
from systematic_outliers.rules import run_rule


def main(snakemake):
    results, scaling = {}, {}
    for model, losses, stats, weights in zip(
        snakemake.params.models, snakemake.input.interventions, snakemake.input.stats, snakemake.input.weights
    ):
        results[model] = InterventionResults.load(losses)
        finding = intervention_report.scaling_finding(
            results[model], intervention_report.evidence_sink_layers(Evidence.load(model, stats, weights))
        )
        scaling[model] = f"{finding.measured} (**{finding.verdict}**)"
    table = intervention_report.table(results)
    text = intervention_report.table_markdown(table, scaling)
    write_table(table, snakemake.output.csv, snakemake.output.markdown, text)
    print(text)


run_rule(snakemake, main)
