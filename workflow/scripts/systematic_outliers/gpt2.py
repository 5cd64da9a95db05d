"""A GPT-2 in one file (after nanoGPT), with the attention chosen by name: the paper's Section 5
and the sink-free mechanisms the field compares it with.

Per head, with q_i, k_j, v_j, s_ij = q_i·k_j/√d and p_ij = softmax_j(s_ij) over the keys j ≤ i:

  default          (a) y_i = Σ_j p_ij v_j
  fixed_bias       (b) y_i = Σ_j p_ij v_j + v′          (v′ one learned vector, added after the heads
                       are merged: the authors' version adds it before and cannot broadcast)
  context_bias     (c) y_i = Σ_j p_ij v_j + w_i v′       w_i = e^{q_i·k′/√d} / (e^{q_i·k′/√d} + Σ_j e^{s_ij})
  attention_bias   (d) y_i = (1 − w_i) Σ_j p_ij v_j + w_i v′   (softmax over [k′; K] applied to [v′; V])
  context_scale    (e) y_i = S_c(x_i) Σ_j p_ij v_j       S_c = 2·sigmoid(Linear(d_model → heads)(x)), x the
                       block's normalized input, one scalar per token and head
  sigmoid          (f) y_i = Σ_j sigmoid(s_ij − log T) v_j, no normalization
  softmax_one      (g) y_i = Σ_j e^{s_ij} / (1 + Σ_k e^{s_ik}) v_j   (Miller 2023; Kaul et al., ICLR 2025)
  learned_sink     (h) y_i = Σ_j e^{s_ij} / (e^{b_h} + Σ_k e^{s_ik}) v_j, one learned logit b_h per head
                       (gpt-oss's `sinks`); b_h starts at 0, where (h) is (g)
  gated            (i) y = SDPA(Q, K, V) ⊙ sigmoid(x W_θ), one gate per token and channel, x the block's
                       normalized input, W_θ without bias (Qiu et al., NeurIPS 2025)
  clipped_softmax  (j) y_i = Σ_j clip((ζ − γ)·p_ij + γ, 0, 1) v_j with γ = −0.025, ζ = 1 (Bondarenko et
                       al., NeurIPS 2023: their best BERT setting); a weight under 2.4 % becomes exactly 0
  softpick         (k) y_i = Σ_j ReLU(e^{s_ij} − 1) / (Σ_k |e^{s_ik} − 1| + ε) v_j, ε = 10⁻⁸ (Zuhri et al. 2025)
  gated_headwise   (l) as (i) with one gate per token and head: sigmoid(Linear(d_model → heads)(x)). It is
                       (e) without (e)'s factor 2 and bias: its range is (0, 1), where (e)'s is (0, 2)

Each variant is one class below: its parameters, its forward and the weights it puts on every key
(for the analysis), registered in ATTENTION by its key. Its letter, title, formula and what the
papers say of it are variants.VARIANTS' (torch-free, for the reports and figures).
(a)–(e) and (g)–(i) run on fused scaled-dot-product attention; (f), (j) and (k) have no fused kernel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION: dict[str, type[CausalSelfAttention]] = {}  # filled by the classes below, in the order of variants.VARIANTS


@dataclass
class GPTConfig:
    vocab_size: int = 50304
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    bias: bool = False
    tie_weights: bool = True
    attention: str = "default"

    def __post_init__(self):
        if self.attention not in ATTENTION:
            raise ValueError(f"attention {self.attention!r} is not a variant; use one of {', '.join(ATTENTION)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")

    def to_dict(self) -> dict:
        return asdict(self)


def causal_mask(T: int, device, extra_keys: int = 0) -> torch.Tensor:
    """[T, extra_keys + T], true where query i may see the key: every extra key, and keys j ≤ i."""
    mask = torch.ones(T, extra_keys + T, dtype=torch.bool, device=device)
    return mask.tril(extra_keys)


class CausalSelfAttention(nn.Module):
    """(a) Default attention; every other variant subclasses it and changes `mix` (and `weights`)."""

    key = "default"  # its entry in variants.VARIANTS
    extra_keys = 0  # columns before the first real key in `weights`: k′, or a sink's pseudo-key

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        ATTENTION[cls.key] = cls

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def heads(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return [t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v)]  # [B, H, T, d]

    def logits(self, q, k):
        return q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)

    def mix(self, q, k, v, x):
        """The heads' outputs [B, H, T, d]; x is the block's normalized input."""
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def weights(self, q, k, x):
        """The weight each query puts on each key, [B, H, T, extra_keys + T], as `mix` uses them (eagerly)."""
        return self.logits(q, k).masked_fill(~causal_mask(q.shape[2], q.device), float("-inf")).softmax(-1)

    def scale(self, x):
        """What multiplies each head's output per token, [B, T, H] ((e), and the gates' mean), or None."""
        return None

    def reset_extra(self):
        """Re-initialise what GPT's init must not touch (called after it)."""

    def forward(self, x):
        B, T, C = x.shape
        y = self.mix(*self.heads(x), x)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    @torch.no_grad()
    def attention_weights(self, x):
        """`weights` for the analysis: [B, H, T, extra_keys + T]; for (e) and the gates before they
        scale the output; for (f) unnormalized."""
        q, k, _ = self.heads(x)
        return self.weights(q, k, x)

    def extra_parameters(self) -> int:
        """Parameters this variant adds to (a) (the paper's overhead)."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith(("c_attn.", "c_proj.")))


ATTENTION[CausalSelfAttention.key] = CausalSelfAttention  # subclasses register themselves, in the order below


class FixedBias(CausalSelfAttention):
    key = "fixed_bias"

    def __init__(self, config):
        super().__init__(config)
        self.v_bias = nn.Parameter(torch.zeros(config.n_embd))

    def mix(self, q, k, v, x):  # v′ split over the heads: the same sum as adding it after they merge
        return super().mix(q, k, v, x) + self.v_bias.view(1, self.n_head, 1, self.head_dim)


class ContextBias(CausalSelfAttention):
    key = "context_bias"
    extra_keys = 1

    def __init__(self, config):
        super().__init__(config)
        shape = (1, config.n_head, 1, self.head_dim)
        self.k_bias = nn.Parameter(torch.randn(shape) * 0.02)
        self.v_bias = nn.Parameter(torch.randn(shape) * 0.02)

    def with_extra_key(self, k, v, extra_value):
        """[k′; K] and [extra_value; V] with the mask that lets every query see k′."""
        B = k.shape[0]
        keys = torch.cat([self.k_bias.expand(B, -1, -1, -1), k], dim=2)
        values = torch.cat([extra_value.expand(B, -1, -1, -1), v], dim=2)
        return keys, values, causal_mask(k.shape[2], k.device, extra_keys=1)

    def mix(self, q, k, v, x):
        return super().mix(q, k, v, x) + F.scaled_dot_product_attention(q, *self.with_extra_key(k, torch.zeros_like(v), self.v_bias))

    def weights(self, q, k, x):
        logits = self.logits(q, k).masked_fill(~causal_mask(q.shape[2], q.device), float("-inf"))
        return torch.cat([self.logits(q, self.k_bias), logits], dim=-1).softmax(-1)


class AttentionBias(ContextBias):
    key = "attention_bias"

    def mix(self, q, k, v, x):
        return F.scaled_dot_product_attention(q, *self.with_extra_key(k, v, self.v_bias))


class ContextScale(CausalSelfAttention):
    key = "context_scale"

    def __init__(self, config):
        super().__init__(config)
        self.context_scale = nn.Linear(config.n_embd, config.n_head)  # with bias

    def scale(self, x):
        return 2 * torch.sigmoid(self.context_scale(x))

    def reset_extra(self):  # PyTorch's default init, as in the authors' code
        self.context_scale.reset_parameters()

    def mix(self, q, k, v, x):
        return super().mix(q, k, v, x) * self.scale(x).transpose(1, 2).unsqueeze(-1)


class Sigmoid(CausalSelfAttention):
    key = "sigmoid"

    def weights(self, q, k, x):
        T = q.shape[2]
        return torch.sigmoid(self.logits(q, k) - math.log(T)).masked_fill(~causal_mask(T, q.device), 0.0)

    def mix(self, q, k, v, x):
        return self.weights(q, k, x) @ v


class SoftmaxOne(CausalSelfAttention):
    """A pseudo-key per head whose logit is fixed (0 here, b_h in (h)) and whose value is zero, run
    as SDPA with one extra key column: the key 0 gives q·0 = 0, and the float mask adds the logit."""

    key = "softmax_one"
    extra_keys = 1

    def sink_logits(self):
        return self.c_attn.weight.new_zeros(self.n_head)

    def mask(self, T, device):
        """[H, T, 1 + T]: the sink's logit in the first column, 0 where a key is visible, −∞ where it is not."""
        visible = torch.zeros(T, T, device=device).masked_fill(~causal_mask(T, device), float("-inf"))
        sink = self.sink_logits().view(-1, 1, 1).expand(-1, T, 1)
        return torch.cat([sink, visible.expand(sink.shape[0], -1, -1)], dim=-1)

    def mix(self, q, k, v, x):
        zero = q.new_zeros(q.shape[0], q.shape[1], 1, q.shape[3])
        return F.scaled_dot_product_attention(
            q, torch.cat([zero, k], 2), torch.cat([zero, v], 2), attn_mask=self.mask(q.shape[2], q.device)
        )

    def weights(self, q, k, x):
        logits = torch.cat([q.new_zeros(*q.shape[:3], 1), self.logits(q, k)], dim=-1)
        return (logits + self.mask(q.shape[2], q.device)).softmax(-1)


