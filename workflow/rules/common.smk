# Configuration checks and helpers shared by every rule file.

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The package lives beside the rule scripts, whose folder Snakemake puts on their sys.path
# in any environment; the Snakefile itself needs only its light modules (config, architectures, io).
sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from systematic_outliers.architectures import (
    ATTENTION_SITES,
    HEAD_SITES,
    available_sites,
    fetched,
)
from systematic_outliers.config import (
    ConfigError,
    UserError,
    check_window_length,
    settings,
    validate_config,
)
from systematic_outliers.io import intervention_files, prompt_files


def _validated(config):
    """The config checked against the schema, or one line on stderr and exit 1 before anything runs."""
    try:
        checked = validate_config(config)
        # once a model's config.json is on disk, its context length is known: check windows now
        for model in checked["targets"]["models"]:
            model_config = Path("resources/models") / model / "config.json"
            if model_config.exists():
                check_window_length(
                    checked,
                    model,
                    checked["targets"]["corpus"],
                    json.loads(model_config.read_text()),
                )
    except ConfigError as error:
        sys.stderr.write(f"config error: {error}\n")
        sys.exit(1)
    return checked


CONFIG = _validated(config)
TARGET_MODELS = CONFIG["targets"]["models"]
TARGET_CORPUS = CONFIG["targets"]["corpus"]
TRAINING = CONFIG.get("training", {"variants": [], "tasks": {}, "run": []})
TASKS = TRAINING["tasks"]

# A hub token is passed on to jobs (also on a cluster) only when the user has set one.
if "HF_TOKEN" in os.environ:

    envvars:
        "HF_TOKEN",


# Notebooks lie beside the Snakefile, whatever the working directory.
NOTEBOOKS = Path(workflow.basedir) / "notebooks"


# The report's sections, in the paper's order (the report sorts them by name, hence the numbers).
EXISTENCE = "1 Existence and positions of the outliers (paper section 3)"
LIFECYCLE = "2 Lifecycle and role of the outliers (paper section 4)"
VARIANTS = "3 GPT-2 attention variants (paper section 5)"
CLAIMS = "4 Claims with their measured numbers and verdicts"


@dataclass(frozen=True)
class Figure:
    """A figure: the notebook that draws it (notebooks/<notebook>.ipynb; one notebook may draw a
    family), its report section and the paper's figure it rebuilds (or what it adds), the fixed
    parameters that make it this figure, and the capture sites it needs.
    """

    notebook: str
    section: str
    paper: str
    parameters: dict = field(default_factory=dict)
    sites: tuple = ()


_LIFECYCLE_SITES = (
    "attn_residual",
    "mlp_norm_output",
    "gate_output",
    "up_output",
    "act_output",
    "down_proj_input",
    "down_proj_output",
    "layer_output",
)
# Every LLM figure (rule figure); fig02_layer is drawn from the resolved architecture alone.
FIGURES = {
    "fig01_existence": Figure(
        "fig01_existence",
        EXISTENCE,
        "Fig 1 (Figs 13-22 for other models)",
        sites=("down_proj_input", "layer_output", "attn_probs"),
    ),
    "fig02_layer": Figure("fig02_layer", EXISTENCE, "Fig 2"),
    "fig03_activation_positions": Figure(
        "fig03_activation_positions", EXISTENCE, "Fig 3", sites=("layer_output",)
    ),
    "fig04_down_proj_positions": Figure(
        "fig04_down_proj_positions",
        EXISTENCE,
        "Fig 4",
        sites=("down_proj_input", "layer_output"),
    ),
    "fig05_weight_positions": Figure(
        "fig05_weight_positions", EXISTENCE, "Fig 5", sites=("down_proj_input",)
    ),
    "fig06_attention_positions": Figure(
        "fig06_attention_positions", EXISTENCE, "Fig 6", sites=("attn_probs",)
    ),
    "fig07_emergence": Figure(
        "lifecycle_mlp",
        LIFECYCLE,
        "Fig 7",
        {"stage": "emergence"},
        sites=_LIFECYCLE_SITES,
    ),
    "fig08_spread": Figure(
        "fig08_spread",
        LIFECYCLE,
        "Fig 8",
        sites=(
            "layer_input",
            "attn_norm_output",
            "query",
            "key",
            "value",
            "attn_logits",
            "attn_probs",
        ),
    ),
    "fig09_disappearance": Figure(
        "lifecycle_mlp",
        LIFECYCLE,
        "Fig 9",
        {"stage": "disappearance"},
        sites=_LIFECYCLE_SITES,
    ),
}

# What the outliers do, on the outputs of rule interventions (rule intervention_figure).
INTERVENTION_FIGURES = {
    "interventions": Figure(
        "interventions", LIFECYCLE, "section 4, tested: the outliers removed"
    ),
    "scaling_factor": Figure(
        "scaling_factor", LIFECYCLE, "section 4, measured: the scaling-factor reading"
    ),
}

