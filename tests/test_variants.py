"""The variant analysis on tiny trained models: every table, consistent with training, and compression that bites."""

import math
import os

import numpy as np
import pandas as pd
import papermill
import pytest
import torch
from conftest import REPO
from systematic_outliers import tasks, training, variant_analysis, variant_report
from systematic_outliers.gpt2 import GPT, GPTConfig
from systematic_outliers.variants import VARIANTS

TASK = {
    "data": {"kind": "bigram_backcopy", "length": 16, "vocab_size": 16, "triggers": 2, "task_seed": 0},
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 16, "tie_weights": False},
    "schedule": {
        "steps": 40,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "min_learning_rate": 3e-4,
        "warmup_steps": 5,
        "decay_steps": 40,
        "weight_decay": 0.01,
        "eval_interval": 20,
        "eval_batches": 2,
        "checkpoint_interval": 100,
    },
    "seeds": [0],
}


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    data, vocab_size, prompt_ids, labels = tasks.load_task(TASK)
    runs = {}
    for variant in VARIANTS:  # all twelve: each trains, and the analysis reads each
        runs[(variant, 0)] = folder / variant / "seed0"
        training.train(tasks.model_config(TASK, variant, vocab_size), training.schedule(TASK, 0), data, runs[(variant, 0)])
    variant_analysis.analyse(TASK, runs, data, prompt_ids, labels, folder / "analysis")
    return folder / "analysis"


def test_every_table_covers_every_run_and_layer(analysis):
    runs = pd.read_parquet(analysis / "runs.parquet")
    assert list(runs.variant) == sorted(VARIANTS)
    assert dict(zip(runs.variant, runs.extra_parameters)) == {  # per layer, times 2 layers (n_embd 16, 2 heads)
        "default": 0,
        "fixed_bias": 2 * 16,
        "context_bias": 2 * 2 * 2 * 8,
        "attention_bias": 2 * 2 * 2 * 8,
        "context_scale": 2 * (16 * 2 + 2),
        "sigmoid": 0,
        "softmax_one": 0,
        "learned_sink": 2 * 2,
        "gated": 2 * 16 * 16,
        "clipped_softmax": 0,
        "softpick": 0,
        "gated_headwise": 2 * 16 * 2,
    }
    layers = pd.read_parquet(analysis / "layerwise.parquet")
    assert sorted(layers.layer.unique()) == [0, 1, 2] and (layers.top1 >= layers.top2).all() and (layers.top3 >= layers["median"]).all()
    sink = pd.read_parquet(analysis / "sink.parquet")
    assert set(sink.positions) == {"trigger", "non_trigger"}
    extra = sink.groupby("variant").extra_key.apply(lambda e: e.notna().all())
    assert sorted(extra[extra].index) == ["attention_bias", "context_bias", "learned_sink", "softmax_one"]
    scale = sink.groupby("variant").scale.apply(lambda e: e.notna().all())
    assert sorted(scale[scale].index) == ["context_scale", "gated", "gated_headwise"]
    for variant, high in (("context_scale", 2), ("gated", 1), ("gated_headwise", 1)):
        values = sink[sink.variant == variant].scale
        assert ((values > 0) & (values < high)).all()
    # Gu et al.'s α per head, and the kurtosis per layer (the block outputs of a tiny model: near a Gaussian's 3)
    heads = pd.read_parquet(analysis / "heads.parquet")
    assert len(heads) == len(VARIANTS) * 2 * 2 and heads.first_key.between(0, 1).all()
    assert layers["kurtosis"].between(1, 50).all()
    assert pd.read_json(analysis / "manifest.json", typ="series")["sink_window"] == 16


def test_full_precision_loss_is_the_one_training_logged(analysis):
    runs = pd.read_parquet(analysis / "runs.parquet").set_index("variant")
    compression = pd.read_parquet(analysis / "compression.parquet")
    full = compression[compression.method == "full"].set_index("variant").val_loss
    for variant in full.index:  # same seed-0 validation batches, same weights
        assert full[variant] == pytest.approx(runs.val_loss[variant], rel=1e-6)
    assert set(compression.method) == {"full", "w8", "w8a8", "prune50"}


