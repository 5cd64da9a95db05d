"""Capture named tensors from unmodified Hugging Face models with forward hooks.

Every architecture maps the same site names onto its own modules in one small table
entry (`ARCHITECTURES`). A hook hands each captured tensor, as [tokens, channels] (or
[tokens, heads, head_dim] for query/key/value), to a callback `sink(site, layer, tensor)`
and returns None, so the model's outputs are untouched.

Attention probabilities and logits need the attention weights, which only the eager
path materializes. `attention_capture()` registers an attention function that runs the
model's own eager code and shows its probabilities (and, on request, the logits) to the
sink; it is used only by the rules that need attention.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch

from .config import UserError

# Every site, in the order data flows through a decoder layer.
SITES = (
    "layer_input",
    "attn_norm_output",
    "query",
    "key",
    "value",
    "attn_logits",
    "attn_probs",
    "attn_residual",
    "mlp_norm_output",
    "gate_output",
    "up_output",
    "act_output",
    "down_proj_input",
    "down_proj_output",
    "layer_output",
)
ATTENTION_SITES = ("attn_logits", "attn_probs")
HEAD_SITES = ("query", "key", "value")


@dataclass(frozen=True)
class Tap:
    """Where a site is read: a module path inside the decoder layer ('' = the layer itself),
    its output or its first input, and for fused projections which chunk of the last dim
    (`part`, before splitting heads) or of each head (`head_part`, GPT-NeoX's interleaving)."""

    module: str
    side: str = "output"
    part: tuple[int, int] | None = None
    head_part: tuple[int, int] | None = None


@dataclass(frozen=True)
class Architecture:
    layers: str  # path of the ModuleList of decoder layers
    taps: dict[str, Tap]
    attention: str | None = None  # attention module inside a layer; None: no attention capture
    probs_from_output: bool = False  # attention code of its own that returns the probabilities: no logits
    weights_transposed: bool = False  # GPT-2's Conv1D stores [in, out]


def _llama_like(mlp_norm: str = "post_attention_layernorm", gate_up: str | None = None) -> dict[str, Tap]:
    taps = {
        "layer_input": Tap("", "input"),
        "attn_norm_output": Tap("input_layernorm"),
        "query": Tap("self_attn.q_proj"),
        "key": Tap("self_attn.k_proj"),
        "value": Tap("self_attn.v_proj"),
        "attn_residual": Tap(mlp_norm, "input"),
        "mlp_norm_output": Tap(mlp_norm),
        "gate_output": Tap("mlp.gate_proj"),
        "up_output": Tap("mlp.up_proj"),
        "act_output": Tap("mlp.act_fn"),
        "down_proj_input": Tap("mlp.down_proj", "input"),
        "down_proj_output": Tap("mlp.down_proj"),
        "layer_output": Tap(""),
    }
    if gate_up:  # Phi-3 fuses gate and up into one projection: gate first, then up
        taps.update(gate_output=Tap(gate_up, part=(0, 2)), up_output=Tap(gate_up, part=(1, 2)), act_output=Tap("mlp.activation_fn"))
    return taps


def _separate(attention: str) -> tuple[Tap, Tap, Tap]:
    return tuple(Tap(f"{attention}.{name}_proj") for name in "qkv")


def _fused(projection: str, split: str) -> tuple[Tap, Tap, Tap]:
    """q, k and v as thirds of one projection: of its output (`part`) or of each head (`head_part`)."""
    return tuple(Tap(projection, **{split: (index, 3)}) for index in range(3))


def _ungated(attn_norm, qkv, up, act, down, mlp_norm=None, parallel=False) -> dict[str, Tap]:
    """Sites of a block whose MLP has no gate. Without `mlp_norm` the MLP reads the attention
    norm's output; a `parallel` block feeds the layer input to both, so it has no attention residual."""
    taps = {"layer_input": Tap("", "input"), "attn_norm_output": Tap(attn_norm)}
    if qkv:
        taps.update(zip(HEAD_SITES, qkv))
    if mlp_norm and not parallel:
        taps["attn_residual"] = Tap(mlp_norm, "input")
    if mlp_norm:
        taps["mlp_norm_output"] = Tap(mlp_norm)
    taps.update(up_output=Tap(up), act_output=Tap(act), down_proj_input=Tap(down, "input"), down_proj_output=Tap(down))
    taps["layer_output"] = Tap("")
    return taps


_LLAMA = Architecture("model.layers", _llama_like(), attention="self_attn")
_MIXTRAL_TAPS = {k: v for k, v in _llama_like().items() if not k.startswith(("gate", "up", "act", "down"))}

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    # Gemma norms the attention output before the residual add; the MLP norm is pre_feedforward_layernorm.
    "gemma2": Architecture("model.layers", _llama_like("pre_feedforward_layernorm"), attention="self_attn"),
    "gemma3_text": Architecture("model.layers", _llama_like("pre_feedforward_layernorm"), attention="self_attn"),
    # Phi-3 fuses q, k and v into one projection of unequal parts: no query/key/value sites.
    "phi3": Architecture(
        "model.layers",
        {k: v for k, v in _llama_like(gate_up="mlp.gate_up_proj").items() if k not in HEAD_SITES},
        attention="self_attn",
    ),
    # Mixtral's experts are one module with 3-D weights, called once per routed expert:
    # its MLP sites are not per token, so only the residual, norm and attention sites are captured.
    "mixtral": Architecture("model.layers", _MIXTRAL_TAPS, attention="self_attn"),
    "gpt2": Architecture(
        "transformer.h",
        _ungated("ln_1", _fused("attn.c_attn", "part"), "mlp.c_fc", "mlp.act", "mlp.c_proj", mlp_norm="ln_2"),
        attention="attn",
        weights_transposed=True,
    ),
    # GPT-NeoX and Phi run attention and MLP in parallel on the same input: no attention residual.
    "gpt_neox": Architecture(
        "gpt_neox.layers",
        _ungated(
            "input_layernorm", _fused("attention.query_key_value", "head_part"), "mlp.dense_h_to_4h", "mlp.act",
            "mlp.dense_4h_to_h", mlp_norm="post_attention_layernorm", parallel=True,
        ),
        attention="attention",
    ),
    "phi": Architecture(
        "model.layers",
        _ungated("input_layernorm", _separate("self_attn"), "mlp.fc1", "mlp.activation_fn", "mlp.fc2"),
        attention="self_attn",
    ),
    "opt": Architecture(
        "model.decoder.layers",
        _ungated("self_attn_layer_norm", _separate("self_attn"), "fc1", "activation_fn", "fc2", mlp_norm="final_layer_norm"),
        attention="self_attn",
    ),
    # MPT has its own (ALiBi) attention code, which always returns its probabilities: no logits.
    "mpt": Architecture(
        "transformer.blocks",
        _ungated("norm_1", _fused("attn.Wqkv", "part"), "ffn.up_proj", "ffn.act", "ffn.down_proj", mlp_norm="norm_2"),
        attention="attn",
        probs_from_output=True,
    ),
    # Falcon has its own attention code (no eager_attention_forward) and a fused multi-query
    # projection; its residual, norm and MLP sites are captured, attention is not.
    "falcon": Architecture(
        "transformer.h", _ungated("input_layernorm", None, "mlp.dense_h_to_4h", "mlp.act", "mlp.dense_4h_to_h")
    ),
}