class LearnedSink(SoftmaxOne):
    """(g) with a learned sink logit b_h per head (gpt-oss's `sinks`), from 0."""

    key = "learned_sink"

    def __init__(self, config):
        super().__init__(config)
        self.sinks = nn.Parameter(torch.zeros(config.n_head))

    def sink_logits(self):
        return self.sinks


class Gated(CausalSelfAttention):
    key = "gated"

    def __init__(self, config):
        super().__init__(config)
        self.gate = nn.Linear(config.n_embd, self.gate_width(config), bias=False)

    @staticmethod
    def gate_width(config):
        return config.n_embd

    def gates(self, x):
        """sigmoid(x W_θ) as [B, H, T, d] (d = 1 head-wise)."""
        B, T, _ = x.shape
        return torch.sigmoid(self.gate(x)).view(B, T, self.n_head, -1).transpose(1, 2)

    def scale(self, x):
        return self.gates(x).mean(-1).transpose(1, 2)

    def mix(self, q, k, v, x):
        return super().mix(q, k, v, x) * self.gates(x)


class ClippedSoftmax(CausalSelfAttention):
    key = "clipped_softmax"
    gamma, zeta = -0.025, 1.0

    def weights(self, q, k, x):
        return ((self.zeta - self.gamma) * super().weights(q, k, x) + self.gamma).clamp(0, 1)

    def mix(self, q, k, v, x):
        return self.weights(q, k, x) @ v


