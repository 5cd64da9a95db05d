# What the outliers do: ablations at the outliers the statistics located, and the scaling-factor
# reading, on the same windows as the statistics.


rule interventions:
    input:
        model=rules.fetch_model.output[0],
        windows=rules.cut_windows.output[0],
        stats=rules.corpus_statistics.output[0],
        weights=rules.weight_statistics.output[0],
    output:
        **intervention_files("results/interventions/{model}/{corpus}.parquet"),
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
        interventions=lambda wildcards: one(
            rules.interventions.output.losses,
            model=wildcards.model,
            corpus=TARGET_CORPUS,
        ),
        stats=lambda wildcards: one(
            rules.corpus_statistics.output[0],
            model=wildcards.model,
            corpus=TARGET_CORPUS,
        ),
        notebook=lambda wildcards: NOTEBOOKS
        / f"{INTERVENTION_FIGURES[wildcards.intervention_figure].notebook}.ipynb",
    output:
        **notebook_outputs(
            "{model}/{intervention_figure}",
            caption="../report/figure.rst",
            figure=lambda wildcards: INTERVENTION_FIGURES[
                wildcards.intervention_figure
            ],
            subcategory="{model}",
        ),
    log:
        "results/logs/figures/{model}/{intervention_figure}.log",
    conda:
        "../../envs/figures.yaml"
    params:
        notebook=lambda wildcards: notebook_parameters(
            INTERVENTION_FIGURES[wildcards.intervention_figure],
            rules.intervention_figure.output.png,
            wildcards,
            interventions_path=one(
                rules.interventions.output.losses,
                model=wildcards.model,
                corpus=TARGET_CORPUS,
            ),
            stats_dir=one(
                rules.corpus_statistics.output[0],
                model=wildcards.model,
                corpus=TARGET_CORPUS,
            ),
            model=wildcards.model,
        ),
    script:
        "../scripts/run_notebook.py"


rule interventions_table:
    input:
        interventions=expand(
            rules.interventions.output.losses,
            model=TARGET_MODELS,
            corpus=TARGET_CORPUS,
        ),
        stats=expand(
            rules.corpus_statistics.output[0],
            model=TARGET_MODELS,
            corpus=TARGET_CORPUS,
        ),
        weights=expand(rules.weight_statistics.output[0], model=TARGET_MODELS),
    output:
        csv="results/tables/interventions.csv",
        markdown="results/tables/interventions.md",
    log:
        "results/logs/tables/interventions.log",
    conda:
        "../../envs/figures.yaml"
    params:
        models=TARGET_MODELS,
    script:
        "../scripts/interventions_table.py"


# What the outliers cost a quantizer: 8-bit weights and activations, the outliers kept in full
# precision beside random controls, on the same windows as the statistics.


rule quantization:
    input:
        model=rules.fetch_model.output[0],
        windows=rules.cut_windows.output[0],
        stats=rules.corpus_statistics.output[0],
        weights=rules.weight_statistics.output[0],
    output:
        losses="results/quantization/{model}/{corpus}.parquet",
        record="results/quantization/{model}/{corpus}.json",
    log:
        "results/logs/quantization/{model}/{corpus}.log",
    benchmark:
        "results/benchmarks/quantization/{model}/{corpus}.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        gpu=model_gpus,
    params:
        entry=lambda wildcards: model_settings(wildcards.model, "load_model"),
        seeds=CONFIG["interventions"]["seeds"],
    script:
        "../scripts/run_quantization.py"


localrules:
    quantization_table,
    quantization_figure,


rule quantization_table:
    input:
        quantization=expand(
            rules.quantization.output.losses,
            model=TARGET_MODELS,
            corpus=TARGET_CORPUS,
        ),
    output:
        csv="results/tables/quantization.csv",
        markdown="results/tables/quantization.md",
    log:
        "results/logs/tables/quantization.log",
    conda:
        "../../envs/figures.yaml"
    params:
        models=TARGET_MODELS,
    script:
        "../scripts/quantization_table.py"


rule quantization_figure:
    input:
        quantization=lambda wildcards: one(
            rules.quantization.output.losses,
            model=wildcards.model,
            corpus=TARGET_CORPUS,
        ),
        record=lambda wildcards: one(
            rules.quantization.output.record,
            model=wildcards.model,
            corpus=TARGET_CORPUS,
        ),
        notebook=NOTEBOOKS / f"{QUANTIZATION_FIGURE.notebook}.ipynb",
    output:
        **notebook_outputs(
            "{model}/quantization",
            caption="../report/figure.rst",
            figure=lambda wildcards: QUANTIZATION_FIGURE,
            subcategory="{model}",
        ),
    log:
        "results/logs/figures/{model}/quantization.log",
    conda:
        "../../envs/figures.yaml"
    params:
        notebook=lambda wildcards: notebook_parameters(
            QUANTIZATION_FIGURE,
            rules.quantization_figure.output.png,
            wildcards,
            quantization_path=one(
                rules.quantization.output.losses,
                model=wildcards.model,
                corpus=TARGET_CORPUS,
            ),
            record_path=one(
                rules.quantization.output.record,
                model=wildcards.model,
                corpus=TARGET_CORPUS,
            ),
            model=wildcards.model,
        ),
    script:
        "../scripts/run_notebook.py"
