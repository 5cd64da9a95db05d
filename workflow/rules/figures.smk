# Figures and tables: papermill notebooks and small scripts that read the capture stage's files,
# and the Markdown results as HTML pages for the report.


# light jobs: on a cluster they run where Snakemake runs, not as cluster jobs
localrules:
    figure,
    claims,
    claims_summary,
    table1_alignment,
    gpt2_figure,
    variant_tables,
    gpt2_claims,
    markdown_page,
    atlas_figure,


rule figure:
    input:
        unpack(model_files),
        architecture=rules.fetch_model.output[0],
        notebook=lambda wildcards: NOTEBOOKS
        / f"{FIGURES[wildcards.figure].notebook}.ipynb",
    output:
        **notebook_outputs(
            "{model}/{figure}",
            caption="../report/figure.rst",
            figure=lambda wildcards: FIGURES[wildcards.figure],
            subcategory="{model}",
        ),
    log:
        "results/logs/figures/{model}/{figure}.log",
    conda:
        "../../envs/figures.yaml"
    params:
        # an override change reruns that model's figures
        notebook=lambda wildcards: notebook_parameters(
            FIGURES[wildcards.figure],
            rules.figure.output.png,
            wildcards,
            stats_dir=model_files(wildcards)["stats"],
            prompt_path=model_files(wildcards)["prompt"],
            weights_path=model_files(wildcards)["weights"],
            architecture_path=f"{one(rules.fetch_model.output[0], model=wildcards.model)}/architecture.json",
            model=wildcards.model,
            **figure_overrides(wildcards.model),
        ),
    script:
        "../scripts/run_notebook.py"


rule claims:
    input:
        unpack(model_files),
        interventions=lambda wildcards: one(
            rules.interventions.output.losses,
            model=wildcards.model,
            corpus=TARGET_CORPUS,
        ),
        quantization=lambda wildcards: one(
            rules.quantization.output.losses,
            model=wildcards.model,
            corpus=TARGET_CORPUS,
        ),
    output:
        "results/claims/{model}.md",
    log:
        "results/logs/claims/{model}.log",
    conda:
        "../../envs/figures.yaml"
    script:
        "../scripts/write_claims.py"


rule table1_alignment:
    input:
        stats=expand(
            rules.corpus_statistics.output[0],
            model=TARGET_MODELS,
            corpus=TARGET_CORPUS,
        ),
        weights=expand(rules.weight_statistics.output[0], model=TARGET_MODELS),
    output:
        csv="results/tables/table1_alignment.csv",
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
        stats=rules.table1_alignment.input.stats,
        weights=rules.table1_alignment.input.weights,
        prompts=expand(
            rules.dump_prompt.output.tensors, model=TARGET_MODELS, prompt=FIGURE_PROMPT
        ),
        interventions=rules.interventions_table.input.interventions,
        quantization=rules.quantization_table.input.quantization,
    output:
        markdown="results/claims/summary.md",
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


rule atlas_figure:
    input:
        stats=rules.claims_summary.input.stats,
        weights=rules.claims_summary.input.weights,
        prompts=rules.claims_summary.input.prompts,
        interventions=rules.claims_summary.input.interventions,
        quantization=rules.claims_summary.input.quantization,
        notebook=NOTEBOOKS / "atlas.ipynb",
    output:
        **notebook_outputs(
            "atlas",
            caption="../report/atlas.rst",
            figure=lambda wildcards: ATLAS,
            subcategory="all models",
        ),
    log:
        "results/logs/figures/atlas.log",
    conda:
        "../../envs/figures.yaml"
    params:
        notebook=lambda wildcards: notebook_parameters(
            ATLAS,
            rules.atlas_figure.output.png,
            wildcards,
            # plain lists: the params are pickled for the job
            models=list(TARGET_MODELS),
            stats_dirs=list(map(str, rules.claims_summary.input.stats)),
            weights_paths=list(map(str, rules.claims_summary.input.weights)),
            prompt_paths=list(map(str, rules.claims_summary.input.prompts)),
            interventions_paths=list(
                map(str, rules.claims_summary.input.interventions)
            ),
            quantization_paths=list(map(str, rules.claims_summary.input.quantization)),
        ),
    script:
        "../scripts/run_notebook.py"


rule markdown_page:
    input:
        "results/{page}.md",
    output:
        report(
            "results/pages/{page}.html",
            category=lambda wildcards: REPORT_PAGES[wildcards.page].section,
            subcategory=lambda wildcards: REPORT_PAGES[wildcards.page].subcategory,
            labels=lambda wildcards: {"paper": REPORT_PAGES[wildcards.page].paper},
        ),
    log:
        "results/logs/pages/{page}.log",
    conda:
        "../../envs/figures.yaml"
    params:
        title=lambda wildcards: REPORT_PAGES[wildcards.page].title,
    script:
        "../scripts/markdown_page.py"
