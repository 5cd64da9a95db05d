"""Capture named tensors from unmodified Hugging Face models with forward hooks.

Every architecture maps the same site names onto its own modules in one small table
entry (`architectures.ARCHITECTURES`). A hook hands each captured tensor, as [tokens, channels] (or
[tokens, heads, head_dim] for query/key/value), to a callback `sink(site, layer, tensor)`
and returns None, so the model's outputs are untouched.

Attention probabilities and logits need the attention weights, which only the eager
path materializes. `register_capture()` registers an attention function that runs the
model's own eager code and shows its probabilities (and, on request, the logits) to the
sink; it is used only by the rules that need attention.

Mixture-of-experts MLPs run their experts through transformers' experts interface
(`transformers.integrations.moe`). `EXPERTS_CAPTURE` is an experts function that runs the
experts loop of the model's eager code and shows the down projection's input of every expert, for
the tokens routed to it, to the sink as `ExpertInputs`.

Interventions use the same two mechanisms: `replace_layer_output` is a forward hook that returns
a replacement tensor, and `attention_edits` lets the registered attention function remove keys
from the softmax (through the additive mask, so the model's own code renormalises over the rest)
and show each head's output before the output projection.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from dataclasses import dataclass

import torch

from .architectures import (  # noqa: F401  (re-exported: capture.SITES, capture.Tap, …)
    ARCHITECTURES,
    ATTENTION_SITES,
    HEAD_SITES,
    SITES,
    Architecture,
    Tap,
    UnsupportedModel,
    available_sites,
)


def architecture_of(model) -> Architecture:
    """The model's sites, resolved from the model on a probe and verified (`probe.resolve`, cached per model)."""
    from .probe import resolve

    return resolve(model)


def decoder_layers(model, architecture: Architecture):
    return model.get_submodule(architecture.layers)


def mlp_weights(model, layer_index: int) -> dict[str, torch.Tensor]:
    """The MLP's gate, up and down matrices of one layer as [out, in], where the layer has them."""
    architecture = architecture_of(model)
    layer = decoder_layers(model, architecture)[layer_index]
    matrices = {}
    for name, site in (("gate_proj", "gate_output"), ("up_proj", "up_output"), ("down_proj", "down_proj_input")):
        if not architecture.has(site, layer_index):  # hybrids: not every layer has this MLP
            continue
        tap = architecture.tap(site, layer_index)
        if tap.side == "experts":  # W_down of every expert side by side, [d_model, experts × intermediate]
            if name == "down_proj":
                matrices[name] = experts_down_proj(layer.get_submodule(tap.module))
            continue
        weight = layer.get_submodule(tap.module).weight.detach()
        weight = weight.T if architecture.weights_transposed else weight
        matrices[name] = weight.chunk(tap.part[1], dim=0)[tap.part[0]] if tap.part else weight
    return matrices


