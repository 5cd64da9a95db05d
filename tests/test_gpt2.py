"""Each attention variant equals its closed form on small tensors, stays causal, and adds the paper's parameter count."""

import math

import pytest
import torch
from systematic_outliers.gpt2 import GPT, VARIANTS, CausalSelfAttention, GPTConfig

SMALL = dict(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=8)


def attention(variant, seed=0):
    """One attention module with random weights (biases too) and c_proj the identity, so its
    output is the merged heads themselves."""
    torch.manual_seed(seed)
    module = CausalSelfAttention(GPTConfig(**SMALL, attention=variant))
    with torch.no_grad():
        module.c_proj.weight.copy_(torch.eye(8))
        for name, parameter in module.named_parameters():
            if "bias" in name or "scale" in name:
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
    q, k, v = module._heads(X)
    torch.testing.assert_close(module(X), merged(softmax_attention(q, k, v)))


def test_fixed_bias_adds_one_vector_after_the_heads_merge():
    module = attention("fixed_bias")
    q, k, v = module._heads(X)
    torch.testing.assert_close(module(X), merged(softmax_attention(q, k, v)) + module.v_bias)


def test_context_bias_adds_the_weight_of_the_extra_key_times_its_value():
    module = attention("context_bias")
    q, k, v = module._heads(X)
    w = extra_key_weight(module, q, k)
    torch.testing.assert_close(module(X), merged(softmax_attention(q, k, v) + w * module.v_bias))


def test_attention_bias_scales_softmax_attention_down_and_adds_the_extra_value():
    module = attention("attention_bias")
    q, k, v = module._heads(X)
    w = extra_key_weight(module, q, k)
    torch.testing.assert_close(module(X), merged((1 - w) * softmax_attention(q, k, v) + w * module.v_bias))


def test_context_scale_is_default_attention_times_two_sigmoid_of_a_linear_map():
    module = attention("context_scale")
    q, k, v = module._heads(X)
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
    q, k, v = module._heads(X)
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
    first_key = 1 if variant in ("context_bias", "attention_bias") else 0
    assert weights.shape == (3, 2, 7, 7 + first_key)
    assert torch.all(weights[..., first_key:].triu(1) == 0)
    if variant != "sigmoid":  # softmax rows sum to one, over k′ too
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 7))


@pytest.mark.parametrize(
    "variant, per_layer",
    [("default", 0), ("fixed_bias", 768), ("context_bias", 1536), ("attention_bias", 1536), ("context_scale", 9228), ("sigmoid", 0)],
)
def test_extra_parameters_of_gpt2_small_are_the_papers(variant, per_layer):
    with torch.device("meta"):  # the count needs shapes only
        model = GPT(GPTConfig(vocab_size=64, n_layer=12, n_head=12, n_embd=768, attention=variant))
    assert model.extra_parameters() == 12 * per_layer  # (e): 768·12 + 12 per layer, 110,736 in all


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="attention 'flash' is not a variant; use one of default, fixed_bias"):
        GPTConfig(attention="flash")
