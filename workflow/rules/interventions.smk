# What the outliers do: ablations at the outliers the statistics located, and the scaling-factor
# reading, on the same windows as the statistics.


rule interventions:
    input:
        model="resources/models/{model}",
        windows="resources/windows/{corpus}/{model}",
        stats="results/capture/{model}/stats/{corpus}",
        weights="results/capture/{model}/weights.parquet",
    output:
        losses="results/interventions/{model}/{corpus}.parquet",
        scaling="results/interventions/{model}/{corpus}.scaling.parquet",
        points="results/interventions/{model}/{corpus}.points.parquet",
        record="results/interventions/{model}/{corpus}.json",
    log:
        "results/logs/interventions/{model}/{corpus}.log",
    benchmark:
        "results/benchmarks/interventions/{model}/{corpus}.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        gpu=model_gpus,
    params:
        entry=lambda wildcards: model_settings(wildcards.model, "load_model"),
        seeds=CONFIG["interventions"]["seeds"],
    script:
        "../scripts/run_interventions.py"


# light jobs: on a cluster they run where Snakemake runs
localrules:
    intervention_figure,
    interventions_table,


rule intervention_figure:
    input:
        interventions=f"results/interventions/{{model}}/{TARGET_CORPUS}.parquet",
        stats=f"results/capture/{{model}}/stats/{TARGET_CORPUS}",
        notebook=lambda wildcards: NOTEBOOKS / f"{wildcards.intervention_figure}.ipynb",
    output:
        png=report(
            "results/figures/{model}/{intervention_figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf="results/figures/{model}/{intervention_figure}.pdf",
        caption="results/figures/{model}/{intervention_figure}.caption.txt",
        notebook="results/notebooks/{model}/{intervention_figure}.ipynb",
    log:
        "results/logs/figures/{model}/{intervention_figure}.log",
    conda:
        "../../envs/figures.yaml"
    params:
        # from the wildcards alone, so that Snakemake compares them between runs
        notebook=lambda wildcards: {
            "interventions_path": f"results/interventions/{wildcards.model}/{TARGET_CORPUS}.parquet",
            "stats_dir": f"results/capture/{wildcards.model}/stats/{TARGET_CORPUS}",
            "model": wildcards.model,
            "output_stem": f"results/figures/{wildcards.model}/{wildcards.intervention_figure}",
        },
    script:
        "../scripts/run_notebook.py"


rule interventions_table:
    input:
        interventions=expand(
            "results/interventions/{model}/{corpus}.parquet",
            model=TARGET_MODELS,
            corpus=TARGET_CORPUS,
        ),
        stats=expand(
            "results/capture/{model}/stats/{corpus}",
            model=TARGET_MODELS,
            corpus=TARGET_CORPUS,
        ),
        weights=expand("results/capture/{model}/weights.parquet", model=TARGET_MODELS),
    output:
        csv=report("results/tables/interventions.csv", category="Tables"),
        markdown="results/tables/interventions.md",
    log:
        "results/logs/tables/interventions.log",
    conda:
        "../../envs/figures.yaml"
    params:
        models=TARGET_MODELS,
    script:
        "../scripts/interventions_table.py"
