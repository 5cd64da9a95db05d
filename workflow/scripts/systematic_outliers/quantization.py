"""What the outliers cost a quantizer: one quantize-dequantize definition, and the passes that apply it.

The definition (`absmax_int8`) is the one the GPT-2 variants' w8 and w8a8 use too
(variant_analysis.compressed). On a pretrained model, on the statistics' windows, with the model's
own code and weights, `run` measures the next-token loss of each window (definitions.QUANTIZATIONS):

- full precision;
- w8 per channel: every matrix of the decoder layers 8-bit absmax per output channel (LLM.int8,
  Dettmers et al. 2022, and SmoothQuant, Xiao et al. 2023, quantize weights so): each linear's
  weight, GPT-2's Conv1D's, and each expert's matrices where the experts are stacked tensors;
- a8 per tensor: every linear input of the decoder layers 8-bit absmax with one scale per tensor,
  computed on the window itself (dynamic): the per-tensor activation quantization that Sun et al.
  (2024, Massive Activations) and PrefixQuant (Chen et al. 2024) show failing because of a few
  massive tokens;
- a8 per token: the same inputs 8-bit absmax with one scale per token (LLM.int8's vector-wise
  activation quantization; PrefixQuant's per-token baseline);
- a8 per tensor with the model's outlier tokens kept in full precision: at each layer, the tokens
  of the window that Sun et al.'s rule flags at that layer (`outlier_tokens`) are left out of the
  quantization and of its scale (PrefixQuant's prefixed outlier tokens, kept aside here instead of
  cached); control: as many other tokens of the window drawn at random (interventions.random_keys,
  one draw per seed and window);
- w8 per channel with the weight outliers kept: the W_down columns the statistics name
  (choices.weight_outlier_columns; per expert where there are experts) left in full precision and
  out of their rows' scales (as Yu et al.'s super weights are kept); control: as many other columns
  of the same matrices, one draw per seed.

The embeddings and the LM head stay in full precision. Activations go through forward pre-hooks on
the linears; weights are written dequantized in place (the full-precision values wait in host
memory and are written back at the end). Stacked experts compute inside one module, so their
inputs are not quantized (their weights are). The passes, losses and seeds are those of
interventions.py (its `Passes`), and so is the replay: a pass that keeps tokens or columns starts
where the first one is kept, from what the plain a8-per-tensor (w8) pass gave the layer before.
"""

from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from . import capture
from .definitions import A8_KEPT, A8_RANDOM, A8_TENSOR, A8_TOKEN, FULL, QUANTIZATIONS, W8, W8_KEPT, W8_RANDOM
from .interventions import Passes, random_keys

LEVELS = 127  # symmetric 8-bit: integers -127 … 127

LOSS_COLUMNS = {
    "quantization": f"one of {', '.join(QUANTIZATIONS)}",
    "seed": "the control's random draw; -1 for the others",
    "window": "window index in the windows file",
    "loss": "mean next-token cross-entropy over the window's tokens (nats)",
    "edited": "tokens kept in full precision, summed over the distinct linear inputs (activation passes), or weight columns kept "
    "(weight passes), in this window",
}


def absmax_int8(tensor: torch.Tensor, dim=None) -> torch.Tensor:
    """Symmetric 8-bit quantize-dequantize by the absolute maximum: scale = max |x| / 127 over the
    whole tensor (dim None) or along `dim` (one scale per slice), x → round(x / scale) × scale,
    clamped to ±127. Computed in float32, returned in the tensor's dtype; an all-zero slice stays 0."""
    x = tensor.float()
    scale = (x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)).clamp_min(1e-12) / LEVELS
    return ((x / scale).round().clamp(-LEVELS, LEVELS) * scale).to(tensor.dtype)


def weight_per_channel(weight: torch.Tensor, keep_columns=()) -> torch.Tensor:
    """An nn.Linear weight [out, in] 8-bit absmax per output channel (one scale per row; LLM.int8,
    SmoothQuant). The input columns `keep_columns` stay in full precision and out of the rows' scales."""
    if not len(keep_columns):
        return absmax_int8(weight, dim=-1)
    kept = torch.zeros(weight.shape[-1], dtype=torch.bool, device=weight.device)
    kept[torch.as_tensor(list(keep_columns), device=weight.device)] = True
    quantized = absmax_int8(weight.masked_fill(kept, 0), dim=-1)
    return torch.where(kept, weight, quantized)


