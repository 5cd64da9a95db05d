"""Claims that can fail: every verdict on a planted model (positive control), a random one (negative
control) and synthetic GPT-2 analyses, each asserted exactly so that a flipped verdict fails."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import caption_of, capture_everything, measured, planted_capture_of, run_notebook
from planted import (
    CANCEL_STEPS,
    DOWN_COLUMN,
    EARLY_LAYERS,
    EARLY_MLP_LAYER,
    MASSIVE_TOKEN,
    MLP_LAYER,
    OUTPUT_CHANNEL,
    SINK_LAYER,
    early_model,
    planted_model,
    planted_windows,
)
from systematic_outliers import choices, definitions, readers, variant_report, verdict_engine, verdicts
from systematic_outliers.verdict_engine import DOES_NOT_HOLD, HOLDS, NOT_MEASURED, NOT_SHOWN, PARTLY


def verdicts_of(m):
    return {claim.key: finding.verdict for claim, finding in verdicts.judge(m)}


def test_the_planted_model_holds_where_it_was_planted(planted_capture):
    m = measured(planted_capture, "planted")
    assert verdicts_of(m) == {
        "activation": HOLDS,
        "weight": HOLDS,
        "attention": HOLDS,
        "learned_sink": NOT_MEASURED,  # a Llama has none
        "positions": PARTLY,  # initial 67 %, and window 1's trigger at position 9 is neither first nor a delimiter
        "channels": HOLDS,
        "weight_writes": HOLDS,
        "keys_are_tokens": HOLDS,
        "lifetime": PARTLY,  # emerges at layer 3 of 4, not in the first quarter; lasts to the end
        "cancellation": DOES_NOT_HOLD,  # the planted outlier is never cancelled (test_cancellation_*: one that is)
        # a random model around the planted outlier does not lean on it: zeroing it moves the loss by 0.001 nats
        "needed": DOES_NOT_HOLD,
        "value": NOT_MEASURED,
        "sink_needed": DOES_NOT_HOLD,
        # every query puts all its attention on the planted sink, the only attention-outlier layer: the share is the same
        # constant (1) for every head and query, so the correlation is undefined there. This used to read "does not hold"
        # (0 of 1 layers negative), grading an undefined measurement as a finding: it is not measured, and says why
        "scaling_factor": NOT_MEASURED,
        "small_values": PARTLY,  # its value norm is 0.6 × the median key's
        # keeping the planted token restores per-tensor 8-bit activations (100 %; random tokens ≤ 6 %)
        "quantization_activations": HOLDS,
        # 8-bit weights cost this random model 0.0003 nats, below the floor: nothing for the planted column to explain
        "quantization_weights": DOES_NOT_HOLD,
    }
    findings = {claim.key: finding for claim, finding in verdicts.judge(m)}
    assert f"column {DOWN_COLUMN} of layer {MLP_LAYER + 1}" in findings["weight"].measured
    assert findings["channels"].value == str(OUTPUT_CHANNEL)
    assert findings["cancellation"].measured.startswith(f"channel {OUTPUT_CHANNEL}: no layer from its peak at layer ")
    assert "lowers its mean |h| by ≥ 10%" in findings["cancellation"].measured
    assert findings["scaling_factor"].measured == (
        "not measured: 1 of 1 attention-outlier layers have no correlation defined in two windows or more (where it is undefined, "
        "the share on the outlier keys, or the head output norm, is the same for every head and query: a constant has no rank "
        "correlation)"
    )
    assert m.interventions.scaling[m.interventions.scaling.layer == SINK_LAYER].mean_share.eq(1.0).all()
    assert m.table1["rows_on_residual_outlier_channels"] == m.table1["rows_written"] == 1
    assert m.table1["residual_outlier_channels"] == str(OUTPUT_CHANNEL) and m.table1["tokens_that_are_outlier_keys"] == 1.0


def test_an_outlier_written_early_and_kept_to_the_end_lives_from_an_early_layer_to_a_late_one(tmp_path_factory, random_capture):
    """The lifetime claim for the right reason: the planted outlier written by the MLP of layer 2 of 8 and never
    cancelled holds; the random control has no outlier tokens (not measured); the 4-layer planted model, whose outlier
    emerges at layer 3 of 4, only lasts (partly: test_the_planted_model_holds_where_it_was_planted)."""
    captured = planted_capture_of(tmp_path_factory, "early", early_model(), planted_windows)
    findings = {claim.key: finding for claim, finding in verdicts.judge(measured(captured, "early"))}
    assert findings["lifetime"].verdict == HOLDS
    assert findings["lifetime"].measured.startswith(
        f"they emerge at layer {EARLY_MLP_LAYER + 1} of {EARLY_LAYERS} (layer {EARLY_MLP_LAYER + 1} is the first where 3 of 3 "
        f"windows have an outlier token) and are in most windows until layer {EARLY_LAYERS}"
    )
    assert findings["activation"].verdict == HOLDS and findings["channels"].value == str(OUTPUT_CHANNEL)
    control = {claim.key: finding.verdict for claim, finding in verdicts.judge(measured(random_capture, "random"))}
    assert control["lifetime"] == NOT_MEASURED


def test_the_random_model_has_no_outlier_and_every_existence_claim_fails(random_capture):
    m = measured(random_capture, "random")
    assert verdicts_of(m) == {
        "activation": DOES_NOT_HOLD,
        "weight": DOES_NOT_HOLD,
        "attention": DOES_NOT_HOLD,
        "learned_sink": NOT_MEASURED,
        # nothing to locate, align or cancel
        "positions": NOT_MEASURED,
        "channels": NOT_MEASURED,
        "lifetime": NOT_MEASURED,
        "weight_writes": NOT_MEASURED,
        "keys_are_tokens": NOT_MEASURED,
        "cancellation": NOT_MEASURED,
        "needed": DOES_NOT_HOLD,
        "value": NOT_MEASURED,
        "sink_needed": DOES_NOT_HOLD,
        "scaling_factor": DOES_NOT_HOLD,
        "small_values": DOES_NOT_HOLD,
        # 8-bit quantization costs the random model next to nothing, and there is nothing to keep
        "quantization_activations": DOES_NOT_HOLD,
        "quantization_weights": DOES_NOT_HOLD,
    }
    assert not m.chosen.emergence.found and "no layer has an outlier token in 50% of the 3 windows; shown: layer" in m.chosen.emergence.why
    assert m.evidence.outliers.empty and choices.prompt_outlier_tokens(m.prompt) == []
    text = verdicts.claims_file(m)
    assert text.count("**does not hold**") == 3 + 4 + 2 and text.count("**not measured**") == 7 + 1


def test_table1_and_the_summary_keep_a_model_without_outliers_beside_a_planted_one(planted_capture, random_capture):
    both = [measured(planted_capture, "planted"), measured(random_capture, "random")]
    table = pd.DataFrame([m.table1 for m in both]).set_index("model")
    assert table.row_share["planted"] == 1.0 and np.isnan(table.row_share["random"])
    assert table.activation_outlier_tokens["random"] == 0 and table.weight_outlier_columns["random"] == 0
    assert "| random | 0 | 0 | – |" in verdicts.alignment_markdown(table.reset_index())
    scorecard, atlas, text = verdicts.summary(both)
    assert len(scorecard) == 2 * len(verdicts.all_claims()) and set(scorecard.model) == {"planted", "random"}
    rows = atlas.set_index("model")
    assert rows.emergence_layer["planted"] == str(MLP_LAYER + 1) and rows.emergence_layer["random"] == "none"
    assert rows.outlier_channels["planted"] == str(OUTPUT_CHANNEL) and rows.weight_outliers["random"] == "none"
    assert rows.disappearance_layer["planted"] == "never" and rows.first_sink_layer["paper: LLaMA-2-7B"] == "3"
    assert rows.channel_lives["planted"].startswith(f"channel {OUTPUT_CHANNEL} appears at layer {MLP_LAYER + 1} (")
    assert rows.channel_lives["planted"].endswith("massive to the last layer") and rows.channel_lives["random"] == "none"
    paper = scorecard[scorecard.claim == "… in a few fixed channels"].paper_llama2_7b.iloc[0]
    assert paper == "1415, 2533 (Figs 1c, 3c)" and "## Atlas" in text
    # the field's metrics: the planted sink layer's heads put most of the first 48 queries on the first token in two of
    # three windows (the third has the trigger at position 9); the random model's heads spread over the keys
    assert rows["sink_rate_0.3"]["planted"] == "25%" and rows["sink_rate_0.3"]["random"] == "0%"  # one layer of four
    # one massive entry among 48 × 32 from the planted layer on: the kurtosis nears the entry count; a Gaussian's is 3
    assert rows.kurtosis_max["planted"].startswith("1,53") and rows.kurtosis_max["random"].startswith("3 at layer")


LLM_NOTEBOOKS = [
    ("fig01_existence", {}),
    ("fig03_activation_positions", {}),
    ("fig04_down_proj_positions", {}),
    ("fig05_weight_positions", {}),
    ("fig06_attention_positions", {}),
    ("fig08_spread", {}),
    ("lifecycle_mlp", {"stage": "emergence"}),
    ("lifecycle_mlp", {"stage": "disappearance"}),
    ("fig02_layer", {}),
    ("interventions", {}),
    ("scaling_factor", {}),
]


@pytest.mark.parametrize("notebook, parameters", LLM_NOTEBOOKS)
def test_every_figure_of_a_model_without_outliers_is_drawn_and_says_so(random_capture, tmp_path, notebook, parameters):
    stem = tmp_path / "figure"
    run_notebook(notebook, tmp_path, **random_capture, model="random", output_stem=str(stem), **parameters)
    assert stem.with_suffix(".png").stat().st_size > 10_000
    caption = caption_of(tmp_path, "figure")
    said = {
        "fig01_existence": "No activation outlier was found in the corpus",
        "fig03_activation_positions": "no layer has an outlier token",
        "fig04_down_proj_positions": "the prompt's outlier tokens (none)",
        "fig05_weight_positions": "stand out in layers none",
        "fig06_attention_positions": "no layer has outlier keys",
        "fig08_spread": "No token of the prompt is an outlier",
        "lifecycle_mlp": "No token of the prompt is an outlier",
        "fig02_layer": "or held from there to its disappearance) and the sink ablation",
        "interventions": "no activation outlier",
        "scaling_factor": "the first, middle and last of the 4 layers (no attention-outlier layer)",
    }[notebook]
    assert said in caption


def test_the_dump_keeps_every_channel_a_figure_ticks_beyond_any_fixed_budget(tmp_path):
    """Six intermediate channels of similar strength at the outlier token (the Fig 9 failure: the
    notebook ticked more channels than the dump kept)."""
    model = planted_model()
    mlp = model.model.layers[MLP_LAYER].mlp
    strong = [5, 11, 23, DOWN_COLUMN, 44, 58]
    with torch.no_grad():
        for index, channel in enumerate(strong):
            mlp.gate_proj.weight[channel, 3] = mlp.up_proj.weight[channel, 3] = 3.0 - 0.1 * index
            mlp.down_proj.weight[OUTPUT_CHANNEL, channel] = 40.0 / len(strong)  # the same total write as the planted model
    capture = capture_everything(model, planted_windows(tmp_path), [MASSIVE_TOKEN, 5, 8, 30, 2, 17], tmp_path / "capture")
    prompt, _ = readers.read_prompt(capture["prompt_path"], ("down_proj_input",))
    tokens = choices.prompt_outlier_tokens(prompt)
    ticked = choices.ticked_channels(prompt[f"down_proj_input.{MLP_LAYER}"], tokens)
    assert tokens == [0] and ticked == strong
    for layer in range(4):
        kept = set(prompt[f"weight_channels.{layer}"].tolist())
        assert set(choices.ticked_channels(prompt[f"down_proj_input.{layer}"], tokens)) <= kept
    for stage in ("emergence", "disappearance"):
        run_notebook(
            "lifecycle_mlp",
            tmp_path,
            **capture,
            model="many",
            output_stem=str(tmp_path / stage),
            stage=stage,
            emergence_layer=MLP_LAYER,
            disappearance_layer=MLP_LAYER,
        )
        assert f"Intermediate channels {', '.join(map(str, strong))} (" in caption_of(tmp_path, stage)


# ---------------------------------------------------------------------------------------------
# The engine and the GPT-2 claims on synthetic measures.


def test_a_difference_counts_only_beyond_the_seed_spread():
    compare = verdict_engine.compare_over_seeds
    assert compare([1.0, 1.1, 1.2], [2.0, 2.1, 2.2], lower_is_better=True, margin=0.1).verdict == HOLDS
    assert compare([2.0, 2.1, 2.2], [1.0, 1.1, 1.2], lower_is_better=True, margin=0.1).verdict == DOES_NOT_HOLD
    assert compare([1.0, 1.5, 2.0], [1.2, 1.7, 2.2], lower_is_better=True, margin=0.1).verdict == NOT_SHOWN  # within the spread
    assert compare([1.0], [2.0], lower_is_better=True, margin=0.1).verdict == PARTLY  # one seed: at most partly
    assert compare([1.0], [1.05], lower_is_better=True, margin=0.1).verdict == NOT_SHOWN
    assert compare([1.0, 1.0], [1.0005, 1.0005], lower_is_better=True, margin=0.0, floor=1e-3).verdict == NOT_SHOWN
    with pytest.raises(ValueError, match="verdict 'maybe'"):
        verdict_engine.Finding("x", "maybe")


PAPER_SIX = ("default", "fixed_bias", "context_bias", "attention_bias", "context_scale", "sigmoid")


def synthetic(ratio=None, sink=None, tokens=None, damage=None, seeds=(0, 1, 2), variants=PAPER_SIX, sink_rate=None):
    """Per-variant measures as variant_report.measures returns them, with chosen values."""
    ratio, sink, tokens, damage, sink_rate = ratio or {}, sink or {}, tokens or {}, damage or {}, sink_rate or {}
    series = lambda values: pd.Series(values if np.ndim(values) else [values] * len(seeds), index=list(seeds), dtype=float)  # noqa: E731
    out = variant_report.Measures({}, variant_report.Convergence(target=2.0, resolution=1000.0))
    for variant in variants:
        r = ratio.get(variant, 30.0)
        top1 = series(3000.0)  # well over Sun's floor of 100: only the ratio decides
        out[variant] = {
            "ratio": series(r),
            "top1": top1,
            "massive": pd.Series([bool(definitions.is_massive(t, t / r)) for t in top1], index=list(seeds)),
            "layer": 1,
            "sink": series(sink.get(variant, 0.8)),
            "extra": series(0.0),
            "scale": series(1.0),
            "effective": series(sink.get(variant, 0.8)),
            "value": series(0.1),
            "loss": series(1.0),
            "damage": {method: series(damage.get(variant, 0.001)) for method in ("w8", "w8a8", "prune50")},
            "tokens": series(tokens.get(variant, 10_000.0)),
            "sink_rate_0.3": series(sink_rate.get(variant, 0.5)),
            "sink_rate_0.2": series(sink_rate.get(variant, 0.5)),
            "kurtosis": series(5.0),
            "kurtosis_max": series(8.0),
        }
    return out


def gpt2_verdicts(m):
    return {claim.key: finding.verdict for claim, finding in variant_report.judge(m)}


def test_gpt2_ratios_of_thirty_are_not_massive_whatever_the_ordering():
    m = synthetic(ratio={"default": 34.0, "fixed_bias": 30.0, "context_bias": 27.0, "attention_bias": 8.0, "context_scale": 6.0})
    assert gpt2_verdicts(m)["massive"] == NOT_SHOWN
    m = synthetic(ratio={"default": 3000.0, "fixed_bias": 2500.0, "context_bias": 4000.0, "attention_bias": 8.0, "context_scale": 6.0})
    assert gpt2_verdicts(m)["massive"] == HOLDS
    m = synthetic(ratio={"default": 3000.0, "fixed_bias": 2500.0, "context_bias": 4000.0, "attention_bias": 8.0, "context_scale": 2000.0})
    assert gpt2_verdicts(m)["massive"] == DOES_NOT_HOLD
    m = synthetic(ratio={"default": 3000.0, "fixed_bias": 20.0, "context_bias": 4000.0, "attention_bias": 8.0, "context_scale": 6.0})
    assert gpt2_verdicts(m)["massive"] == PARTLY  # (b) lacks them
    m = synthetic(
        ratio={"default": 3000.0, "fixed_bias": 2500.0, "context_bias": 4000.0, "attention_bias": 8.0, "context_scale": 6.0}, seeds=(0,)
    )
    assert gpt2_verdicts(m)["massive"] == PARTLY  # one seed


def test_gpt2_convergence_and_compression_need_a_difference_beyond_the_seeds():
    equal = synthetic(tokens={"default": [10_000, 14_000, 12_000], "context_scale": [11_000, 13_000, 12_000]})
    assert gpt2_verdicts(equal)["convergence"] == NOT_SHOWN
    faster = synthetic(tokens={"default": [20_000, 22_000, 21_000], "context_scale": [10_000, 11_000, 12_000]})
    assert gpt2_verdicts(faster)["convergence"] == HOLDS
    slower = synthetic(tokens={"default": [10_000, 11_000, 12_000], "context_scale": [20_000, 22_000, 21_000]})
    assert gpt2_verdicts(slower)["convergence"] == DOES_NOT_HOLD
    tiny = synthetic(damage={"default": [1e-4, 2e-4, 1.5e-4], "context_scale": [0.5e-4, 0.6e-4, 0.4e-4]})
    assert gpt2_verdicts(tiny)["compression"] == NOT_SHOWN  # below the 1e-3 nats floor
    better = synthetic(damage={"default": [0.30, 0.32, 0.31], "context_scale": [0.01, 0.02, 0.015]})
    assert gpt2_verdicts(better)["compression"] == HOLDS
    worse = synthetic(damage={"default": [0.01, 0.02, 0.015], "context_scale": [0.30, 0.32, 0.31]})
    assert gpt2_verdicts(worse)["compression"] == DOES_NOT_HOLD
    one_seed = synthetic(damage={"default": 0.3, "context_scale": 0.01}, seeds=(0,))
    assert gpt2_verdicts(one_seed)["compression"] == PARTLY


def test_gpt2_sink_claims_need_a_sink_to_replace():
    no_sink = synthetic(sink={"default": 0.2})
    assert {k: v for k, v in gpt2_verdicts(no_sink).items() if k in ("attention_bias", "context_scale", "sigmoid")} == {
        "attention_bias": NOT_SHOWN,
        "context_scale": NOT_SHOWN,
        "sigmoid": NOT_SHOWN,
    }
    m = synthetic(sink={"default": 0.9, "context_scale": 0.05, "sigmoid": 0.95})
    m["attention_bias"]["extra"] = pd.Series([0.8, 0.85, 0.9], index=[0, 1, 2])
    m["attention_bias"]["sink"] = pd.Series([0.05, 0.1, 0.08], index=[0, 1, 2])
    assert gpt2_verdicts(m)["attention_bias"] == HOLDS
    assert gpt2_verdicts(m)["context_scale"] == HOLDS and gpt2_verdicts(m)["sigmoid"] == DOES_NOT_HOLD
    m["attention_bias"]["extra"], m["attention_bias"]["sink"] = m["attention_bias"]["sink"], m["attention_bias"]["extra"]
    m["context_scale"]["effective"] = pd.Series([0.95, 0.97, 0.99], index=[0, 1, 2])
    assert gpt2_verdicts(m)["attention_bias"] == DOES_NOT_HOLD and gpt2_verdicts(m)["context_scale"] == DOES_NOT_HOLD


ZOO = ("softmax_one", "learned_sink", "gated", "clipped_softmax", "softpick")


@pytest.mark.parametrize("variant", ZOO)
def test_each_zoo_claim_reaches_every_verdict(variant):
    """Each sink-free mechanism against (a): every claim flips with the measurement."""

    def verdict(claim, **measures):
        m = synthetic(variants=PAPER_SIX + (variant,), **measures)
        return gpt2_verdicts(m)[f"{variant}.{claim}"]

    assert verdict("sink", sink={"default": 0.9, variant: 0.05}) == HOLDS
    assert verdict("sink", sink={"default": 0.8, variant: 0.99}) == DOES_NOT_HOLD
    assert verdict("sink", sink={"default": [0.7, 0.8, 0.9], variant: [0.7, 0.75, 0.8]}) == NOT_SHOWN  # within the seed spread
    assert verdict("sink", sink={"default": 0.2, variant: 0.05}) == NOT_SHOWN  # (a) has no sink to remove
    assert verdict("sink", sink={"default": 0.9, variant: 0.05}, seeds=(0,)) == PARTLY

    assert verdict("massive", ratio={"default": 3000.0, variant: 6.0}) == HOLDS
    assert verdict("massive", ratio={"default": 3000.0, variant: 2000.0}) == DOES_NOT_HOLD
    assert verdict("massive", ratio={"default": 30.0, variant: 6.0}) == NOT_SHOWN  # (a) has none at this scale
    assert verdict("massive", ratio={"default": 3000.0, variant: 6.0}, seeds=(0,)) == PARTLY

    assert verdict("convergence", tokens={"default": [10_000, 14_000, 12_000], variant: [11_000, 13_000, 12_000]}) == HOLDS  # no slower
    assert verdict("convergence", tokens={"default": [10_000, 11_000, 12_000], variant: [20_000, 22_000, 21_000]}) == DOES_NOT_HOLD
    assert verdict("convergence", tokens={"default": 10_000, variant: 10_000}, seeds=(0,)) == PARTLY

    assert verdict("compression", damage={"default": [0.30, 0.32, 0.31], variant: [0.01, 0.02, 0.015]}) == HOLDS
    assert verdict("compression", damage={"default": [0.01, 0.02, 0.015], variant: [0.30, 0.32, 0.31]}) == DOES_NOT_HOLD
    assert verdict("compression", damage={"default": [1e-4, 2e-4, 1.5e-4], variant: [0.5e-4, 0.6e-4, 0.4e-4]}) == NOT_SHOWN


def test_zoo_claims_appear_only_for_trained_zoo_variants():
    assert not any("." in key for key in gpt2_verdicts(synthetic()))
    keys = gpt2_verdicts(synthetic(variants=PAPER_SIX + ("softpick",)))
    assert [k for k in keys if k.startswith("softpick.")] == [
        "softpick.sink",
        "softpick.massive",
        "softpick.convergence",
        "softpick.compression",
    ]


def test_ranking_orders_by_the_means_and_compares_with_the_softpick_paper():
    agreeing = {"default": 0.9, "softmax_one": 0.6, "learned_sink": 0.4, "gated": 0.2, "softpick": 0.0}
    m = synthetic(variants=("default",) + tuple(agreeing)[1:], sink_rate=agreeing)
    table = variant_report.ranking(m).set_index("variant")
    assert table["sink_rate_0.3_rank"].to_dict() == {"default": 5, "softmax_one": 4, "learned_sink": 3, "gated": 2, "softpick": 1}
    assert table.softpick_sink_rate["default"] == pytest.approx(0.349)
    text = variant_report.ordering_text(table.reset_index())
    assert "here (k) < (i) < (h) < (g) < (a); Softpick paper (k) < (i) < (h) < (g) < (a). Of the 10 pairs the paper orders, 10 are" in text
    swapped = agreeing | {"softpick": 0.95}  # softpick with the most sinks here
    text = variant_report.ordering_text(variant_report.ranking(synthetic(variants=tuple(agreeing), sink_rate=swapped)))
    assert "here (i) < (h) < (g) < (a) < (k)" in text and "6 are in the same order here, 4 in the opposite one and 0 tied" in text
    tied = {variant: 0.5 for variant in agreeing}  # the testbed's two (layer, head) pairs give coarse rates
    text = variant_report.ordering_text(variant_report.ranking(synthetic(variants=tuple(agreeing), sink_rate=tied)))
    assert "0 are in the same order here, 0 in the opposite one and 10 tied here" in text
    assert "| (k) softpick | 0.95 (0.95–0.95) [5] |" in "\n".join(
        variant_report.ranking_markdown(variant_report.ranking(synthetic(variants=tuple(agreeing), sink_rate=swapped)))
    )


def test_a_hybrids_attention_claim_counts_its_softmax_layers_only(planted_capture):
    """The planted model as a hybrid whose first layer has no softmax attention (a state-space mixer, as
    Jamba's): the attention claim's scorecard value gives the share over the 3 layers it counted, not over all 4."""
    from copy import deepcopy

    m = measured(planted_capture, "planted")
    attention = {claim.key: finding for claim, finding in verdicts.judge(m)}["attention"]
    found = len(choices.attention_outlier_layers(m.evidence.attention_layers, m.evidence.windows))
    assert m.layers == 4 and attention.value.startswith(f"{found} of 4 layers, top-1 ")  # every layer attends: as before
    hybrid = deepcopy(m)
    hybrid.evidence.attention_layers = m.evidence.attention_layers[m.evidence.attention_layers.layer > 0]
    assert choices.softmax_layers(hybrid.evidence.attention_layers) == [1, 2, 3]
    found = len(choices.attention_outlier_layers(hybrid.evidence.attention_layers, m.evidence.windows))
    attention = {claim.key: finding for claim, finding in verdicts.judge(hybrid)}["attention"]
    assert found > 0 and attention.value.startswith(f"{found} of 3 layers with softmax attention, top-1 ")
    assert f"at {found} of 3 layers with softmax attention (of 4)" in attention.measured


def test_every_llm_verdict_is_reachable(planted_capture):
    """The planted measurements, edited one way at a time: each claim reaches holds, partly and does not hold
    (the intervention claims: test_interventions; cancellation: test_cancellation_*)."""
    from copy import deepcopy
    from dataclasses import replace

    base = measured(planted_capture, "planted")

    def judged(key, **edits):
        m = deepcopy(base)
        for name, value in edits.items():
            setattr(m, name, value)
        return next(finding for claim, finding in verdicts.judge(m) if claim.key == key)

    curves = base.chosen.curves
    small = curves.assign(top1=150.0, median=1.0, ratio=150.0)  # > 100 and 150× the median: short of massive
    assert judged("activation", chosen=replace(base.chosen, curves=small, peak=choices.peak_layer(small))).verdict == PARTLY

    # lifetime: emerging at the first layer and lasting holds; emerging late and gone at once does not
    early = replace(base.chosen, emergence=choices.Choice(0, "set here"))
    assert judged("lifetime", chosen=early).verdict == HOLDS
    evidence = deepcopy(base.evidence)
    evidence.outliers = evidence.outliers[evidence.outliers.layer == MLP_LAYER]
    base_layers = base.record["layers"]
    record = dict(base.record, layers=8)  # the same layers, as if the model were twice as deep
    assert judged("lifetime", evidence=evidence, record=record).verdict == DOES_NOT_HOLD and base_layers == 4

    # positions: the initial token and a delimiter; or mostly ordinary tokens
    tokens = base.chosen.outlier_tokens.copy()
    at_layer = tokens.layer == MLP_LAYER
    tokens.loc[at_layer & (tokens.token_class == "other"), "token_class"] = "strong_delimiter"
    assert judged("positions", chosen=replace(base.chosen, outlier_tokens=tokens)).verdict == HOLDS
    tokens.loc[at_layer, "token_class"] = "other"
    assert judged("positions", chosen=replace(base.chosen, outlier_tokens=tokens)).verdict == DOES_NOT_HOLD

    # the alignments, through Table 1's shares
    for shares, verdict in (((1.0, 0.3), PARTLY), ((0.3, 0.2), DOES_NOT_HOLD), ((0.6, 0.6), PARTLY)):
        table1 = dict(base.table1, tokens_that_are_outlier_keys=shares[0], keys_that_are_outlier_tokens=shares[1])
        assert judged("keys_are_tokens", table1=table1).verdict == verdict
    table1 = dict(base.table1, rows_on_residual_outlier_channels=0, row_share=0.0)
    assert judged("weight_writes", table1=table1).verdict == DOES_NOT_HOLD
    assert judged("weight_writes", table1=dict(base.table1, row_share=0.6)).verdict == PARTLY

    # weight: the largest W_down column ratio at 3× and 1× the median over all matrices (holds from 5×)
    reference = choices.reference_median(base.evidence.weights)
    for factor, verdict in ((3.0, PARTLY), (1.0, DOES_NOT_HOLD)):
        evidence = deepcopy(base.evidence)
        evidence.weights.loc[evidence.weights.mlp_down, "column_ratio"] = factor * reference
        assert judged("weight", evidence=evidence).verdict == verdict

    # attention: the planted sink layers among many more layers without outlier keys (holds from a quarter)
    quiet = base.evidence.attention_layers.assign(outlier_keys=0, top1=1.0)
    deeper = deepcopy(base.evidence)
    deeper.attention_layers = pd.concat(
        [base.evidence.attention_layers] + [quiet.assign(layer=quiet.layer + 4 * (i + 1)) for i in range(4)], ignore_index=True
    )
    assert judged("attention", evidence=deeper).verdict == PARTLY
    deeper.attention_layers = deeper.attention_layers.assign(outlier_keys=0)
    assert judged("attention", evidence=deeper).verdict == DOES_NOT_HOLD

    # channels: the outlier tokens' largest channels spread over 6, then 12 channels (the top 4 carry 67 %, 33 %)
    tokens = base.chosen.outlier_tokens
    assert len(tokens) == 6
    spread = tokens.assign(channel=range(len(tokens)))
    assert judged("channels", chosen=replace(base.chosen, outlier_tokens=spread)).verdict == PARTLY
    wider = pd.concat([tokens, tokens], ignore_index=True).assign(channel=range(2 * len(tokens)))
    assert judged("channels", chosen=replace(base.chosen, outlier_tokens=wider)).verdict == DOES_NOT_HOLD


# ---------------------------------------------------------------------------------------------
# Cancellation, per channel over the layers that take it down (planted.cancelled_model).


def cancellation_of(m):
    return next(finding for claim, finding in verdicts.judge(m) if claim.key == "cancellation")


def test_cancellation_over_two_layers_by_mlps_writing_against_the_outlier_holds(cancelled_capture):
    """−48 % at one layer, −65 % of the rest at the next (−82 % over two), each by its MLP: the old reading, the single layer
    where the mean top-1 |h| falls most, saw the first layer's −48 % alone and said "does not hold"."""
    m = measured(cancelled_capture, "cancelled")
    (life,) = m.chosen.channels
    down = life.take_down()
    assert (life.channel, life.emergence, life.peak) == (OUTPUT_CHANNEL, MLP_LAYER, MLP_LAYER)
    assert down.layers == tuple(CANCEL_STEPS) and down.steps == pytest.approx(list(CANCEL_STEPS.values()), abs=0.01)
    assert down.fall == pytest.approx(1 - 0.52 * 0.35, abs=0.01) and down.against == pytest.approx(1.0, abs=0.01)
    finding = cancellation_of(m)
    assert finding.verdict == HOLDS
    first, second = (layer + 1 for layer in CANCEL_STEPS)
    assert (
        f"channel {OUTPUT_CHANNEL}: |h| 11,5" in finding.measured
        and f"(−82%) over layers {first}–{second} (−48%, −65%)" in finding.measured
    )
    assert (
        finding.measured.endswith(": 100% of the fall against it")
        and finding.value == f"channel {OUTPUT_CHANNEL}: layers 4–5, −82%, MLP 100%"
    )
    layer = m.chosen.disappearance.value  # what the claim read before: the largest fall of the mean top-1 |h|, at one layer
    assert layer == first - 1 and 1 - m.chosen.curves.top1[layer] / m.chosen.curves.top1[layer - 1] == pytest.approx(0.48, abs=0.01)


def test_cancellation_does_not_hold_for_an_outlier_kept_to_the_end(kept_capture):
    """The negative control: the same model without the cancelling MLPs keeps its outlier to the last layer."""
    m = measured(kept_capture, "kept")
    (life,) = m.chosen.channels
    assert life.take_down() is None and life.disappearance is None
    finding = cancellation_of(m)
    assert finding.verdict == DOES_NOT_HOLD and finding.value == f"channel {OUTPUT_CHANNEL}: not taken down"
    assert finding.measured.startswith(f"channel {OUTPUT_CHANNEL}: no layer from its peak at layer {MLP_LAYER + 1} to its last layer, 6 ")


def test_cancellation_without_the_mlps_doing_or_with_a_small_fall_does_not_hold(cancelled_capture):
    """The cancelled outlier's life edited: the same fall with no MLP writing against it (as if attention or a norm took
    it down) is partly; a fall of 30 % per layer by the MLPs (−51 % over two) holds, of 20 % per layer (−36 %) does not;
    a channel kept beside a cancelled one gives partly; one massive in a few windows only is not judged; none: not measured."""
    from copy import deepcopy
    from dataclasses import replace

    base = measured(cancelled_capture, "cancelled")
    (life,) = base.chosen.channels

    def judged(*lives):
        m = deepcopy(base)
        m.chosen = replace(m.chosen, channels=list(lives))
        return cancellation_of(m)

    faded = replace(life, writes={layer: 0.0 for layer in life.writes})
    finding = judged(faded)
    assert finding.verdict == PARTLY and ": 0% of the fall against it" in finding.measured

    peak = life.magnitude[MLP_LAYER]
    for step, verdict in ((0.3, HOLDS), (0.2, DOES_NOT_HOLD)):
        left = {MLP_LAYER + 1: (1 - step) * peak, MLP_LAYER + 2: (1 - step) ** 2 * peak}
        magnitude = {layer: left.get(layer, left[MLP_LAYER + 2] if layer > MLP_LAYER else value) for layer, value in life.magnitude.items()}
        writes = dict(life.writes) | {MLP_LAYER + 1: left[MLP_LAYER + 1] - peak, MLP_LAYER + 2: left[MLP_LAYER + 2] - left[MLP_LAYER + 1]}
        shallow = replace(life, magnitude=magnitude, writes=writes)
        assert shallow.take_down().layers == tuple(CANCEL_STEPS)
        assert judged(shallow).verdict == verdict

    kept = replace(life, channel=7, magnitude={layer: peak for layer in life.magnitude})
    assert judged(life, kept).verdict == PARTLY
    few = replace(kept, windows=(1, 3))  # massive in one window of three: said, not judged
    finding = judged(life, few)
    assert finding.verdict == HOLDS and finding.measured.endswith("; not judged, massive in a few windows only: channel 7 (1 of 3)")
    finding = judged()
    assert finding.verdict == NOT_MEASURED and "no channel to follow" in finding.measured


# ---------------------------------------------------------------------------------------------
# Positions (planted_positions): the outlier at the first token and at delimiters, or at an ordinary token.


@pytest.fixture(scope="module")
def delimiter_capture(tmp_path_factory):
    """The planted model whose trigger is the first token and the windows' and prompt's '.' and '\\n'."""
    from planted_positions import PROMPT, delimiter_model, delimiter_windows

    folder = tmp_path_factory.mktemp("delimiters")
    return capture_everything(delimiter_model(), delimiter_windows(folder), PROMPT, folder)


@pytest.fixture(scope="module")
def middle_capture(tmp_path_factory):
    """Its negative control: the planted model with its trigger at an ordinary token in the middle of each window."""
    from planted import planted_model
    from planted_positions import ORDINARY_PROMPT, middle_windows

    folder = tmp_path_factory.mktemp("middle")
    return capture_everything(planted_model(), middle_windows(folder), ORDINARY_PROMPT, folder)


def finding_of(m, key):
    return next(finding for claim, finding in verdicts.judge(m) if claim.key == key)


def test_outliers_at_the_first_token_and_at_delimiters_hold_the_positions_claim(delimiter_capture):
    """3 windows: the first token of each, '.' at 30 and '\\n' at 70 of window 0, '.' at 50 of window 1, '.' at 20 and 100 of
    window 2: 3 initial tokens, 4 '.' (strong delimiters) and one '\\n' (weak semantic: stripped, it is the empty token, as in
    the official code; Llama's tokenizer spells it <0x0A>, a strong delimiter), every one an outlier at the planted layer."""
    from planted_positions import DELIMITERS

    m = measured(delimiter_capture, "delimiters")
    assert m.chosen.emergence.value == MLP_LAYER
    at = m.chosen.outlier_tokens[m.chosen.outlier_tokens.layer == MLP_LAYER]
    placed = {(w, 0) for w in DELIMITERS} | {(w, p) for w, positions in DELIMITERS.items() for p in positions}
    assert set(zip(at.window, at.position)) == placed and len(at) == 8
    finding = finding_of(m, "positions")
    assert finding.verdict == HOLDS
    split = "strong delimiter 50.0%, initial 37.5%, weak semantic 12.5%"
    assert finding.value == split and finding.measured == f"8 outlier tokens at the emergence layer {MLP_LAYER + 1}: {split}"
    assert choices.prompt_outlier_tokens(m.prompt) == [0, 2, 4]  # the prompt's first token, its '.' and its '\n'
    assert m.tokens[2] == "." and m.tokens[4] == "\\n"  # as the dump writes a newline


def test_an_outlier_at_an_ordinary_mid_window_token_does_not_hold_the_positions_claim(middle_capture):
    from planted_positions import MIDDLE

    m = measured(middle_capture, "middle")
    assert m.chosen.emergence.value == MLP_LAYER
    at = m.chosen.outlier_tokens[m.chosen.outlier_tokens.layer == MLP_LAYER]
    assert set(zip(at.window, at.position)) == {(w, MIDDLE) for w in range(3)}
    finding = finding_of(m, "positions")
    assert finding.verdict == DOES_NOT_HOLD
    assert finding.measured == f"3 outlier tokens at the emergence layer {MLP_LAYER + 1}: other 100.0%; not both kinds"
    assert choices.prompt_outlier_tokens(m.prompt) == [2]


# ---------------------------------------------------------------------------------------------
# The sigmoid claim through variant_report.measures, from analysis tables written as variant_analysis writes them.


def sigmoid_analysis(folder, at_rest: dict[str, list[float]]):
    """An analysis folder with (a) and (f) over seeds 0–2: `at_rest[variant]` is the first-key weight per seed at block
    1's non-trigger positions (where the head should do nothing); 0 at its trigger positions, 0.3 at block 2's."""
    rows = {name: [] for name in ("layerwise", "heads", "sink", "runs", "compression", "curves")}
    for variant, weights in at_rest.items():
        for seed, weight in enumerate(weights):
            rows["runs"].append({"variant": variant, "seed": seed, "val_loss": 2.0})
            rows["compression"] += [{"variant": variant, "seed": seed, "method": m, "val_loss": 2.0} for m in definitions.METHODS]
            rows["curves"] += [{"variant": variant, "seed": seed, "tokens": t, "val_loss": 3.0 - t / 1000} for t in (0, 1000)]
            for layer in (0, 1, 2):
                rows["layerwise"].append({"variant": variant, "seed": seed, "layer": layer, "top1": 5.0, "median": 0.5, "kurtosis": 3.0})
            for layer, rest in ((1, weight), (2, 0.3)):
                rows["heads"] += [{"variant": variant, "seed": seed, "layer": layer, "head": h, "first_key": rest} for h in (0, 1)]
                for positions, first in (("non_trigger", rest), ("trigger", 0.0 if layer == 1 else 0.3)):
                    rows["sink"].append(
                        {
                            "variant": variant,
                            "seed": seed,
                            "layer": layer,
                            "positions": positions,
                            "first_key": first,
                            "extra_key": np.nan,
                            "scale": np.nan,
                            "first_value": 0.5,
                        }
                    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in rows.items():
        pd.DataFrame(table).to_parquet(folder / f"{name}.parquet")
    return variant_report.measures(folder)


def sigmoid_finding(m):
    return next(finding for claim, finding in variant_report.judge(m) if claim.key == "sigmoid")


@pytest.mark.parametrize(
    ("sigmoid", "verdict", "says"),
    [
        ([0.05, 0.04, 0.06], HOLDS, "(f) 0.05 (0.04–0.06) at block 1, (a) 0.90 (0.88–0.92)"),
        ([0.95, 0.97, 0.93], DOES_NOT_HOLD, "(f) 0.95 (0.93–0.97) at block 1, (a) 0.90 (0.88–0.92)"),
        ([0.85, 0.95, 0.90], NOT_SHOWN, "(f) 0.90 (0.85–0.95) at block 1, (a) 0.90 (0.88–0.92)"),
    ],
    ids=["no sink under sigmoid attention", "a sink under sigmoid attention", "within the seeds"],
)
def test_the_sigmoid_claim_reaches_its_verdicts_from_analysis_tables(tmp_path, sigmoid, verdict, says):
    """(a) parks 0.9 on the first key where its head should do nothing, at block 1 (the largest non-trigger minus trigger
    contrast, which measures picks); (f) parks 0.05 there (holds), 0.95 (does not hold) or as much as (a) (not shown)."""
    m = sigmoid_analysis(tmp_path, {"default": [0.9, 0.88, 0.92], "sigmoid": sigmoid})
    assert m["default"]["layer"] == 1 and list(m["sigmoid"]["sink"]) == sigmoid
    finding = sigmoid_finding(m)
    assert finding.verdict == verdict
    assert finding.measured.startswith(f"weight on the first key where the head should do nothing: {says}; ")


def test_the_sigmoid_claim_is_not_shown_without_a_sink_in_a(tmp_path):
    m = sigmoid_analysis(tmp_path, {"default": [0.2, 0.25, 0.3], "sigmoid": [0.05, 0.04, 0.06]})
    finding = sigmoid_finding(m)
    assert finding.verdict == NOT_SHOWN
    assert finding.measured == "(a) puts only 0.25 on the first key at its sink layer 1: no sink to replace"