def experts_down_proj(experts) -> torch.Tensor:
    """The experts' down projections as one [d_model, experts × intermediate] matrix: column
    e × intermediate + c is channel c of expert e, as in `ExpertInputs.dense`."""
    weight = experts.down_proj.detach()  # [experts, d_model, intermediate], or [experts, intermediate, d_model] transposed
    weight = weight if experts.is_transposed else weight.transpose(1, 2)  # [experts, intermediate, d_model]
    return weight.reshape(-1, weight.shape[-1]).T


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
            if site in ATTENTION_SITES or not architecture.has(site, layer_index):
                continue
            tap = architecture.tap(site, layer_index)
            module = layer.get_submodule(tap.module) if tap.module else layer
            if tap.side == "experts":  # inside the experts function, per routed token
                if model.config._experts_implementation != EXPERTS_CAPTURE:
                    raise UnsupportedModel(f"{site} of experts needs the model loaded with experts_implementation={EXPERTS_CAPTURE!r}")
                _EXPERTS_SINKS[id(module)] = (layer_index, sink)
                handles.append(_Forget(_EXPERTS_SINKS, id(module)))
                continue

            def emit(tensor, site=site, tap=tap, layer_index=layer_index):
                sink(site, layer_index, _shape(tensor.detach(), tap, site, dim))

            if tap.side == "input":  # the first input, whether passed by position or by name

                def pre_hook(module, args, kwargs, emit=emit):
                    emit(args[0] if args else next(iter(kwargs.values())))

                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(lambda module, args, output, emit=emit: emit(_first_tensor(output))))
        wanted = tuple(s for s in sites if s in ATTENTION_SITES and architecture.has(s, layer_index))
        if wanted and architecture.probs_from_output:

            def emit_probs(module, args, output, layer_index=layer_index):
                sink("attn_probs", layer_index, output[1][0].detach())  # returns None: the output stays as it is

            handles.append(layer.get_submodule(architecture.attention).register_forward_hook(emit_probs))
        elif wanted:
            if model.config._attn_implementation != ATTENTION_CAPTURE:
                raise UnsupportedModel(f"attention sites need the model loaded with attn_implementation={ATTENTION_CAPTURE!r}")
            attention = layer.get_submodule(architecture.attention)
            _ATTENTION_SINKS[id(attention)] = (layer_index, wanted, sink)
            handles.append(_Forget(_ATTENTION_SINKS, id(attention)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def replay_from(model, start: int, entering):
    """During forward passes, decoder layers 0 … start − 1 do not run: each returns `entering()`,
    what layer start − 1 returned on an earlier pass of the same input, so layer `start` receives
    exactly what it received then and the model's own code runs from there.

    A forward hook cannot skip a module, so the skipped layers' `forward` is swapped for the
    lookup (as accelerate's hooks swap it) and put back on exit. Only exact where nothing in the
    skipped layers feeds the later ones by another way (a key-value cache shared across layers):
    callers check that a replay without edits gives the logits of the plain pass bit for bit.
    """
    layers = list(decoder_layers(model, architecture_of(model)))[:start]
    swapped = [(layer, layer.__dict__.get("forward")) for layer in layers]
    for layer in layers:
        layer.forward = lambda *args, **kwargs: entering()
    try:
        yield
    finally:
        for layer, own in swapped:
            if own is None:
                del layer.forward  # the class's forward again
            else:
                layer.forward = own


@contextlib.contextmanager
def replace_layer_output(model, layer_index: int, replace):
    """During forward passes, decoder layer `layer_index` outputs `replace(hidden)` instead of its
    hidden states `hidden` [batch, tokens, d_model]; `replace` returns a new tensor."""
    layer = decoder_layers(model, architecture_of(model))[layer_index]

    def hook(module, args, output):
        if isinstance(output, tuple):  # older decoder layers return (hidden, attention, …)
            return (replace(output[0]), *output[1:])
        return replace(output)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def edits_attention(model) -> bool:
    """Whether the model's attention runs through the registered function (so keys can be removed
    and head outputs read): an attention module in the table whose code is transformers' eager one."""
    architecture = architecture_of(model)
    return bool(architecture.attention) and not architecture.probs_from_output


@contextlib.contextmanager
def attention_edits(model, layers, remove_keys=None, observe=None):
    """At each decoder layer in `layers` with softmax attention, during forward passes of batch 1:

    - `remove_keys()` returns the key positions to take out of the softmax; every query that
      still sees another key then puts zero attention on them and renormalises over the rest
      (a query that sees only removed keys, such as the first token removing itself, keeps its row).
      It is called at every edited layer, so it must depend only on the input being run;
    - `observe(layer, probs [heads, queries, keys], output [queries, heads, head_dim], value
      [kv_heads, keys, head_dim], visible [queries, keys])` sees the probabilities, each head's
      output before the output projection, the value vectors and which keys each query may attend
      to (the mask: causal, and sliding where the layer has a window). It returns None.

    Needs the model loaded with `attn_implementation=ATTENTION_CAPTURE`.
    """
    if not edits_attention(model):
        raise UnsupportedModel(f"{model.config.model_type} has no attention through transformers' eager code: keys cannot be removed")
    if model.config._attn_implementation != ATTENTION_CAPTURE:
        raise UnsupportedModel(f"attention edits need the model loaded with attn_implementation={ATTENTION_CAPTURE!r}")
    architecture = architecture_of(model)
    modules = decoder_layers(model, architecture)
    layers = [layer for layer in layers if architecture.has("attn_probs", layer)]  # hybrids: softmax layers only
    keys = [id(modules[layer].get_submodule(architecture.attention)) for layer in layers]
    before = {key: _ATTENTION_EDITS.get(key) for key in keys}  # an enclosing edit comes back on exit
    for key, layer in zip(keys, layers):
        _ATTENTION_EDITS[key] = (layer, remove_keys, observe)
    try:
        yield
    finally:
        for key, previous in before.items():
            if previous is None:
                _ATTENTION_EDITS.pop(key, None)
            else:
                _ATTENTION_EDITS[key] = previous


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
_ATTENTION_SINKS: dict[int, tuple[int, tuple[str, ...], callable]] = {}
_ATTENTION_EDITS: dict[int, tuple[int, callable, callable]] = {}  # (layer, remove_keys, observe) per module
_PROBES: list[dict] = []  # probe.run_probe: what the attention function saw, per module


class _Forget:
    """A handle that takes a module's entry out of a registry of sinks."""

    def __init__(self, registry: dict, key: int):
        self.registry, self.key = registry, key

    def remove(self):
        self.registry.pop(self.key, None)


def _repeat_kv(key: torch.Tensor, groups: int) -> torch.Tensor:
    return key if groups == 1 else key.repeat_interleave(groups, dim=1)


def _eager_capture(module, query, key, value, attention_mask, **kwargs):
    eager = sys.modules[type(module).__module__].eager_attention_forward
    layer_index, remove_keys, observe = _ATTENTION_EDITS.get(id(module), (None, None, None))
    if remove_keys is not None:
        if attention_mask is None:
            raise UnsupportedModel(f"{type(module).__name__} gets no attention mask: keys cannot be removed")
        attention_mask = _without_keys(attention_mask[:, :, :, : key.shape[-2]], torch.as_tensor(remove_keys(), dtype=torch.long))
    output, probs = eager(module, query, key, value, attention_mask, **kwargs)
    if observe is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None else None
        observe(layer_index, probs[0].detach(), output[0].detach(), value[0].detach(), _visible(mask, query.shape[-2], key.shape[-2]))
    for seen in _PROBES:
        seen[id(module)] = {
            "query": query.detach(),
            "key": key.detach(),
            "value": value.detach(),
            "probs": probs.detach(),
            "learned_sink": kwargs.get("s_aux") is not None,  # gpt-oss: a per-head sink logit in the softmax, then dropped
        }
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
_EXPERTS_SINKS: dict[int, tuple[int, callable]] = {}


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


def is_experts(module) -> bool:
    """Whether the module runs through transformers' experts interface (`use_experts_implementation`)."""
    return hasattr(type(module).forward, "__wrapped__") and hasattr(module, "has_gate") and hasattr(module, "down_proj")


def _expert_linear(module, name: str, expert: int, x: torch.Tensor) -> torch.Tensor:
    weight = getattr(module, name)[expert]
    y = x @ weight if module.is_transposed else torch.nn.functional.linear(x, weight)
    return y + getattr(module, f"{name}_bias")[expert] if module.has_bias else y


def experts_forward(module, *args, **kwargs) -> torch.Tensor:
    """The experts loop of transformers' eager code, from the attributes the experts interface
    gives every experts module (gate, bias, layout, post-expert norm), showing each expert's
    down-projection input to a registered sink. `probe.resolve` checks it against the model's own.

    The arguments are the model's own experts forward's: hidden states [tokens, d_model], the
    routed experts [tokens, top_k] and their weights [tokens, top_k], whatever their names."""
    names = list(inspect.signature(type(module).forward.__wrapped__).parameters)[1:4]
    bound = {**dict(zip(names, args)), **kwargs}
    hidden_states, top_k_index, top_k_weights = (bound[name] for name in names)
    if module._is_expert_parallel:
        raise UnsupportedModel(f"{type(module).__name__}: expert-parallel experts are not captured; load the model on one device")
    registered = _EXPERTS_SINKS.get(id(module))
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
        layer_index, sink = registered
        sink("down_proj_input", layer_index, ExpertInputs(inputs, top_k_index, module.num_experts))
    return out
