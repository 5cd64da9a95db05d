"""What the outliers cost a quantizer: each quantizer against a hand computation, the targets read
from the statistics, the passes on the planted and random tiny models, and every verdict of the two claims."""

import pandas as pd
import pytest
import torch
from conftest import tiny_model
from planted import DOWN_COLUMN, MLP_LAYER, capturing, planted_model
from safetensors.torch import load_file
from systematic_outliers import quantization, quantization_report, readers, variant_analysis
from systematic_outliers.definitions import A8_KEPT, A8_RANDOM, A8_TENSOR, A8_TOKEN, FULL, QUANTIZATIONS, W8, W8_KEPT, W8_RANDOM
from systematic_outliers.verdict_engine import DOES_NOT_HOLD, HOLDS, NOT_MEASURED, PARTLY

X = torch.tensor([[1.0, -2.2], [4.0, 0.3]])  # two tokens × two channels


def test_per_tensor_activations_by_hand():
    # one scale, 4 / 127: 1 → 31.75 → 32, -2.2 → -69.85 → -70, 4 → 127, 0.3 → 9.525 → 10
    expected = torch.tensor([[32.0, -70.0], [127.0, 10.0]]) * 4 / 127
    torch.testing.assert_close(quantization.activation_per_tensor(X), expected)


def test_per_token_activations_by_hand():
    # token 0: scale 2.2 / 127, 1 → 57.73 → 58; token 1: scale 4 / 127, 0.3 → 10
    expected = torch.tensor([[58 * 2.2 / 127, -2.2], [4.0, 10 * 4 / 127]])
    torch.testing.assert_close(quantization.activation_per_token(X), expected)


def test_a_kept_token_stays_in_full_precision_and_out_of_the_scale():
    # token 1 kept: the scale from token 0 alone (2.2 / 127), token 1 as it was
    expected = torch.tensor([[58 * 2.2 / 127, -2.2], [4.0, 0.3]])
    torch.testing.assert_close(quantization.activation_per_tensor(X[None], keep_tokens=[1])[0], expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_quantizers_run_in_half_precision_as_in_float32(dtype):
    """The dtype a GPU run uses: the scales in float32, the result in the input's dtype, a massive entry finite."""
    x = torch.tensor([[[1.0, -2.2], [4.0, 0.3], [60000.0, 0.5]]])  # float16's 65,504 is near
    for quantize in (quantization.activation_per_tensor, quantization.activation_per_token):
        half = quantize(x.to(dtype))
        assert half.dtype == dtype and torch.isfinite(half.float()).all()
        torch.testing.assert_close(half, quantize(x.to(dtype).float()).to(dtype))  # the same inputs, in float32
    weight = quantization.weight_per_channel(x[0].T.to(dtype))
    assert weight.dtype == dtype
    torch.testing.assert_close(weight, quantization.weight_per_channel(x[0].T.to(dtype).float()).to(dtype))


def test_per_channel_weights_by_hand_and_kept_columns():
    weight = torch.tensor([[1.0, -2.2, 0.5], [40.0, 0.3, -0.1]])  # [out, in]
    # row 0: scale 2.2 / 127: 1 → 58, 0.5 → 28.86 → 29; row 1: scale 40 / 127: 0.3 → 0.95 → 1, -0.1 → -0.32 → 0
    expected = torch.tensor([[58 * 2.2 / 127, -2.2, 29 * 2.2 / 127], [40.0, 40 / 127, 0.0]])
    torch.testing.assert_close(quantization.weight_per_channel(weight), expected)
    # column 0 kept: row 0's scale from 2.2, row 1's from 0.3 (-0.1 → -42.33 → -42)
    kept = torch.tensor([[1.0, -2.2, 29 * 2.2 / 127], [40.0, 0.3, -42 * 0.3 / 127]])
    torch.testing.assert_close(quantization.weight_per_channel(weight, [0]), kept)


def test_the_gpt2_variants_w8a8_uses_the_same_definition():
    assert variant_analysis.absmax_int8 is quantization.absmax_int8
    linear = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -2.2, 0.5], [40.0, 0.3, -0.1]]))
    model = torch.nn.Sequential(linear)
    x = torch.tensor([[0.2, -1.0, 3.0]])
    with variant_analysis.compressed(model, "w8a8"):
        compressed = model(x)
    expected = quantization.activation_per_token(x) @ quantization.absmax_int8(linear.weight.detach()).T
    torch.testing.assert_close(compressed, expected)


