"""What the outliers cost a quantizer: one quantize-dequantize definition, and the passes that apply it.

The definition (`absmax_int8`) is the one the GPT-2 variants' w8 and w8a8 use too
(variant_analysis.compressed). On a pretrained model, on the statistics' windows, with the model's
own code and weights, `run` measures the next-token loss of each window (definitions.QUANTIZATIONS):

- full precision;
- w8 per channel: every nn.Linear weight 8-bit absmax per output channel (a dequantized copy in
  place of the weight, restored after the pass), as LLM.int8 (Dettmers et al. 2022) and SmoothQuant
  (Xiao et al. 2023) quantize weights;
- a8 per tensor: every nn.Linear input 8-bit absmax with one scale per tensor, computed on the
  window itself (dynamic): the per-tensor activation quantization that Sun et al. (2024, Massive
  Activations) and PrefixQuant (Chen et al. 2024) show failing because of a few massive tokens;
- a8 per token: every nn.Linear input 8-bit absmax with one scale per token (LLM.int8's vector-wise
  activation quantization; PrefixQuant's per-token baseline);
- a8 per tensor with the model's outlier tokens kept in full precision: at each layer, the tokens
  of the window that Sun et al.'s rule flags at that layer (`outlier_tokens`) are left out of the
  quantization and of its scale (PrefixQuant's prefixed outlier tokens, kept aside here instead of
  cached); control: as many other tokens of the window drawn at random (interventions.random_keys,
  one draw per seed and window);
- w8 per channel with the weight outliers kept: the W_down columns the statistics name
  (choices.weight_outlier_columns) left in full precision and out of their rows' scales (as Yu et
  al.'s super weights are kept); control: as many other columns of the same matrices, one draw per seed.

The edits go through forward pre-hooks on every nn.Linear (activations) and dequantized weight
copies (weights); the passes, losses and seeds as in interventions.py (its `_Passes`). Only
nn.Linear modules are quantized: fused expert tensors of a mixture-of-experts MLP (and GPT-2's
Conv1D) are not, and the record says which outstanding columns sit in such tensors.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from . import capture
from .definitions import A8_KEPT, A8_RANDOM, A8_TENSOR, A8_TOKEN, FULL, QUANTIZATIONS, W8, W8_KEPT, W8_RANDOM

LEVELS = 127  # symmetric 8-bit: integers -127 … 127

LOSS_COLUMNS = {
    "quantization": f"one of {', '.join(QUANTIZATIONS)}",
    "seed": "the control's random draw; -1 for the others",
    "window": "window index in the windows file",
    "loss": "mean next-token cross-entropy over the window's tokens (nats)",
    "edited": "tokens kept in full precision, summed over the linear inputs (activation passes), or weight columns kept "
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
    down_proj_input. Layer `layers` (one past the last) is the LM head's input: the last layer's output."""
    flagged = outliers[outliers.sun_rule.astype(bool)]
    tokens: dict[int, dict[int, set]] = {}
    for row in flagged.itertuples():
        if row.site == ENTERING and row.layer + 1 <= layers:
            tokens.setdefault(int(row.window), {}).setdefault(int(row.layer) + 1, set()).add(int(row.position))
        elif row.site in INSIDE:
            tokens.setdefault(int(row.window), {}).setdefault(int(row.layer), set()).add(int(row.position))
    return {window: {layer: sorted(p) for layer, p in by_layer.items()} for window, by_layer in tokens.items()}


def outlier_columns(model, weight_columns: pd.DataFrame) -> tuple[dict[str, list[int]], list[str]]:
    """({qualified name of an nn.Linear W_down: its outstanding columns}, the rows not found as an
    nn.Linear (fused experts' tensors, which w8 leaves as they are) as text) from choices.weight_columns."""
    layer_modules = capture.decoder_layers(model, capture.architecture_of(model))
    prefix = capture.architecture_of(model).layers
    columns, missing = {}, []
    for row in weight_columns.itertuples():
        name = f"{prefix}.{int(row.layer)}.{row.module}"
        try:
            module = layer_modules[int(row.layer)].get_submodule(row.module)
        except AttributeError:
            module = None
        if isinstance(module, nn.Linear):
            columns.setdefault(name, []).append(int(row.top_columns[0]))
        else:
            missing.append(f"layer {int(row.layer) + 1} {row.module}")
    return columns, missing


def random_columns(columns: dict[str, list[int]], widths: dict[str, int], seed: int) -> dict[str, list[int]]:
    """The control of `columns`: as many other columns of each matrix, drawn without repeats (one draw per seed)."""
    drawn = {}
    for index, (name, kept) in enumerate(sorted(columns.items())):
        others = np.setdiff1d(np.arange(widths[name]), kept)
        drawn[name] = sorted(np.random.default_rng([seed, index]).choice(others, size=len(kept), replace=False).tolist())
    return drawn


# ---------------------------------------------------------------------------------------------
# The passes.


