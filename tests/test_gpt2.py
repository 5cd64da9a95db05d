"""Each attention variant equals its closed form on small tensors (with the causal mask, and at the first position),
its fused path equals its eager weights, it stays causal, and it adds the paper's parameter count."""

import math

import pytest
import torch
from systematic_outliers.gpt2 import ATTENTION, GPT, GPTConfig
from systematic_outliers.variants import VARIANTS

SMALL = dict(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=8)


def attention(variant, seed=0):
    """One attention module with random weights (biases too) and c_proj the identity, so its
    output is the merged heads themselves."""
    torch.manual_seed(seed)
    module = ATTENTION[variant](GPTConfig(**SMALL, attention=variant))
    with torch.no_grad():
        module.c_proj.weight.copy_(torch.eye(8))
        for name, parameter in module.named_parameters():
            if not name.startswith(("c_attn", "c_proj")):  # the variant's own parameters, away from their init
                parameter.normal_()
    return module.eval()


def merged(y):  # [B, H, T, d] -> [B, T, H·d]
    return y.transpose(1, 2).flatten(2)


def softmax_attention(q, k, v):
    T = q.shape[2]
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return logits.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1) @ v


def extra_key_weight(module, q, k):
    """w_i = e^{q_i·k′/√d} / (e^{q_i·k′/√d} + Σ_{j≤i} e^{q_i·k_j/√d})."""
    T, d = q.shape[2], q.shape[-1]
    logits = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    extra = q @ module.k_bias.transpose(-2, -1) / math.sqrt(d)
    return torch.cat([extra, logits], -1).softmax(-1)[..., :1]


X = torch.randn(3, 7, 8, generator=torch.Generator().manual_seed(1))


def test_default_is_softmax_attention():
    module = attention("default")
    q, k, v = module.heads(X)
    torch.testing.assert_close(module(X), merged(softmax_attention(q, k, v)))


def test_fixed_bias_adds_one_vector_after_the_heads_merge():
    module = attention("fixed_bias")
    q, k, v = module.heads(X)
    torch.testing.assert_close(module(X), merged(softmax_attention(q, k, v)) + module.v_bias)


def test_context_bias_adds_the_weight_of_the_extra_key_times_its_value():
    module = attention("context_bias")
    q, k, v = module.heads(X)
    w = extra_key_weight(module, q, k)
    torch.testing.assert_close(module(X), merged(softmax_attention(q, k, v) + w * module.v_bias))


def test_attention_bias_scales_softmax_attention_down_and_adds_the_extra_value():
    module = attention("attention_bias")
    q, k, v = module.heads(X)
    w = extra_key_weight(module, q, k)
    torch.testing.assert_close(module(X), merged((1 - w) * softmax_attention(q, k, v) + w * module.v_bias))


def test_context_scale_is_default_attention_times_two_sigmoid_of_a_linear_map():
    module = attention("context_scale")
    q, k, v = module.heads(X)
    scale = 2 * torch.sigmoid(X @ module.context_scale.weight.T + module.context_scale.bias)  # [B, T, H]
    torch.testing.assert_close(module(X), merged(softmax_attention(q, k, v) * scale.transpose(1, 2)[..., None]))


def test_context_scale_of_one_is_default_attention():
    scaled, default = attention("context_scale"), attention("default")
    with torch.no_grad():
        scaled.c_attn.load_state_dict(default.c_attn.state_dict())
        scaled.context_scale.weight.zero_()
        scaled.context_scale.bias.zero_()  # 2·sigmoid(0) = 1
    torch.testing.assert_close(scaled(X), default(X))