def activation_per_token(x: torch.Tensor) -> torch.Tensor:
    """A linear input [..., tokens, channels] 8-bit absmax per token (one scale per token: LLM.int8's
    vector-wise quantization, PrefixQuant's per-token setting)."""
    return absmax_int8(x, dim=-1)


def activation_per_tensor(x: torch.Tensor, keep_tokens=()) -> torch.Tensor:
    """A linear input [..., tokens, channels] 8-bit absmax per tensor, the scale from this input itself
    (dynamic; Sun et al.'s and PrefixQuant's per-tensor setting). The token positions `keep_tokens`
    stay in full precision and out of the scale (PrefixQuant keeps its outlier tokens aside so)."""
    if not len(keep_tokens):
        return absmax_int8(x)
    kept = torch.zeros(x.shape[-2], 1, dtype=torch.bool, device=x.device)
    kept[torch.as_tensor(list(keep_tokens), device=x.device)] = True
    return torch.where(kept, x, absmax_int8(x.masked_fill(kept, 0)))


# ---------------------------------------------------------------------------------------------
# Targets from the statistics.

# the sites whose flagged tokens a decoder layer's linear inputs carry: the stream entering it (the
# previous layer's output), the stream after its attention, and its down projection's input
ENTERING, INSIDE = "layer_output", ("attn_residual", "down_proj_input")


def outlier_tokens(outliers: pd.DataFrame, layers: int) -> dict[int, dict[int, list[int]]]:
    """window → layer → the positions Sun et al.'s rule (`sun_rule` of the activation_outliers table)
    flags where layer `layer`'s linears read: the output of layer − 1, and layer's attn_residual and
    down_proj_input (the last layer's output feeds only the LM head, which stays in full precision)."""
    flagged = outliers[outliers.sun_rule.astype(bool)]
    tokens: dict[int, dict[int, set]] = {}
    for row in flagged.itertuples():
        if row.site == ENTERING and row.layer + 1 < layers:
            tokens.setdefault(int(row.window), {}).setdefault(int(row.layer) + 1, set()).add(int(row.position))
        elif row.site in INSIDE:
            tokens.setdefault(int(row.window), {}).setdefault(int(row.layer), set()).add(int(row.position))
    return {window: {layer: sorted(p) for layer, p in by_layer.items()} for window, by_layer in tokens.items()}


def outlier_columns(matrices: dict[str, Matrix], weight_columns: pd.DataFrame, prefix: str) -> tuple[dict[str, list[int]], list[str]]:
    """({name of a W_down in `matrices`: its outstanding columns}, the rows of choices.weight_columns
    found in no such matrix, as text: an expert stored under another name than the loaded model's)."""
    columns, missing = {}, []
    for row in weight_columns.itertuples():
        name = f"{prefix}.{int(row.layer)}.{row.module}"
        if name not in matrices and not pd.isna(getattr(row, "expert", np.nan)):
            name = _loaded_expert_down(matrices, f"{prefix}.{int(row.layer)}.", int(row.expert))
        if name in matrices:
            columns.setdefault(name, []).append(int(row.top_columns[0]))
        else:
            missing.append(f"layer {int(row.layer) + 1} {row.module}")
    return columns, missing


def _loaded_expert_down(matrices: dict[str, Matrix], layer_prefix: str, expert: int) -> str | None:
    """The name in `matrices` of expert `expert`'s down projection in one layer: the checkpoint may
    store it under another name than the loaded model (Mixtral's block_sparse_moe.experts.{e}.w2 is
    loaded as mlp.experts.down_proj[e]); None unless exactly one matches."""
    pattern = re.compile(rf"^{re.escape(layer_prefix)}(.*\.)?experts\.(?:(?:down_proj|w2)\[{expert}\]|{expert}\.(?:down_proj|w2))$")
    found = [name for name in matrices if pattern.match(name)]
    return found[0] if len(found) == 1 else None


