# Text acquisition and the windowing protocol (documents drawn with a seed, joined, cut).


rule fetch_corpus:
    output:
        directory("resources/text/{corpus}"),
    params:
        entry=lambda wildcards: CONFIG["corpora"][wildcards.corpus],
    log:
        "results/logs/fetch_corpus/{corpus}.log",
    benchmark:
        "results/benchmarks/fetch_corpus/{corpus}.tsv"
    conda:
        "../../envs/text.yaml"
    script:
        "../scripts/fetch_corpus.py"


rule cut_windows:
    input:
        text="resources/text/{corpus}",
        model="resources/models/{model}",
    output:
        directory("resources/windows/{corpus}/{model}"),
    params:
        config=CONFIG,
    log:
        "results/logs/cut_windows/{corpus}/{model}.log",
    benchmark:
        "results/benchmarks/cut_windows/{corpus}/{model}.tsv"
    conda:
        "../../envs/text.yaml"
    script:
        "../scripts/cut_windows.py"
