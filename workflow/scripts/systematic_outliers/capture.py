"""Capture named tensors from unmodified Hugging Face models with forward hooks.

Every model maps the same site names onto its own modules in an `Architecture` that the probe
resolves from the model itself (`architecture_of`: `probe.resolve`, its module tree and one probing
forward pass; the hand table `architectures.ARCHITECTURES` only supplies what the probe cannot see,
in attention code of a model's own). A hook hands each captured tensor, as [tokens, channels] (or
[tokens, heads, head_dim] for query/key/value), to a callback `callback(site, layer, tensor)`
and returns None, so the model's outputs are untouched.

Attention probabilities and logits need the attention weights, which only the eager
path materializes. `register_capture()` registers an attention function that runs the
model's own eager code and shows its probabilities (and, on request, the logits) to the
callback; `passes.load` loads every model whose attention runs through transformers' interface with it.

Mixture-of-experts MLPs run their experts through transformers' experts interface
(`transformers.integrations.moe`). `EXPERTS_CAPTURE` is an experts function that runs the
experts loop of the model's eager code and shows the down projection's input of every expert, for
the tokens routed to it, to the callback as `ExpertInputs`.

Interventions use the same two mechanisms: `replace_layer_output` is a forward hook that returns
a replacement tensor, and `attention_edits` lets the registered attention function remove keys
from the softmax (through the additive mask, so the model's own code renormalises over the rest)
and show each head's output before the output projection.
"""

from __future__ import annotations

import contextlib

import torch

from . import kernels
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
from .kernels import (  # noqa: F401  (re-exported: capture.ATTENTION_CAPTURE, capture.ExpertInputs, …)
    ATTENTION_CAPTURE,
    EXPERTS_CAPTURE,
    ExpertInputs,
    experts_forward,
    register_capture,
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
def hooks(model, sites, callback):
    """Call `callback(site, layer, tensor)` for each requested site during forward passes.

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
                kernels.EXPERTS_CALLBACKS[id(module)] = (layer_index, callback)
                handles.append(kernels.Forget(kernels.EXPERTS_CALLBACKS, id(module)))
                continue

            def emit(tensor, site=site, tap=tap, layer_index=layer_index):
                callback(site, layer_index, _shape(tensor.detach(), tap, site, dim))

            if tap.side == "input":  # the first input, whether passed by position or by name

                def pre_hook(module, args, kwargs, emit=emit):
                    emit(args[0] if args else next(iter(kwargs.values())))

                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(lambda module, args, output, emit=emit: emit(_first_tensor(output))))
        wanted = tuple(s for s in sites if s in ATTENTION_SITES and architecture.has(s, layer_index))
        if wanted and architecture.probs_from_output:

            def emit_probs(module, args, output, layer_index=layer_index):
                callback("attn_probs", layer_index, output[1][0].detach())  # returns None: the output stays as it is

            handles.append(layer.get_submodule(architecture.attention).register_forward_hook(emit_probs))
        elif wanted:
            if model.config._attn_implementation != ATTENTION_CAPTURE:
                raise UnsupportedModel(f"attention sites need the model loaded with attn_implementation={ATTENTION_CAPTURE!r}")
            attention = layer.get_submodule(architecture.attention)
            kernels.ATTENTION_CALLBACKS[id(attention)] = (layer_index, wanted, callback)
            handles.append(kernels.Forget(kernels.ATTENTION_CALLBACKS, id(attention)))
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
    before = {key: kernels.ATTENTION_EDITS.get(key) for key in keys}  # an enclosing edit comes back on exit
    for key, layer in zip(keys, layers):
        kernels.ATTENTION_EDITS[key] = (layer, remove_keys, observe)
    try:
        yield
    finally:
        for key, previous in before.items():
            if previous is None:
                kernels.ATTENTION_EDITS.pop(key, None)
            else:
                kernels.ATTENTION_EDITS[key] = previous