def linear_layers(model) -> dict[str, tuple[nn.Linear, int]]:
    """Every nn.Linear by qualified name, with the decoder layer it sits in (the LM head and any
    linear after the layers: one past the last; before them: 0)."""
    prefix = capture.architecture_of(model).layers
    count = len(capture.decoder_layers(model, capture.architecture_of(model)))
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if name.startswith(prefix + "."):
                layer = int(name[len(prefix) + 1 :].split(".")[0])
            else:
                layer = count if "head" in name or name.startswith("lm") else 0
            found[name] = (module, layer)
    return found


@contextmanager
def quantized_weights(linears: dict[str, tuple[nn.Linear, int]], keep: dict[str, list[int]] | None = None):
    """Every linear's weight replaced by its w8-per-channel copy (`keep`: columns left in full precision); restored on exit."""
    keep = keep or {}
    saved = {}
    with torch.no_grad():
        for name, (module, _) in linears.items():
            saved[name] = module.weight.detach().clone()
            module.weight.copy_(weight_per_channel(module.weight, keep.get(name, ())))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, (module, _) in linears.items():
                module.weight.copy_(saved[name])


@contextmanager
def quantized_inputs(linears: dict[str, tuple[nn.Linear, int]], quantize):
    """Forward pre-hooks on every linear: its input x replaced by quantize(x, layer)."""
    handles = [
        module.register_forward_pre_hook(lambda m, args, layer=layer: (quantize(args[0], layer), *args[1:]))
        for module, layer in linears.values()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run(
    model, input_ids: torch.Tensor, tokens: dict[int, dict[int, list[int]]], columns: dict[str, list[int]], seeds: list[int]
) -> tuple[pd.DataFrame, dict]:
    """Every quantization pass over the windows `input_ids` [windows, tokens]: (losses, a record of
    the seconds each pass took). `tokens` (outlier_tokens): window → layer → positions kept in the
    a8-kept pass; `columns` (outlier_columns): linear name → columns kept in the w8-kept pass."""
    from contextlib import nullcontext

    from .interventions import _Passes, random_keys

    linears = linear_layers(model)
    length = input_ids.shape[1]
    passes = _Passes(model, input_ids, [])

    def per_tensor(choose):
        def quantize(x, layer):
            # a linear that reads a subset of the window's tokens (experts' routed inputs, where they are
            # nn.Linear) cannot be told the positions: quantized per tensor without keeping
            keep = choose(passes.window, layer) if x.shape[-2] == length else []
            passes.edited += len(keep)
            return activation_per_tensor(x, keep)

        return lambda: quantized_inputs(linears, quantize)

    def keeping(chosen):
        def edits():
            passes.edited = sum(len(c) for c in chosen.values())
            return quantized_weights(linears, chosen)

        return edits

    passes.run(FULL, -1, nullcontext)
    passes.run(W8, -1, lambda: quantized_weights(linears))
    passes.run(A8_TENSOR, -1, per_tensor(lambda window, layer: []))
    passes.run(A8_TOKEN, -1, lambda: quantized_inputs(linears, lambda x, layer: activation_per_token(x)))
    passes.run(A8_KEPT, -1, per_tensor(lambda window, layer: tokens.get(window, {}).get(layer, [])))
    for seed in seeds:
        passes.run(
            A8_RANDOM,
            seed,
            per_tensor(lambda window, layer, seed=seed: random_keys(tokens.get(window, {}).get(layer, []), length, seed, window)),
        )
    passes.run(W8_KEPT, -1, keeping(columns))
    widths = {name: linears[name][0].in_features for name in columns}
    for seed in seeds:
        passes.run(W8_RANDOM, seed, keeping(random_columns(columns, widths, seed)))
    losses = pd.DataFrame(passes.losses).rename(columns={"intervention": "quantization"})
    # a weight pass keeps its columns in every window (the count is set once, as the pass starts)
    weight_kept = sum(len(c) for c in columns.values())
    losses.loc[losses.quantization.isin([W8_KEPT, W8_RANDOM]), "edited"] = weight_kept
    return losses, {"seconds": passes.seconds}


def quantize(name: str, model, evidence, input_ids: torch.Tensor, seeds: list[int], files: dict) -> dict:
    """Every quantization pass on `model` with the outliers its statistics (`readers.Evidence`) flag,
    over the windows `input_ids`; writes `files` ("losses": Parquet, "record": JSON)."""
    from . import choices
    from .io import atomic_file, write_json

    layers = len(capture.decoder_layers(model, capture.architecture_of(model)))
    tokens = outlier_tokens(evidence.outliers, layers)
    columns, not_linear = outlier_columns(model, choices.weight_outlier_columns(evidence.weights))
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
            "linears": len(linear_layers(model)),
            "outlier_columns": columns,
            "columns_not_linear": not_linear,
            "columns": {"losses": LOSS_COLUMNS},
        }
    )
    with atomic_file(files["losses"]) as scratch:
        losses.to_parquet(scratch, index=False)
    with atomic_file(files["record"]) as scratch:
        write_json(scratch, record)
    return record
