"""Interventions: exact edits on tiny models, targets taken from the statistics, controls fixed by
seed, the loss against plain transformers, and every verdict of the intervention claims."""

import re
import types

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import measured, tiny_model
from planted import (
    GRADUAL_CHANNEL,
    GRADUAL_SINK,
    MLP_LAYER,
    OUTPUT_CHANNEL,
    PROMPT_IDS,
    SINK_LAYER,
    capturing,
)
from systematic_outliers import architectures, capture, choices, intervention_report, interventions, readers
from systematic_outliers.definitions import (
    BASELINE,
    HELD_MEAN,
    HELD_ZEROED,
    INTERVENTIONS,
    KEYS_REMOVED,
    MEAN,
    RANDOM_HELD,
    RANDOM_KEYS_REMOVED,
    RANDOM_ZEROED,
    ZEROED,
)
from systematic_outliers.verdict_engine import DOES_NOT_HOLD, HOLDS, NOT_MEASURED, PARTLY

EDITABLE = ("gemma3_text", "gpt2", "gpt_neox", "llama", "opt", "qwen2")


@pytest.mark.parametrize("architecture", EDITABLE)
def test_with_nothing_edited_the_logits_are_the_plain_models_bit_for_bit(architecture):
    model = capturing(tiny_model(architecture))
    layers = len(capture.decoder_layers(model, capture.architecture_of(model)))
    with torch.no_grad():
        plain = model(PROMPT_IDS).logits
        with (
            capture.attention_edits(model, range(layers), remove_keys=lambda: [], observe=lambda *seen: None),
            capture.replace_layer_output(model, 0, lambda hidden: interventions.set_entries(hidden, [([], 3, 0.0)])),
        ):
            hooked = model(PROMPT_IDS).logits
    assert torch.equal(plain, hooked)


@pytest.mark.parametrize("architecture", EDITABLE)
def test_a_replay_from_a_later_layer_gives_the_plain_logits_bit_for_bit(architecture):
    """What the interventions skip: layers before the first edited one return what they returned on the plain pass."""
    model = capturing(tiny_model(architecture))
    first = capture.decoder_layers(model, capture.architecture_of(model))[0]
    kept = []
    with torch.no_grad():
        handle = first.register_forward_hook(interventions._keep_output(kept))
        plain = model(PROMPT_IDS).logits
        handle.remove()
        with capture.replay_from(model, 1, lambda: kept[0]):
            replayed = model(PROMPT_IDS).logits
        again = model(PROMPT_IDS).logits  # the layers run again after the replay
    assert torch.equal(plain, replayed) and torch.equal(plain, again)
    assert "forward" not in first.__dict__


def _targets(captured: dict):
    """The activation and sink targets the interventions chose from a captured fixture's statistics."""
    evidence = readers.Evidence.load("captured", captured["stats_dir"], captured["weights_path"])
    return choices.activation_targets(evidence, choices.for_model(evidence)).value, choices.sink_targets(evidence).value


@pytest.mark.parametrize("fixture", ["planted_capture", "gradual_capture"])
def test_edited_passes_replayed_from_their_first_layer_lose_what_full_passes_lose(fixture, request, monkeypatch, tmp_path):
    from planted import gradual_model, gradual_windows, planted_model, planted_windows

    activation, sink = _targets(request.getfixturevalue(fixture))
    model, windows = (planted_model(), planted_windows) if fixture == "planted_capture" else (gradual_model(), gradual_windows)
    windows = windows(tmp_path)
    replayed, _, _, record = interventions.run(model, windows, activation, sink, [0, 1])
    assert all(start["replayed"] == (start["layer"] > 0) for start in record["replay"].values())
    assert record["replay"]["once"]["layer"] > 0
    monkeypatch.setattr(capture, "replay_from", lambda *args: __import__("contextlib").nullcontext())
    full, _, _, _ = interventions.run(model, windows, activation, sink, [0, 1])
    pd.testing.assert_frame_equal(replayed, full)


def test_a_replay_that_does_not_give_the_plain_logits_is_not_used(planted_capture, monkeypatch, tmp_path, capsys):
    """As for a model whose early layers feed later ones by another way: every pass then runs in full, and the record says so."""
    from planted import planted_model, planted_windows

    activation, sink = _targets(planted_capture)
    model, windows = planted_model(), planted_windows(tmp_path)
    expected = readers.InterventionResults.load(planted_capture["interventions_path"]).losses
    real = capture.replay_from
    monkeypatch.setattr(capture, "replay_from", lambda model, start, entering: real(model, start, lambda: entering() * 1.001))
    losses, _, _, record = interventions.run(model, windows, activation, sink, [0, 1, 2])
    assert not any(start["replayed"] for start in record["replay"].values())
    assert "does not give the logits of the baseline pass" in capsys.readouterr().out
    pd.testing.assert_frame_equal(losses, expected[losses.columns])


def test_the_activation_ablation_sets_exactly_the_targeted_entries():
    model = capturing(tiny_model("llama", num_hidden_layers=3))
    edits = [([0, 4], 3, 2.5), ([4, 6], 17, -7.0)]  # (tokens, channel, value)
    seen = {}

    def keep(site, layer, tensor):
        seen[site, layer] = tensor.clone()

    with torch.no_grad():
        with capture.hooks(model, ["layer_input"], keep):
            model(PROMPT_IDS)
        before = seen["layer_input", 2]
        with (
            capture.replace_layer_output(model, 1, lambda h: interventions.set_entries(h, edits)),
            capture.hooks(model, ["layer_input"], keep),
        ):
            model(PROMPT_IDS)
    after = seen["layer_input", 2]  # what layer 2 receives: layer 1's edited output
    untouched = torch.ones_like(after, dtype=torch.bool)
    for tokens, channel, value in edits:
        assert torch.equal(after[tokens, channel], torch.full((2,), value))
        untouched[tokens, channel] = False
    assert torch.equal(after[untouched], before[untouched])
    zeroed = interventions.set_entries(before[None], [([0, 4], 3, 0.0)])[0]
    assert torch.equal(zeroed[[0, 4], 3], torch.zeros(2)) and zeroed.data_ptr() != before.data_ptr()


