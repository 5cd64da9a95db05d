"""The attention and experts functions that capture registers with transformers: each runs the
model's own eager code and shows what the hooks cannot see (the attention probabilities, each
expert's down-projection input) to the callbacks `capture.hooks` registers here, and lets interventions remove keys.

Below capture.py and probe.py, which both use it; imports nothing of the package but the
architectures' UnsupportedModel.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

import torch

from .architectures import UnsupportedModel


def _visible(mask: torch.Tensor | None, queries: int, keys: int) -> torch.Tensor:
    """[queries, keys]: which keys each query may attend to under the additive float `mask` (causal without one)."""
    if mask is None:
        return torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)
    if mask.dtype == torch.bool:
        raise UnsupportedModel("the attention mask is boolean: keys cannot be removed through it")
    return mask[0, 0] > torch.finfo(mask.dtype).min / 2


def _without_keys(mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The additive mask [batch, 1, queries, keys] with `positions` hidden from every query that sees another key."""
    visible = _visible(mask, *mask.shape[-2:])
    removed = torch.zeros(mask.shape[-1], dtype=torch.bool, device=mask.device)
    removed[positions.to(mask.device)] = True
    hide = visible & removed
    hide &= (visible & ~removed).any(dim=-1, keepdim=True)
    return mask.masked_fill(hide, torch.finfo(mask.dtype).min)


# ---------------------------------------------------------------------------------------------
# Attention: a registered attention function that runs the model's own eager code.

ATTENTION_CAPTURE = "eager_capture"
ATTENTION_CALLBACKS: dict[int, tuple[int, tuple[str, ...], callable]] = {}  # (layer, sites, callback) per module
ATTENTION_EDITS: dict[int, tuple[int, callable, callable]] = {}  # (layer, remove_keys, observe) per module
PROBES: list[dict] = []  # probe.run_probe: what the attention function saw, per module


class Forget:
    """A handle that takes a module's entry out of a registry of callbacks."""

    def __init__(self, registry: dict, key: int):
        self.registry, self.key = registry, key

    def remove(self):
        self.registry.pop(self.key, None)


def _repeat_kv(key: torch.Tensor, groups: int) -> torch.Tensor:
    return key if groups == 1 else key.repeat_interleave(groups, dim=1)


def _eager_capture(module, query, key, value, attention_mask, **kwargs):
    eager = sys.modules[type(module).__module__].eager_attention_forward
    layer_index, remove_keys, observe = ATTENTION_EDITS.get(id(module), (None, None, None))
    if remove_keys is not None:
        if attention_mask is None:
            raise UnsupportedModel(f"{type(module).__name__} gets no attention mask: keys cannot be removed")
        attention_mask = _without_keys(attention_mask[:, :, :, : key.shape[-2]], torch.as_tensor(remove_keys(), dtype=torch.long))
    output, probs = eager(module, query, key, value, attention_mask, **kwargs)
    if observe is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None else None
        observe(layer_index, probs[0].detach(), output[0].detach(), value[0].detach(), _visible(mask, query.shape[-2], key.shape[-2]))
    for seen in PROBES:
        seen[id(module)] = {
            "query": query.detach(),
            "key": key.detach(),
            "value": value.detach(),
            "probs": probs.detach(),
            "learned_sink": kwargs.get("s_aux") is not None,  # gpt-oss: a per-head sink logit in the softmax, then dropped
        }
    registered = ATTENTION_CALLBACKS.get(id(module))
    if registered is not None:
        layer_index, wanted, callback = registered
        if "attn_logits" in wanted:
            # the scores eager softmaxes: scaled QK^T (soft-capped where the model does) plus the mask
            scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
            keys = _repeat_kv(key, query.shape[1] // key.shape[1])
            logits = torch.matmul(query, keys.transpose(2, 3)) * scaling
            if kwargs.get("softcap"):
                logits = torch.tanh(logits / kwargs["softcap"]) * kwargs["softcap"]
            if attention_mask is not None:
                logits = logits + attention_mask[:, :, :, : keys.shape[-2]]
            callback("attn_logits", layer_index, logits[0].detach())
        if "attn_probs" in wanted:
            callback("attn_probs", layer_index, probs[0].detach())
    return output, probs


def register_capture() -> None:
    """Make ATTENTION_CAPTURE a valid `attn_implementation` and EXPERTS_CAPTURE a valid
    `experts_implementation`. Called where a model is loaded with them, not at import, so that
    importing this module does not pull in transformers."""
    from transformers import AttentionInterface
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTENTION_CAPTURE, _eager_capture)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_CAPTURE, eager_mask)
    ALL_EXPERTS_FUNCTIONS.register(EXPERTS_CAPTURE, experts_forward)


