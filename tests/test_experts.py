"""Mixture-of-experts MLPs captured per expert, and gpt-oss's learned attention sink as a pseudo-key:
planted outliers at known experts and channels, the capture against an independent computation,
and the learned-sink claim driven to each of its verdicts."""

import pandas as pd
import pytest
import torch
from planted import LABELS, capturing
from safetensors.torch import save_file
from systematic_outliers import capture, choices, passes, verdict_engine, verdicts
from systematic_outliers.readers import Evidence
from systematic_outliers.verdict_engine import DOES_NOT_HOLD, HOLDS, NOT_MEASURED
from systematic_outliers.weights import weight_statistics
from tiny_families import tiny_family

EXPERT, CHANNEL = 2, 5  # the planted massive down-projection input: expert 2, channel 5 of layer 1
WEIGHT_EXPERT, WEIGHT_COLUMN = 1, 9  # the planted W_down column outlier of layer 1
STREAM = 7  # a residual channel made large at every token, which the planted rows read
WRITTEN_ROW = 20  # the residual channel the aligned model's outstanding column writes


def planted_mixtral(aligned: bool = False):
    """A tiny Mixtral whose layer-1 router sends every token to EXPERT first, whose EXPERT reads the
    always-large residual channel STREAM into its intermediate CHANNEL (act(gate) · up, both from it),
    and whose WEIGHT_EXPERT has one outstanding W_down column. `aligned`: the outstanding column is
    instead EXPERT's CHANNEL, which writes its massive input onto residual row WRITTEN_ROW alone."""
    model = tiny_family("mixtral")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, STREAM] = 4.0
        moe = model.model.layers[1].mlp
        moe.gate.weight[EXPERT] = 0.0
        moe.gate.weight[EXPERT, STREAM] = 50.0
        width = moe.experts.down_proj.shape[-1]
        for row in (CHANNEL, width + CHANNEL):  # gate and up halves of gate_up_proj
            moe.experts.gate_up_proj[EXPERT, row] = 0.0
            moe.experts.gate_up_proj[EXPERT, row, STREAM] = 30.0
        if aligned:
            moe.experts.down_proj[EXPERT, :, CHANNEL] = 0.0
            moe.experts.down_proj[EXPERT, WRITTEN_ROW, CHANNEL] = 1.0  # one entry: max/mean = the rows, 64
        else:
            moe.experts.down_proj[WEIGHT_EXPERT, STREAM, WEIGHT_COLUMN] = 10.0  # one large entry: a column max/mean outlier
    return capturing(model)


def windows(folder, count=3, length=32):
    ids = torch.randint(3, 100, (count, length), generator=torch.Generator().manual_seed(0))
    save_file({"input_ids": ids}, folder / "input_ids.safetensors")
    return ids


def test_expert_inputs_are_each_routed_experts_own_down_projection_input():
    """Recomputed from the layer's MLP input, the router and the expert's own matrices, by hand."""
    model = planted_mixtral()
    ids = torch.arange(3, 15)[None]
    seen = {}
    with capture.hooks(model, ("mlp_norm_output", "down_proj_input"), lambda s, layer, t: seen.setdefault((s, layer), t)):
        with torch.no_grad():
            model(ids)
    routed, x = seen["down_proj_input", 1], seen["mlp_norm_output", 1]
    moe = model.model.layers[1].mlp
    top_k = model.config.num_experts_per_tok
    experts = torch.softmax(x @ moe.gate.weight.T, dim=-1).topk(top_k).indices
    assert torch.equal(routed.experts, experts) and (experts[:, 0] == EXPERT).all()
    width = moe.experts.down_proj.shape[-1]
    for token in range(ids.shape[1]):
        for slot, expert in enumerate(experts[token].tolist()):
            gate, up = (x[token] @ moe.experts.gate_up_proj[expert].T).chunk(2)
            expected = torch.nn.functional.silu(gate) * up
            torch.testing.assert_close(routed.values[token, slot], expected)
            dense = routed.dense()[token, expert * width : (expert + 1) * width]
            torch.testing.assert_close(dense, expected)
    # the dense form's columns are the experts' W_down side by side: their weighted sum is the MLP's routed output
    weights = torch.softmax(x @ moe.gate.weight.T, dim=-1).topk(top_k).values
    weights = weights / weights.sum(-1, keepdim=True)
    scaled = routed.values * weights[..., None]
    output = capture.ExpertInputs(scaled, routed.experts, routed.num_experts).dense() @ capture.experts_down_proj(moe.experts).T
    with torch.no_grad():
        torch.testing.assert_close(output, moe.experts(x, routed.experts, weights), rtol=1e-4, atol=1e-5)


