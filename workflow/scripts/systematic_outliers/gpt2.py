"""A GPT-2 in one file (after nanoGPT), with the attention chosen by name: the paper's Section 5.

The six variants (paper Table 2, plus sigmoid attention), per head with q_i, k_j, v_j and
p_ij = softmax_j(q_i·k_j/√d) over j ≤ i:

  default         (a) y_i = Σ_j p_ij v_j
  fixed_bias      (b) y_i = Σ_j p_ij v_j + v′          (v′ one learned vector, added after the heads
                      are merged: the authors' version adds it before and cannot broadcast)
  context_bias    (c) y_i = Σ_j p_ij v_j + w_i v′       w_i = e^{q_i·k′/√d} / (e^{q_i·k′/√d} + Σ_j e^{q_i·k_j/√d})
  attention_bias  (d) y_i = (1 − w_i) Σ_j p_ij v_j + w_i v′   (softmax over [k′; K] applied to [v′; V])
  context_scale   (e) y_i = S_c(x_i) Σ_j p_ij v_j       S_c = 2·sigmoid(Linear(d_model → heads)(x)), x the
                      block's normalized input, one scalar per token and head
  sigmoid         (f) y_i = Σ_j sigmoid(q_i·k_j/√d − log T) v_j, no normalization

Everything but (f) runs on fused scaled-dot-product attention. `attention_weights` gives the
weights each variant puts on every key (and on k′), for the analysis only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = {
    "default": ("(a)", "Default attention", "softmax(QKᵀ/√d) V"),
    "fixed_bias": ("(b)", "Explicit fixed bias", "softmax(QKᵀ/√d) V + v′"),
    "context_bias": ("(c)", "Explicit context-aware bias", "softmax(QKᵀ/√d) V + softmax(Q[Kᵀ k′]/√d) [0; v′ᵀ]"),
    "attention_bias": ("(d)", "Attention bias", "softmax(Q[Kᵀ k′]/√d) [V; v′ᵀ]"),
    "context_scale": ("(e)", "Explicit context-aware scaling factor", "S_c(x) · softmax(QKᵀ/√d) V, S_c = 2·sigmoid(W_s x + b_s)"),
    "sigmoid": ("(f)", "Sigmoid attention", "sigmoid(QKᵀ/√d − log T) V"),
}


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
        if self.attention not in VARIANTS:
            raise ValueError(f"attention {self.attention!r} is not a variant; use one of {', '.join(VARIANTS)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.variant, self.n_head, self.head_dim = config.attention, config.n_head, config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        shape = (1, config.n_head, 1, self.head_dim)
        if self.variant == "fixed_bias":
            self.v_bias = nn.Parameter(torch.zeros(config.n_embd))
        if self.variant in ("context_bias", "attention_bias"):
            self.k_bias = nn.Parameter(torch.randn(shape) * 0.02)
            self.v_bias = nn.Parameter(torch.randn(shape) * 0.02)
        if self.variant == "context_scale":
            self.context_scale = nn.Linear(config.n_embd, config.n_head)  # with bias, PyTorch's default init

    def _heads(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return [t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v)]  # [B, H, T, d]

    def _with_extra_key(self, k, v, extra_value):
        """[k′; K] and [extra_value; V] with the mask that lets every query see k′."""
        B, _, T, _ = k.shape
        keys = torch.cat([self.k_bias.expand(B, -1, -1, -1), k], dim=2)
        values = torch.cat([extra_value.expand(B, -1, -1, -1), v], dim=2)
        mask = torch.ones(T, T + 1, dtype=torch.bool, device=k.device)
        mask[:, 1:] = torch.tril(mask[:, 1:])
        return keys, values, mask

    def scale(self, x):
        """S_c(x) of variant (e): [B, T, heads] in (0, 2)."""
        return 2 * torch.sigmoid(self.context_scale(x))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self._heads(x)
        if self.variant == "sigmoid":
            logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) - math.log(T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            y = torch.sigmoid(logits).masked_fill(~causal, 0.0) @ v
        elif self.variant == "attention_bias":
            y = F.scaled_dot_product_attention(q, *self._with_extra_key(k, v, self.v_bias))
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if self.variant == "context_bias":
                y = y + F.scaled_dot_product_attention(q, *self._with_extra_key(k, torch.zeros_like(v), self.v_bias))
            if self.variant == "context_scale":
                y = y * self.scale(x).transpose(1, 2).unsqueeze(-1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        if self.variant == "fixed_bias":
            y = y + self.v_bias
        return self.c_proj(y)

    @torch.no_grad()
    def attention_weights(self, x):
        """The weight each query puts on each key, [B, H, T, T]; for (c) and (d) also on k′ as a
        first column ([B, H, T, T + 1]); for (e) before S_c scales them; for (f) unnormalized."""
        T = x.shape[1]
        q, k, v = self._heads(x)
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        if self.variant == "sigmoid":
            return torch.sigmoid(logits - math.log(T)).masked_fill(~causal, 0.0)
        if self.variant in ("context_bias", "attention_bias"):
            extra = q @ self.k_bias.transpose(-2, -1) / math.sqrt(self.head_dim)
            return torch.cat([extra, logits.masked_fill(~causal, float("-inf"))], dim=-1).softmax(-1)
        return logits.masked_fill(~causal, float("-inf")).softmax(-1)


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
        self.attn = CausalSelfAttention(config)
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
        for block in self.blocks:  # (e)'s scaling layer keeps PyTorch's default init, as in the authors' code
            if config.attention == "context_scale":
                block.attn.context_scale.reset_parameters()

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
        return sum(p.numel() for name, p in self.named_parameters() if any(k in name for k in ("v_bias", "k_bias", "context_scale")))
