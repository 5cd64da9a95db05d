"""Analysis of the trained attention variants: magnitudes, attention sinks, scaling factors, compression.

Reads the trained models of one task (results/training/{task}/{variant}/seed{seed}/) and writes
the tables the GPT-2 notebooks draw from. Activations are read with forward hooks on the blocks,
as everywhere else in the workflow; layer 0 is the embedding output, layer l the output of block l.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from .gpt2 import VARIANTS, GPT
from .io import atomic_directory, write_json
from .training import BigramBackcopy, evaluate, load_trained, schedule, validation_batches

COLUMNS = {
    "runs": "variant, seed, id (the paper's letter), name, formulation, parameters, extra_parameters, final val_loss (and "
            "backcopy_accuracy for the testbed), steps, tokens, seconds, tokens_per_second",
    "layerwise": "variant, seed, layer (0 = embedding output, l = block l), top1/top2/top3/median of |h| over the "
                 "validation batches (mean over batches), top1_position: the sequence position of the largest |h|",
    "sink": "variant, seed, layer, positions ('all', or for the testbed 'trigger'/'non_trigger'), first_key: mean weight "
            "on the first key, extra_key: mean weight on k′ (variants c, d), scale: mean S_c (variant e), first_value: the "
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
                row = sums.setdefault(layer, {"top1": 0.0, "top2": 0.0, "top3": 0.0, "median": 0.0, "positions": []})
                for rank in range(3):
                    row[f"top{rank + 1}"] += top.values[rank].item() / len(batches)
                row["median"] += magnitude.median().item() / len(batches)
                row["positions"].append(int(top.indices[0]) // h.shape[-1] % h.shape[1])
    return [{"layer": layer, **{k: v for k, v in row.items() if k != "positions"},
             "top1_position": max(set(row["positions"]), key=row["positions"].count)} for layer, row in sorted(sums.items())]


@torch.no_grad()
def sinks(model: GPT, batches, data) -> list[dict]:
    """Per layer, the mean attention weight on the first key (and on k′, and S_c), at the testbed's
    trigger and non-trigger positions or at all positions after the first."""
    rows = []
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
                weights = block.attn.attention_weights(normed).mean(dim=1)  # over heads: [B, T, keys]
                extra = weights.shape[-1] > inputs.shape[1]
                scale = block.attn.scale(normed).mean(-1) if block.attn.variant == "context_scale" else None
                # a sink's value is small (Sun et al.): the first token's |v| against the median token's
                value_norm = block.attn._heads(normed)[2].norm(dim=-1).mean(dim=1)  # [B, T], mean over heads
                value_ratio = (value_norm[:, 0] / value_norm[:, 1:].median(dim=1).values).mean().item()
                for name, positions in groups.items():
                    rows.append({
                        "layer": layer, "positions": name,
                        "first_key": weights[..., int(extra)][positions].mean().item(),
                        "extra_key": weights[..., 0][positions].mean().item() if extra else float("nan"),
                        "scale": scale[positions].mean().item() if scale is not None else float("nan"),
                        "first_value": value_ratio,
                    })
    table = pd.DataFrame(rows)
    return table.groupby(["layer", "positions"], as_index=False).mean().to_dict("records")


def _absmax_int8(tensor: torch.Tensor, dim=None) -> torch.Tensor:
    """Symmetric 8-bit quantize-dequantize by the absolute maximum (per tensor, or along `dim`)."""
    scale = (tensor.abs().amax() if dim is None else tensor.abs().amax(dim=dim, keepdim=True)).clamp_min(1e-12) / 127
    return (tensor / scale).round().clamp(-127, 127) * scale


@contextmanager
def compressed(model: GPT, method: str):
    """The model with its linear layers' weights (and for w8a8 their inputs) compressed; restored on exit.

    w8: absmax per-tensor 8-bit weights; w8a8: those plus per-token absmax 8-bit activations at
    every linear input; prune50: the 50 % smallest-magnitude weights of each linear set to zero.
    The embeddings and the head's input (the final norm's output) are linear inputs too.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    saved = [m.weight.detach().clone() for m in linears]
    handles = []
    with torch.no_grad():
        for module in linears:
            if method in ("w8", "w8a8"):
                module.weight.copy_(_absmax_int8(module.weight))
            elif method == "prune50":
                threshold = module.weight.abs().flatten().kthvalue(module.weight.numel() // 2).values
                module.weight.masked_fill_(module.weight.abs() <= threshold, 0.0)
            elif method != "full":
                raise ValueError(f"compression method {method!r}: use full, w8, w8a8 or prune50")
            if method == "w8a8":
                handles.append(module.register_forward_pre_hook(lambda m, args: (_absmax_int8(args[0], dim=-1),)))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for module, weight in zip(linears, saved):
                module.weight.copy_(weight)


METHODS = ("full", "w8", "w8a8", "prune50")
SINK = 0.5  # weight on the first key, where a head should do nothing, from which it counts as an attention sink


def analyse(task: dict, runs: dict[tuple[str, int], Path], data, prompt_ids: list[int], prompt_labels: list[str], target: Path) -> None:
    """All analysis tables of one task into folder `target`; `runs` maps (variant, seed) to a run folder."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        letter, name, formulation = VARIANTS[variant]
        tables["runs"].append({
            "variant": variant, "seed": seed, "id": letter, "name": name, "formulation": formulation,
            "parameters": config["parameters"], "extra_parameters": config["extra_parameters"],
            "val_loss": last.val_loss, "backcopy_accuracy": last.get("backcopy_accuracy", float("nan")),
            "steps": int(last.step), "tokens": int(last.tokens), "seconds": last.seconds, "tokens_per_second": last.tokens / last.seconds,
        })
        tables["layerwise"] += [{"variant": variant, "seed": seed, **row} for row in layerwise(model, batches)]
        tables["sink"] += [{"variant": variant, "seed": seed, **row} for row in sinks(model, batches, data)]
        for method in METHODS:
            with compressed(model, method):
                result = evaluate(model, batches, data)
            tables["compression"].append({"variant": variant, "seed": seed, "method": method, "val_loss": result["val_loss"],
                                          "perplexity": float(torch.tensor(result["val_loss"]).exp()),
                                          "backcopy_accuracy": result.get("backcopy_accuracy", float("nan"))})
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
        write_json(staging / "manifest.json", {"prompt_ids": prompt_ids, "prompt_tokens": prompt_labels, "tables": COLUMNS,
                                                "layers": task["model"]["n_layer"], "kind": task["data"]["kind"],
                                                "seeds": sorted({seed for _, seed in runs}), "validation_batches": len(batches)})


# ---------------------------------------------------------------------------------------------
# Tables and claims, from the analysis folders.

def markdown_table(table: pd.DataFrame, title: str, note: str) -> str:
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([f"# {title}", "", note, "", *lines, ""])


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 2: each variant's formulation and the parameters it adds, counted from the trained models."""
    first = runs.sort_values("seed").groupby("variant", sort=False).first().reset_index()
    first["order"] = first.variant.map(list(VARIANTS).index)
    first = first.sort_values("order")
    return pd.DataFrame({"id": first.id, "variant": first.variant, "attention": first.name, "formulation": first.formulation,
                         "parameters": first.parameters, "extra_parameters": first.extra_parameters,
                         "extra_share": (first.extra_parameters / (first.parameters - first.extra_parameters)).map(lambda v: f"{v:.3%}")})


def compression_table(compression: pd.DataFrame) -> pd.DataFrame:
    """Validation loss (and perplexity, and testbed accuracy) per variant and method: mean and range over seeds."""
    rows = []
    for (variant, method), group in compression.groupby(["variant", "method"], sort=False):
        row = {"variant": variant, "method": method, "val_loss": group.val_loss.mean(),
               "val_loss_min": group.val_loss.min(), "val_loss_max": group.val_loss.max(), "perplexity": group.perplexity.mean()}
        if group.backcopy_accuracy.notna().any():
            row["backcopy_accuracy"] = group.backcopy_accuracy.mean()
        rows.append(row)
    table = pd.DataFrame(rows)
    table["order"] = table.variant.map(list(VARIANTS).index) * 10 + table.method.map(list(METHODS).index)
    return table.sort_values("order").drop(columns="order").reset_index(drop=True)


def compression_markdown(table: pd.DataFrame, task: str) -> str:
    shown = table.copy()
    for column in shown.columns:
        if shown[column].dtype.kind == "f":
            shown[column] = shown[column].map(lambda v: f"{v:.4f}")
    return markdown_table(shown, f"Compression of the attention variants, task {task}",
                     "Validation loss in full precision, with absmax per-tensor 8-bit weights (w8), with those and per-token "
                     "8-bit activations at every linear input (w8a8), and with the 50 % smallest-magnitude weights of every linear "
                     "set to zero (prune50); mean and range over seeds, on the same validation batches for every variant.")


def _measures(analysis_dir: Path) -> dict:
    """Per variant: outlier ratio, the head's dormancy at its sink layer, final loss, compression damage.

    The sink layer is the block whose first-key weight differs most between the positions that
    should do nothing and those that copy (testbed), or that puts most weight on the first key
    (text). There: `sink` is that weight, `extra` the weight on k′, `scale` S_c at both kinds of
    positions, `effective` the first-key weight times S_c (what the sink still contributes) and
    `value` the first token's value norm over the median token's.
    """
    analysis_dir = Path(analysis_dir)
    layerwise = pd.read_parquet(analysis_dir / "layerwise.parquet")
    sink = pd.read_parquet(analysis_dir / "sink.parquet")
    runs = pd.read_parquet(analysis_dir / "runs.parquet")
    compression = pd.read_parquet(analysis_dir / "compression.parquet")
    curves = pd.read_parquet(analysis_dir / "curves.parquet")
    mean_sink = sink.groupby(["variant", "layer", "positions"])[["first_key", "extra_key", "scale", "first_value"]].mean()
    quiet = "non_trigger" if "non_trigger" in set(sink.positions) else "all"
    measures = {}
    for variant in [v for v in VARIANTS if v in set(runs.variant)]:
        per_seed = layerwise[layerwise.variant == variant].assign(ratio=lambda t: t.top1 / t["median"])
        ratio = per_seed.groupby("seed").ratio.max()
        rows = mean_sink.loc[variant]
        at_quiet = rows.xs(quiet, level="positions")
        contrast = at_quiet.first_key - rows.xs("trigger", level="positions").first_key if quiet == "non_trigger" else at_quiet.first_key
        layer = int(contrast.idxmax())
        there = at_quiet.loc[layer]
        scale_copy = rows.loc[(layer, "trigger")].scale if quiet == "non_trigger" else float("nan")
        losses = runs[runs.variant == variant].val_loss
        curve = curves[curves.variant == variant].groupby("tokens").val_loss.mean()
        damage = {}
        for method in METHODS[1:]:
            full = compression[(compression.variant == variant) & (compression.method == "full")].set_index("seed").val_loss
            other = compression[(compression.variant == variant) & (compression.method == method)].set_index("seed").val_loss
            damage[method] = float((other - full).mean())
        measures[variant] = {"ratio": float(ratio.mean()), "ratio_range": (float(ratio.min()), float(ratio.max())),
                             "layer": layer, "sink": float(there.first_key), "extra": float(there.extra_key),
                             "scale": float(there.scale), "scale_copy": float(scale_copy), "value": float(there.first_value),
                             "effective": float(there.first_key * (there.scale if variant == "context_scale" else 1.0)),
                             "loss": float(losses.mean()), "loss_range": (float(losses.min()), float(losses.max())),
                             "curve": curve, "damage": damage, "seeds": len(losses)}
    return measures


def claims(tasks: dict[str, Path]) -> str:
    """results/claims/gpt2.md: the paper's Section 5 claims, per task, with the numbers."""
    sections = ["# The paper's attention-variant claims, checked", "",
                "Outlier ratio: the largest mean top-1 |h| over the median |h| of the same layer (layer 0 = embedding output), "
                "mean over seeds with the range. The sink columns are read at each variant's sink layer (the block whose attention "
                "on the first key differs most between positions that should do nothing, the testbed's non-trigger positions, and "
                "those that copy; in text, the block with the most), at the positions that should do nothing: the weight on the "
                "first key, on k′, S_c (there / at copies), what the first key still contributes (weight × S_c), and the first "
                "token's value norm over the median token's. Compression damage: validation loss with the compressed model minus "
                "in full precision. Everything is a mean over seeds.", ""]
    for task, analysis_dir in tasks.items():
        m = _measures(analysis_dir)
        lines = [f"## Task {task}", "",
                 "| variant | outlier ratio (range) | sink layer | on first key | on k′ | S_c (quiet / copy) | first key × S_c "
                 "| first value / median | final val loss (range) | w8 / w8a8 / prune50 damage |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for variant, v in m.items():
            lines.append(f"| {VARIANTS[variant][0]} {variant} | {v['ratio']:.1f} ({v['ratio_range'][0]:.1f}–{v['ratio_range'][1]:.1f}) | "
                         f"{v['layer']} | {v['sink']:.2f} | {_number(v['extra'])} | {_number(v['scale'], 3)} / {_number(v['scale_copy'])} | "
                         f"{v['effective']:.3f} | {v['value']:.2f} | {v['loss']:.4f} ({v['loss_range'][0]:.4f}–{v['loss_range'][1]:.4f}) | "
                         f"{v['damage']['w8']:+.4f} / {v['damage']['w8a8']:+.4f} / {v['damage']['prune50']:+.4f} |")
        lines += ["", *_verdicts(m), ""]
        sections += lines
    return "\n".join(sections)


def _tokens(count) -> str:
    return "never" if count is None else f"{count:,}"


def _number(value: float, digits: int = 2) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def _verdicts(m: dict) -> list[str]:
    keep = [v for v in ("default", "fixed_bias", "context_bias") if v in m]
    lose = [v for v in ("attention_bias", "context_scale") if v in m]
    out = []
    if keep and lose:
        low_keep, high_lose = min(m[v]["ratio"] for v in keep), max(m[v]["ratio"] for v in lose)
        out.append(f"- **(a)–(c) keep massive activations, (d)/(e) lose them.** The smallest outlier ratio among {', '.join(keep)} "
                   f"is {low_keep:.1f}, the largest among {', '.join(lose)} {high_lose:.1f}: "
                   + ("holds (a factor 2 or more)." if low_keep > 2 * high_lose else "not shown at this scale (no factor 2 between them)."))
        sink_keep = min(m[v]["effective"] for v in keep)
        if sink_keep < SINK:  # nothing to lose: the sink claims cannot be tested here
            out.append(f"- **(d) and (e) replace the attention sink.** Not testable at this scale: (a)–(c) put at most "
                       f"{max(m[v]['sink'] for v in keep):.2f} on the first key, so there is no sink to replace.")
            lose = []
        for variant in lose:
            v = m[variant]
            if variant == "context_scale":
                gated = v["effective"] < 0.5 * sink_keep
                out.append(f"- **(e) makes the attention sink unnecessary.** At its sink layer {v['layer']}, S_c is {v['scale']:.3f} where the "
                           f"head should do nothing" + (f" and {v['scale_copy']:.2f} where it copies" if not pd.isna(v["scale_copy"]) else "")
                           + f"; its softmax still puts {v['sink']:.2f} on the first key, which after S_c contributes {v['effective']:.3f} "
                           f"against at least {sink_keep:.2f} for (a)–(c): " + ("holds: the explicit scaling factor does what the sink did."
                                                                               if gated else "not shown at this scale."))
            else:
                moved = v["extra"] > v["sink"]
                out.append(f"- **(d) moves the sink onto k′.** At its sink layer {v['layer']} it puts {v['extra']:.2f} on k′ and {v['sink']:.2f} "
                           f"on the first key where the head should do nothing (at least {sink_keep:.2f} on the first key for (a)–(c)): "
                           + ("holds." if moved else "partly: k′ takes some of the weight, the first key still the most."))
    if "default" in m and "context_scale" in m:
        a, e = m["default"], m["context_scale"]
        # the loss (a) reaches after 90 % of its improvement: how many tokens does each need?
        target = a["curve"].iloc[-1] + 0.1 * (a["curve"].iloc[0] - a["curve"].iloc[-1])
        reached = {name: (v["curve"] <= target).idxmax() if (v["curve"] <= target).any() else None for name, v in (("a", a), ("e", e))}
        faster = reached["e"] is not None and reached["e"] < reached["a"]
        out.append(f"- **(e) converges faster than (a).** Tokens until the mean validation loss is {target:.4f} (90 % of (a)'s "
                   f"improvement): {_tokens(reached['e'])} for (e), {_tokens(reached['a'])} for (a): "
                   + ("holds" if faster and reached["e"] <= 0.8 * reached["a"] else "holds narrowly" if faster else "not shown at this scale")
                   + f". Final loss {e['loss']:.4f} ({e['loss_range'][0]:.4f}–{e['loss_range'][1]:.4f}) vs {a['loss']:.4f} "
                   f"({a['loss_range'][0]:.4f}–{a['loss_range'][1]:.4f}) over {e['seeds']} seed(s).")
        better = [method for method in METHODS[1:] if e["damage"][method] < a["damage"][method]]
        verdict = "holds" if len(better) == len(METHODS) - 1 else "partly" if better else "not shown at this scale"
        out.append(f"- **(e) compresses better than (a).** Damage of (e) vs (a): " + "; ".join(
            f"{method} {e['damage'][method]:+.4f} vs {a['damage'][method]:+.4f}" for method in METHODS[1:])
            + f": {verdict}" + (" (8-bit damage this small is within noise)." if max(abs(a["damage"]["w8a8"]), abs(e["damage"]["w8a8"])) < 0.001 else "."))
    if "sigmoid" in m and "default" in m and m["default"]["sink"] < SINK:
        out.append(f"- **Sigmoid attention (f) needs no sink.** Not testable at this scale: (a) puts only {m['default']['sink']:.2f} "
                   "on the first key, so it needs none either.")
    elif "sigmoid" in m and "default" in m:
        f, a = m["sigmoid"], m["default"]
        out.append(f"- **Sigmoid attention (f) needs no sink.** On the first key {f['sink']:.2f} vs {a['sink']:.2f} for (a); outlier ratio "
                   f"{f['ratio']:.1f} vs {a['ratio']:.1f}: {'holds' if f['sink'] < 0.5 * a['sink'] else 'not shown at this scale'}.")
    return out