def test_sigmoid_attention_is_unnormalized_with_a_length_offset():
    module = attention("sigmoid")
    q, k, v = module.heads(X)
    T = X.shape[1]
    weights = torch.sigmoid(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) - math.log(T)) * torch.ones(T, T).tril()
    torch.testing.assert_close(module(X), merged(weights @ v))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_causal_and_its_weights_are_what_it_uses(variant):
    module = attention(variant)
    changed = X.clone()
    changed[:, 4:] = torch.randn(3, 3, 8)
    torch.testing.assert_close(module(changed)[:, :4], module(X)[:, :4])
    weights = module.attention_weights(X)
    first_key = module.extra_keys
    assert first_key == (1 if variant in ("context_bias", "attention_bias", "softmax_one", "learned_sink") else 0)
    assert weights.shape == (3, 2, 7, 7 + first_key)
    assert torch.all(weights[..., first_key:].triu(1) == 0)
    if variant not in ("sigmoid", "clipped_softmax", "softpick"):  # softmax rows sum to one, over k′ or the sink too
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 7))
    else:  # the sink-free ones may give a row less than one, even nothing
        assert torch.all(weights >= 0) and (variant == "sigmoid" or torch.all(weights.sum(-1) <= 1 + 1e-6))


@pytest.mark.parametrize(
    "variant, per_layer",
    [
        ("default", 0),
        ("fixed_bias", 768),
        ("context_bias", 1536),
        ("attention_bias", 1536),
        ("context_scale", 9228),
        ("sigmoid", 0),
        ("softmax_one", 0),
        ("learned_sink", 12),  # gpt-oss: one logit per head
        ("gated", 768 * 768),  # Qiu et al.'s element-wise gate, no bias
        ("clipped_softmax", 0),
        ("softpick", 0),
        ("gated_headwise", 768 * 12),
    ],
)
def test_extra_parameters_of_gpt2_small_are_the_papers(variant, per_layer):
    with torch.device("meta"):  # the count needs shapes only
        model = GPT(GPTConfig(vocab_size=64, n_layer=12, n_head=12, n_embd=768, attention=variant))
    assert model.extra_parameters() == 12 * per_layer  # (e): 768·12 + 12 per layer, 110,736 in all


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="attention 'flash' is not a variant; use one of default, fixed_bias"):
        GPTConfig(attention="flash")


# ---------------------------------------------------------------------------------------------
# The sink-free mechanisms of the literature, each against its formula.


def causal_logits(q, k):
    T = q.shape[2]
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))


def test_softmax_one_is_e_to_the_logit_over_one_plus_the_sum():
    module = attention("softmax_one")
    q, k, v = module.heads(X)
    e = causal_logits(q, k).double().exp()  # hidden keys: e^{−∞} = 0
    weights = e / (1 + e.sum(-1, keepdim=True))
    torch.testing.assert_close(module.attention_weights(X)[..., 1:].double(), weights)
    torch.testing.assert_close(module(X), merged((weights @ v.double()).float()))


def test_learned_sink_is_e_to_the_logit_over_e_to_b_plus_the_sum_per_head():
    module = attention("learned_sink")
    q, k, v = module.heads(X)
    assert module.sinks.shape == (2,) and module.sinks.abs().min() > 0  # random, per head
    e = causal_logits(q, k).double().exp()
    sink = module.sinks.detach().double().exp().view(1, 2, 1, 1)
    weights = e / (sink + e.sum(-1, keepdim=True))
    torch.testing.assert_close(module(X), merged((weights @ v.double()).float()))
    torch.testing.assert_close(module.attention_weights(X)[..., 0].double(), (sink / (sink + e.sum(-1, keepdim=True)))[..., 0])
    # not a sigmoid (torchtitan's gpt-oss sink once was): at the first position the weight on itself is e^s / (e^b + e^s)
    first = e[..., 0, 0] / (sink[..., 0, 0] + e[..., 0, 0])
    torch.testing.assert_close(module.attention_weights(X)[..., 0, 1].double(), first)
    torch.testing.assert_close(module(X)[:, 0], merged((first[..., None] * v[:, :, 0].double()).unsqueeze(2).float())[:, 0])


def test_learned_sink_at_zero_is_softmax_one_and_gets_gradients():
    sink, one = attention("learned_sink"), attention("softmax_one")
    with torch.no_grad():
        sink.sinks.zero_()
        sink.c_attn.load_state_dict(one.c_attn.state_dict())
    torch.testing.assert_close(sink(X), one(X))
    sink(X).square().sum().backward()
    assert sink.sinks.grad is not None and sink.sinks.grad.abs().min() > 0


