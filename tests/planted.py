"""Tiny models with outliers planted at known places, shared by the test modules: a Llama whose
weights create one massive activation, one weight outlier and one attention sink (`planted_model`),
one whose outlier is built over several layers (`gradual_model`), one whose outlier MLPs take down
(`cancelled_model`), one whose sink a no-op head parks on (`sink_model`) and one whose outlier is
written early in a deeper model (`early_model`), with their windows."""

import types

import torch
from conftest import tiny_model
from safetensors.torch import save_file
from systematic_outliers import capture

PROMPT_IDS = torch.tensor([[5, 17, 42, 8, 63, 17, 30, 8, 2]])  # a prompt with delimiters, for the tiny models
LABELS = types.SimpleNamespace(decode=lambda ids: {8: ".", 2: "\n", 30: "the"}.get(ids[0], f"w{ids[0]}"))


def capturing(model):
    """The model with the attention and experts implementations the capture rules load it with."""
    capture.register_capture()
    if not capture.architecture_of(model).probs_from_output:
        model.set_attn_implementation(capture.ATTENTION_CAPTURE)
    if capture.architecture_of(model).reads_experts:
        model.set_experts_implementation(capture.EXPERTS_CAPTURE)
    return model


# ---------------------------------------------------------------------------------------------
# Planted outliers: a tiny Llama whose weights create one massive activation, one weight
# outlier and one attention sink at known places. The sink sits before the massive activation:
# in a random tiny model any large channel swamps every token's norm output.

MASSIVE_TOKEN, EMBED_CHANNEL = 61, 3  # the token that triggers everything, and its marker channel
MLP_LAYER, DOWN_COLUMN, OUTPUT_CHANNEL = 2, 37, 20  # layer, intermediate channel, residual channel
SINK_LAYER = 1


def _plant(model, mlp_layer: int, sink_layer: int) -> None:
    """The massive token's marker in the embeddings, the MLP of `mlp_layer` that turns it into the massive
    activation (through W_down's DOWN_COLUMN), and the heads of `sink_layer` whose keys read the marker (the sink)."""
    head_dim = model.config.head_dim
    low_frequency = head_dim // 2 - 1  # the rotary pair that barely rotates over a few dozen positions
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, EMBED_CHANNEL] = 0.0
        embed[MASSIVE_TOKEN, EMBED_CHANNEL] = 5.0
        mlp = model.model.layers[mlp_layer].mlp
        mlp.gate_proj.weight[DOWN_COLUMN, EMBED_CHANNEL] = 3.0
        mlp.up_proj.weight[DOWN_COLUMN, EMBED_CHANNEL] = 3.0
        mlp.down_proj.weight[OUTPUT_CHANNEL, DOWN_COLUMN] = 40.0
        attention = model.model.layers[sink_layer].self_attn
        for head in range(model.config.num_attention_heads):
            attention.q_proj.bias[head * head_dim + low_frequency] = 12.0
        for head in range(model.config.num_key_value_heads):
            attention.k_proj.weight[head * head_dim + low_frequency, :] = 0.0
            attention.k_proj.weight[head * head_dim + low_frequency, EMBED_CHANNEL] = 4.0


def planted_model(layers: int = 4, mlp_layer: int = MLP_LAYER, sink_layer: int = SINK_LAYER):
    """The planted Llama; `early_model` moves the outlier and the sink to the first layers of a deeper one."""
    model = tiny_model("llama", num_hidden_layers=layers, attention_bias=True, intermediate_size=64)
    _plant(model, mlp_layer, sink_layer)
    return capturing(model.eval())


EARLY_LAYERS, EARLY_MLP_LAYER = 8, 1  # an outlier written at layer 2 of 8, kept to the last layer


def early_model():
    """The planted outlier written early in a deeper model (by the MLP of the sink's own layer) and never cancelled: the
    lifetime claim's positive control (emerges within the first quarter of the layers, still there at three quarters)."""
    return planted_model(layers=EARLY_LAYERS, mlp_layer=EARLY_MLP_LAYER)