@pytest.mark.parametrize("architecture", ("llama", "gpt2", "gpt_neox"))
def test_the_sink_ablation_renormalises_every_row_over_the_other_keys(architecture):
    model = capturing(tiny_model(architecture, num_hidden_layers=3) if architecture != "gpt2" else tiny_model("gpt2", n_layer=3))
    removed = [0, 3]
    seen = {}

    def keep(site, layer, tensor):
        seen[layer] = tensor.clone()

    with torch.no_grad():
        with capture.hooks(model, ["attn_probs"], keep):
            model(PROMPT_IDS)
        plain = dict(seen)
        with capture.attention_edits(model, [1, 2], remove_keys=lambda: removed), capture.hooks(model, ["attn_probs"], keep):
            model(PROMPT_IDS)
    assert torch.equal(seen[0], plain[0])  # before the first edited layer nothing changes
    edited, before = seen[1], plain[1]  # [heads, queries, keys]; layer 1's input is unchanged
    assert torch.allclose(edited.sum(-1), torch.ones_like(edited.sum(-1)), atol=1e-6)
    assert torch.equal(edited[:, 0], before[:, 0])  # the first query sees only key 0: its row is kept
    assert torch.all(edited[:, 1:, removed] == 0)
    kept = [k for k in range(PROMPT_IDS.shape[1]) if k not in removed]
    rest = before[:, 1:, kept] / before[:, 1:, kept].sum(-1, keepdim=True)
    assert torch.allclose(edited[:, 1:, kept], rest, atol=1e-6)


def test_attention_code_of_the_models_own_cannot_be_edited_and_says_so():
    mpt = capturing(tiny_model("mpt"))
    assert not capture.edits_attention(mpt)
    with pytest.raises(capture.UnsupportedModel, match="mpt has no attention through transformers' eager code"):
        with capture.attention_edits(mpt, [0], remove_keys=lambda: [0]):
            pass


def test_the_loss_is_the_one_transformers_computes():
    model = capturing(tiny_model("llama"))
    ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = interventions.next_token_loss(model(ids).logits[0], ids[0])
        theirs = model(ids, labels=ids).loss
    assert ours == pytest.approx(float(theirs), abs=1e-6)


def test_the_random_controls_are_fixed_by_their_seed_and_avoid_the_targets():
    targets = [choices.ChannelTarget(c, layers, {0: [0]}) for c, layers in ((3, (1,)), (7, (1, 2, 3)), (20, (2,)))]
    first = interventions.random_channels(targets, 32, seed=1)
    assert first == interventions.random_channels(targets, 32, seed=1) != interventions.random_channels(targets, 32, seed=2)
    drawn = [t.channel for t in first]
    assert len(set(drawn)) == 3 and not set(drawn) & {3, 7, 20}
    assert [(t.layers, t.tokens) for t in first] == [(t.layers, t.tokens) for t in targets]  # matched in layers and tokens
    keys = interventions.random_keys([0, 5], 48, seed=0, window=2)
    assert keys == interventions.random_keys([0, 5], 48, seed=0, window=2) != interventions.random_keys([0, 5], 48, seed=0, window=3)
    assert len(keys) == 2 and not set(keys) & {0, 5}


def test_the_planted_outlier_is_what_the_ablation_edits(planted_capture):
    evidence = readers.Evidence.load("planted", planted_capture["stats_dir"], planted_capture["weights_path"])
    chosen = choices.for_model(evidence)
    (life,) = chosen.channels  # one outlier channel, appearing at once where it is planted and never cancelled
    assert (life.channel, life.emergence, life.built, life.disappearance) == (OUTPUT_CHANNEL, MLP_LAYER, MLP_LAYER, None)
    assert life.writer == MLP_LAYER and not life.gradual and chosen.creation.value == MLP_LAYER
    activation = choices.activation_targets(evidence, chosen)
    (once,), (held,) = activation.value.once, activation.value.held
    assert activation.found and (once.channel, once.layers) == (OUTPUT_CHANNEL, (MLP_LAYER,))
    assert (held.channel, held.layers) == (OUTPUT_CHANNEL, (MLP_LAYER, MLP_LAYER + 1))  # to the last layer
    assert once.tokens == held.tokens == {0: [0], 1: [9], 2: [0]}  # where the windows hold the massive token
    sink = choices.sink_targets(evidence)
    assert sink.found and sink.value.first_layer == SINK_LAYER
    assert all(positions[0] in sink.value.keys[window] for window, positions in once.tokens.items())
    results = readers.InterventionResults.load(planted_capture["interventions_path"])
    assert results.record["activation"]["channels"] == [OUTPUT_CHANNEL]
    assert all(v["value"] > 100 for v in results.record["mean_values"])
    assert set(results.losses.intervention) == set(INTERVENTIONS)
    assert len(results.losses) == 3 * (6 + 3 * 3)  # 3 windows × (6 passes + 3 controls × 3 seeds)
    edited = results.losses.groupby("intervention").edited.sum()
    assert edited[ZEROED] == 3 and edited[RANDOM_ZEROED] == 9  # one entry per window, in each of 3 seeds
    assert edited[HELD_ZEROED] == 6 and edited[RANDOM_HELD] == 18  # … at each of two layers