class UnsupportedModel(UserError, ValueError):
    """The model's architecture or a requested site is not in the table."""


def architecture_of(model) -> Architecture:
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise UnsupportedModel(
            f"architecture {model_type!r} is not supported for capture; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Adding one is an entry in ARCHITECTURES (workflow/scripts/systematic_outliers/capture.py)"
        )
    return ARCHITECTURES[model_type]


def available_sites(architecture: Architecture) -> tuple[str, ...]:
    have = set(architecture.taps)
    if architecture.attention:
        have |= {"attn_probs"} if architecture.probs_from_output else set(ATTENTION_SITES)
    return tuple(site for site in SITES if site in have)


def decoder_layers(model, architecture: Architecture):
    return model.get_submodule(architecture.layers)


def mlp_weights(model, layer_index: int) -> dict[str, torch.Tensor]:
    """The MLP's gate, up and down matrices of one layer as [out, in], where the table has them."""
    architecture = architecture_of(model)
    layer = decoder_layers(model, architecture)[layer_index]
    matrices = {}
    for name, site in (("gate_proj", "gate_output"), ("up_proj", "up_output"), ("down_proj", "down_proj_input")):
        tap = architecture.taps.get(site)
        if tap is None:
            continue
        weight = layer.get_submodule(tap.module).weight.detach()
        weight = weight.T if architecture.weights_transposed else weight
        matrices[name] = weight.chunk(tap.part[1], dim=0)[tap.part[0]] if tap.part else weight
    return matrices


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _first_tensor(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _shape(tensor: torch.Tensor, tap: Tap, site: str, dim: int) -> torch.Tensor:
    """Batch-1 tensor -> [tokens, channels], or [tokens, heads, head_dim] for query/key/value."""
    tensor = tensor.reshape(-1, tensor.shape[-1])
    if tap.part:
        tensor = tensor.chunk(tap.part[1], dim=-1)[tap.part[0]]
    if site in HEAD_SITES:
        tensor = tensor.reshape(tensor.shape[0], -1, dim * (tap.head_part[1] if tap.head_part else 1))
        if tap.head_part:
            tensor = tensor.chunk(tap.head_part[1], dim=-1)[tap.head_part[0]]
    return tensor


@contextlib.contextmanager
def hooks(model, sites, sink):
    """Call `sink(site, layer, tensor)` for each requested site during forward passes.

    Attention sites need the model loaded with `attn_implementation=ATTENTION_CAPTURE`.
    The hooks are removed on exit, also after an error.
    """
    architecture = architecture_of(model)
    missing = [s for s in sites if s not in available_sites(architecture)]
    if missing:
        raise UnsupportedModel(
            f"{model.config.model_type} has no capture site {', '.join(missing)}; it has {', '.join(available_sites(architecture))}"
        )
    dim = head_dim(model.config)
    handles = []
    for layer_index, layer in enumerate(decoder_layers(model, architecture)):
        for site in sites:
            if site in ATTENTION_SITES:
                continue
            tap = architecture.taps[site]
            module = layer.get_submodule(tap.module) if tap.module else layer

            def emit(tensor, site=site, tap=tap, layer_index=layer_index):
                sink(site, layer_index, _shape(tensor.detach(), tap, site, dim))

            if tap.side == "input":  # the first input, whether passed by position or by name
                pre_hook = lambda module, args, kwargs, emit=emit: emit(args[0] if args else next(iter(kwargs.values())))
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(lambda module, args, output, emit=emit: emit(_first_tensor(output))))
        wanted = tuple(s for s in sites if s in ATTENTION_SITES)
        if wanted and architecture.probs_from_output:
            def emit_probs(module, args, output, layer_index=layer_index):
                sink("attn_probs", layer_index, output[1][0].detach())  # returns None: the output stays as it is

            handles.append(layer.get_submodule(architecture.attention).register_forward_hook(emit_probs))
        elif wanted:
            if model.config._attn_implementation != ATTENTION_CAPTURE:
                raise UnsupportedModel(f"attention sites need the model loaded with attn_implementation={ATTENTION_CAPTURE!r}")
            attention = layer.get_submodule(architecture.attention)
            _ATTENTION_SINKS[id(attention)] = (layer_index, wanted, sink)
            handles.append(_Forget(id(attention)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------
# Attention: a registered attention function that runs the model's own eager code.

ATTENTION_CAPTURE = "eager_capture"
_ATTENTION_SINKS: dict[int, tuple[int, tuple[str, ...], callable]] = {}


class _Forget:
    def __init__(self, key: int):
        self.key = key

    def remove(self):
        _ATTENTION_SINKS.pop(self.key, None)


def _repeat_kv(key: torch.Tensor, groups: int) -> torch.Tensor:
    return key if groups == 1 else key.repeat_interleave(groups, dim=1)


def _eager_capture(module, query, key, value, attention_mask, **kwargs):
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, probs = eager(module, query, key, value, attention_mask, **kwargs)
    registered = _ATTENTION_SINKS.get(id(module))
    if registered is not None:
        layer_index, wanted, sink = registered
        if "attn_logits" in wanted:
            # the scores eager softmaxes: scaled QK^T (soft-capped where the model does) plus the mask
            scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
            keys = _repeat_kv(key, query.shape[1] // key.shape[1])
            logits = torch.matmul(query, keys.transpose(2, 3)) * scaling
            if kwargs.get("softcap"):
                logits = torch.tanh(logits / kwargs["softcap"]) * kwargs["softcap"]
            if attention_mask is not None:
                logits = logits + attention_mask[:, :, :, : keys.shape[-2]]
            sink("attn_logits", layer_index, logits[0].detach())
        if "attn_probs" in wanted:
            sink("attn_probs", layer_index, probs[0].detach())
    return output, probs


def register_attention_capture() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTENTION_CAPTURE, _eager_capture)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_CAPTURE, eager_mask)


register_attention_capture()
