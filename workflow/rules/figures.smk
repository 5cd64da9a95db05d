# Figures: papermill notebooks that read the capture stage's files and draw.


rule fig03_activation_positions:
    input:
        stats=f"results/capture/{{model}}/stats/{TARGET_CORPUS}",
        notebook=NOTEBOOKS / "fig03_activation_positions.ipynb",
    output:
        png=report(
            "results/figures/{model}/fig03_activation_positions.png",
            caption="../report/fig03_activation_positions.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf="results/figures/{model}/fig03_activation_positions.pdf",
        caption="results/figures/{model}/fig03_activation_positions.caption.txt",
        notebook="results/notebooks/{model}/fig03_activation_positions.ipynb",
    log:
        "results/logs/figures/{model}/fig03_activation_positions.log",
    conda:
        "../../envs/figures.yaml"
    params:
        notebook=lambda wildcards, input, output: {
            "stats_dir": input.stats,
            "model": wildcards.model,
            "output_stem": output.png.removesuffix(".png"),
        },
    script:
        "../scripts/run_notebook.py"
