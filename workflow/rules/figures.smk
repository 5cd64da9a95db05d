# Figures and tables: papermill notebooks and small scripts that read the capture stage's files.


# light jobs: on a cluster they run where Snakemake runs, not as cluster jobs
localrules:
    figure,
    claims,
    claims_summary,
    table1_alignment,
    gpt2_figure,
    variant_tables,
    gpt2_claims,


rule figure:
    input:
        stats=f"results/capture/{{model}}/stats/{TARGET_CORPUS}",
        prompt=f"results/capture/{{model}}/prompts/{FIGURE_PROMPT}.safetensors",
        weights="results/capture/{model}/weights.parquet",
        architecture="resources/models/{model}",
        notebook=lambda wildcards: NOTEBOOKS / f"{FIGURES[wildcards.figure][0]}.ipynb",
    output:
        png=report(
            "results/figures/{model}/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf="results/figures/{model}/{figure}.pdf",
        caption="results/figures/{model}/{figure}.caption.txt",
        notebook="results/notebooks/{model}/{figure}.ipynb",
    log:
        "results/logs/figures/{model}/{figure}.log",
    conda:
        "../../envs/figures.yaml"
    params:
        # from the wildcards and the config alone, so that Snakemake compares them between runs:
        # an override change reruns that model's figures
        notebook=lambda wildcards: {
            "stats_dir": f"results/capture/{wildcards.model}/stats/{TARGET_CORPUS}",
            "prompt_path": f"results/capture/{wildcards.model}/prompts/{FIGURE_PROMPT}.safetensors",
            "weights_path": f"results/capture/{wildcards.model}/weights.parquet",
            "architecture_path": f"resources/models/{wildcards.model}/architecture.json",
            "model": wildcards.model,
            "output_stem": f"results/figures/{wildcards.model}/{wildcards.figure}",
            **FIGURES[wildcards.figure][1],
            **figure_overrides(wildcards.model),
        },
    script:
        "../scripts/run_notebook.py"


rule claims:
    input:
        stats=f"results/capture/{{model}}/stats/{TARGET_CORPUS}",
        prompt=f"results/capture/{{model}}/prompts/{FIGURE_PROMPT}.safetensors",
        weights="results/capture/{model}/weights.parquet",
        interventions=f"results/interventions/{{model}}/{TARGET_CORPUS}.parquet",
    output:
        report("results/claims/{model}.md", category="Claims"),
    log:
        "results/logs/claims/{model}.log",
    conda:
        "../../envs/figures.yaml"
    script:
        "../scripts/write_claims.py"


rule table1_alignment:
    input:
        stats=expand(
            "results/capture/{model}/stats/{corpus}",
            model=TARGET_MODELS,
            corpus=TARGET_CORPUS,
        ),
        weights=expand("results/capture/{model}/weights.parquet", model=TARGET_MODELS),
    output:
        csv=report("results/tables/table1_alignment.csv", category="Tables"),
        markdown="results/tables/table1_alignment.md",
    log:
        "results/logs/tables/table1_alignment.log",
    conda:
        "../../envs/figures.yaml"
    params:
        models=TARGET_MODELS,
    script:
        "../scripts/alignment_table.py"


rule claims_summary:
    input:
        stats=expand(
            "results/capture/{model}/stats/{corpus}",
            model=TARGET_MODELS,
            corpus=TARGET_CORPUS,
        ),
        weights=expand("results/capture/{model}/weights.parquet", model=TARGET_MODELS),
        prompts=expand(
            "results/capture/{model}/prompts/{prompt}.safetensors",
            model=TARGET_MODELS,
            prompt=FIGURE_PROMPT,
        ),
        interventions=expand(
            "results/interventions/{model}/{corpus}.parquet",
            model=TARGET_MODELS,
            corpus=TARGET_CORPUS,
        ),
    output:
        markdown=report("results/claims/summary.md", category="Claims"),
        csv="results/claims/summary.csv",
        atlas="results/claims/atlas.csv",
    log:
        "results/logs/claims/summary.log",
    conda:
        "../../envs/figures.yaml"
    params:
        models=TARGET_MODELS,
    script:
        "../scripts/write_summary.py"
