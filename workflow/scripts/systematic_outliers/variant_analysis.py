"""Measurement of the trained attention variants: magnitudes, attention sinks, scaling factors, compression.

Reads the trained models of one task (results/training/{task}/{variant}/seed{seed}/) and writes
the tables the GPT-2 notebooks and `variant_report` read. Activations are read with forward hooks on the blocks,
as everywhere else in the workflow; layer 0 is the embedding output, layer l the output of block l.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from . import devices, field_metrics
from .definitions import METHODS
from .gpt2 import GPT
from .io import atomic_directory, write_json
from .quantization import absmax_int8
from .tasks import BigramBackcopy
from .training import evaluate, load_trained, schedule, validation_batches
from .variants import VARIANTS

COLUMNS = {
    "runs": "variant, seed, id (the paper's letter), name, formulation, parameters, extra_parameters, final val_loss (and "
    "backcopy_accuracy for the testbed), steps, tokens, seconds, tokens_per_second",
    "layerwise": "variant, seed, layer (0 = embedding output, l = block l), top1/top2/top3/median of |h| over the "
    "validation batches (mean over batches), top1_position: the sequence position of the largest |h|, kurtosis: of h over "
    "tokens × channels (field_metrics.kurtosis, mean over batches)",
    "heads": f"variant, seed, layer, head, first_key: Gu et al.'s α, the mean weight on the first key over the first "
    f"{field_metrics.SINK_WINDOW} queries (field_metrics.first_key_weight), mean over batches",
    "sink": "variant, seed, layer, positions ('all', or for the testbed 'trigger'/'non_trigger'), first_key: mean weight "
    "on the first key, extra_key: mean weight on k′ or a sink's pseudo-key (variants c, d, g, h), scale: the mean factor on "
    "a head's output (S_c of e, the gates of i and l), first_value: the "
    "first token's value norm over the median token's (mean over heads and batches)",
    "compression": "variant, seed, method (full, w8, w8a8, prune50), val_loss, perplexity (exp val_loss), backcopy_accuracy",
    "curves": "variant, seed and each row of the run's log.csv: step, tokens, train_loss, val_loss, backcopy_accuracy, "
    "learning_rate, seconds",
}


@contextmanager
def _block_outputs(model: GPT, keep: dict):
    """keep[layer] = output of block `layer` (1-based; the embedding output as 0) after each forward."""

    def embedding_hook(module, args, output):
        positions = model.wpe(torch.arange(output.shape[1], device=output.device))
        keep[0] = (output + positions).detach()

    handles = [model.wte.register_forward_hook(embedding_hook)]
    for index, block in enumerate(model.blocks, start=1):
        handles.append(block.register_forward_hook(lambda m, a, out, index=index: keep.__setitem__(index, out.detach())))
    try:
        yield keep
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def layerwise(model: GPT, batches) -> list[dict]:
    """Per layer, the top-1/2/3 and median |h| per batch, averaged over batches."""
    sums: dict[int, dict] = {}
    keep: dict[int, torch.Tensor] = {}
    with _block_outputs(model, keep):
        for inputs, _, _ in batches:
            model(inputs)
            for layer, h in keep.items():
                magnitude = h.abs().flatten()
                top = magnitude.topk(3)
                row = sums.setdefault(layer, {"top1": 0.0, "top2": 0.0, "top3": 0.0, "median": 0.0, "kurtosis": 0.0, "positions": []})
                for rank in range(3):
                    row[f"top{rank + 1}"] += top.values[rank].item() / len(batches)
                row["median"] += magnitude.median().item() / len(batches)
                row["kurtosis"] += field_metrics.kurtosis(h.float()).item() / len(batches)
                row["positions"].append(int(top.indices[0]) // h.shape[-1] % h.shape[1])
    return [
        {
            "layer": layer,
            **{k: v for k, v in row.items() if k != "positions"},
            "top1_position": max(set(row["positions"]), key=row["positions"].count),
        }
        for layer, row in sorted(sums.items())
    ]


@torch.no_grad()
def sinks(model: GPT, batches, data) -> tuple[list[dict], list[dict]]:
    """Per layer, the mean attention weight on the first key (and on k′ or a sink, and the factor on
    the output), at the testbed's trigger and non-trigger positions or at all positions after the
    first; and per layer and head Gu et al.'s α."""
    rows, heads = [], []
    keep: dict[int, torch.Tensor] = {}
    with _block_outputs(model, keep):
        for inputs, _, _ in batches:
            model(inputs)
            groups = {"all": torch.ones_like(inputs, dtype=torch.bool)}
            if isinstance(data, BigramBackcopy):
                trigger = data.copy_positions(inputs)
                groups = {"trigger": trigger, "non_trigger": ~trigger}
            for group in groups.values():
                group[:, 0] = False  # the first query can only look at itself
            for layer, block in enumerate(model.blocks, start=1):
                normed = block.ln_1(keep[layer - 1])
                per_head = block.attn.attention_weights(normed)  # [B, H, T, extra + T]
                extra = block.attn.extra_keys
                alpha = field_metrics.first_key_weight(per_head[..., extra:]).mean(0)  # [H]
                heads += [{"layer": layer, "head": head, "first_key": value} for head, value in enumerate(alpha.tolist())]
                weights = per_head.mean(dim=1)  # over heads: [B, T, keys]
                scale = block.attn.scale(normed)
                scale = scale.mean(-1) if scale is not None else None
                # a sink's value is small (Sun et al.): the first token's |v| against the median token's
                value_norm = block.attn.heads(normed)[2].norm(dim=-1).mean(dim=1)  # [B, T], mean over heads
                value_ratio = (value_norm[:, 0] / value_norm[:, 1:].median(dim=1).values).mean().item()
                for name, positions in groups.items():
                    rows.append(
                        {
                            "layer": layer,
                            "positions": name,
                            "first_key": weights[..., extra][positions].mean().item(),
                            "extra_key": weights[..., 0][positions].mean().item() if extra else float("nan"),
                            "scale": scale[positions].mean().item() if scale is not None else float("nan"),
                            "first_value": value_ratio,
                        }
                    )
    table = pd.DataFrame(rows).groupby(["layer", "positions"], as_index=False).mean()
    return table.to_dict("records"), pd.DataFrame(heads).groupby(["layer", "head"], as_index=False).mean().to_dict("records")