def planted_windows(tmp_path, count=3, length=48):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 60, (count, length), generator=generator)  # never the massive token...
    ids[:, 0] = MASSIVE_TOKEN  # ...except at the start of every window
    ids[1, 0], ids[1, 9] = 4, MASSIVE_TOKEN  # and in window 1 at position 9 instead
    save_file({"input_ids": ids}, tmp_path / "input_ids.safetensors")
    return ids


# A gradually built outlier: the MLPs of layers 1–4 each write onto GRADUAL_CHANNEL at the massive
# token, reading its marker channel, which the norm squashes more the larger the outlier is. Zeroed
# once, the outlier is written again by the next layer (from an unsquashed marker); held at zero it
# is gone. Layer 5 is a no-op head that parks on it: the outlier's key draws every query, its value
# is zero; without it attention spreads over the other tokens, whose values write a large vector
# onto DISRUPTED_CHANNEL, which the LM head reads as a confident vote for one token, NEVER_SEEN.

GRADUAL_CHANNEL, DISRUPTED_CHANNEL, NEVER_SEEN = 20, 25, 95
GRADUAL_WRITES = {1: (2.5, 2.5, 2.5), 2: (100.0, 10.0, 10.0), 3: (200.0, 30.0, 20.0), 4: (500.0, 50.0, 50.0)}  # layer: gate, up, down
GRADUAL_SINK = 5


def gradual_model():
    model = tiny_model("llama", num_hidden_layers=6, attention_bias=True, intermediate_size=64)
    head_dim = model.config.head_dim
    low_frequency = head_dim // 2 - 1
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, [EMBED_CHANNEL, GRADUAL_CHANNEL]] = 0.0
        embed[MASSIVE_TOKEN, EMBED_CHANNEL] = 5.0
        for layer in model.model.layers:  # nothing but the embedding writes the marker
            layer.self_attn.o_proj.weight[EMBED_CHANNEL] = 0.0
            layer.mlp.down_proj.weight[EMBED_CHANNEL] = 0.0
        for layer, (gate, up, down) in GRADUAL_WRITES.items():
            mlp = model.model.layers[layer].mlp
            mlp.gate_proj.weight[DOWN_COLUMN] = 0.0
            mlp.up_proj.weight[DOWN_COLUMN] = 0.0
            mlp.down_proj.weight[:, DOWN_COLUMN] = 0.0
            mlp.gate_proj.weight[DOWN_COLUMN, EMBED_CHANNEL] = gate
            mlp.up_proj.weight[DOWN_COLUMN, EMBED_CHANNEL] = up
            mlp.down_proj.weight[GRADUAL_CHANNEL, DOWN_COLUMN] = down
        attention = model.model.layers[GRADUAL_SINK].self_attn
        scale = model.model.layers[GRADUAL_SINK].input_layernorm.weight[GRADUAL_CHANNEL] * model.config.hidden_size**0.5
        for head in range(model.config.num_attention_heads):
            attention.q_proj.bias[head * head_dim + low_frequency] = 12.0
        for head in range(model.config.num_key_value_heads):
            attention.k_proj.weight[head * head_dim + low_frequency] = 0.0
            attention.k_proj.weight[head * head_dim + low_frequency, GRADUAL_CHANNEL] = 4.0
        attention.v_proj.bias[:] = 1.0  # every ordinary token's value
        attention.v_proj.weight[:, GRADUAL_CHANNEL] = -1.0 / scale  # … and none at the outlier token
        attention.o_proj.weight[DISRUPTED_CHANNEL] = 5.0
        model.lm_head.weight[NEVER_SEEN, DISRUPTED_CHANNEL] = 5.0
    return capturing(model.eval())


def gradual_windows(tmp_path, count=3, length=48):
    ids = torch.randint(0, 60, (count, length), generator=torch.Generator().manual_seed(2))
    ids[:, 0] = MASSIVE_TOKEN
    save_file({"input_ids": ids}, tmp_path / "input_ids.safetensors")
    return ids