def test_the_outlier_tokens_are_read_where_each_layers_linears_read():
    outliers = pd.DataFrame(
        {
            "window": [0, 0, 0, 1, 1],
            "layer": [1, 2, 2, 2, 3],
            "site": ["layer_output", "down_proj_input", "layer_output", "layer_output", "layer_output"],
            "position": [0, 5, 0, 7, 9],
            "sun_rule": [True, True, False, True, True],
        }
    )
    # layer 1's output enters layer 2; layer 2's down projection reads token 5; layer 2's output
    # enters layer 3; layer 3 of 4 feeds only the LM head, which stays in full precision
    assert quantization.outlier_tokens(outliers, layers=4) == {0: {2: [0, 5]}, 1: {3: [7]}}


def _quantized(captured, model, tmp_path):
    evidence = readers.Evidence.load("captured", captured["stats_dir"], captured["weights_path"])
    windows = load_file(captured["stats_dir"].parent / "input_ids.safetensors")["input_ids"]
    files = {"losses": tmp_path / "quantization.parquet", "record": tmp_path / "quantization.json"}
    record = quantization.quantize("captured", model, evidence, windows, [0, 1, 2], files)
    return pd.read_parquet(files["losses"]), record


def test_keeping_the_planted_massive_token_restores_per_tensor_quantization(planted_capture, tmp_path):
    losses, record = _quantized(planted_capture, planted_model(), tmp_path)
    assert set(losses.quantization) == set(QUANTIZATIONS)
    assert record["outlier_columns"] == {f"model.layers.{MLP_LAYER}.mlp.down_proj": [DOWN_COLUMN]}
    # the planted token is kept from the layer whose down projection makes it on, in every window
    assert all(min(map(int, layers)) == MLP_LAYER for layers in record["outlier_tokens"].values())
    judged = dict((claim.key, finding) for claim, finding in quantization_report.judged(losses))
    assert judged["quantization_activations"].verdict == HOLDS, judged["quantization_activations"].measured
    assert judged["quantization_weights"].verdict in (DOES_NOT_HOLD, HOLDS, PARTLY)
    table = quantization_report.table(losses, "planted")
    assert table.quantization.tolist() == list(QUANTIZATIONS) and table.damage.iloc[0] == 0


def test_a_model_without_outliers_does_not_hold_and_does_not_fail(random_capture, tmp_path):
    model = capturing(tiny_model("llama", seed=1, num_hidden_layers=4))
    losses, record = _quantized(random_capture, model, tmp_path)
    assert record["outlier_tokens"] == {} and record["outlier_columns"] == {}
    for claim, finding in quantization_report.judged(losses):
        assert finding.verdict in (DOES_NOT_HOLD, NOT_MEASURED), (claim.key, finding.measured)


def _losses(values: dict) -> pd.DataFrame:
    """Synthetic losses: pass → one loss (or a list, one per seed), one window, one token kept."""
    rows = []
    for name, loss in values.items():
        for seed, value in enumerate(loss) if isinstance(loss, list) else [(-1, loss)]:
            rows.append({"quantization": name, "seed": seed, "window": 0, "loss": value, "edited": 1})
    return pd.DataFrame(rows)