def test_compression_changes_weights_only_inside_its_block():
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8))
    before = {name: p.clone() for name, p in model.state_dict().items()}
    with variant_analysis.compressed(model, "prune50"):
        weight = model.blocks[0].mlp.c_fc.weight
        assert (weight == 0).float().mean() == 0.5
    with variant_analysis.compressed(model, "w8"):
        values = model.blocks[0].attn.c_attn.weight
        step = values.abs().max() / 127
        assert torch.allclose(values / step, (values / step).round(), atol=1e-4)
    for name, parameter in model.state_dict().items():
        assert torch.equal(parameter, before[name]), name
    with pytest.raises(ValueError, match="compression method 'w4'"):
        with variant_analysis.compressed(model, "w4"):
            pass


@pytest.mark.parametrize(
    "notebook, parameters, says",
    [
        ("gpt2_activations", {"panel": "3d"}, "|h| at the output of block 1 (the middle one)"),
        ("gpt2_activations", {"panel": "layerwise"}, "layer 0 is the embedding output"),
        ("gpt2_activations", {"panel": "sigmoid"}, "sigmoid attention (f) beside softmax (a)"),
        ("gpt2_attention_sink", {}, "(e) context_scale: first key non-trigger"),
        ("gpt2_convergence", {}, "Tokens to reach"),
        ("gpt2_metrics", {}, "(k) Sink_1^0.3"),
    ],
)
def test_gpt2_notebooks_draw_from_the_analysis_alone(analysis, tmp_path, notebook, parameters, says):
    os.environ["PYTHONPATH"] = str(REPO / "workflow" / "scripts")
    stem = tmp_path / "figure"
    papermill.execute_notebook(
        REPO / "notebooks" / f"{notebook}.ipynb",
        tmp_path / "run.ipynb",
        progress_bar=False,
        parameters={"analysis_dir": str(analysis), "task": "tiny", "output_stem": str(stem), **parameters},
    )
    assert says in (tmp_path / "figure.caption.txt").read_text()
    assert stem.with_suffix(".png").stat().st_size > 10_000


def test_tables_and_claims_state_the_numbers(analysis):
    runs = pd.read_parquet(analysis / "runs.parquet")
    table = variant_report.table2(runs)
    assert list(table.id) == [VARIANTS[v].letter for v in VARIANTS] and table.set_index("variant").extra_parameters["context_scale"] == 68
    compression = variant_report.compression_table(pd.read_parquet(analysis / "compression.parquet"))
    assert list(compression.method[:4]) == ["full", "w8", "w8a8", "prune50"] and "backcopy_accuracy" in compression
    text = variant_report.claims({"tiny": analysis})
    assert "## Task tiny (1 seed: 0)" in text and "| (e) context_scale |" in text
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # one seed of 40 steps: nothing massive, no sink, and no comparison stronger than partly
    assert "**not shown at this scale**" in lines["(a)–(c) keep massive activations, (d) and (e) lose them"]
    assert "**holds**" not in text
    for claim in ("(e) converges faster than (a)", "(e) compresses better than (a)", "Sigmoid attention (f) needs no sink"):
        assert "one seed" in lines[claim] or "no sink to replace" in lines[claim] or "**not measured**" in lines[claim], lines[claim]


def test_convergence_is_defined_once_for_the_claims_and_the_figure(analysis):
    curves = pd.read_parquet(analysis / "curves.parquet")
    target, reached, resolution = variant_report.convergence(curves)
    default = curves[curves.variant == "default"].groupby("tokens").val_loss.mean()
    assert target == pytest.approx(default.iloc[-1] + 0.5 * (default.iloc[0] - default.iloc[-1]))
    assert reached["default"][0] <= default.index.max() and resolution == 20 * 8 * 16