def test_an_outlier_built_over_layers_is_followed_per_channel(gradual_capture):
    """The positive control of the held-at-zero ablation: zeroed once the outlier is written again, held
    at zero the no-op head that parks on it spreads its attention and the model breaks."""
    evidence = readers.Evidence.load("gradual", gradual_capture["stats_dir"], gradual_capture["weights_path"])
    chosen = choices.for_model(evidence)
    (life,) = chosen.channels
    assert (life.channel, life.emergence, life.disappearance) == (GRADUAL_CHANNEL, 1, None) and life.gradual
    assert life.built == life.writer == 4 and life.peak >= 4  # reaches half its peak where the last MLP writes it
    assert "channel 20 is built over layers 2–5" in life.describe() and chosen.creation.value == 4
    assert life.magnitude[1] < 0.3 * life.magnitude[life.peak]
    results = readers.InterventionResults.load(gradual_capture["interventions_path"])
    assert [t["layers"] for t in results.record["activation"]["held"]] == [[1, 2, 3, 4, GRADUAL_SINK]]
    found = intervention_report.activation_ablations(results)
    assert found["held"][0] == HOLDS and found["held"][1] > 5
    assert found["once"][0] in (PARTLY, DOES_NOT_HOLD) and found["once"][1] < 0.5
    verdicts = {
        claim.key: claim.judge(types.SimpleNamespace(interventions=results, evidence=evidence))
        for claim in intervention_report.INTERVENTION_CLAIMS[:2]
    }
    assert verdicts["needed"].verdict == HOLDS and "the held ablation's" in verdicts["needed"].measured
    assert verdicts["value"].verdict == HOLDS and "instead of 0 in the held ablation" in verdicts["value"].measured


def test_a_model_without_outliers_gets_every_pass_on_its_largest_entries(random_capture):
    results = readers.InterventionResults.load(random_capture["interventions_path"])
    assert not results.record["activation"]["found"] and not results.record["sink"]["found"]
    assert "no activation outlier" in results.record["activation"]["why"]
    assert (results.losses.intervention == RANDOM_ZEROED).sum() == (results.losses.intervention == RANDOM_HELD).sum() == 3 * 3
    found = intervention_report.activation_ablations(results)  # the negative control: neither ablation hurts
    assert found["once"][0] == found["held"][0] == DOES_NOT_HOLD
    # without a sink, concentrated attention gives larger head outputs: the reading's sign is not built in
    assert intervention_report.correlations(results.scaling).correlation.mean() > 0.3


# ---------------------------------------------------------------------------------------------
# Every verdict from synthetic results: the thresholds, not the models, decide.


def synthetic(
    zeroed=4.0,
    mean=2.0,
    random=(2.0, 2.001, 2.002),
    held=2.0005,
    held_mean=2.0,
    random_held=(2.0, 2.001, 2.002),
    removed=3.0,
    random_keys=(2.0, 2.0, 2.001),
    found=True,
    sink=True,
    correlations=None,
    value_ratio=0.2,
    windows=4,
):
    rows = [(BASELINE, -1, 2.0), (ZEROED, -1, zeroed), (MEAN, -1, mean)] + [(RANDOM_ZEROED, s, v) for s, v in enumerate(random)]
    rows += [(HELD_ZEROED, -1, held), (HELD_MEAN, -1, held_mean)] + [(RANDOM_HELD, s, v) for s, v in enumerate(random_held)]
    if sink:
        rows += [(KEYS_REMOVED, -1, removed)] + [(RANDOM_KEYS_REMOVED, s, v) for s, v in enumerate(random_keys)]
    losses = pd.DataFrame(
        [(name, seed, window, loss) for name, seed, loss in rows for window in range(4)], columns=["intervention", "seed", "window", "loss"]
    )
    correlations = [-0.8, -0.7, -0.9] if correlations is None else correlations
    scaling = pd.DataFrame(
        [
            {"window": w, "layer": layer, "correlation": c + 0.01 * w, "points": 10, "mean_share": 0.5, "value_norm_ratio": value_ratio}
            for layer, c in enumerate(correlations)
            for w in range(windows)
        ]
    )
    record = {
        "activation": {
            "channels": [5],
            "once": [{"channel": 5, "layers": [1], "tokens": {}}],
            "held": [{"channel": 5, "layers": [1, 2], "tokens": {}}],
            "found": found,
            "why": "",
        },
        "mean_values": [{"channel": 5, "layer": layer, "value": 100.0 + layer} for layer in (1, 2)],
        "sink": {"first_layer": 0, "keys": {}, "found": True, "why": ""} if sink else None,
        "sink_not_measured": "" if sink else "falcon has no attention capture (its architecture.json says why)",
        "model": "tiny-fp16",
        "dtype": "float16",
    }
    evidence = types.SimpleNamespace(
        has_attention=sink,
        windows=4,
        attention_layers=pd.DataFrame(
            {
                "window": [w for layer in range(3) for w in range(4)],
                "layer": [layer for layer in range(3) for w in range(4)],
                "outlier_keys": 1,
            }
        ),
    )
    return types.SimpleNamespace(
        interventions=readers.InterventionResults(losses, scaling if sink else scaling.iloc[:0], pd.DataFrame(), record), evidence=evidence
    )