# A cancelled outlier: the planted model's outlier (massive at the output of MLP_LAYER) taken down by the
# MLPs of the next two layers, each writing against it at the outlier token only: CANCEL_STEPS of what
# arrives there (−48 %, then −65 % of the rest: −82 % over two layers). Only the planted writers touch the
# marker and the outlier channel, so at every other token both are exactly 0 and the cancelling MLPs, which
# read the outlier channel, write nothing there. Without `cancel` (the negative control) the outlier stays.

CANCEL_STEPS = {MLP_LAYER + 1: 0.48, MLP_LAYER + 2: 0.65}  # layer: share of the arriving |h| its MLP writes against it


def cancelled_model(cancel: bool = True):
    model = tiny_model("llama", num_hidden_layers=6, attention_bias=True, intermediate_size=64)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, OUTPUT_CHANNEL] = 0.0
        for layer in model.model.layers:  # nothing but the planted writers writes the marker or the outlier channel
            layer.self_attn.o_proj.weight[[EMBED_CHANNEL, OUTPUT_CHANNEL]] = 0.0
            layer.mlp.down_proj.weight[[EMBED_CHANNEL, OUTPUT_CHANNEL]] = 0.0
            layer.mlp.gate_proj.weight[DOWN_COLUMN] = 0.0
            layer.mlp.up_proj.weight[DOWN_COLUMN] = 0.0
            layer.mlp.down_proj.weight[:, DOWN_COLUMN] = 0.0
    _plant(model, MLP_LAYER, SINK_LAYER)
    with torch.no_grad():
        if cancel:
            ids = torch.tensor([[MASSIVE_TOKEN, 5, 17]])
            for layer, share in CANCEL_STEPS.items():
                mlp = model.model.layers[layer].mlp
                mlp.gate_proj.weight[DOWN_COLUMN, OUTPUT_CHANNEL] = 1.0  # reads the outlier: 0 at every other token
                mlp.up_proj.weight[DOWN_COLUMN, OUTPUT_CHANNEL] = 1.0
                mlp.down_proj.weight[OUTPUT_CHANNEL, DOWN_COLUMN] = -1.0
                arriving = model(ids, output_hidden_states=True).hidden_states[layer][0, 0, OUTPUT_CHANNEL]  # what layer `layer` receives
                written = model(ids, output_hidden_states=True).hidden_states[layer + 1][0, 0, OUTPUT_CHANNEL] - arriving  # per unit weight
                mlp.down_proj.weight[OUTPUT_CHANNEL, DOWN_COLUMN] = -share * float(arriving) / float(-written)
    return capturing(model.eval())


# A sink that a no-op head parks on, for the sink-ablation, scaling-factor and small-values claims. The marker at the
# massive token (the first of every window) makes the MLP of SCALING_MLP write a massive activation onto OUTPUT_CHANNEL,
# which the heads of SCALING_SINK read as their only key: every ordinary key is exactly 0 (score 0); the outlier token's
# score is the query's low-frequency entry (rotated by under 0.07 rad over a window), SINK_SCORE plus a part read from the
# query token, so the share of attention on the sink varies with the query token and with how many other keys it sees
# (the context). Every ordinary token's value is the same vector (all ones), the outlier token's `sink_value` times it:
# each head's output is (1 - share + share × sink_value) times that vector, whose norm falls as the share rises when
# sink_value < 1 (the sink as a context-aware scaling factor) and rises when it is > 1. With `read`, the output
# projection writes the heads' outputs onto DISRUPTED_CHANNEL, which the LM head reads as a vote for NEVER_SEEN: parked
# on a sink of small value the head writes little; with the sink removed its whole attention goes to the ordinary values
# and the vote swamps every prediction (a no-op head that needs its sink). Without `read` nothing reads the head: the
# same sink, parked on and not needed. The two negative controls: LARGE_SINK_VALUE, and read=False.

