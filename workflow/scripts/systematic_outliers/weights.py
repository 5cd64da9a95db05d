"""Weight statistics, read one tensor at a time from safetensors (no forward pass, no model).

For every matrix inside a decoder layer (attention and MLP linears; the experts of a
mixture-of-experts MLP one at a time, whether the checkpoint stacks them in 3-D tensors or stores
each expert's matrices), with |W| laid out as [output rows, input columns]:
column ratio r_col[j] = max_i |W_ij| / mean_i |W_ij| (j is an input channel, for the
down-projection an intermediate channel) and row ratio r_row[i] = max_j |W_ij| / mean_j |W_ij|.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open

from .architectures import Architecture, UnsupportedModel, fetched
from .definitions import TOP, WRITE_SHARE

EPSILON = 1e-8  # as the official code, so an all-zero column has ratio 0, not NaN

COLUMNS = {
    "layer": "decoder layer, 0-based",
    "module": "module path inside the layer (expert e's matrices as mlp.experts.down_proj[e])",
    "rows": "output channels",
    "columns": "input channels",
    "max_abs": "max |W|",
    "mean_abs": "mean |W|",
    "column_ratio": "max over columns of max|W[:, j]| / mean|W[:, j]|",
    "top_columns": f"the {TOP} columns with the largest ratio, largest first",
    "top_column_rows": f"rows of the top column with |W| at least {WRITE_SHARE:g} × its largest (at most {TOP}), largest first: "
    "the output channels it writes",
    "row_ratio": "max over rows of max|W[i, :]| / mean|W[i, :]|",
    "top_rows": f"the {TOP} rows with the largest ratio, largest first",
    "max_ratio": "max(column_ratio, row_ratio), the quantity of the paper's Fig 5a",
    "mlp_down": "true for the MLP's down projection, the W_down of Figs 1b and 5b/c",
}


def _layer_pattern(layers_path: str) -> re.Pattern:
    # tensor names may lack the leading model prefix (e.g. GPT-2's legacy "h.0.attn...")
    last = re.escape(layers_path.split(".")[-1])
    return re.compile(rf"^(?:.*\.)?{last}\.(\d+)\.(.+)\.weight$|^(?:.*\.)?{last}\.(\d+)\.(.+experts\.\w+)$")


def column_ratios(weight: torch.Tensor) -> torch.Tensor:
    """max_i |W_ij| / mean_i |W_ij| for every column j of W laid out as [rows, columns]."""
    magnitude = weight.abs().float()
    return magnitude.amax(dim=0) / (magnitude.mean(dim=0) + EPSILON)


def matrix_row(layer: int, module: str, weight: torch.Tensor) -> dict:
    magnitude = weight.abs().float()
    column_ratio = column_ratios(weight)
    row_ratio = magnitude.amax(dim=1) / (magnitude.mean(dim=1) + EPSILON)
    top_columns = column_ratio.topk(min(TOP, column_ratio.numel())).indices
    top_rows = row_ratio.topk(min(TOP, row_ratio.numel())).indices
    top_column = magnitude[:, top_columns[0]]
    writes = [i for i in top_column.topk(min(TOP, magnitude.shape[0])).indices.tolist() if top_column[i] >= WRITE_SHARE * top_column.max()]
    return {
        "layer": layer,
        "module": module,
        "rows": magnitude.shape[0],
        "columns": magnitude.shape[1],
        "max_abs": magnitude.max().item(),
        "mean_abs": magnitude.mean().item(),
        "column_ratio": column_ratio.max().item(),
        "top_columns": top_columns.tolist(),
        "top_column_rows": writes,
        "row_ratio": row_ratio.max().item(),
        "top_rows": top_rows.tolist(),
        "max_ratio": max(column_ratio.max().item(), row_ratio.max().item()),
    }


def _hidden_size(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").exists() else {}
    return config.get("hidden_size") or config.get("text_config", {}).get("hidden_size")


def _expert_down(architecture: Architecture, layer: int, name: str, weight: torch.Tensor, hidden: int | None) -> bool:
    """Whether one expert's matrix, as its checkpoint stores it (Mixtral's `experts.{e}.w2`, Qwen-MoE's
    `experts.{e}.down_proj`), is its down projection: the one writing d_model from the expert's width."""
    if not architecture.in_experts(layer):
        return False
    if weight.shape[0] == weight.shape[1] or hidden is None:  # the shape cannot tell: the names transformers' checkpoints use
        return name in ("down_proj", "w2")
    return weight.shape[0] == hidden


def _oriented(weight: torch.Tensor, is_down: bool, hidden: int | None, transposed: bool) -> torch.Tensor:
    """Stacked experts [experts, out, in], as stored on disk: the down projection writes d_model, the
    others read it (loading may transpose them, so the module's layout is only the fallback)."""
    out_is_hidden, in_is_hidden = weight.shape[1] == hidden, weight.shape[2] == hidden
    if out_is_hidden != in_is_hidden:
        return weight if out_is_hidden == is_down else weight.transpose(1, 2)
    return weight.transpose(1, 2) if transposed else weight


def weight_statistics(model_dir: str | Path, model: str) -> pd.DataFrame:
    """One row per matrix of every decoder layer of `model`; where the layers and W_down are comes from
    the architecture resolved at fetch (architecture.json in the model folder)."""
    model_dir = Path(model_dir)
    architecture = fetched(model_dir, model)
    pattern = _layer_pattern(architecture.layers)
    down = {architecture.taps["down_proj_input"].module} if "down_proj_input" in architecture.taps else set()
    down |= {tap.module for tap in architecture.layer_taps.get("down_proj_input", {}).values()}
    hidden = _hidden_size(model_dir)
    rows = []
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            for name in handle.keys():
                match = pattern.match(name)
                if not match:
                    continue
                layer, module = (int(match[1]), match[2]) if match[1] else (int(match[3]), match[4])
                if module.endswith(("_bias", "_blocks", "_scales")):  # experts' biases; quantized (MXFP4) experts, not read
                    continue
                weight = handle.get_tensor(name)
                expert = re.match(r"^(.*\.experts)\.(\d+)\.(\w+)$", module)  # one expert's matrix ([out, in], as a Linear)
                if weight.dim() == 2 and expert:
                    rows.append(matrix_row(layer, f"{expert[1]}.{expert[3]}[{expert[2]}]", weight))
                    rows[-1]["mlp_down"] = _expert_down(architecture, layer, expert[3], weight, hidden)
                elif weight.dim() == 2:
                    rows.append(matrix_row(layer, module, weight.T if architecture.weights_transposed else weight))
                    rows[-1]["mlp_down"] = module in down
                elif weight.dim() == 3:  # experts stacked as [experts, out, in] ([experts, in, out] transposed)
                    is_down = module.rpartition(".")[0] in down and module.endswith(".down_proj")
                    weight = _oriented(weight, is_down, hidden, architecture.experts_transposed)
                    rows.extend({**matrix_row(layer, f"{module}[{e}]", weight[e]), "mlp_down": is_down} for e in range(weight.shape[0]))
    if not rows:
        raise UnsupportedModel(f"models.{model}: no decoder-layer weights found in {model_dir} under {architecture.layers!r}")
    return pd.DataFrame(rows, columns=list(COLUMNS)).sort_values(["layer", "module"], kind="stable").reset_index(drop=True)