def verdicts_of(m):
    return {claim.key: claim.judge(m).verdict for claim in intervention_report.INTERVENTION_CLAIMS}


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, {"needed": HOLDS, "value": HOLDS, "sink_needed": HOLDS, "scaling_factor": HOLDS, "small_values": HOLDS}),
        # a rise beyond the controls but short of far: partly; the mean takes back 60 %: partly
        (
            {"zeroed": 2.2, "mean": 2.08, "removed": 2.1, "value_ratio": 0.8},
            {"needed": PARTLY, "value": PARTLY, "sink_needed": PARTLY, "scaling_factor": HOLDS, "small_values": PARTLY},
        ),
        # within the controls' spread (0.002): does not hold, and nothing for the mean to restore
        (
            {"zeroed": 2.0015, "removed": 2.0005, "correlations": [0.5, 0.6, -0.8], "value_ratio": 1.5},
            {
                "needed": DOES_NOT_HOLD,
                "value": NOT_MEASURED,
                "sink_needed": DOES_NOT_HOLD,
                "scaling_factor": DOES_NOT_HOLD,
                "small_values": DOES_NOT_HOLD,
            },
        ),
        # the mean does not restore; one layer of three negative and none positive: partly
        (
            {"mean": 3.9, "correlations": [-0.8, -0.015, -0.02]},
            {"needed": HOLDS, "value": DOES_NOT_HOLD, "sink_needed": HOLDS, "scaling_factor": PARTLY, "small_values": HOLDS},
        ),
        # no activation outlier: whatever zeroing the largest entry does, the outliers are not needed
        (
            {"found": False},
            {"needed": DOES_NOT_HOLD, "value": NOT_MEASURED, "sink_needed": HOLDS, "scaling_factor": HOLDS, "small_values": HOLDS},
        ),
        # zeroed once the outlier is written again; held at zero it breaks the model, and its mean restores it
        (
            {"zeroed": 2.0015, "held": 5.0, "held_mean": 2.1},
            {"needed": HOLDS, "value": HOLDS, "sink_needed": HOLDS, "scaling_factor": HOLDS, "small_values": HOLDS},
        ),
        # … its mean held restores only half of it: partly, whatever the once ablation's mean did
        (
            {"zeroed": 2.0015, "mean": 9.0, "held": 4.0, "held_mean": 3.0},
            {"needed": HOLDS, "value": PARTLY, "sink_needed": HOLDS, "scaling_factor": HOLDS, "small_values": HOLDS},
        ),
        # once hurts a little, held breaks it: the stronger verdict, from the held ablation
        (
            {"zeroed": 2.2, "mean": 2.2, "held": 6.0, "held_mean": 2.0},
            {"needed": HOLDS, "value": HOLDS, "sink_needed": HOLDS, "scaling_factor": HOLDS, "small_values": HOLDS},
        ),
        # both within their controls
        (
            {"zeroed": 2.0015, "held": 2.0015},
            {"needed": DOES_NOT_HOLD, "value": NOT_MEASURED, "sink_needed": HOLDS, "scaling_factor": HOLDS, "small_values": HOLDS},
        ),
        # zeroing overflowed the logits (a float16 model): not a measurement. This used to read as an infinite loss, so "the
        # model broke" and the claim held on an artefact; now the once ablation is not measured and, the held one not hurting,
        # neither is the claim (nor the mean's, with nothing measured to restore)
        (
            {"zeroed": float("nan")},
            {"needed": NOT_MEASURED, "value": NOT_MEASURED, "sink_needed": HOLDS, "scaling_factor": HOLDS, "small_values": HOLDS},
        ),
        # … while the held ablation, measured, breaks the model: it holds on the held ablation
        (
            {"zeroed": float("inf"), "held": 5.0, "held_mean": 2.1},
            {"needed": HOLDS, "value": HOLDS, "sink_needed": HOLDS, "scaling_factor": HOLDS, "small_values": HOLDS},
        ),
        # an overflow of the sink ablation or of the mean
        (
            {"removed": float("nan"), "mean": float("inf")},
            {"needed": HOLDS, "value": NOT_MEASURED, "sink_needed": NOT_MEASURED, "scaling_factor": HOLDS, "small_values": HOLDS},
        ),
        # the correlation undefined in every window of every attention-outlier layer (a constant share), the value ratio's
        # denominator 0 (the median key's value norm): not measured, never "does not hold"
        (
            {"correlations": [float("nan")] * 3, "value_ratio": float("inf")},
            {"needed": HOLDS, "value": HOLDS, "sink_needed": HOLDS, "scaling_factor": NOT_MEASURED, "small_values": NOT_MEASURED},
        ),
        # … in one layer of three: judged on the other two
        (
            {"correlations": [float("nan"), -0.8, 0.6]},
            {"needed": HOLDS, "value": HOLDS, "sink_needed": HOLDS, "scaling_factor": HOLDS, "small_values": HOLDS},
        ),
        # one window gives no interval over windows
        ({"windows": 1}, {"needed": HOLDS, "value": HOLDS, "sink_needed": HOLDS, "scaling_factor": NOT_MEASURED, "small_values": HOLDS}),
        # an architecture whose attention cannot be edited
        (
            {"sink": False},
            {"needed": HOLDS, "value": HOLDS, "sink_needed": NOT_MEASURED, "scaling_factor": NOT_MEASURED, "small_values": NOT_MEASURED},
        ),
    ],
)
def test_every_intervention_verdict_is_reachable(changes, expected):
    assert verdicts_of(synthetic(**changes)) == expected


def test_the_needed_claim_says_which_ablation_broke_the_model():
    once = intervention_report.judge_needed(synthetic())
    held = intervention_report.judge_needed(synthetic(zeroed=2.0015, held=5.0))
    assert "the verdict is the once ablation's" in once.measured and once.value.endswith("(once)")
    assert "the verdict is the held ablation's" in held.measured and held.value == "+3.000 nats (held)"
    assert "held at zero from each channel's emergence to its disappearance (channel 5 at layers 2–3)" in held.measured
    value = intervention_report.judge_value(synthetic(zeroed=2.0015, held=5.0, held_mean=2.1)).measured
    assert "in the held ablation, the one that hurt (101.0, 102.0)" in value and "96.7% restored" in value


