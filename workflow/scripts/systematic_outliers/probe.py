"""Find a decoder-only model's capture sites from the model itself: its module tree and one short
probing forward pass that records which modules run, in which order, on which tensors.

Every site is found by an identity that must hold on the probe, not by a module's name:

- decoder layers: the ModuleList whose l-th module outputs `hidden_states[l + 1]` of the model's own
  `output_hidden_states` (the last one before the final norm) and whose l+1-th reads it;
- attention: the module that calls the registered attention function (`kernels.ATTENTION_CAPTURE`),
  with `attn_probs` equal to the model's own `output_attentions`; a layer whose mixer never calls it
  (linear attention, state-space, convolution) has no attention sites;
- value: the projection whose output, split into heads, is the value the attention function gets;
  query and key: the projections of the same input with the query's and key's widths;
- attn_norm_output: the module between the layer input and the attention's input;
- attn_residual: the residual stream R between attention and MLP, found as the input of a module with
  R + (a later module's output) = the layer output; else with scaled adds (β·R + α·b, constants fitted
  on the probe: MiniCPM, Beam) or a norm after the add (post-norm: OpenAI GPT, XLNet); a block with
  none of these runs attention and MLP in parallel on the layer input. Post-norm and sandwich-norm blocks (OLMo 2, Gemma 2/3) normalise the
  branches before the add, so R is still the residual stream, never a normalised branch;
- down_proj: the last matrix of the MLP writing d_model, with down_proj_output = down_proj_input W^T (+ b);
  gate, up and act by gated (act(gate) · up) or ungated (act(up)) equality with down_proj_input;
- a mixture-of-experts MLP: the experts module of transformers' experts interface, whose output
  `kernels.experts_forward` (which shows each expert's down-projection input) must reproduce from
  the same inputs as the model's own experts loop.

A site whose identity fails is left out with the reason (`Architecture.absent`). Attention code of a
model's own (MPT, GPT-J, Bloom, …) is the module whose second output is the model's output_attentions,
in a model that never calls the attention interface; the hand table (`architectures.ARCHITECTURES`)
supplies what the probe cannot see there: MPT's query, key and value.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass

import torch
from accelerate.utils import align_module_device

from . import kernels
from .architectures import ARCHITECTURES, ATTENTION_SITES, HEAD_SITES, SITES, Architecture, Tap, UnsupportedModel

PROBE_TOKENS = 12
_RESOLVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class Call:
    """One module call on the probe: its path from the model root, when it started and returned, and
    its first input and first output tensor."""

    name: str
    module: torch.nn.Module
    start: int
    end: int = -1
    input: torch.Tensor | None = None
    output: torch.Tensor | None = None
    arguments: tuple | None = None  # (args, kwargs) in full, for experts modules only
    second: torch.Tensor | None = None  # a 4-D second output: attention code of a model's own returns its probabilities there


@dataclass(frozen=True)
class LayerSites:
    """What one decoder layer resolves to on the probe (`_resolve_layer`)."""

    taps: dict[str, Tap]  # site -> where the layer has it
    attention: str | None  # the attention module's path in the layer; None: its token mixer runs no softmax attention
    absent: dict[str, str]  # site -> why the layer lacks it
    own_attention: bool  # the attention is code of the model's own that returns its probabilities (MPT, GPT-J, …)


@dataclass
class Probe:
    calls: list[Call]
    attention_calls: dict[int, dict]  # id(attention module) -> what the attention function saw
    hidden_states: tuple
    attentions: tuple | None
    counts: dict[str, int]  # calls per module path: a site must be called once per layer


def _first(value):
    """The first tensor of a module's inputs or outputs, copied: later in-place operations must not change it."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return next((_first(v) for v in value if isinstance(v, torch.Tensor)), None)
    if isinstance(value, dict):
        return next((_first(v) for v in value.values() if isinstance(v, torch.Tensor)), None)
    return None