@pytest.mark.parametrize("variant", ["gated", "gated_headwise"])
def test_gated_is_softmax_attention_times_a_sigmoid_gate_of_the_input(variant):
    module = attention(variant)
    q, k, v = module.heads(X)
    gate = torch.sigmoid(X @ module.gate.weight.T)  # [B, T, H·d] element-wise, [B, T, H] head-wise
    assert module.gate.bias is None
    gate = gate.view(3, 7, 2, -1).transpose(1, 2)  # [B, H, T, d or 1]
    torch.testing.assert_close(module(X), merged(softmax_attention(q, k, v) * gate))
    assert torch.all((module.scale(X) > 0) & (module.scale(X) < 1))  # (0, 1), where (e)'s S_c is in (0, 2)


def test_clipped_softmax_stretches_and_clips_so_small_weights_are_exactly_zero():
    module = attention("clipped_softmax")
    q, k, v = module.heads(X)
    p = causal_logits(q, k).softmax(-1)
    weights = ((1.0 + 0.025) * p - 0.025).clamp(0, 1)  # γ = −0.025, ζ = 1
    torch.testing.assert_close(module(X), merged(weights @ v))
    assert torch.all(module.attention_weights(X)[..., 0, 0] == 1)  # the first query sees only itself
    flat = torch.zeros(1, 2, 64, 4)  # 64 equal keys: each gets 1/64 < 0.025/1.025, clipped to 0
    assert torch.all(module.weights(flat, flat, None)[:, :, -1] == 0)


def test_softpick_is_relu_of_e_to_the_logit_minus_one_over_the_absolute_sum():
    module = attention("softpick")
    q, k, v = module.heads(X)
    T = X.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    e = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).double().exp() - 1
    e = e.masked_fill(~causal, 0.0)  # hidden keys are not in the sum
    weights = e.clamp_min(0) / (e.abs().sum(-1, keepdim=True) + 1e-8)
    torch.testing.assert_close(module.attention_weights(X), weights.float())
    torch.testing.assert_close(module(X), merged((weights @ v.double()).float()))
    # at the first position the query sees only itself: its whole value if s > 0, nothing if s < 0
    s = (q[:, :, 0] * k[:, :, 0]).sum(-1) / math.sqrt(q.shape[-1])
    expected = torch.where(s > 0, (s.exp() - 1) / ((s.exp() - 1).abs() + 1e-8), torch.zeros_like(s))
    torch.testing.assert_close(module.attention_weights(X)[..., 0, 0], expected)
    assert (s < 0).any() and (s > 0).any()  # both cases are exercised


def test_softpick_neither_overflows_nor_loses_gradients_at_large_logits():
    module = attention("softpick")
    q = torch.full((1, 1, 3, 4), 30.0, requires_grad=True)  # logits of 1800: e^1800 overflows float32
    k = torch.ones(1, 1, 3, 4)
    weights = module.weights(q, k, None)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights[0, 0, 2], torch.full((3,), 1 / 3))
    weights[..., 0].sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("variant", ["softmax_one", "learned_sink", "attention_bias", "context_bias"])
def test_fused_path_equals_the_eager_weights(variant):
    """The variants that run on SDPA with an extra key give what their `weights` say."""
    module = attention(variant)
    q, k, v = module.heads(X)
    weights = module.weights(q, k, X)
    extra_value = {"softmax_one": torch.zeros(1, 2, 1, 4), "learned_sink": torch.zeros(1, 2, 1, 4)}.get(
        variant, getattr(module, "v_bias", None)
    )
    values = torch.cat([extra_value.expand(3, -1, -1, -1), v], dim=2)
    eager = weights @ values
    if variant == "context_bias":  # (c): softmax over K alone, plus the weight of k′ times v′
        eager = softmax_attention(q, k, v) + weights[..., :1] * module.v_bias
    torch.testing.assert_close(module.mix(q, k, v, X), eager)


def test_the_registry_is_the_schema_enum():
    import yaml
    from conftest import REPO

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["training"]["properties"]["variants"]["items"]["enum"] == list(VARIANTS)
    assert list(ATTENTION) == list(VARIANTS)  # one class per variant, in the same order
    assert [v.letter for v in VARIANTS.values()] == [f"({chr(ord('a') + i)})" for i in range(len(VARIANTS))]
