# Configuration checks and helpers shared by every rule file.

import json
import os
import re
import sys
from pathlib import Path

# The package lives beside the rule scripts, whose folder Snakemake puts on their sys.path
# in any environment; the Snakefile itself needs only its light config module.
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
# Every LLM figure: the notebook that draws it (notebooks/<name>.ipynb, rule figure), the fixed
# parameters that make it this figure (one notebook may draw a family), and the capture sites it needs.
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
FIGURES = {
    "fig01_existence": (
        "fig01_existence",
        {},
        ("down_proj_input", "layer_output", "attn_probs"),
    ),
    "fig02_layer": (
        "fig02_layer",
        {},
        (),
    ),  # drawn from the resolved architecture alone
    "fig03_activation_positions": ("fig03_activation_positions", {}, ("layer_output",)),
    "fig04_down_proj_positions": (
        "fig04_down_proj_positions",
        {},
        ("down_proj_input", "layer_output"),
    ),
    "fig05_weight_positions": ("fig05_weight_positions", {}, ("down_proj_input",)),
    "fig06_attention_positions": ("fig06_attention_positions", {}, ("attn_probs",)),
    "fig07_emergence": ("lifecycle_mlp", {"stage": "emergence"}, _LIFECYCLE_SITES),
    "fig08_spread": (
        "fig08_spread",
        {},
        (
            "layer_input",
            "attn_norm_output",
            "query",
            "key",
            "value",
            "attn_logits",
            "attn_probs",
        ),
    ),
    "fig09_disappearance": (
        "lifecycle_mlp",
        {"stage": "disappearance"},
        _LIFECYCLE_SITES,
    ),
}


# What the outliers do: notebooks/<name>.ipynb on the outputs of rule interventions, drawn by intervention_figure.
INTERVENTION_FIGURES = ("interventions", "scaling_factor")


# GPT-2 attention-variant figures per training task: notebook and fixed parameters.
GPT2_FIGURES = {
    "fig10_variants_3d": ("gpt2_activations", {"panel": "3d"}),
    "fig11_variants_layerwise": ("gpt2_activations", {"panel": "layerwise"}),
    "variants_sigmoid": ("gpt2_activations", {"panel": "sigmoid"}),
    "variants_attention_sink": ("gpt2_attention_sink", {}),
    "convergence": ("gpt2_convergence", {}),
    "variants_metrics": ("gpt2_metrics", {}),
}


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
    return [figure for figure, (_, _, sites) in FIGURES.items() if set(sites) <= have]


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


def training_runs(task):
    """(variant, seed) of every training run of `task`."""
    return [
        (variant, seed)
        for variant in TRAINING["variants"]
        for seed in TASKS[task]["seeds"]
    ]


def trained_models(task):
    return [
        f"results/training/{task}/{variant}/seed{seed}/model.safetensors"
        for variant, seed in training_runs(task)
    ]


def training_data(wildcards):
    """A text task's encoded corpus; the synthetic testbed needs none."""
    if TASKS[wildcards.task]["data"]["kind"] == "bigram_backcopy":
        return []
    return f"resources/training/{wildcards.task}"


def capture_outputs(model):
    """What the capture stage writes for one model: prompt dumps, corpus and weight statistics."""
    return [
        *(
            f"results/capture/{model}/prompts/{prompt}.safetensors"
            for prompt in CONFIG["prompts"]
        ),
        f"results/capture/{model}/stats/{TARGET_CORPUS}",
        f"results/capture/{model}/weights.parquet",
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
        lambda wildcards, model=model: [
            f"results/figures/{model}/{figure}.png" for figure in figures_for(model)
        ]
        for model in TARGET_MODELS
    ]


def default_targets():
    """Everything `snakemake` builds without a target, but the figures that depend on the
    architecture (figure_targets)."""
    return [
        *(path for model in TARGET_MODELS for path in capture_outputs(model)),
        *(
            f"results/figures/{model}/{figure}.png"
            for model in TARGET_MODELS
            for figure in INTERVENTION_FIGURES
        ),
        *(f"results/claims/{model}.md" for model in TARGET_MODELS),
        "results/tables/interventions.csv",
        "results/claims/summary.md",
        "results/tables/table1_alignment.csv",
        *(
            f"results/figures/gpt2/{task}/{figure}.png"
            for task in TRAINING["run"]
            for figure in GPT2_FIGURES
        ),
        *(
            f"results/tables/gpt2/{task}/{table}.csv"
            for task in TRAINING["run"]
            for table in ("table2_variants", "compression", "ranking")
        ),
        *(["results/claims/gpt2.md"] if TRAINING["run"] else []),
    ]
