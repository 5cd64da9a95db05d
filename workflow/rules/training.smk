# The paper's Section 5: GPT-2 with each attention variant, trained per task and seed, then analysed.
# The runs take most of a default run's time, so they yield to any ready LLM job (priority -1):
# the LLM figures, Table 1 and the claims come first while the training goes on beside them.


rule prepare_training_text:
    input:
        corpus=lambda wildcards: one(
            rules.fetch_corpus.output[0],
            corpus=TASKS[wildcards.task]["data"]["corpus"],
        ),
    output:
        directory("resources/training/{task}"),
    log:
        "results/logs/prepare_training_text/{task}.log",
    benchmark:
        "results/benchmarks/prepare_training_text/{task}.tsv"
    conda:
        "../../envs/training.yaml"
    params:
        task=lambda wildcards: task_settings(wildcards.task, "training_data"),
        separator=lambda wildcards: CONFIG["corpora"][
            TASKS[wildcards.task]["data"]["corpus"]
        ]["separator"],
    script:
        "../scripts/prepare_training_text.py"


rule train_variant:
    input:
        data=training_data,
    output:
        model="results/training/{task}/{variant}/seed{seed}/model.safetensors",
        config="results/training/{task}/{variant}/seed{seed}/config.json",
        log_csv="results/training/{task}/{variant}/seed{seed}/log.csv",
    log:
        "results/logs/train_variant/{task}/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_variant/{task}/{variant}/seed{seed}.tsv"
    priority: -1
    conda:
        "../../envs/training.yaml"
    threads: 1
    resources:
        # a CPU task (no gpus:) asks for none, so runs on a laptop are not serialized
        gpu=lambda wildcards: TASKS[wildcards.task].get("gpus", 0),
    params:
        task=lambda wildcards: task_settings(wildcards.task, "training_run"),
    script:
        "../scripts/train_variant.py"


rule analyse_variants:
    input:
        data=training_data,
        models=lambda wildcards: trained_models(wildcards.task),
    output:
        directory("results/training/{task}/analysis"),
    log:
        "results/logs/analyse_variants/{task}.log",
    benchmark:
        "results/benchmarks/analyse_variants/{task}.tsv"
    priority: -1
    conda:
        "../../envs/training.yaml"
    threads: 1
    params:
        task=lambda wildcards: task_settings(wildcards.task, "training_run"),
        variants=lambda wildcards: [v for v, _ in training_runs(wildcards.task)],
        seeds=lambda wildcards: [s for _, s in training_runs(wildcards.task)],
    script:
        "../scripts/analyse_variants.py"


rule gpt2_figure:
    input:
        analysis=rules.analyse_variants.output[0],
        notebook=lambda wildcards: NOTEBOOKS
        / f"{GPT2_FIGURES[wildcards.gpt2_figure].notebook}.ipynb",
    output:
        **notebook_outputs(
            "gpt2/{task}/{gpt2_figure}",
            caption="../report/gpt2_figure.rst",
            figure=lambda wildcards: GPT2_FIGURES[wildcards.gpt2_figure],
            subcategory="{task}",
        ),
    log:
        "results/logs/gpt2_figure/{task}/{gpt2_figure}.log",
    conda:
        "../../envs/figures.yaml"
    params:
        notebook=lambda wildcards: notebook_parameters(
            GPT2_FIGURES[wildcards.gpt2_figure],
            rules.gpt2_figure.output.png,
            wildcards,
            analysis_dir=one(rules.analyse_variants.output[0], task=wildcards.task),
            task=wildcards.task,
        ),
    script:
        "../scripts/run_notebook.py"


rule variant_tables:
    input:
        analysis=rules.analyse_variants.output[0],
    output:
        table2_csv="results/tables/gpt2/{task}/table2_variants.csv",
        table2_md="results/tables/gpt2/{task}/table2_variants.md",
        compression_csv="results/tables/gpt2/{task}/compression.csv",
        compression_md="results/tables/gpt2/{task}/compression.md",
        ranking_csv="results/tables/gpt2/{task}/ranking.csv",
        ranking_md="results/tables/gpt2/{task}/ranking.md",
    log:
        "results/logs/variant_tables/{task}.log",
    conda:
        "../../envs/figures.yaml"
    script:
        "../scripts/variant_tables.py"


rule gpt2_claims:
    input:
        analyses=expand(rules.analyse_variants.output[0], task=TRAINING["run"]),
    output:
        "results/claims/gpt2.md",
    log:
        "results/logs/claims/gpt2.log",
    conda:
        "../../envs/figures.yaml"
    params:
        tasks=TRAINING["run"],
    script:
        "../scripts/write_gpt2_claims.py"