def test_an_overflow_is_reported_as_an_overflow_of_the_model_in_its_dtype_not_as_breakage():
    overflow = "the logits of tiny-fp16 overflowed in float16, an artefact of the precision, not a measurement"
    finding = intervention_report.judge_needed(synthetic(zeroed=float("nan")))
    assert finding.verdict == NOT_MEASURED and finding.value == "overflow in float16 (once)"
    assert f"(channel 5 at layer 2): not measured: the loss is not finite (outliers zeroed: 4 of 4 window-passes): {overflow}" in (
        finding.measured
    )
    assert finding.measured.endswith("; the held ablation does not hurt beyond its controls and the once one overflowed")
    assert "breaks" not in finding.measured and "inf" not in finding.measured.replace("infinite", "")
    held = intervention_report.judge_needed(synthetic(zeroed=float("nan"), held=5.0))
    assert held.verdict == HOLDS and "the verdict is the held ablation's" in held.measured and overflow in held.measured
    control = intervention_report.judge_needed(synthetic(random=(2.0, float("nan"), 2.0)))  # an overflowed control: no comparison
    assert control.verdict == NOT_MEASURED and "random channels zeroed: 4 of 12 window-passes" in control.measured
    value = intervention_report.judge_value(synthetic(mean=float("nan")))
    assert value.verdict == NOT_MEASURED and f"outliers set to their mean: 4 of 4 window-passes): {overflow}" in value.measured
    sink = intervention_report.judge_sink_needed(synthetic(removed=float("inf")))
    assert sink.verdict == NOT_MEASURED and sink.value == "overflow in float16" and overflow in sink.measured
    unedited = synthetic()
    unedited.interventions.losses.loc[unedited.interventions.losses.intervention == BASELINE, "loss"] = float("nan")
    assert {finding.verdict for finding in map(lambda claim: claim.judge(unedited), intervention_report.INTERVENTION_CLAIMS[:3])} == {
        NOT_MEASURED
    }
    assert overflow in intervention_report.judge_needed(unedited).measured
    table = intervention_report.loss_summary(synthetic(zeroed=float("nan")).interventions.losses).set_index("intervention")
    assert np.isnan(table.loss[ZEROED]) and table.loss[BASELINE] == 2.0  # the table shows no number for it, not infinity


def test_undefined_readings_are_not_measured_and_say_why():
    """Through the reading itself: every query puts all its attention on the outlier key (the share is the constant 1: no
    rank correlation) and the ordinary keys carry no value (the value ratio's denominator is 0)."""
    heads, tokens, dim = 2, 6, 4
    probs = torch.zeros(heads, tokens, tokens)
    probs[:, :, 0] = 1.0
    value = torch.zeros(1, tokens, dim)
    value[:, 0] = 1.0
    visible = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    reading = interventions.ScalingReading({w: [0] for w in range(4)}, windows=4)
    for window in range(4):
        reading.window = window
        for layer in range(3):
            reading(layer, probs, torch.randn(tokens, heads, dim, generator=torch.Generator().manual_seed(window)), value, visible)
    scaling = pd.DataFrame(reading.rows)
    assert scaling.correlation.isna().all() and scaling.value_norm_ratio.isna().all() and (scaling.points == heads * 5).all()
    m = synthetic()
    m.interventions = readers.InterventionResults(m.interventions.losses, scaling, pd.DataFrame(), m.interventions.record)
    scaling_finding = intervention_report.judge_scaling(m)
    assert scaling_finding.verdict == NOT_MEASURED and scaling_finding.measured == (
        "not measured: 3 of 3 attention-outlier layers have no correlation defined in two windows or more (where it is undefined, "
        "the share on the outlier keys, or the head output norm, is the same for every head and query: a constant has no rank "
        "correlation)"
    )
    values = intervention_report.judge_small_values(m)
    assert values.verdict == NOT_MEASURED and values.measured == (
        "not measured: in 3 of 3 attention-outlier layers the median key's value norm is 0 in every window: the ratio has a zero "
        "denominator"
    )
    partly_read = scaling.assign(
        correlation=np.where(scaling.layer == 0, np.nan, -0.8 + 0.01 * scaling.window),
        value_norm_ratio=np.where(scaling.layer == 0, np.inf, 0.2),
    )
    m.interventions = readers.InterventionResults(m.interventions.losses, partly_read, pd.DataFrame(), m.interventions.record)
    scaling_finding, values = intervention_report.judge_scaling(m), intervention_report.judge_small_values(m)
    assert scaling_finding.verdict == HOLDS and scaling_finding.measured.startswith("2 of 2 attention-outlier layers with a correlation")
    assert scaling_finding.measured.endswith(
        "1 of 3 attention-outlier layers have no correlation defined in two windows or more "
        "(where it is undefined, the share on the outlier keys, or the head output norm, is the same for every head and query: a "
        "constant has no rank correlation), not judged"
    )
    assert values.verdict == HOLDS and "over 2 attention-outlier layers" in values.measured
    assert values.measured.endswith(
        "in 1 of 3 attention-outlier layers the median key's value norm is 0 in every window: the ratio has a zero denominator, not judged"
    )


def test_without_the_interventions_their_claims_are_not_measured():
    assert set(verdicts_of(types.SimpleNamespace(interventions=None, evidence=None)).values()) == {NOT_MEASURED}


# ---------------------------------------------------------------------------------------------
# Fig 2: the diagram names modules that exist.


@pytest.mark.parametrize("architecture", sorted({"llama", "gpt2", "gpt_neox", "mpt", "opt", "gemma3_text"}))
def test_the_layer_diagram_names_this_architectures_modules_and_sites(architecture):
    model = capturing(tiny_model(architecture))
    table = capture.architecture_of(model)
    attention, mlp, parallel = architectures.layer_diagram(table)
    layer = capture.decoder_layers(model, table)[0]
    for block in attention + mlp:
        for module in block.modules:
            layer.get_submodule(module)  # raises if the diagram names a module the layer does not have
    drawn = {site for block in attention + mlp for site in block.sites}
    assert drawn | {"layer_input", "attn_residual", "layer_output"} >= set(architectures.available_sites(table))
    assert parallel == (architecture == "gpt_neox")
    assert any(block.intervention for block in attention) == (architecture != "mpt")