# ---------------------------------------------------------------------------------------------
# Mixture-of-experts: an experts function that shows each expert's down-projection input.

EXPERTS_CAPTURE = "experts_capture"
EXPERTS_CALLBACKS: dict[int, tuple[int, callable]] = {}  # (layer, callback) per experts module


@dataclass
class ExpertInputs:
    """The down projection's input inside a mixture-of-experts MLP, for the tokens routed to each
    expert: `values[t, s]` is the input of expert `experts[t, s]`, the s-th expert token t went to.

    As one [tokens, experts × intermediate] tensor (`dense`), channel e × intermediate + c is channel
    c of expert e, zero where the token was not routed there: the columns of `experts_down_proj`.
    """

    values: torch.Tensor  # [tokens, top_k, intermediate]
    experts: torch.Tensor  # [tokens, top_k], the expert ids
    num_experts: int

    @property
    def intermediate(self) -> int:
        return self.values.shape[-1]

    def channels(self, token: torch.Tensor, slot_channel: torch.Tensor) -> torch.Tensor:
        """Channels of `dense` for entries of `values.reshape(tokens, -1)` (slot × intermediate + c)."""
        slot, channel = slot_channel // self.intermediate, slot_channel % self.intermediate
        return self.experts[token, slot] * self.intermediate + channel

    def dense(self) -> torch.Tensor:
        tokens, top_k, width = self.values.shape
        out = self.values.new_zeros(tokens, self.num_experts, width)
        out.scatter_(1, self.experts.long()[..., None].expand(-1, -1, width), self.values)
        return out.reshape(tokens, -1)


def runs_experts_interface(module) -> bool:
    """Whether the module runs through transformers' experts interface (`use_experts_implementation`),
    so that `experts_forward` can stand in for it."""
    return hasattr(type(module).forward, "__wrapped__") and hasattr(module, "has_gate") and hasattr(module, "down_proj")


def is_experts(module) -> bool:
    """Whether the module holds a mixture-of-experts MLP's experts: one that runs through the experts
    interface, or one with its matrices as 3-D parameters [experts, out, in], or that lists the experts
    (…Experts, …SparseMoeBlock)."""
    if runs_experts_interface(module):
        return True
    stacked = any(p.dim() == 3 and n.endswith(("proj", "w1", "w2", "w3")) for n, p in module.named_parameters(recurse=False))
    return stacked or type(module).__name__.endswith(("Experts", "SparseMoeBlock"))


def _expert_linear(module, name: str, expert: int, x: torch.Tensor) -> torch.Tensor:
    weight = getattr(module, name)[expert]
    y = x @ weight if module.is_transposed else torch.nn.functional.linear(x, weight)
    return y + getattr(module, f"{name}_bias")[expert] if module.has_bias else y


def experts_forward(module, *args, **kwargs) -> torch.Tensor:
    """The experts loop of transformers' eager code, from the attributes the experts interface
    gives every experts module (gate, bias, layout, post-expert norm), showing each expert's
    down-projection input to the callback registered for it. `probe.resolve` checks it against the model's own.

    The arguments are the model's own experts forward's: hidden states [tokens, d_model], the
    routed experts [tokens, top_k] and their weights [tokens, top_k], whatever their names."""
    names = list(inspect.signature(type(module).forward.__wrapped__).parameters)[1:4]
    bound = {**dict(zip(names, args)), **kwargs}
    hidden_states, top_k_index, top_k_weights = (bound[name] for name in names)
    if module._is_expert_parallel:
        raise UnsupportedModel(f"{type(module).__name__}: expert-parallel experts are not captured; load the model on one device")
    registered = EXPERTS_CALLBACKS.get(id(module))
    out = torch.zeros_like(hidden_states)
    inputs = None
    for expert in top_k_index.unique().tolist():
        token, slot = torch.where(top_k_index == expert)
        x = _expert_linear(module, "gate_up_proj" if module.has_gate else "up_proj", expert, hidden_states[token])
        x = module._apply_gate(x) if module.has_gate else module.act_fn(x)
        if registered is not None:
            if inputs is None:
                inputs = x.new_zeros(*top_k_index.shape, x.shape[-1])
            inputs[token, slot] = x.detach()
        y = _expert_linear(module, "down_proj", expert, x)
        if module.has_post_expert_norm:
            y = module.post_expert_norm(y)
        out.index_add_(0, token, (y * top_k_weights[token, slot, None]).to(out.dtype))
    if registered is not None and inputs is not None:
        layer_index, callback = registered
        callback("down_proj_input", layer_index, ExpertInputs(inputs, top_k_index, module.num_experts))
    return out