def random_columns(columns: dict[str, list[int]], widths: dict[str, int], seed: int) -> dict[str, list[int]]:
    """The control of `columns`: as many other columns of each matrix, drawn without repeats (one draw per seed)."""
    drawn = {}
    for index, (name, kept) in enumerate(sorted(columns.items())):
        others = np.setdiff1d(np.arange(widths[name]), kept)
        size = min(len(kept), len(others))  # fewer where the matrix has fewer others: the judge sees the counts
        drawn[name] = sorted(np.random.default_rng([seed, index]).choice(others, size=size, replace=False).tolist())
    return drawn


# ---------------------------------------------------------------------------------------------
# What the passes quantize: the matrices of the decoder layers and their inputs. The embeddings and
# the LM head stay in full precision, as transformers' LLM.int8 integration keeps the output
# head (get_keys_to_not_convert) and SmoothQuant quantizes the decoder layers' linears; quantizing
# a head tied to the embeddings would quantize the input embeddings too.


@dataclass(frozen=True)
class Matrix:
    """A weight the w8 passes quantize, as a view [out, in] (writes reach the module) and its decoder layer."""

    view: torch.Tensor
    layer: int


def _in_layers(model):
    """(decoder layer index, qualified name prefix, layer module) of every decoder layer."""
    prefix = capture.architecture_of(model).layers
    return [(i, f"{prefix}.{i}", layer) for i, layer in enumerate(capture.decoder_layers(model, capture.architecture_of(model)))]


def input_modules(model) -> dict[str, tuple[nn.Module, int]]:
    """Every linear of the decoder layers (nn.Linear; GPT-2's Conv1D) by qualified name, with its layer:
    the modules whose inputs the a8 passes quantize. A mixture-of-experts MLP whose experts are stacked
    tensors computes inside one module: its shared experts (and its router, where that is an nn.Linear) are
    here, the inputs of its experts are not."""
    from transformers.pytorch_utils import Conv1D

    return {
        f"{prefix}.{name}": (module, index)
        for index, prefix, layer in _in_layers(model)
        for name, module in layer.named_modules()
        if isinstance(module, (nn.Linear, Conv1D))
    }


def stacked_experts(model) -> dict[str, tuple[nn.Module, int]]:
    """The experts modules of the decoder layers that hold their matrices as 3-D tensors, by qualified
    name, with their layer: they compute inside one module, so the a8 passes do not reach their inputs."""
    from .kernels import is_experts

    return {
        f"{prefix}.{path}": (module, index)
        for index, prefix, layer in _in_layers(model)
        for path, module in layer.named_modules()
        if is_experts(module) and any(p.dim() == 3 for p in module.parameters(recurse=False))
    }


def weight_matrices(model) -> dict[str, Matrix]:
    """Every matrix the w8 passes quantize, by qualified name: each linear's weight ([out, in]; GPT-2's
    Conv1D stores [in, out]) and each expert's matrix of a stacked experts tensor, named …down_proj[e]
    as the weight statistics name it ([experts, out, in], or [experts, in, out] where transposed)."""
    from transformers.pytorch_utils import Conv1D

    found = {
        name: Matrix(module.weight.T if isinstance(module, Conv1D) else module.weight, layer)
        for name, (module, layer) in input_modules(model).items()
    }
    for name, (module, layer) in stacked_experts(model).items():
        for parameter, stacked in module.named_parameters(recurse=False):
            if stacked.dim() == 3:
                stacked = stacked.transpose(1, 2) if getattr(module, "is_transposed", False) else stacked
                for expert in range(stacked.shape[0]):
                    found[f"{name}.{parameter}[{expert}]"] = Matrix(stacked[expert], layer)
    return found