# What the outliers cost a quantizer, on the outputs of rule quantization (rule quantization_figure),
# in the claims section beside the quantization table's page.
QUANTIZATION_FIGURE = Figure("quantization", CLAIMS, "beyond the paper: quantization")

# Every target model side by side (rule atlas_figure).
ATLAS = Figure("atlas", CLAIMS, "beyond the paper: every model side by side")

# The GPT-2 attention-variant figures of each training task (rule gpt2_figure).
GPT2_FIGURES = {
    "fig10_variants_3d": Figure(
        "gpt2_activations", VARIANTS, "Fig 10", {"panel": "3d"}
    ),
    "fig11_variants_layerwise": Figure(
        "gpt2_activations", VARIANTS, "Fig 11", {"panel": "layerwise"}
    ),
    "variants_sigmoid": Figure(
        "gpt2_activations", VARIANTS, "sigmoid attention (f)", {"panel": "sigmoid"}
    ),
    "variants_attention_sink": Figure(
        "gpt2_attention_sink", VARIANTS, "beyond the paper: the sink per variant"
    ),
    "convergence": Figure("gpt2_convergence", VARIANTS, "convergence (Fig 12)"),
    "variants_metrics": Figure(
        "gpt2_metrics", VARIANTS, "beyond the paper: the field's metrics"
    ),
}


def notebook_outputs(stem, caption, figure, subcategory):
    """The outputs of every notebook-running rule, for results/figures/<stem>.png (in the report,
    in the section of `figure(wildcards)`, labelled with the paper's figure), its PDF and caption,
    and the executed notebook."""
    return {
        "png": report(
            f"results/figures/{stem}.png",
            caption=caption,
            category=lambda wildcards: figure(wildcards).section,
            subcategory=subcategory,
            labels=lambda wildcards: {"paper": figure(wildcards).paper},
        ),
        "pdf": f"results/figures/{stem}.pdf",
        "caption": f"results/figures/{stem}.caption.txt",
        "notebook": f"results/notebooks/{stem}.ipynb",
    }


@dataclass(frozen=True)
class Page:
    """A Markdown result the report shows as an HTML page (rule markdown_page)."""

    section: str
    subcategory: str
    paper: str
    title: str


def report_pages():
    """results/<page>.md -> its Page, for every table and claims file the configuration builds."""
    pages = {
        "tables/table1_alignment": Page(
            EXISTENCE, "all models", "Table 1", "Table 1: alignment of the outliers"
        ),
        "tables/interventions": Page(
            LIFECYCLE,
            "all models",
            "section 4, tested",
            "What the outliers do: losses with them removed",
        ),
        "tables/quantization": Page(
            CLAIMS,
            "all models",
            "beyond the paper: quantization",
            "What the outliers cost a quantizer",
        ),
        "claims/summary": Page(
            CLAIMS,
            "all models",
            "scorecard",
            "Scorecard: each claim per model beside the paper's LLaMA-2-7B",
        ),
        **{
            f"claims/{model}": Page(
                CLAIMS, model, "claims", f"The paper's claims measured on {model}"
            )
            for model in TARGET_MODELS
        },
    }
    for task in TRAINING["run"]:
        pages |= {
            f"tables/gpt2/{task}/table2_variants": Page(
                VARIANTS, task, "Table 2", "Table 2: the attention variants"
            ),
            f"tables/gpt2/{task}/compression": Page(
                VARIANTS, task, "Table 3 (compression)", "Compression of each variant"
            ),
            f"tables/gpt2/{task}/ranking": Page(
                VARIANTS,
                task,
                "beyond the paper: ranking",
                "The variants ranked on the field's metrics",
            ),
        }
    if TRAINING["run"]:
        pages["claims/gpt2"] = Page(
            CLAIMS, "GPT-2", "claims", "The paper's claims on the GPT-2 variants"
        )
    return pages


def notebook_parameters(figure, png, wildcards, **paths):
    """The notebook's parameters: where it reads (`paths`) and writes (the rule's `png` output, filled
    with the job's wildcards), and the figure's own. From the wildcards and the config alone (no
    input functions), so that Snakemake compares them between runs."""
    return {
        **paths,
        "output_stem": one(png, **dict(wildcards.items())).removesuffix(".png"),
        **figure.parameters,
    }


def model_files(wildcards):
    """What a model's figures and claims read: its statistics on the target corpus, the figure
    prompt's dump and its weight statistics."""
    return {
        "stats": one(
            rules.corpus_statistics.output[0],
            model=wildcards.model,
            corpus=TARGET_CORPUS,
        ),
        "prompt": one(
            rules.dump_prompt.output.tensors,
            model=wildcards.model,
            prompt=FIGURE_PROMPT,
        ),
        "weights": one(rules.weight_statistics.output[0], model=wildcards.model),
    }


def one(template, **wildcards):
    """A rule's output template with its wildcards filled: one path."""
    (path,) = expand(template, **wildcards)
    return path