def test_planted_expert_outliers_are_found_at_their_expert_and_channel(tmp_path):
    model = planted_mixtral()
    windows(tmp_path)
    passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "stats")
    width = model.model.layers[1].mlp.experts.down_proj.shape[-1]
    planted = EXPERT * width + CHANNEL
    topk = pd.read_parquet(tmp_path / "stats" / "topk.parquet")
    top = topk[(topk.site == "down_proj_input") & (topk.layer == 1) & (topk["rank"] == 1)]
    assert (top.channel == planted).all()
    outliers = pd.read_parquet(tmp_path / "stats" / "activation_outliers.parquet")
    down = outliers[(outliers.site == "down_proj_input") & (outliers.layer == 1)]
    assert len(down) == 3 * 32 and (down.channel == planted).all() and down.sun_rule.all()
    channel_max = pd.read_parquet(tmp_path / "stats" / "channel_max.parquet").set_index(["layer", "site"]).max_abs
    assert len(channel_max[1, "down_proj_input"]) == model.config.num_local_experts * width
    assert int(channel_max[1, "down_proj_input"].argmax()) == planted
    # the mean and median are over the routed entries only: not diluted by the experts a token skipped
    sites = pd.read_parquet(tmp_path / "stats" / "sites.parquet")
    row = sites[(sites.site == "down_proj_input") & (sites.layer == 0)].iloc[0]
    assert row.median_abs > 0

    save_directory = tmp_path / "model"
    from conftest import save_with_architecture

    save_with_architecture(model, save_directory)
    weights = weight_statistics(save_directory, "tiny")
    down_rows = choices.down_projections(weights)
    assert len(down_rows) == 2 * model.config.num_local_experts  # one W_down per expert and layer
    top = down_rows.loc[down_rows.column_ratio.idxmax()]
    assert (int(top.layer), int(top.expert)) == (1, WEIGHT_EXPERT)
    assert top.label == f"expert {WEIGHT_EXPERT}, column {WEIGHT_COLUMN}"
    assert int(top.column) == WEIGHT_EXPERT * width + WEIGHT_COLUMN  # the statistics' channel of that column


def test_experts_of_their_own_code_are_left_out_with_the_reason():
    architecture = capture.architecture_of(tiny_family("llama4_text"))
    assert "down_proj_input" not in capture.available_sites(architecture)
    assert "without transformers' experts interface" in architecture.absent["down_proj_input"]


def test_a_dense_and_moe_model_reads_each_layer_where_it_is():
    model = capturing(tiny_family("deepseek_v3"))  # first_k_dense_replace = 1: a dense MLP, then experts
    architecture = capture.architecture_of(model)
    assert architecture.tap("down_proj_input", 0).side == "input"
    assert architecture.tap("down_proj_input", 1).side == "experts"
    seen = {}
    with capture.hooks(model, ("down_proj_input",), lambda s, layer, t: seen.setdefault(layer, t)), torch.no_grad():
        model(torch.arange(3, 12)[None])
    assert isinstance(seen[1], capture.ExpertInputs) and isinstance(seen[0], torch.Tensor)
    assert capture.mlp_weights(model, 1)["down_proj"].shape[1] == seen[1].dense().shape[1]


def sink_model(logits: tuple[float, ...]):
    """A tiny gpt-oss whose learned sink logits are `logits[l]` for every head of layer l."""
    model = tiny_family("gpt_oss")
    with torch.no_grad():
        for layer, logit in zip(model.model.layers, logits, strict=True):
            layer.self_attn.sinks.fill_(logit)
    return capturing(model)


def sink_evidence(tmp_path, logits: tuple[float, ...]):
    from conftest import save_with_architecture

    model = sink_model(logits)
    windows(tmp_path)
    passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "stats")
    save_with_architecture(model, tmp_path / "model")
    weight_statistics(tmp_path / "model", "tiny").to_parquet(tmp_path / "weights.parquet")
    return model, Evidence.load("gpt-oss", tmp_path / "stats", tmp_path / "weights.parquet")


def test_the_learned_sink_share_is_its_softmax_share(tmp_path):
    """e^b / (e^b + Σ_j e^{s_j}) per query, from the captured logits, summed over queries."""
    model, evidence = sink_evidence(tmp_path, (1.5, -0.5))
    ids = windows(tmp_path)
    logits = {}
    with capture.hooks(model, ("attn_logits",), lambda s, layer, t: logits.setdefault(layer, t)), torch.no_grad():
        model(ids[:1])
    sink = evidence.attention_sink[evidence.attention_sink.window == 0].set_index(["layer", "head"]).cumulative
    assert sorted(logits) == [0, 1]
    for layer, scores in logits.items():
        b = model.model.layers[layer].self_attn.sinks
        share = torch.exp(b[:, None]) / (torch.exp(b[:, None]) + torch.exp(scores).sum(-1))  # [heads, queries]
        expected = share.sum(-1)
        torch.testing.assert_close(torch.tensor(sink[layer].to_numpy(), dtype=torch.float32), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("logits", "verdict"),
    [((12.0, 12.0), verdict_engine.HOLDS), ((12.0, -30.0), verdict_engine.PARTLY), ((-30.0, -30.0), verdict_engine.DOES_NOT_HOLD)],
    ids=["a sink that takes the attention", "a sink in one layer of two", "a sink that takes none"],
)
def test_the_learned_sink_claim_reaches_its_verdicts(tmp_path, logits, verdict):
    """A sink logit far above the scores takes the attention the first key would get; far below, the
    first key under near-uniform causal attention (H_32 ≈ 4.1 > 0.1 × 32) gets it. Models without a
    learned sink are the negative control (test_verdicts: not measured)."""
    _, evidence = sink_evidence(tmp_path, logits)
    measured = verdicts.Measured(evidence, choices.for_model(evidence), {}, [], {"layers": 2}, {})
    assert verdicts.judge_learned_sink(measured).verdict == verdict