BASE = {FULL: 3.0, W8: 3.0, A8_TENSOR: 4.0, A8_TOKEN: 3.01, W8_KEPT: 3.0, W8_RANDOM: [3.0, 3.0]}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({A8_KEPT: 3.05, A8_RANDOM: [3.9, 3.95]}, HOLDS),
        ({A8_KEPT: 3.05, A8_RANDOM: [3.2, 3.95]}, PARTLY),  # a random draw restores most as well
        ({A8_KEPT: 3.6, A8_RANDOM: [3.9, 3.95]}, PARTLY),  # the outlier tokens restore 40 %
        ({A8_KEPT: 3.9, A8_RANDOM: [3.9, 3.95]}, DOES_NOT_HOLD),
        ({A8_TOKEN: 3.5, A8_KEPT: 3.05, A8_RANDOM: [3.9, 3.95]}, DOES_NOT_HOLD),  # per token fails as well
        ({A8_KEPT: float("nan"), A8_RANDOM: [3.9, 3.95]}, NOT_MEASURED),
    ],
)
def test_every_activation_verdict_is_reachable(changes, expected):
    finding = quantization_report.activation_finding(_losses({**BASE, **changes}))
    assert finding.verdict == expected, finding.measured


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({W8: 3.5, W8_KEPT: 3.01, W8_RANDOM: [3.5, 3.45]}, HOLDS),
        ({W8: 3.5, W8_KEPT: 3.01, W8_RANDOM: [3.01, 3.45]}, PARTLY),
        ({W8: 3.5, W8_KEPT: 3.5, W8_RANDOM: [3.5, 3.45]}, DOES_NOT_HOLD),
        ({W8: 3.0001}, DOES_NOT_HOLD),  # 8-bit weights cost nothing measurable
    ],
)
def test_every_weight_verdict_is_reachable(changes, expected):
    losses = _losses({**BASE, A8_KEPT: 3.05, A8_RANDOM: [3.9, 3.95], **changes})
    assert quantization_report.weight_finding(losses).verdict == expected


def test_without_the_rule_or_with_nothing_to_keep_the_claims_say_why():
    assert all(finding.verdict == NOT_MEASURED for _, finding in quantization_report.judged(None))
    nothing_kept = _losses({**BASE, A8_KEPT: 4.0, A8_RANDOM: [4.0, 4.0]}).assign(edited=0)
    finding = quantization_report.activation_finding(nothing_kept)
    assert finding.verdict == DOES_NOT_HOLD and "no outlier tokens" in finding.measured


def test_a_control_that_cannot_be_matched_in_count_is_not_measured():
    # every token of the window is an outlier token: no other tokens to draw as many of
    unmatched = _losses({**BASE, A8_KEPT: 3.05, A8_RANDOM: [3.9, 3.95]})
    unmatched.loc[unmatched.quantization == A8_RANDOM, "edited"] = 0
    finding = quantization_report.activation_finding(unmatched)
    assert finding.verdict == NOT_MEASURED and "only 0 others to draw" in finding.measured


def test_the_table_across_models_names_every_pass_and_each_models_claims():
    losses = _losses({**BASE, A8_KEPT: 3.05, A8_RANDOM: [3.9, 3.95]})
    table = pd.concat([quantization_report.table(losses, model) for model in ("one", "two")], ignore_index=True)
    text = quantization_report.table_markdown(table, {model: quantization_report.judged(losses) for model in ("one", "two")})
    assert len(table) == 2 * len(QUANTIZATIONS) and "## two" in text and "**holds**" in text
    assert "Holds when the a8-per-tensor damage is ≥ 0.001 nats" in text  # the criterion, beside the verdict


def test_the_replayed_passes_equal_the_passes_from_the_first_layer(planted_capture, tmp_path, monkeypatch):
    from systematic_outliers import interventions

    replayed, record = _quantized(planted_capture, planted_model(), tmp_path)
    assert record["replayed_from"] == {A8_KEPT: MLP_LAYER, W8_KEPT: MLP_LAYER}  # where the first token (column) is kept

    def never_exact(passes, edits=None):  # every pass from the first layer, as when a replay is not exact
        passes.exact = dict.fromkeys(passes.entering, False)

    monkeypatch.setattr(interventions.Passes, "check_replays", never_exact)
    full, record = _quantized(planted_capture, planted_model(), tmp_path / "full")
    assert record["replayed_from"] == {A8_KEPT: 0, W8_KEPT: 0}
    pd.testing.assert_frame_equal(replayed, full)


