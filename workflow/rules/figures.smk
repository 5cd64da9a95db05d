# Figures: papermill notebooks that read the capture stage's files and draw.


rule statistics_figure:
    input:
        stats=f"results/capture/{{model}}/stats/{TARGET_CORPUS}",
        prompt=f"results/capture/{{model}}/prompts/{FIGURE_PROMPT}.safetensors",
        notebook=NOTEBOOKS / "{figure}.ipynb",
    output:
        png=report(
            "results/figures/{model}/{figure}.png",
            caption="../report/statistics_figure.rst",
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
        notebook=lambda wildcards, input, output: {
            "stats_dir": input.stats,
            "prompt_path": input.prompt,
            "model": wildcards.model,
            "output_stem": output.png.removesuffix(".png"),
            **figure_overrides(wildcards.model),
        },
    script:
        "../scripts/run_notebook.py"
