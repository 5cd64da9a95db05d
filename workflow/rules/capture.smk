# Tensor capture and outlier statistics: every LLM figure reads only what these rules write.


rule dump_prompt:
    input:
        model=rules.fetch_model.output[0],
    output:
        **prompt_files("results/capture/{model}/prompts/{prompt}.safetensors"),
    log:
        "results/logs/dump_prompt/{model}/{prompt}.log",
    benchmark:
        "results/benchmarks/dump_prompt/{model}/{prompt}.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        gpu=model_gpus,
    params:
        entry=lambda wildcards: model_settings(wildcards.model, "load_model"),
        prompt=lambda wildcards: CONFIG["prompts"][wildcards.prompt],
    script:
        "../scripts/dump_prompt.py"


rule corpus_statistics:
    input:
        model=rules.fetch_model.output[0],
        windows=rules.cut_windows.output[0],
    output:
        directory("results/capture/{model}/stats/{corpus}"),
    log:
        "results/logs/corpus_statistics/{model}/{corpus}.log",
    benchmark:
        "results/benchmarks/corpus_statistics/{model}/{corpus}.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        gpu=model_gpus,
    params:
        entry=lambda wildcards: model_settings(wildcards.model, "load_model"),
        top_k=CONFIG["statistics"]["top_k"],
        context_length=lambda wildcards: CONFIG["models"][wildcards.model].get(
            "context_length"
        ),
    script:
        "../scripts/corpus_statistics.py"


rule weight_statistics:
    input:
        model=rules.fetch_model.output[0],
    output:
        "results/capture/{model}/weights.parquet",
    log:
        "results/logs/weight_statistics/{model}.log",
    benchmark:
        "results/benchmarks/weight_statistics/{model}.tsv"
    conda:
        "../../envs/capture.yaml"
    script:
        "../scripts/weight_statistics.py"
