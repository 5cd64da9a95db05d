# Model download: any source becomes resources/models/{model}/ in Hugging Face format.


rule fetch_model:
    output:
        directory("resources/models/{model}"),
    log:
        "results/logs/fetch_model/{model}.log",
    benchmark:
        "results/benchmarks/fetch_model/{model}.tsv"
    conda:
        "../../envs/models.yaml"
    params:
        entry=lambda wildcards: CONFIG["models"][wildcards.model],
    script:
        "../scripts/fetch_model.py"
