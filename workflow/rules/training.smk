# The paper's Section 5: GPT-2 with each attention variant, trained per task and seed, then analysed.


rule prepare_training_text:
    input:
        corpus=lambda wildcards: f"resources/text/{TASKS[wildcards.task]['data']['corpus']}",
    output:
        directory("resources/training/{task}"),
    log:
        "results/logs/prepare_training_text/{task}.log",
    benchmark:
        "results/benchmarks/prepare_training_text/{task}.tsv"
    conda:
        "../../envs/training.yaml"
    params:
        task=lambda wildcards: TASKS[wildcards.task],
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
    conda:
        "../../envs/training.yaml"
    threads: 1
    resources:
        gpu=lambda wildcards: max(1, TASKS[wildcards.task].get("gpus", 0)),
    params:
        task=lambda wildcards: TASKS[wildcards.task],
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
    conda:
        "../../envs/training.yaml"
    threads: 1
    params:
        task=lambda wildcards: TASKS[wildcards.task],
        variants=lambda wildcards: [v for v, _ in training_runs(wildcards.task)],
        seeds=lambda wildcards: [s for _, s in training_runs(wildcards.task)],
    script:
        "../scripts/analyse_variants.py"