SCALING_MLP, SCALING_SINK = 1, 2
SMALL_SINK_VALUE, LARGE_SINK_VALUE = 0.1, 2.0  # the outlier token's value / every ordinary token's
SINK_SCORE, SCORE_SPREAD = 7.0, 0.25  # the sink's attention score: a constant, and the weight on each channel of the query token
DISRUPT, VOTE, EMBED_SCALE = 0.06, 2.0, 20.0  # the heads' write onto DISRUPTED_CHANNEL, the LM head's vote, the embeddings' scale
SCALING_LENGTH = 64  # window length: uniform attention gives the first key H_64 ≈ 4.7, under the outlier threshold 6.4


def sink_model(sink_value: float = SMALL_SINK_VALUE, read: bool = True):
    model = tiny_model("llama", num_hidden_layers=4, attention_bias=True, intermediate_size=64)
    config = model.config
    head_dim, heads, kv_heads = config.head_dim, config.num_attention_heads, config.num_key_value_heads
    low_frequency = head_dim // 2 - 1
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed *= EMBED_SCALE  # ordinary residuals of a known size, against which the no-op head's write is weighed
        embed[:, [EMBED_CHANNEL, OUTPUT_CHANNEL]] = 0.0
        embed[MASSIVE_TOKEN] = 0.0
        embed[MASSIVE_TOKEN, EMBED_CHANNEL] = 5.0
        for layer in model.model.layers:  # nothing but the planted writers writes the marker or the outlier channel
            layer.self_attn.o_proj.weight[[EMBED_CHANNEL, OUTPUT_CHANNEL]] = 0.0
            layer.mlp.down_proj.weight[[EMBED_CHANNEL, OUTPUT_CHANNEL]] = 0.0
        mlp = model.model.layers[SCALING_MLP].mlp
        mlp.gate_proj.weight[DOWN_COLUMN] = 0.0
        mlp.up_proj.weight[DOWN_COLUMN] = 0.0
        mlp.down_proj.weight[:, DOWN_COLUMN] = 0.0
        mlp.gate_proj.weight[DOWN_COLUMN, EMBED_CHANNEL] = 3.0
        mlp.up_proj.weight[DOWN_COLUMN, EMBED_CHANNEL] = 3.0
        mlp.down_proj.weight[OUTPUT_CHANNEL, DOWN_COLUMN] = 40.0
        block = model.model.layers[SCALING_SINK]
        attention = block.self_attn
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
            projection.weight.zero_()
            if projection.bias is not None:
                projection.bias.zero_()
        # what the sink layer's norm gives at the outlier channel of the massive token (the first token: the same in every window)
        entering = model(torch.tensor([[MASSIVE_TOKEN]]), output_hidden_states=True).hidden_states[SCALING_SINK][0, 0]
        normed = float(block.input_layernorm(entering)[OUTPUT_CHANNEL])
        spread = torch.randn(config.hidden_size, generator=torch.Generator().manual_seed(3)) * SCORE_SPREAD
        spread[[EMBED_CHANNEL, OUTPUT_CHANNEL]] = 0.0
        for head in range(heads):
            attention.q_proj.bias[head * head_dim + low_frequency] = SINK_SCORE
            attention.q_proj.weight[head * head_dim + low_frequency] = spread
        for head in range(kv_heads):  # the outlier token's key: score = the query's low-frequency entry
            attention.k_proj.weight[head * head_dim + low_frequency, OUTPUT_CHANNEL] = head_dim**0.5 / normed
        attention.v_proj.bias[:] = 1.0  # every ordinary token's value
        attention.v_proj.weight[:, OUTPUT_CHANNEL] = (sink_value - 1.0) / normed  # … and sink_value times it at the outlier token
        if read:
            attention.o_proj.weight[DISRUPTED_CHANNEL] = DISRUPT
            model.lm_head.weight[NEVER_SEEN] = 0.0
            model.lm_head.weight[NEVER_SEEN, DISRUPTED_CHANNEL] = VOTE
    return capturing(model.eval())


def sink_windows(tmp_path, count=3, length=SCALING_LENGTH):
    ids = torch.randint(0, 60, (count, length), generator=torch.Generator().manual_seed(4))
    ids[:, 0] = MASSIVE_TOKEN
    save_file({"input_ids": ids}, tmp_path / "input_ids.safetensors")
    return ids