def by_hand_block_outputs(folder, inputs) -> list[np.ndarray]:
    """The embedding output and every block's output of a trained (a) or (f) run, from its safetensors weights alone:
    LayerNorm, causal softmax (a) or sigmoid(s − log T) (f) attention, exact GELU MLP, in numpy float64."""
    import json

    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())["model"]
    w = {name: value.astype(np.float64) for name, value in load_file(folder / "model.safetensors").items()}
    heads, ids = config["n_head"], inputs.numpy()
    B, T = ids.shape
    C = w["wte.weight"].shape[1]
    d = C // heads

    def norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        out = (x - mean) / np.sqrt(var + 1e-5) * w[f"{name}.weight"]
        return out + w[f"{name}.bias"] if f"{name}.bias" in w else out

    def linear(x, name):
        out = x @ w[f"{name}.weight"].T
        return out + w[f"{name}.bias"] if f"{name}.bias" in w else out

    causal = np.tril(np.ones((T, T), dtype=bool))
    x = w["wte.weight"][ids] + w["wpe.weight"][:T]
    outputs = [x]
    for layer in range(config["n_layer"]):
        prefix = f"blocks.{layer}"
        q, k, v = (
            t.reshape(B, T, heads, d).transpose(0, 2, 1, 3)
            for t in np.split(linear(norm(x, f"{prefix}.ln_1"), f"{prefix}.attn.c_attn"), 3, -1)
        )
        logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
        if config["attention"] == "sigmoid":
            weights = np.where(causal, 1 / (1 + np.exp(-(logits - math.log(T)))), 0.0)
        else:
            weights = np.exp(np.where(causal, logits, -np.inf) - logits.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
        y = (weights @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + linear(y, f"{prefix}.attn.c_proj")
        hidden = linear(norm(x, f"{prefix}.ln_2"), f"{prefix}.mlp.c_fc")
        gelu = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
        x = x + linear(gelu, f"{prefix}.mlp.c_proj")
        outputs.append(x)
    return outputs


@pytest.mark.parametrize("variant", ["default", "sigmoid"])
def test_the_massive_ratio_is_recomputed_from_the_trained_weights(analysis, variant):
    """The ratio behind the GPT-2 massive claim (variant_report.measures: the largest over layers of the mean top-1 |h|
    over the mean median |h|, per batch over batch × tokens × channels) recomputed from model.safetensors by plain numpy,
    on the same validation batches, against the analysis' layerwise table and the claim's measures."""
    data, _, _, _ = tasks.load_task(TASK)
    batches = training.validation_batches(data, training.schedule(TASK, 0))
    top1, median, lower = {}, {}, {}
    for inputs, _, _ in batches:
        for layer, h in enumerate(by_hand_block_outputs(analysis.parent / variant / "seed0", inputs)):
            magnitude = np.sort(np.abs(h).ravel())
            top1[layer] = top1.get(layer, 0.0) + magnitude[-1] / len(batches)
            median[layer] = median.get(layer, 0.0) + np.median(magnitude) / len(batches)
            lower[layer] = lower.get(layer, 0.0) + magnitude[(len(magnitude) - 1) // 2] / len(batches)
    rows = pd.read_parquet(analysis / "layerwise.parquet").query("variant == @variant and seed == 0").set_index("layer")
    assert sorted(rows.index) == sorted(top1) == [0, 1, 2]
    for layer in top1:
        assert rows.top1[layer] == pytest.approx(top1[layer], rel=1e-4)
        # torch.median of 8 × 16 × 16 values: the lower of the two middle ones, up to 0.2 % under the true median here
        assert rows["median"][layer] == pytest.approx(lower[layer], rel=1e-4)
        assert rows["median"][layer] == pytest.approx(median[layer], rel=5e-3)
    ratio = {layer: top1[layer] / median[layer] for layer in top1}
    measured = variant_report.measures(analysis)[variant]
    assert measured["ratio"][0] == pytest.approx(max(ratio.values()), rel=5e-3)
    assert measured["top1"][0] == pytest.approx(top1[max(ratio, key=ratio.get)], rel=1e-4)
    assert not measured["massive"][0]  # 40 steps of a 16-wide model: nothing near 1000× its median