@contextmanager
def quantized_inputs(modules: dict[str, tuple[nn.Module, int]], quantize):
    """Forward pre-hooks on every module of `modules`: its input x replaced by quantize(x, layer).
    Linears that read the same tensor (q, k and v; gate and up) share one quantized copy: same
    input, same layer, same result, computed once."""
    last = [None, None, None]  # the input seen last, its layer and its quantized copy

    def hook(module, args, layer):
        if args[0] is not last[0] or layer != last[1]:
            last[:] = [args[0], layer, quantize(args[0], layer)]
        return (last[2], *args[1:])

    handles = [module.register_forward_pre_hook(lambda m, args, layer=layer: hook(m, args, layer)) for module, layer in modules.values()]
    try:
        yield
    finally:
        last.clear()
        for handle in handles:
            handle.remove()


@contextmanager
def weights_kept_aside(matrices: dict[str, Matrix]):
    """The matrices' full-precision values copied to host memory (the device keeps one copy of the
    model: the w8 passes write dequantized weights in place) and written back on exit."""
    originals = {name: matrix.view.detach().to("cpu", copy=True) for name, matrix in matrices.items()}
    try:
        yield originals
    finally:
        with torch.no_grad():
            for name, matrix in matrices.items():
                matrix.view.copy_(originals[name])


def write_w8(matrices: dict[str, Matrix], originals: dict[str, torch.Tensor], keep: dict[str, list[int]]) -> None:
    """Each matrix named in `keep` (every one: pass `matrices`' names) written 8-bit per output channel
    from its full-precision values, the columns `keep[name]` left in full precision."""
    with torch.no_grad():
        for name, columns in keep.items():
            view = matrices[name].view
            view.copy_(weight_per_channel(originals[name].to(view.device), columns))


# ---------------------------------------------------------------------------------------------
# The passes.


def _family(model, input_ids, reference: str, reference_edits, start: int, kept_passes) -> Passes:
    """One reference pass (`reference_edits(passes)()`, keeping what enters layer `start`) and the
    passes that differ from it only from layer `start` on (`kept_passes(passes)`: (name, seed,
    edits) each), replayed from there."""
    passes = Passes(model, input_ids, [start], reference=reference)
    edits = reference_edits(passes)
    passes.run(reference, -1, lambda: _both(edits(), passes.keep_entering()))
    passes.check_replays(edits)
    for name, seed, kept_edits in kept_passes(passes):
        passes.run(name, seed, kept_edits, start=start)
    passes.entering.clear()  # free the kept layer outputs before the next family
    return passes


@contextmanager
def _both(first, second):
    with first, second:
        yield