def test_the_passes_leave_the_model_as_it_was(planted_capture, tmp_path):
    model = planted_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    hooks = [(len(module._forward_pre_hooks), len(module._forward_hooks)) for module in model.modules()]  # transformers' own
    _quantized(planted_capture, model, tmp_path)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert [(len(module._forward_pre_hooks), len(module._forward_hooks)) for module in model.modules()] == hooks


def test_conv1d_and_stacked_experts_are_quantized_per_output_channel():
    from test_experts import WEIGHT_COLUMN, WEIGHT_EXPERT, planted_mixtral

    gpt2 = tiny_model("gpt2")
    matrices = quantization.weight_matrices(gpt2)
    c_proj = gpt2.transformer.h[0].mlp.c_proj.weight  # Conv1D: [in 128, out 32]
    assert tuple(matrices["transformer.h.0.mlp.c_proj"].view.shape) == (32, 128)
    original = c_proj.detach().clone()
    with quantization.weights_kept_aside(matrices) as originals:
        quantization.write_w8(matrices, originals, {"transformer.h.0.mlp.c_proj": [3]})
        torch.testing.assert_close(c_proj.detach(), quantization.weight_per_channel(original.T, [3]).T, rtol=0, atol=0)
    assert torch.equal(c_proj.detach(), original)  # written back

    mixtral = planted_mixtral()
    matrices = quantization.weight_matrices(mixtral)
    experts = mixtral.model.layers[1].mlp.experts
    down = experts.down_proj  # [experts, d_model, intermediate]: one expert's [out, in]
    name = f"model.layers.1.mlp.experts.down_proj[{WEIGHT_EXPERT}]"
    assert matrices[name].view.data_ptr() == down[WEIGHT_EXPERT].data_ptr() and matrices[name].layer == 1
    assert quantization.stacked_experts(mixtral) == {
        f"model.layers.{i}.mlp.experts": (mixtral.model.layers[i].mlp.experts, i) for i in range(2)
    }
    # the weight statistics name the planted column under the checkpoint's names (block_sparse_moe.experts.w2[1])
    weights = pd.DataFrame(
        {
            "layer": [1],
            "module": [f"block_sparse_moe.experts.w2[{WEIGHT_EXPERT}]"],
            "expert": [WEIGHT_EXPERT],
            "top_columns": [[WEIGHT_COLUMN]],
        }
    )
    assert quantization.outlier_columns(matrices, weights, "model.layers") == ({name: [WEIGHT_COLUMN]}, [])
    original = down.detach().clone()
    with quantization.weights_kept_aside(matrices) as originals:
        quantization.write_w8(matrices, originals, dict.fromkeys(matrices, ()))
        for expert in range(down.shape[0]):
            torch.testing.assert_close(down[expert].detach(), quantization.weight_per_channel(original[expert]), rtol=0, atol=0)
    assert torch.equal(down.detach(), original)


def test_linears_reading_one_tensor_share_one_quantized_copy():
    model = tiny_model("llama")
    modules = quantization.input_modules(model)
    calls = []

    def quantize(x, layer):
        calls.append(layer)
        return x

    with quantization.quantized_inputs(modules, quantize), torch.no_grad():
        model(torch.arange(8)[None])
    # per layer: q/k/v, o, gate/up, down read four tensors
    assert len(modules) == 7 * model.config.num_hidden_layers and len(calls) == 4 * model.config.num_hidden_layers


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_passes_run_in_half_precision_and_leave_the_weights_as_they_were(planted_capture, tmp_path, dtype):
    """The GPU dtypes on the CPU: every pass finite, the replays exact, the model's half-precision weights restored bit for bit."""
    model = planted_model().to(dtype)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    losses, record = _quantized(planted_capture, model, tmp_path)
    assert set(losses.quantization) == set(QUANTIZATIONS) and losses.loss.notna().all()
    assert record["dtype"] == str(dtype).removeprefix("torch.") and record["replayed_from"] == {A8_KEPT: MLP_LAYER, W8_KEPT: MLP_LAYER}
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
