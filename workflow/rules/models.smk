# Model download: any source becomes resources/models/{model}/ in Hugging Face format.


# a checkpoint: which figures a model can give is read from the architecture.json it resolves
checkpoint fetch_model:
    output:
        directory("resources/models/{model}"),
    log:
        "results/logs/fetch_model/{model}.log",
    benchmark:
        "results/benchmarks/fetch_model/{model}.tsv"
    conda:
        "../../envs/models.yaml"
    params:
        entry=lambda wildcards: model_settings(wildcards.model, "fetch_model"),
    script:
        "../scripts/fetch_model.py"


# clusters whose compute nodes have no internet download where Snakemake runs (profiles/slurm)
if CONFIG["fetch_locally"]:

    localrules:
        fetch_model,
        fetch_corpus,