def run(
    model, input_ids: torch.Tensor, tokens: dict[int, dict[int, list[int]]], columns: dict[str, list[int]], seeds: list[int]
) -> tuple[pd.DataFrame, dict]:
    """Every quantization pass over the windows `input_ids` [windows, tokens]: (losses, a record of
    the seconds each pass took and the layer each family replayed from). `tokens` (outlier_tokens):
    window → layer → positions kept in the a8-kept pass; `columns` (outlier_columns): matrix name →
    columns kept in the w8-kept pass.

    A pass that keeps tokens (or columns) is the a8-per-tensor (w8) pass until the first layer where
    any window keeps one: it replays from there (interventions.Passes)."""
    modules, matrices = input_modules(model), weight_matrices(model)
    length = input_ids.shape[1]
    plain = Passes(model, input_ids, [])
    plain.run(FULL, -1, nullcontext)
    plain.run(A8_TOKEN, -1, lambda: quantized_inputs(modules, lambda x, layer: activation_per_token(x)))

    def per_tensor(passes, choose):
        def quantize(x, layer):
            # a linear that reads a subset of the window's tokens (a router's chosen tokens, experts
            # stored as linears) cannot be told the positions: quantized per tensor without keeping
            keep = choose(passes.window, layer) if x.shape[-2] == length else []
            passes.edited += len(keep)
            return activation_per_tensor(x, keep)

        return lambda: quantized_inputs(modules, quantize)

    def kept_tokens(passes):
        yield A8_KEPT, -1, per_tensor(passes, lambda window, layer: tokens.get(window, {}).get(layer, []))
        for seed in seeds:
            draw = lambda window, layer, seed=seed: random_keys(tokens.get(window, {}).get(layer, []), length, seed, window)  # noqa: E731
            yield A8_RANDOM, seed, per_tensor(passes, draw)

    first_token_layer = min((layer for by_layer in tokens.values() for layer in by_layer), default=0)
    activations = _family(model, input_ids, A8_TENSOR, lambda p: per_tensor(p, lambda window, layer: []), first_token_layer, kept_tokens)

    with weights_kept_aside(matrices) as originals:
        write_w8(matrices, originals, dict.fromkeys(matrices, ()))

        def kept_columns(passes):
            def keeping(chosen):
                @contextmanager
                def edits():
                    write_w8(matrices, originals, chosen)
                    try:
                        yield
                    finally:
                        write_w8(matrices, originals, dict.fromkeys(chosen, ()))  # back to the plain w8 pass

                return edits

            yield W8_KEPT, -1, keeping(columns)
            for seed in seeds:
                yield W8_RANDOM, seed, keeping(drawn_columns[seed])

        widths = {name: matrices[name].view.shape[-1] for name in columns}
        drawn_columns = {seed: random_columns(columns, widths, seed) for seed in seeds}
        first_column_layer = min((matrices[name].layer for name in columns), default=0)
        weights = _family(model, input_ids, W8, lambda p: nullcontext, first_column_layer, kept_columns)

    everything = [plain, activations, weights]
    losses = pd.DataFrame([row for passes in everything for row in passes.losses]).rename(columns={"intervention": "quantization"})
    order = {name: i for i, name in enumerate(QUANTIZATIONS)}
    losses = losses.sort_values(["quantization", "seed", "window"], key=lambda c: c.map(order) if c.name == "quantization" else c)
    # a weight pass keeps its columns in every window
    losses.loc[losses.quantization == W8_KEPT, "edited"] = sum(len(c) for c in columns.values())
    for seed, drawn in drawn_columns.items():
        losses.loc[(losses.quantization == W8_RANDOM) & (losses.seed == seed), "edited"] = sum(len(c) for c in drawn.values())
    seconds = {label: s for passes in everything for label, s in passes.seconds.items()}
    replays = {A8_KEPT: (first_token_layer, activations.exact), W8_KEPT: (first_column_layer, weights.exact)}
    return losses.reset_index(drop=True), {
        "seconds": seconds,
        "replayed_from": {name: start if exact.get(start) else 0 for name, (start, exact) in replays.items()},
    }


def quantize(name: str, model, evidence, input_ids: torch.Tensor, seeds: list[int], files: dict) -> dict:
    """Every quantization pass on `model` with the outliers its statistics (`readers.Evidence`) flag,
    over the windows `input_ids`; writes `files` ("losses": Parquet, "record": JSON)."""
    from . import choices
    from .io import atomic_file, write_json

    layers = len(capture.decoder_layers(model, capture.architecture_of(model)))
    tokens = outlier_tokens(evidence.outliers, layers)
    matrices = weight_matrices(model)
    prefix = capture.architecture_of(model).layers
    columns, not_found = outlier_columns(matrices, choices.weight_outlier_columns(evidence.weights), prefix)
    losses, record = run(model, input_ids, tokens, columns, seeds)
    record.update(
        {
            "model": name,
            "windows": int(input_ids.shape[0]),
            "window_length": int(input_ids.shape[1]),
            "dtype": str(model.dtype).removeprefix("torch."),
            "device": str(model.device),
            "seeds": list(seeds),
            "outlier_tokens": {str(w): {str(layer): p for layer, p in by.items()} for w, by in tokens.items()},
            "quantized_inputs": len(input_modules(model)),
            "quantized_matrices": len(matrices),
            "inputs_not_quantized": sorted(stacked_experts(model)),
            "outlier_columns": columns,
            "columns_not_found": not_found,
            "columns": {"losses": LOSS_COLUMNS},
        }
    )
    with atomic_file(files["losses"]) as scratch:
        losses.to_parquet(scratch, index=False)
    with atomic_file(files["record"]) as scratch:
        write_json(scratch, record)
    return record