# ---------------------------------------------------------------------------------------------
# The existence and alignment claims of the planted Mixtral, captured as the rules capture it.


@pytest.fixture(scope="module")
def mixtral_measured(tmp_path_factory):
    """verdicts.measure of each planted Mixtral, from capture_everything (statistics, prompt, weights, interventions)."""
    from conftest import capture_everything, measured

    def measure(aligned: bool):
        folder = tmp_path_factory.mktemp("aligned" if aligned else "separate")
        c = capture_everything(planted_mixtral(aligned), windows(folder), [5, 17, 42, 8, 63, 17], folder)
        return measured(c, folder.name)

    return {aligned: measure(aligned) for aligned in (False, True)}


EXISTENCE_AND_ALIGNMENT = ("activation", "weight", "attention", "weight_writes", "keys_are_tokens")


def findings_of(m):
    return {claim.key: finding for claim, finding in verdicts.judge(m) if claim.key in EXISTENCE_AND_ALIGNMENT}


def test_the_experts_claims_name_the_planted_expert_and_column_where_they_align(mixtral_measured):
    """EXPERT's CHANNEL is both the massive down-projection input and the outstanding W_down column, whose one entry
    writes it onto WRITTEN_ROW: a massive residual channel. Every token is routed there and has it, so no token stands
    out of its window by the paper's rule (max |h| > 1000 × the window's mean): nothing for the keys to match."""
    m = mixtral_measured[True]
    width = 128  # the experts' intermediate width
    findings = findings_of(m)
    assert {key: f.verdict for key, f in findings.items()} == {
        "activation": HOLDS,
        "weight": HOLDS,
        "attention": HOLDS,  # near-uniform causal attention over 32 keys: the first key gets H_32 ≈ 4.1 > 3.2
        "weight_writes": HOLDS,
        "keys_are_tokens": NOT_MEASURED,
    }
    label = f"expert {EXPERT}, column {CHANNEL}"
    assert findings["weight"].measured.startswith(f"{label} of layer 2: max/mean 64, ")
    assert findings["weight"].value.startswith(f"{label}, layer 2: 64 (")
    assert findings["weight_writes"].measured == (
        f"1 of 1 rows written by the 1 outstanding W_down columns ({label} of layer 2 → rows {WRITTEN_ROW}) are massive "
        f"residual channels ({WRITTEN_ROW}); 1 of the columns are massive down-input channels of their layer"
    )
    assert findings["weight_writes"].value == "100% of rows"
    assert (
        m.table1["columns_on_down_input_outlier_channels"] == 1 and int(m.chosen.weight_columns.column.iloc[0]) == EXPERT * width + CHANNEL
    )
    assert findings["activation"].value.endswith("at layer 2")


def test_the_experts_claims_do_not_align_an_outstanding_column_of_another_expert(mixtral_measured):
    """The negative control: WEIGHT_EXPERT's column WEIGHT_COLUMN stands out but writes STREAM, large (4) at every
    token and never massive; EXPERT's massive input is spread by its random W_down over every residual channel, so no
    residual channel stands out of its layer's median and no activation is massive."""
    m = mixtral_measured[False]
    findings = findings_of(m)
    assert {key: f.verdict for key, f in findings.items()} == {
        "activation": DOES_NOT_HOLD,
        "weight": HOLDS,
        "attention": HOLDS,
        "weight_writes": DOES_NOT_HOLD,
        "keys_are_tokens": NOT_MEASURED,
    }
    label = f"expert {WEIGHT_EXPERT}, column {WEIGHT_COLUMN}"
    assert findings["weight"].measured.startswith(f"{label} of layer 2: max/mean 59, ")
    assert findings["weight_writes"].measured == (
        f"0 of 1 rows written by the 1 outstanding W_down columns ({label} of layer 2 → rows {STREAM}) are massive "
        "residual channels (there are none); 0 of the columns are massive down-input channels of their layer"
    )
