# Text acquisition and the windowing protocol (documents drawn with a seed, joined, cut).


rule fetch_corpus:
    output:
        directory("resources/text/{corpus}"),
    log:
        "results/logs/fetch_corpus/{corpus}.log",
    benchmark:
        "results/benchmarks/fetch_corpus/{corpus}.tsv"
    conda:
        "../../envs/text.yaml"
    params:
        entry=lambda wildcards: corpus_settings(wildcards.corpus, "fetch_corpus"),
    script:
        "../scripts/fetch_corpus.py"


rule cut_windows:
    input:
        text=rules.fetch_corpus.output[0],
        model=rules.fetch_model.output[0],
    output:
        directory("resources/windows/{corpus}/{model}"),
    log:
        "results/logs/cut_windows/{corpus}/{model}.log",
    benchmark:
        "results/benchmarks/cut_windows/{corpus}/{model}.tsv"
    conda:
        "../../envs/text.yaml"
    params:
        model_entry=lambda wildcards: model_settings(wildcards.model, "window_model"),
        corpus_entry=lambda wildcards: corpus_settings(
            wildcards.corpus, "window_corpus"
        ),
    script:
        "../scripts/cut_windows.py"