@contextmanager
def compressed(model: GPT, method: str):
    """The model with its linear layers' weights (and for w8a8 their inputs) compressed; restored on exit.

    w8: absmax per-tensor 8-bit weights; w8a8: those plus per-token absmax 8-bit activations at
    every linear input (quantization.absmax_int8, the definition the LLMs' quantization passes use);
    prune50: the 50 % smallest-magnitude weights of each linear set to zero.
    The embeddings and the head's input (the final norm's output) are linear inputs too.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    saved = [m.weight.detach().clone() for m in linears]
    handles = []
    with torch.no_grad():
        for module in linears:
            if method in ("w8", "w8a8"):
                module.weight.copy_(absmax_int8(module.weight))
            elif method == "prune50":
                threshold = module.weight.abs().flatten().kthvalue(module.weight.numel() // 2).values
                module.weight.masked_fill_(module.weight.abs() <= threshold, 0.0)
            elif method != "full":
                raise ValueError(f"compression method {method!r}: use full, w8, w8a8 or prune50")
            if method == "w8a8":
                handles.append(module.register_forward_pre_hook(lambda m, args: (absmax_int8(args[0], dim=-1),)))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for module, weight in zip(linears, saved):
                module.weight.copy_(weight)


def analyse(
    task: dict, runs: dict[tuple[str, int], Path], data, prompt_ids: list[int], prompt_labels: list[str], target: Path, gpus: int = 0
) -> None:
    """All analysis tables of one task into folder `target`; `runs` maps (variant, seed) to a run folder;
    on the `gpus` cards the job was granted (devices.device)."""
    device = devices.device(gpus, "the variant analysis")
    batches = validation_batches(data, schedule(task, 0), device)
    prompt = torch.tensor([prompt_ids], device=device)
    tables = {name: [] for name in COLUMNS}
    prompt_h = {}
    first_seed = min(seed for _, seed in runs)
    for (variant, seed), folder in sorted(runs.items()):
        model = load_trained(folder).to(device)
        config = json.loads((Path(folder) / "config.json").read_text())
        log = pd.read_csv(Path(folder) / "log.csv")
        tables["curves"] += log.assign(variant=variant, seed=seed).to_dict("records")
        last = log.iloc[-1]
        attention = VARIANTS[variant]  # its letter, title and formula
        tables["runs"].append(
            {
                "variant": variant,
                "seed": seed,
                "id": attention.letter,
                "name": attention.title,
                "formulation": attention.formula,
                "parameters": config["parameters"],
                "extra_parameters": config["extra_parameters"],
                "val_loss": last.val_loss,
                "backcopy_accuracy": last.get("backcopy_accuracy", float("nan")),
                "steps": int(last.step),
                "tokens": int(last.tokens),
                "seconds": last.seconds,
                "tokens_per_second": last.tokens / last.seconds,
            }
        )
        tables["layerwise"] += [{"variant": variant, "seed": seed, **row} for row in layerwise(model, batches)]
        sink, heads = sinks(model, batches, data)
        tables["sink"] += [{"variant": variant, "seed": seed, **row} for row in sink]
        tables["heads"] += [{"variant": variant, "seed": seed, **row} for row in heads]
        for method in METHODS:
            with compressed(model, method):
                result = evaluate(model, batches, data)
            tables["compression"].append(
                {
                    "variant": variant,
                    "seed": seed,
                    "method": method,
                    "val_loss": result["val_loss"],
                    "perplexity": float(torch.tensor(result["val_loss"]).exp()),
                    "backcopy_accuracy": result.get("backcopy_accuracy", float("nan")),
                }
            )
        if seed == first_seed:
            keep: dict[int, torch.Tensor] = {}
            with _block_outputs(model, keep), torch.no_grad():
                model(prompt)
            prompt_h.update({f"{variant}.{layer}": h[0].float().cpu().contiguous() for layer, h in keep.items()})
    from safetensors.torch import save_file

    with atomic_directory(target) as staging:
        for name, rows in tables.items():
            pd.DataFrame(rows).to_parquet(staging / f"{name}.parquet", index=False)
        save_file(prompt_h, staging / "prompt.safetensors")
        write_json(
            staging / "manifest.json",
            {
                "prompt_ids": prompt_ids,
                "prompt_tokens": prompt_labels,
                "tables": COLUMNS,
                "layers": task["model"]["n_layer"],
                "kind": task["data"]["kind"],
                "length": data.length,
                "sink_window": min(field_metrics.SINK_WINDOW, data.length),
                "seeds": sorted({seed for _, seed in runs}),
                "validation_batches": len(batches),
            },
        )