def _copy(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _same(a, b) -> bool:
    """Equal up to the rounding of the model's dtype, relative to each token's largest entry: a
    massive activation on one token must not hide a difference on the others."""
    if a is None or b is None or a.numel() != b.numel() or a.shape[-1] != b.shape[-1]:
        return False
    eps = max(torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0 for t in (a, b))
    a, b = a.to(b.device).float().reshape(-1, b.shape[-1]), b.float().reshape(-1, b.shape[-1])  # OPT flattens tokens
    scale = b.abs().amax(dim=-1, keepdim=True).clamp_min(1e-6)
    return bool(((a - b).abs() <= max(1e-5, 4 * eps) * scale).all().item())


def _identical(a, b) -> bool:
    """The same values: a tensor handed on from one module to the next."""
    if a is None or b is None or a.numel() != b.numel() or a.shape[-1] != b.shape[-1]:
        return False
    return torch.equal(a.to(b.device).reshape(b.shape), b)


def run_probe(model, tokens: int = PROBE_TOKENS, output_attentions: bool = True) -> Probe:
    """One forward pass of `tokens` token ids with every module and the attention function recorded."""
    counter = iter(range(10**9))
    calls, by_module, handles = [], {}, []
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.arange(tokens, dtype=torch.long).mul(7919).remainder(vocab - 3).add(3)[None]  # fixed ids, past the usual special ones
    for name, module in model.named_modules():
        if not name:
            continue

        def pre(module, args, kwargs, name=name):
            call = Call(name, module, next(counter), input=_first(args) if _first(args) is not None else _first(kwargs))
            if kernels.runs_experts_interface(module):  # to run its own loop and ours on the same routing
                call.arguments = (tuple(_copy(a) for a in args), {k: _copy(v) for k, v in kwargs.items()})
            calls.append(call)
            by_module.setdefault(id(module), []).append(call)

        def post(module, args, kwargs, output):
            by_module[id(module)][-1].end = next(counter)
            by_module[id(module)][-1].output = _first(output)
            if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor) and output[1].dim() == 4:
                by_module[id(module)][-1].second = output[1].detach().clone()

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    attention_calls = {}
    kernels.PROBES.append(attention_calls)
    try:  # the hooks come off whatever happens in the pass
        with torch.no_grad():
            out = model(ids.to(input_device(model)), use_cache=False, output_hidden_states=True, output_attentions=output_attentions)
    finally:
        kernels.PROBES.remove(attention_calls)
        for handle in handles:
            handle.remove()
    counts = {}
    for call in calls:
        counts[call.name] = counts.get(call.name, 0) + 1
    return Probe(calls, attention_calls, out.hidden_states, getattr(out, "attentions", None), counts)


def input_device(model) -> torch.device:
    """Where the input ids go: the model's device, or with accelerate's hooks (weights on disk, where
    the parameters are meta outside forward) the device the hooks compute on."""
    hook = getattr(model, "_hf_hook", None)
    return torch.device(hook.execution_device) if getattr(hook, "execution_device", None) is not None else model.device