@pytest.mark.parametrize(
    "architecture, reason",
    [
        ("falcon", "falcon runs attention code of its own: keys cannot be removed or head outputs read"),
        ("mpt", "mpt runs attention code of its own: keys cannot be removed or head outputs read"),
    ],
)
def test_an_architecture_whose_attention_cannot_be_edited_gets_the_activation_ablation_and_a_reason(tmp_path, architecture, reason):
    import transformers
    from conftest import capture_everything
    from systematic_outliers import verdicts

    if architecture == "falcon":
        config = transformers.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=96)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    else:
        model = capturing(tiny_model("mpt"))
    windows = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(0))
    folder = capture_everything(model, windows, [5, 8, 30, 2], tmp_path / architecture)
    results = readers.InterventionResults.load(folder["interventions_path"])
    assert results.record["sink"] is None and results.record["sink_not_measured"] == reason
    assert (
        set(results.losses.intervention) == {BASELINE, ZEROED, MEAN, RANDOM_ZEROED, HELD_ZEROED, HELD_MEAN, RANDOM_HELD}
        and results.scaling.empty
    )
    m = measured(folder, architecture)
    found = {claim.key: finding for claim, finding in verdicts.judge(m)}
    assert found["sink_needed"].verdict == NOT_MEASURED and found["sink_needed"].measured == f"no sink ablation: {reason}"
    assert found["scaling_factor"].verdict == NOT_MEASURED and found["needed"].verdict == DOES_NOT_HOLD
    from conftest import caption_of, run_notebook

    for notebook in ("interventions", "scaling_factor"):
        run_notebook(notebook, tmp_path, **folder, model=architecture, output_stem=str(tmp_path / notebook))
        assert reason in caption_of(tmp_path, notebook) and (tmp_path / f"{notebook}.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# Channel lives from synthetic statistics: the layers, not the models, decide.


def synthetic_evidence(with_writes=True):
    """4 windows, 7 layers, 8 channels. Channel 2 is massive at layers 2–4 (1-based) in every window and
    no longer at layer 5, where the median grows, though it is larger at layer 6 (not massive there
    either); channel 5 is massive in one window at layer 3 only."""
    windows, layers, width = 4, 7, 8
    medians = [1.0] * 4 + [10.0] * 3
    residual = np.full((windows, layers, width), 0.5)
    residual[:, :, 2] = [0.5, 2000, 3000, 3000, 1000, 9000, 500]
    residual[0, 2, 5] = 1500
    writes = np.zeros((windows, layers, width))
    writes[:, 1, 2], writes[:, 2, 2], writes[:, 5, 2] = 2000, 1000, 8000
    extremes = [(w, layer, "layer_output", residual[w, layer]) for w in range(windows) for layer in range(layers)]
    if with_writes:
        extremes += [(w, layer, "mlp_write", writes[w, layer]) for w in range(windows) for layer in range(layers)]
    return types.SimpleNamespace(
        windows=windows,
        sites=pd.DataFrame(
            [(w, layer, "layer_output", medians[layer]) for w in range(windows) for layer in range(layers)],
            columns=["window", "layer", "site", "median_abs"],
        ),
        channel_extremes=pd.DataFrame(extremes, columns=["window", "layer", "site", "value"]),
        channel_max=pd.DataFrame(
            [(layer, "layer_output", residual[:, layer].max(0)) for layer in range(layers)], columns=["layer", "site", "max_abs"]
        ),
    )


def test_a_channel_lives_from_its_emergence_to_where_it_is_no_longer_massive():
    cancelled, minority = choices.channel_lives(synthetic_evidence())
    assert (cancelled.channel, cancelled.emergence, cancelled.last, cancelled.disappearance) == (2, 1, 3, 4)
    assert cancelled.peak == 2 and cancelled.built == 1 and not cancelled.gradual  # not the larger value after it
    assert cancelled.writer == 1 and cancelled.held_layers == [1, 2, 3, 4]  # not the write after its peak
    assert cancelled.describe() == (
        "channel 2 appears at layer 2 (|h| 2,000; peak 3,000 at layer 3), written most by the MLP of layer 2 (+2,000), "
        "no longer massive from layer 5"
    )
    assert (minority.channel, minority.emergence, minority.disappearance, minority.windows) == (5, 2, 3, (1, 4))
    assert not minority.in_most and minority.describe().endswith("(massive in at most 1 of 4 windows at a layer)")
    assert choices.creation_layer([cancelled, minority], choices.Choice(0, "")).value == 1
    by_attention = choices.ChannelLife(
        1, emergence=0, last=1, disappearance=None, peak=1, built=0, magnitude={0: 200.0, 1: 300.0}, writes={0: -5.0, 1: -1.0}
    )
    assert by_attention.writer is None  # no MLP adds to it: no writer, rather than the least negative write
    (without_writes, _) = choices.channel_lives(synthetic_evidence(with_writes=False))
    assert without_writes.writer is None and "no MLP write onto it is captured" in choices.creation_layer([without_writes], None).why


def test_a_channel_without_massive_tokens_at_a_layer_edits_nothing():
    columns = ["window", "layer", "site", "position", "massive_channels"]
    none = pd.DataFrame([], columns=columns)
    assert choices.channel_tokens(none, 2, 1, windows=2) == {0: [], 1: []}
    rows = pd.DataFrame(
        [(0, 1, "layer_output", 0, [2, 5]), (1, 1, "layer_output", 7, [5]), (1, 2, "layer_output", 3, [2])], columns=columns
    )
    assert choices.channel_tokens(rows, 2, 1, windows=2) == {0: [0], 1: []}


# ---------------------------------------------------------------------------------------------
# The scaling reading against a plain recomputation from full tensors.


def _plain_attention(model, ids: torch.Tensor, layer: int):
    """Layer `layer`'s attention probabilities [heads, queries, keys], head outputs [heads, queries, head_dim] and values
    [kv heads, keys, head_dim] of a Llama, by hand from the hidden state entering the layer: RMSNorm, the projections,
    rotary embedding, causal softmax (the model's code only supplies that hidden state)."""
    config = model.config
    heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    block = model.model.layers[layer]
    with torch.no_grad():
        hidden = model(ids[None], output_hidden_states=True).hidden_states[layer][0].double()
        x = hidden / torch.sqrt(hidden.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps) * block.input_layernorm.weight.double()
        attention = block.self_attn
        q, k, v = (
            (x @ projection.weight.double().T + projection.bias.double()).view(len(ids), -1, dim).transpose(0, 1)
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        frequencies = 1.0 / config.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = torch.arange(len(ids), dtype=torch.float64)[:, None] * frequencies[None]
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        rotated = lambda t: t * cos + torch.cat([-t[..., dim // 2 :], t[..., : dim // 2]], -1) * sin  # noqa: E731
        q, k = rotated(q), rotated(k)
        group = heads // kv_heads
        k_heads, v_heads = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        scores = q @ k_heads.transpose(1, 2) / dim**0.5
        scores = scores.masked_fill(~torch.ones(len(ids), len(ids), dtype=torch.bool).tril(), float("-inf"))
        probs = scores.softmax(-1)
    return probs.numpy(), (probs @ v_heads).numpy(), v.numpy()


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation of the average ranks (ties share the mean of their ranks), by hand."""

    def ranks(values):
        unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        return (np.cumsum(counts) - (counts - 1) / 2)[inverse]

    rx, ry = ranks(x) - ranks(x).mean(), ranks(y) - ranks(y).mean()
    return float((rx * ry).sum() / np.sqrt((rx**2).sum() * (ry**2).sum()))


@pytest.mark.parametrize(
    "fixture, build, constant_layer",
    [
        ("planted_capture", "planted_model", SINK_LAYER),  # every query on the planted sink: a constant share there
        ("sink_capture", "sink_model", None),  # a share that varies with the context: a correlation in every layer
    ],
)
def test_the_scaling_reading_matches_a_plain_recomputation(fixture, build, constant_layer, request):
    """Share on the outlier keys, head-output norm, Spearman over (head, query) and the value-norm ratio of every window and
    layer of a planted model, recomputed with numpy and pandas from the hand-computed attention, against the reading
    that rule interventions wrote."""
    import planted
    from safetensors.torch import load_file

    captured = request.getfixturevalue(fixture)
    results = readers.InterventionResults.load(captured["interventions_path"])
    windows = load_file(captured["stats_dir"].parent / "input_ids.safetensors")["input_ids"]
    keys = results.record["sink"]["keys"]
    model = getattr(planted, build)()
    rows = results.scaling.set_index(["window", "layer"])
    assert len(rows) == len(windows) * 4
    for window, ids in enumerate(windows):
        outlier = keys[window]
        ordinary = [key for key in range(len(ids)) if key not in outlier]
        # queries that see an outlier key and another one
        queries = [q for q in range(len(ids)) if min(outlier) <= q and any(key <= q for key in ordinary)]
        for layer in range(4):
            probs, outputs, values = _plain_attention(model, ids, layer)
            share = probs[:, queries][:, :, outlier].sum(-1).ravel()  # (head, query) pairs
            norm = np.linalg.norm(outputs[:, queries], axis=-1).ravel()
            norms = np.linalg.norm(values, axis=-1)  # [kv heads, keys]
            ratio = np.median(norms[:, outlier].mean(-1) / np.median(norms[:, ordinary], axis=-1))
            row = rows.loc[(window, layer)]
            assert row.points == share.size
            assert row.mean_share == pytest.approx(share.mean(), rel=1e-5, abs=1e-6)
            correlation = _spearman(share, norm) if np.ptp(share) and np.ptp(norm) else np.nan
            if np.isnan(correlation):
                assert np.isnan(row.correlation) and layer == constant_layer
            else:
                assert row.correlation == pytest.approx(correlation, abs=1e-4)
            assert row.value_norm_ratio == pytest.approx(ratio, rel=1e-5)
    points = results.points  # the scatter sample: each point's share and norm as recomputed
    for point in points.sample(20, random_state=0).itertuples():
        probs, outputs, _ = _plain_attention(model, windows[point.window], point.layer)
        assert point.outlier_share == pytest.approx(probs[point.head, point.query, keys[point.window]].sum(), rel=1e-5, abs=1e-6)
        assert point.output_norm == pytest.approx(np.linalg.norm(outputs[point.head, point.query]), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# The sink claims on a captured model (planted.sink_model): a no-op head parked on the outlier token, beside its
# negative controls (the sink's value large; the head's output read by nothing).


def _judged(captured: dict) -> dict:
    """Every intervention claim's finding on a captured fixture, as the report judges it."""
    evidence = readers.Evidence.load("captured", captured["stats_dir"], captured["weights_path"])
    m = types.SimpleNamespace(interventions=readers.InterventionResults.load(captured["interventions_path"]), evidence=evidence)
    return {claim.key: claim.judge(m) for claim in intervention_report.INTERVENTION_CLAIMS}


def _plain_loss(model, windows: torch.Tensor) -> float:
    """The mean over windows of transformers' own next-token loss, no hook anywhere."""
    with torch.no_grad():
        return float(np.mean([float(model(ids[None], labels=ids[None]).loss) for ids in windows]))


@pytest.mark.parametrize(
    "fixture, expected",
    [
        # zeroing the massive activation takes the sink's key with it (the same break as removing the sink), and its mean,
        # the same in every window (the first token), restores it exactly
        ("sink_capture", {"needed": HOLDS, "value": HOLDS, "sink_needed": HOLDS, "scaling_factor": HOLDS, "small_values": HOLDS}),
        # a sink of large value: the head writes more parked on it than without it, so removing it (or zeroing the outlier)
        # lowers the loss; the head's output grows with the share
        (
            "large_sink_value_capture",
            {
                "needed": DOES_NOT_HOLD,
                "value": NOT_MEASURED,
                "sink_needed": DOES_NOT_HOLD,
                "scaling_factor": DOES_NOT_HOLD,
                "small_values": DOES_NOT_HOLD,
            },
        ),
        # parked on the same sink, read by nothing: not needed, though the reading still sees a scaling factor of small value
        (
            "unread_sink_capture",
            {"needed": DOES_NOT_HOLD, "value": NOT_MEASURED, "sink_needed": DOES_NOT_HOLD, "scaling_factor": HOLDS, "small_values": HOLDS},
        ),
    ],
)
def test_the_sink_claims_on_a_no_op_head_and_its_controls(fixture, expected, request):
    found = _judged(request.getfixturevalue(fixture))
    assert {key: finding.verdict for key, finding in found.items()} == expected


def test_removing_the_sink_a_no_op_head_parks_on_breaks_the_model(sink_capture, unread_sink_capture, large_sink_value_capture):
    """The losses in the text against plain transformers: the unedited model, and the same model whose sink carries the
    ordinary value (its heads then output every ordinary value, all ones, whatever their share: what removing the sink
    leaves them; only the random layer after it still sees the outlier key)."""
    from planted import SCALING_SINK, sink_model
    from safetensors.torch import load_file

    windows = load_file(sink_capture["stats_dir"].parent / "input_ids.safetensors")["input_ids"]
    finding = _judged(sink_capture)["sink_needed"]
    said = re.fullmatch(
        rf"removing the outlier keys from layer {SCALING_SINK + 1} on: loss (\S+) → (\S+) nats \(perplexity \S+ → \S+\); "
        r"random keys removed: (\S+) to (\S+) over 3 seeds",
        finding.measured,
    )
    baseline, removed, low, high = map(float, said.groups())
    assert baseline == pytest.approx(_plain_loss(sink_model(), windows), abs=1e-3)
    assert removed == pytest.approx(_plain_loss(sink_model(sink_value=1.0), windows), abs=0.01)
    rise = float(finding.value.removesuffix(" nats"))
    assert rise == pytest.approx(removed - baseline, abs=0.002) and rise >= intervention_report.FAR_RISE
    assert -0.01 < low <= high < 0.01 and "random keys removed: " in finding.measured  # random keys removed: nothing happens
    results = readers.InterventionResults.load(sink_capture["interventions_path"])
    assert results.record["sink"]["found"] and results.record["sink"]["first_layer"] == SCALING_SINK
    assert results.record["sink"]["keys"] == {0: [0], 1: [0], 2: [0]}  # the outlier token, first of every window
    unread = _judged(unread_sink_capture)["sink_needed"]
    assert abs(float(unread.value.removesuffix(" nats"))) < 0.001  # only the random layer after it loses the key
    large = _judged(large_sink_value_capture)["sink_needed"]
    assert float(large.value.removesuffix(" nats")) < -1  # parked on a large value the head wrote more: the loss falls


@pytest.mark.parametrize("fixture, sign", [("sink_capture", -1), ("large_sink_value_capture", +1), ("unread_sink_capture", -1)])
def test_the_scaling_reading_follows_the_planted_sink_value(fixture, sign, request):
    """Each head's output is (1 - share + share × value) × a vector of ones: its norm is that times √head_dim, exactly,
    and falls with the share (a small value) or rises with it (a large one), so the rank correlation is -1 or +1."""
    from planted import LARGE_SINK_VALUE, SCALING_SINK, SMALL_SINK_VALUE, sink_model

    value = LARGE_SINK_VALUE if fixture == "large_sink_value_capture" else SMALL_SINK_VALUE
    captured = request.getfixturevalue(fixture)
    results = readers.InterventionResults.load(captured["interventions_path"])
    head_dim = sink_model().config.head_dim
    points = results.points[results.points.layer == SCALING_SINK]
    assert len(points) > 100 and points.outlier_share.min() < 0.8 and points.outlier_share.max() > 0.99  # varies with the context
    planted = head_dim**0.5 * (1 - points.outlier_share + points.outlier_share * value)
    np.testing.assert_allclose(points.output_norm, planted, rtol=1e-4)
    at_sink = results.scaling[results.scaling.layer == SCALING_SINK]
    np.testing.assert_allclose(at_sink.correlation, sign, atol=1e-9)
    np.testing.assert_allclose(at_sink.value_norm_ratio, value, rtol=1e-4)
    found = _judged(captured)
    assert intervention_report.sink_layers(
        types.SimpleNamespace(evidence=readers.Evidence.load("c", captured["stats_dir"], captured["weights_path"]))
    ) == [SCALING_SINK]
    negative, positive = (1, 0) if sign < 0 else (0, 1)
    assert found["scaling_factor"].measured.startswith(
        f"{negative} of 1 attention-outlier layers with a correlation have a 95% interval below 0 ({positive} above); "
        f"median correlation there {sign:+.2f}; in the 3 other layers the median is "
    )
    assert found["scaling_factor"].value == f"{negative}/1 layers negative"
    assert found["small_values"].value == f"median {value:.2f}"
    assert found["small_values"].measured == (
        f"outlier keys' value norm / the median key's, median over windows and heads: {value:.2f}–{value:.2f} over 1 "
        f"attention-outlier layers (median {value:.2f}); below 0.5 in {value < 0.5:.0%}, below 1 in {value < 1:.0%}"
    )