class Softpick(CausalSelfAttention):
    key = "softpick"
    epsilon = 1e-8

    def weights(self, q, k, x):
        # numerator and denominator times e^{−m}, m = max(0, max_j s_ij): nothing overflows and
        # nothing is lost; hidden keys are −∞ before the exponential, so they carry no gradient
        visible = causal_mask(q.shape[2], q.device)
        logits = self.logits(q, k).masked_fill(~visible, float("-inf"))
        shift = logits.amax(-1, keepdim=True).clamp_min(0)
        offset = (-shift).exp()
        shifted = ((logits - shift).exp() - offset).masked_fill(~visible, 0.0)  # (e^{s} − 1)·e^{−m}
        return F.relu(shifted) / (shifted.abs().sum(-1, keepdim=True) + self.epsilon * offset)

    def mix(self, q, k, v, x):
        return self.weights(q, k, x) @ v


class GatedHeadwise(Gated):
    key = "gated_headwise"

    @staticmethod
    def gate_width(config):
        return config.n_head


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-norm: x + attn(ln_1(x)), then x + mlp(ln_2(x)). Its output is the h of the figures."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = ATTENTION[config.attention](config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        for block in self.blocks:
            block.attn.reset_extra()

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, loss_mask=None):
        """Logits [B, T, vocab]; with targets also the mean cross-entropy over positions where
        `loss_mask` is true (all positions without one)."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.config.block_size}")
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        if loss_mask is not None:
            losses = losses[loss_mask.flatten()]
        return logits, losses.mean()

    def extra_parameters(self) -> int:
        """Parameters the attention variant adds to the default model (the paper's overhead)."""
        return sum(block.attn.extra_parameters() for block in self.blocks)