def _is_matrix(module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2 and not isinstance(module, torch.nn.Embedding)


def _linear_identity(call: Call) -> bool | None:
    """Whether the call's output is input W^T + b (True), input W + b (GPT-2's Conv1D: False), or neither (None)."""
    with align_module_device(call.module):  # weights left on disk (the fetch's probe) are read in for the check
        weight, bias = call.module.weight, getattr(call.module, "bias", None)
        x = call.input.reshape(-1, call.input.shape[-1]).float()
        for transposed in (False, True):
            w = weight.T if transposed else weight
            if w.shape[1] != x.shape[-1]:
                continue
            expected = x @ w.float().T + (bias.float() if isinstance(bias, torch.Tensor) else 0)
            if _same(call.output.reshape(expected.shape), expected):
                return not transposed
    return None


def _decoder_layers(model, probe: Probe) -> str:
    layers = len(probe.hidden_states) - 1
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers and layers > 0:
            if all(probe.counts.get(f"{name}.{i}".lstrip("."), 0) == 1 for i in range(layers)):
                candidates.append(name)
    named = {c.name: c for c in probe.calls}
    for name in candidates:
        outputs = [named[f"{name}.{i}"].output for i in range(layers)]
        inputs = [named[f"{name}.{i}"].input for i in range(layers)]
        if all(_same(outputs[i], probe.hidden_states[i + 1]) for i in range(layers - 1)) and all(
            _same(inputs[i + 1], outputs[i]) for i in range(layers - 1)
        ):
            return name
    raise UnsupportedModel(
        f"{model.config.model_type}: no decoder layers found: no ModuleList of {layers} modules whose l-th output is the "
        "model's hidden_states[l+1] and the l+1-th's input (is it a decoder-only causal LM?)"
    )


def _resolve_layer(probe: Probe, layers: str, index: int, calls: list[Call], layer_call: Call, table: Architecture | None) -> LayerSites:
    """The sites of one decoder layer, and why it lacks the others."""
    prefix = f"{layers}.{index}."
    rel = {c.name: c.name[len(prefix) :] for c in calls}
    once = [c for c in calls if probe.counts[c.name] == 1 and c.end > 0]
    taps, absent = {"layer_input": Tap("", "input"), "layer_output": Tap("")}, {}
    x_in, x_out = layer_call.input, layer_call.output

    # attention: the module that calls the registered attention function; else attention code of the
    # model's own (MPT, GPT-J, Bloom, …) that returns as its second output the model's output_attentions
    attention = next((c for c in once if id(c.module) in probe.attention_calls), None)
    own = None
    # only in models that never call the interface: a hybrid's linear attention (MiniMax) returns weights of its own
    if (
        attention is None
        and not probe.attention_calls
        and probe.attentions is not None
        and len(probe.attentions) == len(probe.hidden_states) - 1
    ):
        own = next((c for c in once if c.second is not None and _same(c.second, probe.attentions[index])), None)
        attention = own
    mixer = None
    if attention is None:
        mixer = next((c for c in once if c.name.count(".") == prefix.count(".") and _has_matrices(c.module)), None)
        why = f"its token mixer ({type(mixer.module).__name__ if mixer else 'none found'}) runs no softmax attention through transformers' attention interface"
        for site in (*HEAD_SITES, *ATTENTION_SITES):
            absent[site] = why
        norm = next((c for c in once if _identical(c.input, x_in) and not _has_matrices(c.module) and not _identical(c.output, x_in)), None)
        if norm is not None:
            taps["attn_norm_output"] = Tap(rel[norm.name])
    else:
        seen = probe.attention_calls.get(id(attention.module))
        if seen is not None and probe.attentions is not None and len(probe.attentions) == len(probe.hidden_states) - 1:
            if not _same(seen["probs"], probe.attentions[index]):
                for site in ATTENTION_SITES:
                    absent[site] = "the captured probabilities differ from the model's own output_attentions"
        if _identical(attention.input, x_in):  # OLMo 2
            absent["attn_norm_output"] = "no pre-norm: the attention reads the residual stream itself"
        else:
            norm = [c for c in once if c.end < attention.start and _identical(c.input, x_in) and _identical(c.output, attention.input)]
            if norm:
                taps["attn_norm_output"] = Tap(rel[norm[-1].name])
            else:
                absent["attn_norm_output"] = "no module between the layer input and the attention input"
        if seen is not None:
            taps.update(_head_taps(probe, attention, seen, rel, absent))
        elif table is not None and table.attention == rel[attention.name]:  # attention code of its own: the table's record
            taps.update({site: table.taps[site] for site in (*HEAD_SITES, "attn_norm_output") if site in table.taps})
            absent.pop("attn_norm_output", None)
        else:
            for site in HEAD_SITES:
                absent[site] = (
                    f"attention code of its own ({type(attention.module).__name__}): no query, key and value handed to the attention interface"
                )
        if own is not None:
            absent["attn_logits"] = "the model's own attention code returns its probabilities, not its logits"

    # the residual stream between attention and MLP: R + (a later module's output) = layer output
    after = [c for c in once if attention is None or c.start > attention.end]
    residual = None
    for r in after:
        if r.input is None or r.input.numel() != x_out.numel() or _identical(r.input, x_in):
            continue
        if any(
            b.start >= r.start
            and b.output is not None
            and b.output.numel() == x_out.numel()
            and _same(r.input.reshape(x_out.shape) + b.output.reshape(x_out.shape), x_out)
            for b in after
        ):
            residual = r
            break
    if residual is None and not ((attention or mixer) is not None and _parallel(x_in, attention or mixer, after, x_out)):
        residual = _scaled_or_post_norm_residual(after, x_in, x_out)
    if residual is not None:
        taps["attn_residual"] = Tap(rel[residual.name], "input")
        after = [c for c in after if c.start >= residual.start]
    elif (attention or mixer) is not None and _parallel(x_in, attention or mixer, after, x_out):
        absent["attn_residual"] = "parallel block: attention and MLP both read the layer input"
    else:
        absent["attn_residual"] = (
            "no residual stream R with R + (a later module's output) = the layer output (scaled or post-norm adds: only in float32)"
            if x_out.dtype in (torch.float16, torch.bfloat16)
            else "no residual stream R with β·R + α·(a later module's output) = the layer output or its final norm's input"
        )
    if attention is not None:
        after = [c for c in after if not c.name.startswith(attention.name + ".")]

    # the MLP: its norm, then its matrices
    d_model = x_out.shape[-1]
    matrices = [c for c in after if _is_matrix(c.module) and c.output is not None]
    first = next((c for c in matrices if c.input.shape[-1] == d_model), None)
    mlp_in = first.input if first else None
    stream = residual.input if residual else x_in
    if mlp_in is None:
        absent["mlp_norm_output"] = "no MLP matrix reads d_model"
    elif _identical(mlp_in, stream):
        absent["mlp_norm_output"] = "no pre-norm: the MLP reads the residual stream itself"
    else:
        # a norm of its own first: at random init two norms give equal outputs (GPT-NeoX)
        attn_norm = taps["attn_norm_output"].module if "attn_norm_output" in taps else None
        norm = [
            c
            for c in after
            if c.end < first.start and _identical(c.output, mlp_in) and not _is_matrix(c.module) and rel[c.name] != attn_norm
        ]
        if norm and (_identical(norm[-1].input, stream) or _identical(norm[-1].input, x_in)):
            taps["mlp_norm_output"] = Tap(rel[norm[-1].name])
        elif "attn_norm_output" in taps and _identical(mlp_in, _output_of(calls, prefix + taps["attn_norm_output"].module)):
            absent["mlp_norm_output"] = "the MLP reads the attention norm's output"
        else:
            absent["mlp_norm_output"] = "no module between the residual stream and the MLP input"
    mlp_sites = ("gate_output", "up_output", "act_output", "down_proj_input", "down_proj_output")
    attention_path = rel[attention.name] if attention else None

    experts = [c for c in after if kernels.is_experts(c.module)]
    if experts:
        taps.update(_experts_taps(experts, rel, absent))
        return LayerSites(taps, attention_path, absent, own is not None)
    down = next((c for c in reversed(matrices) if c.output.shape[-1] == d_model), None)
    if down is None:
        absent.update({site: "no matrix writing d_model after the attention" for site in mlp_sites})
        return LayerSites(taps, attention_path, absent, own is not None)
    if _linear_identity(down) is None:
        for site in ("down_proj_input", "down_proj_output"):
            absent[site] = f"{rel[down.name]}: down_proj_output ≠ down_proj_input × W_down (+ bias)"
    else:
        taps.update(down_proj_input=Tap(rel[down.name], "input"), down_proj_output=Tap(rel[down.name]))
    inner = [c for c in matrices if c.start >= first.start and c.end < down.start]
    taps.update(_mlp_taps(inner, after, down, rel, absent))
    return LayerSites(taps, attention_path, absent, own is not None)


def _scaled_or_post_norm_residual(after: list[Call], x_in, x_out) -> Call | None:
    """The residual stream R of a block normed after the add (post-norm: the layer output is a norm of
    R + b) or whose adds are scaled (MiniCPM: x_out = R + α·b; Beam: β·R + α·b, constants fitted on
    the probe): the module whose input is R, with b a later module's output. In float32 and float64
    only: at half precision the rounding admits pairs that match by chance."""
    if x_out.dtype in (torch.float16, torch.bfloat16):
        return None
    final = next(
        (c for c in reversed(after) if _identical(c.output, x_out) and c.input is not None and c.input.numel() == x_out.numel()), None
    )
    for r in after:
        if r.input is None or r.input.numel() != x_out.numel() or _identical(r.input, x_in) or r is final:
            continue
        for b in after:
            if b.start < r.start or b is final or b.output is None or b.output.numel() != x_out.numel():
                continue
            summed = r.input.reshape(x_out.shape) + b.output.reshape(x_out.shape)
            if final is not None and _same(summed, final.input):  # post-norm
                return r
            pair = torch.stack([r.input.reshape(-1).float(), b.output.reshape(-1).float()], dim=1)
            scales = torch.linalg.lstsq(pair, x_out.reshape(-1, 1).float()).solution.flatten()
            if (scales.abs() > 1e-3).all() and _same((pair @ scales).reshape(x_out.shape), x_out):
                return r
    return None


def _parallel(x_in, attention: Call, after: list[Call], x_out) -> bool:
    """layer output = layer input + attention output + a later module's output (GPT-NeoX, Phi, GPT-J)."""
    if attention.output is None or attention.output.numel() != x_out.numel():
        return False
    stream = x_in.reshape(x_out.shape) + attention.output.reshape(x_out.shape)
    return any(
        b.output is not None and b.output.numel() == x_out.numel() and _same(stream + b.output.reshape(x_out.shape), x_out)
        for b in after
        if not b.name.startswith(attention.name + ".")
    )


def _has_matrices(module) -> bool:
    return any(p.dim() >= 2 for p in module.parameters())


def _output_of(calls, name):
    return next((c.output for c in calls if c.name == name), None)


def _experts_taps(experts: list[Call], rel: dict, absent: dict) -> dict[str, Tap]:
    """down_proj_input of a mixture-of-experts MLP, read inside its experts module through
    `kernels.EXPERTS_CAPTURE`: only where that function gives the model's own experts output."""
    inside = ("gate_output", "up_output", "act_output", "down_proj_output")
    interface = next((c for c in experts if c.arguments is not None), None)
    if interface is None:
        why = f"mixture-of-experts MLP ({type(experts[0].module).__name__}) without transformers' experts interface: not captured per token"
        absent.update({site: why for site in (*inside, "down_proj_input")})
        return {}
    module, (args, kwargs) = interface.module, interface.arguments
    try:
        with torch.no_grad(), align_module_device(module):
            same = _same(kernels.experts_forward(module, *args, **kwargs), type(module).forward.__wrapped__(module, *args, **kwargs))
        why = f"{rel[interface.name]}: kernels.experts_forward ≠ the model's own experts loop on the same routing"
    except (AttributeError, TypeError, RuntimeError, KeyError, IndexError, ValueError) as error:  # not following the interface
        same, why = False, f"{rel[interface.name]}: kernels.experts_forward fails ({type(error).__name__}: {error})"
    if not same:
        absent.update({site: why for site in (*inside, "down_proj_input")})
        return {}
    why = f"inside the experts ({type(module).__name__}): the down projection's input is captured per expert, these are not"
    absent.update({site: why for site in inside})
    return {"down_proj_input": Tap(rel[interface.name], "experts")}


def _head_taps(probe, attention: Call, seen: dict, rel: dict, absent: dict) -> dict[str, Tap]:
    """query/key/value from the attention's projections of its input, checked against the value it passes on."""
    value = seen["value"][0].transpose(0, 1)  # [keys, kv_heads, head_dim]
    kv_heads, head_dim = value.shape[1], value.shape[2]
    heads = seen["query"].shape[1]
    projections = [
        c
        for c in probe.calls
        if c.name.startswith(attention.name + ".")
        and _is_matrix(c.module)
        and c.output is not None
        and _identical(c.input, attention.input)
    ]

    def value_of(output, part=None, head_part=None):
        out = output.reshape(-1, output.shape[-1])
        if part:
            if out.shape[-1] % part[1]:
                return None
            out = out.chunk(part[1], dim=-1)[part[0]]
        if out.shape[-1] % (head_dim * (head_part[1] if head_part else 1)):
            return None
        out = out.reshape(out.shape[0], -1, head_dim * (head_part[1] if head_part else 1))
        if head_part:
            out = out.chunk(head_part[1], dim=-1)[head_part[0]]
        return out

    widths = {"query": heads * head_dim, "key": kv_heads * head_dim, "value": kv_heads * head_dim}
    for call in projections:  # separate projections: value by identity, query and key by width and order
        if call.output.shape[-1] == widths["value"] and _same(value_of(call.output), value):
            rest = [c for c in projections if c is not call]
            query = next((c for c in rest if c.output.shape[-1] == widths["query"]), None)
            key = next((c for c in rest if c is not query and c.output.shape[-1] == widths["key"]), None)
            if query is None or key is None:
                break
            return {"query": Tap(rel[query.name]), "key": Tap(rel[key.name]), "value": Tap(rel[call.name])}
    for call in projections:  # one fused projection of equal thirds
        if call.output.shape[-1] != 3 * widths["value"] or heads != kv_heads:
            continue
        for split in ("part", "head_part"):
            if _same(value_of(call.output, **{split: (2, 3)}), value):
                return {site: Tap(rel[call.name], **{split: (i, 3)}) for i, site in enumerate(HEAD_SITES)}
    why = "no projection of the attention input whose heads are the value the attention gets (fused of unequal widths, or normed)"
    for site in HEAD_SITES:
        absent[site] = why
    return {}


def _mlp_taps(inner: list[Call], outside: list[Call], down: Call, rel: dict, absent: dict) -> dict[str, Tap]:
    """gate/up/act between the MLP input and the down projection: act(gate) · up or act(up) = down_proj_input."""
    x = down.input
    acts = [c for c in outside if c.start > (inner[0].start if inner else down.start) and c.end < down.start and not _is_matrix(c.module)]
    for up in inner:  # ungated: act(up) = down input
        for act in acts:
            if _identical(act.input, up.output) and _same(act.output, x):
                absent["gate_output"] = "ungated MLP: down_proj_input = act(up)"
                return {"up_output": Tap(rel[up.name]), "act_output": Tap(rel[act.name])}
    for gate in inner:
        for act in acts:
            if not _identical(act.input, gate.output):
                continue
            for up in inner:
                if up is not gate and up.output.shape == act.output.shape and _same(act.output * up.output, x):
                    return {"gate_output": Tap(rel[gate.name]), "up_output": Tap(rel[up.name]), "act_output": Tap(rel[act.name])}
    for fused in inner:  # gate and up as halves of one projection (Phi-3): gate first
        halves = fused.output.chunk(2, dim=-1)
        for act in acts:
            for gate, up in ((0, 1), (1, 0)):
                if _identical(act.input, halves[gate]) and _same(act.output * halves[up], x):
                    return {
                        "gate_output": Tap(rel[fused.name], part=(gate, 2)),
                        "up_output": Tap(rel[fused.name], part=(up, 2)),
                        "act_output": Tap(rel[act.name]),
                    }
    why = "no activation module with act(gate) · up or act(up) equal to the down projection's input"
    for site in ("gate_output", "up_output", "act_output"):
        absent[site] = why
    return {}


def resolve(model) -> Architecture:
    """The model's capture sites, resolved on a probe and verified by their identities (cached per model)."""
    if model in _RESOLVED:
        return _RESOLVED[model]
    table = ARCHITECTURES.get(model.config.model_type)
    implementation = model.config._attn_implementation
    if implementation != kernels.ATTENTION_CAPTURE:
        kernels.register_capture()
        model.set_attn_implementation(kernels.ATTENTION_CAPTURE)
    try:
        probe = run_probe(model)
    finally:
        if implementation != kernels.ATTENTION_CAPTURE:
            model.set_attn_implementation(implementation)
    layers = _decoder_layers(model, probe)
    n = len(probe.hidden_states) - 1
    per_layer = []
    for index in range(n):
        prefix = f"{layers}.{index}"
        layer_call = next(c for c in probe.calls if c.name == prefix)
        calls = [c for c in probe.calls if c.name.startswith(prefix + ".") and layer_call.start < c.start < layer_call.end]
        per_layer.append(_resolve_layer(probe, layers, index, calls, layer_call, table))
    architecture = _combine(model, layers, per_layer, table)
    if architecture.probs_from_output and not _returns_probabilities(model, layers, architecture.attention):
        why = f"{architecture.attention}: attention code of its own that returns its probabilities only with output_attentions"
        architecture = dataclasses.replace(
            architecture,
            attention=None,
            probs_from_output=False,
            absent={**architecture.absent, "attn_probs": why},
            site_layers={s: v for s, v in architecture.site_layers.items() if s not in ATTENTION_SITES},
        )
    if any(seen["learned_sink"] for seen in probe.attention_calls.values()):
        architecture = dataclasses.replace(architecture, learned_sink=True)
    _RESOLVED[model] = architecture
    return architecture


def _combine(model, layers: str, per_layer: list[LayerSites], table: Architecture | None) -> Architecture:
    """One Architecture from the layers' taps. A site found in some layers only (hybrid models)
    names them in `site_layers`, and `absent` says why the others lack it."""
    attention_modules = {layer.attention for layer in per_layer if layer.attention}
    attention = attention_modules.pop() if len(attention_modules) == 1 else None
    found = [dict(layer.taps) for layer in per_layer]
    for index, layer in enumerate(per_layer):
        if layer.attention and layer.attention == attention:  # the attention sites ride on the attention module
            found[index].update({site: None for site in ATTENTION_SITES if site not in layer.absent})
    taps, absent, site_layers, layer_taps = {}, {}, {}, {}
    for site in SITES:
        where = [i for i, layer in enumerate(found) if site in layer]
        missing = [i for i in range(len(found)) if i not in where]
        if where and site not in ATTENTION_SITES:
            # the most common module; layers that read it elsewhere say so (dense and MoE layers in one model)
            tapped = [found[i][site] for i in where]
            taps[site] = max(tapped, key=tapped.count)
            if len(set(tapped)) > 1:
                layer_taps[site] = {i: found[i][site] for i in where if found[i][site] != taps[site]}
        if missing:
            reasons = {per_layer[i].absent.get(site, "not found") for i in missing}
            why = "; ".join(sorted(reasons))
            absent[site] = why if not where else f"layers {_ranges([i + 1 for i in missing])}: {why}"  # 1-based, as in the figures
        if where and missing:
            site_layers[site] = tuple(where)
    # attention code of the model's own (MPT, GPT-J, …) that returns its probabilities: no logits
    probs_from_output = bool(attention) and all(layer.own_attention for layer in per_layer if layer.attention == attention)
    return Architecture(
        layers,
        taps,
        attention=attention,
        probs_from_output=probs_from_output,
        weights_transposed=_transposed(model, layers, taps),
        absent=absent,
        site_layers=site_layers,
        layer_taps=layer_taps,
        experts_transposed=_experts_transposed(model, layers, taps, layer_taps),
    )


def _returns_probabilities(model, layers: str, attention: str) -> bool:
    """Whether attention code of the model's own returns its probabilities in a pass without
    output_attentions, as capture runs (which must not keep every layer's maps)."""
    probe = run_probe(model, tokens=4, output_attentions=False)
    named = {c.name: c for c in probe.calls}
    calls = [named.get(f"{layers}.{i}.{attention}") for i in range(len(model.get_submodule(layers)))]
    return all(c is None or c.second is not None for c in calls) and any(c is not None for c in calls)


def _ranges(indices) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            runs.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ", ".join(runs)


def _transposed(model, layers: str, taps: dict[str, Tap]) -> bool:
    """Whether the down projection stores [in, out] (GPT-2's Conv1D)."""
    tap = taps.get("down_proj_input")
    if tap is None:
        return False
    for layer in model.get_submodule(layers):  # the first layer that has it (hybrids)
        module = layer.get_submodule(tap.module) if _has_path(layer, tap.module) else None
        if module is not None:
            return type(module).__name__ == "Conv1D"
    return False


def _experts_transposed(model, layers: str, taps: dict[str, Tap], layer_taps: dict) -> bool:
    """Whether the experts store their matrices [experts, in, out] (transformers' `is_transposed`)."""
    for index, layer in enumerate(model.get_submodule(layers)):
        tap = layer_taps.get("down_proj_input", {}).get(index) or taps.get("down_proj_input")
        if tap is not None and tap.side == "experts" and _has_path(layer, tap.module):
            return bool(layer.get_submodule(tap.module).is_transposed)
    return False


def _has_path(module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