def figures_for(model):
    """The figures `model` can give, from the sites resolved when it was fetched (architecture.json
    in its folder): fetch_model is a checkpoint, so Snakemake plans them once the model is on disk
    (at once when it already is). fetch_model refuses a model without decoder layers."""
    try:
        architecture = fetched(
            checkpoints.fetch_model.get(model=model).output[0], model
        )
    except UserError as error:
        sys.stderr.write(f"config error: {error}\n")
        sys.exit(1)
    # a figure draws its sites at data-chosen layers: sites that every layer has, and attention sites,
    # which the choices take from a hybrid's softmax layers
    partial = set(architecture.site_layers) - set(HEAD_SITES) - set(ATTENTION_SITES)
    have = set(available_sites(architecture)) - partial
    return [name for name, figure in FIGURES.items() if set(figure.sites) <= have]


REPORT_PAGES = report_pages()

# The prompt the figures' 3-D panels show: the first configured one.
FIGURE_PROMPT = next(iter(CONFIG["prompts"]))


wildcard_constraints:
    model="|".join(map(re.escape, CONFIG["models"])),
    task="|".join(map(re.escape, TASKS)) or "no-task",
    variant="|".join(TRAINING["variants"]) or "no-variant",
    seed=r"\d+",
    gpt2_figure="|".join(GPT2_FIGURES),
    corpus="|".join(map(re.escape, CONFIG["corpora"])),
    prompt="|".join(map(re.escape, CONFIG["prompts"])),
    figure="|".join(FIGURES),
    intervention_figure="|".join(INTERVENTION_FIGURES),
    page="|".join(map(re.escape, REPORT_PAGES)),


def training_runs(task):
    """(variant, seed) of every training run of `task`."""
    return [
        (variant, seed)
        for variant in TRAINING["variants"]
        for seed in TASKS[task]["seeds"]
    ]


def trained_models(task):
    return [
        one(rules.train_variant.output.model, task=task, variant=variant, seed=seed)
        for variant, seed in training_runs(task)
    ]


def training_data(wildcards):
    """A text task's encoded corpus; the synthetic testbed needs none."""
    if TASKS[wildcards.task]["data"]["kind"] == "bigram_backcopy":
        return []
    return one(rules.prepare_training_text.output[0], task=wildcards.task)


def capture_outputs(model):
    """What the capture stage writes for one model: prompt dumps, corpus and weight statistics."""
    return [
        *expand(
            rules.dump_prompt.output.tensors, model=model, prompt=CONFIG["prompts"]
        ),
        one(rules.corpus_statistics.output[0], model=model, corpus=TARGET_CORPUS),
        one(rules.weight_statistics.output[0], model=model),
    ]


def model_settings(model, stage):
    """What `stage` reads of the model's config entry (config.STAGE_KEYS): a rule's params."""
    return settings(CONFIG["models"][model], stage)


def corpus_settings(corpus, stage):
    return settings(CONFIG["corpora"][corpus], stage)


def task_settings(task, stage):
    return settings(TASKS[task], stage)


def model_gpus(wildcards):
    """GPUs a capture or intervention job of the model asks for (models.<m>.gpus, 0 by default)."""
    return CONFIG["models"][wildcards.model]["gpus"]


def figure_overrides(model):
    """The config's layer and head overrides for `model` as 0-based notebook parameters."""
    overrides = CONFIG.get("figures", {}).get("overrides", {}).get(model, {})
    return {name: layer - 1 for name, layer in overrides.items()}


def figure_targets():
    """One input function per target model giving its LLM figures: each is known once that model
    is fetched, so a dry run plans the figures of the models already on disk."""
    return [
        lambda wildcards, model=model: expand(
            rules.figure.output.png, model=model, figure=figures_for(model)
        )
        for model in TARGET_MODELS
    ]


def default_targets():
    """Everything `snakemake` builds without a target, but the figures that depend on the
    architecture (figure_targets)."""
    return [
        *(path for model in TARGET_MODELS for path in capture_outputs(model)),
        *expand(
            rules.intervention_figure.output.png,
            model=TARGET_MODELS,
            intervention_figure=INTERVENTION_FIGURES,
        ),
        *expand(rules.quantization_figure.output.png, model=TARGET_MODELS),
        *expand(rules.claims.output[0], model=TARGET_MODELS),
        rules.interventions_table.output.csv,
        rules.quantization_table.output.csv,
        rules.claims_summary.output.markdown,
        rules.table1_alignment.output.csv,
        *expand(
            rules.gpt2_figure.output.png, task=TRAINING["run"], gpt2_figure=GPT2_FIGURES
        ),
        *(
            path
            for task in TRAINING["run"]
            for key in ("table2_csv", "compression_csv", "ranking_csv")
            for path in expand(getattr(rules.variant_tables.output, key), task=task)
        ),
        *([rules.gpt2_claims.output[0]] if TRAINING["run"] else []),
        *expand(rules.markdown_page.output[0], page=REPORT_PAGES),
        rules.atlas_figure.output.png,
    ]
