"""What the outliers cost a quantizer: the damage of each quantization pass, and the two claims (on verdict_engine).

Reads only the losses rule quantization wrote (quantization.py, its LOSS_COLUMNS); imports no torch.
The damage of a pass is |its mean loss over the windows − the full-precision mean loss| (nats): on a
pretrained model quantization raises the loss, and on a random or planted tiny model, whose loss sits
near log(vocabulary), a change either way is the quantizer no longer computing what the model computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .definitions import A8_KEPT, A8_RANDOM, A8_TENSOR, A8_TOKEN, FULL, LOSS_FLOOR, QUANTIZATIONS, W8, W8_KEPT, W8_RANDOM
from .verdict_engine import DOES_NOT_HOLD, HOLDS, NOT_MEASURED, PARTLY, Claim, Finding

# Our thresholds: the papers state none for these judgements.
LARGE_FACTOR = 5.0  # per-tensor damage "large beside per-token": at least this × the per-token damage
MOST, SOME = 0.5, 0.25  # share of the damage a kept set takes back: "most", and enough for partly

_DAMAGE = f"damage: |mean loss over the windows − the full-precision mean loss| (nats), counting from {LOSS_FLOOR:g}"
_RESTORED = "restored: (damage without keeping − damage with keeping) / damage without keeping"
ACTIVATION_CRITERION = (
    f"{_DAMAGE}; {_RESTORED}. Holds when the a8-per-tensor damage is ≥ {LOSS_FLOOR:g} nats and ≥ {LARGE_FACTOR:g} × the "
    f"a8-per-token damage, keeping the outlier tokens (Sun et al.'s rule, at each layer) in full precision restores ≥ "
    f"{MOST:.0%} of it, and keeping as many random tokens restores < {MOST:.0%} for every seed; partly when the per-tensor "
    f"damage is large and the outlier tokens restore ≥ {MOST:.0%} but some random draw does too, or restore ≥ {SOME:.0%} "
    f"and more than every random draw; does not hold otherwise, or when no token is flagged"
)
WEIGHT_CRITERION = (
    f"{_DAMAGE}; {_RESTORED}. Holds when the w8-per-channel damage is ≥ {LOSS_FLOOR:g} nats, keeping the outstanding W_down "
    f"columns (choices.weight_outlier_columns) in full precision restores ≥ {MOST:.0%} of it, and keeping as many random "
    f"columns of the same matrices restores < {MOST:.0%} for every seed; partly when the kept columns restore ≥ {MOST:.0%} "
    f"but some random draw does too, or restore ≥ {SOME:.0%} and more than every random draw; does not hold otherwise, or "
    f"when no column stands out"
)


def damages(losses: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per quantization pass, the damage of each seed (one value for a pass without seeds); NaN where a
    loss is not finite (logits that overflowed)."""
    finite = losses.assign(loss=losses.loss.where(np.isfinite(losses.loss)))
    per_seed = finite.groupby(["quantization", "seed"]).loss.mean(numeric_only=True)
    full = per_seed.get((FULL, -1), np.nan)
    return {name: np.abs(per_seed.loc[name].to_numpy() - full) for name in QUANTIZATIONS if name in per_seed.index.get_level_values(0)}


def a8_tensor_damage(losses: pd.DataFrame | None) -> float:
    """The a8-per-tensor damage (the atlas' column); NaN where rule quantization was not run or the loss overflowed."""
    if losses is None or losses.empty:
        return float("nan")
    return float(damages(losses).get(A8_TENSOR, [np.nan])[0])


def _restored(before: float, after) -> np.ndarray:
    return (before - np.asarray(after, dtype=float)) / before


def _judge_kept(d: dict, broken: str, kept: str, random: str, large: bool, why_small: str, what: str, losses, also=()) -> Finding:
    needed = [FULL, broken, *also, kept, random]
    if any(name not in d or np.isnan(d[name]).any() for name in needed):
        return Finding(f"not measured: a pass of {', '.join(needed)} is missing or its loss is not finite", NOT_MEASURED)
    before = float(d[broken][0])
    numbers = f"{broken} damage {before:.4g}"
    if not large:
        return Finding(f"{numbers}; {why_small}", DOES_NOT_HOLD, f"{before:.3g}")
    kept_count = int(losses[losses.quantization == kept].edited.sum())
    if kept_count == 0:
        return Finding(f"{numbers}; the statistics flag no {what}: nothing to keep", DOES_NOT_HOLD, f"{before:.3g}")
    drawn = losses[losses.quantization == random].groupby("seed").edited.sum()
    if (drawn < kept_count).any():  # the windows have too few others: the control does not match
        return Finding(f"not measured: {kept_count} {what} kept, but only {int(drawn.min())} others to draw as the control", NOT_MEASURED)
    share, shares = float(_restored(before, d[kept])[0]), _restored(before, d[random])
    text = (
        f"{numbers}; keeping the {what} restores {share:.0%}, keeping as many random ones {', '.join(f'{s:.0%}' for s in shares)} (seeds)"
    )
    top = float(shares.max())
    if share >= MOST and top < MOST:
        verdict = HOLDS
    elif (share >= MOST) or (share >= SOME and share > top):
        verdict = PARTLY
    else:
        verdict = DOES_NOT_HOLD
    return Finding(text, verdict, f"{share:.0%} vs {top:.0%}")


def activation_finding(losses: pd.DataFrame | None) -> Finding:
    """The activation claim on the losses of rule quantization (None: not run)."""
    if losses is None or losses.empty:
        return Finding("not measured: rule quantization was not run for this model", NOT_MEASURED)
    d = damages(losses)
    tensor, token = d.get(A8_TENSOR, [np.nan])[0], d.get(A8_TOKEN, [np.nan])[0]
    large = bool(tensor >= LOSS_FLOOR and tensor >= LARGE_FACTOR * token)
    why = f"not large beside the {A8_TOKEN} damage {token:.4g} (needs ≥ {LOSS_FLOOR:g} and ≥ {LARGE_FACTOR:g} ×)"
    finding = _judge_kept(d, A8_TENSOR, A8_KEPT, A8_RANDOM, large, why, "outlier tokens", losses, also=[A8_TOKEN])
    if finding.verdict in (NOT_MEASURED, DOES_NOT_HOLD) and not large:
        return finding
    return Finding(f"{finding.measured}; {A8_TOKEN} damage {token:.4g}", finding.verdict, finding.value)


def weight_finding(losses: pd.DataFrame | None) -> Finding:
    """The weight claim on the losses of rule quantization (None: not run)."""
    if losses is None or losses.empty:
        return Finding("not measured: rule quantization was not run for this model", NOT_MEASURED)
    d = damages(losses)
    w8 = d.get(W8, [np.nan])[0]
    why = f"below {LOSS_FLOOR:g} nats: 8-bit weights per channel cost this model nothing measurable"
    return _judge_kept(d, W8, W8_KEPT, W8_RANDOM, bool(w8 >= LOSS_FLOOR), why, "outstanding W_down columns", losses)


CLAIMS = (
    Claim(
        "quantization_activations",
        "The activation outliers are what breaks per-tensor activation quantization (Sun et al.; PrefixQuant)",
        ACTIVATION_CRITERION,
        "",
        activation_finding,
    ),
    Claim(
        "quantization_weights",
        "The weight outliers are what 8-bit weight quantization costs (Yu et al.'s super weights)",
        WEIGHT_CRITERION,
        "",
        weight_finding,
    ),
)


def judged(losses: pd.DataFrame | None) -> list[tuple[Claim, Finding]]:
    return [(claim, claim.judge(losses)) for claim in CLAIMS]


# What the quantization figure draws: each claim's passes, and what the record says was kept.

PANELS = {  # claim key → the passes its panel shows, full precision first
    "quantization_activations": (FULL, A8_TENSOR, A8_TOKEN, A8_KEPT, A8_RANDOM),
    "quantization_weights": (FULL, W8, W8_KEPT, W8_RANDOM),
}

DEFINED_BY = {  # who defines each quantizer (quantization.py's docstring), for captions
    W8: "8-bit absmax per output channel, as LLM.int8 (Dettmers et al. 2022) and SmoothQuant (Xiao et al. 2023) quantize weights",
    A8_TENSOR: "each linear input 8-bit absmax with one scale per tensor, computed on the window (dynamic): the setting Sun et al. "
    "(2024, Massive Activations) and PrefixQuant (Chen et al. 2024) show failing because of a few massive tokens",
    A8_TOKEN: "one scale per token: LLM.int8's vector-wise activation quantization, PrefixQuant's per-token baseline",
    A8_KEPT: "a8 per tensor with the outlier tokens left out of the quantization and of its scale, as PrefixQuant keeps its "
    "outlier tokens aside",
    W8_KEPT: "w8 per channel with the outstanding W_down columns left in full precision and out of their rows' scales, as Yu "
    "et al. keep super weights",
}


def seed_losses(losses: pd.DataFrame, quantization: str) -> np.ndarray:
    """A pass's mean loss over the windows, per seed (one value for a pass without seeds); a window whose loss is not
    finite is left out, as `damages` leaves it out (NaN where none is finite)."""
    rows = losses[losses.quantization == quantization]
    return rows.loss.where(np.isfinite(rows.loss)).groupby(rows.seed).mean().to_numpy()


@dataclass(frozen=True)
class KeptTokens:
    """What the a8-kept pass kept, from the record's outlier_tokens (window → layer → positions)."""

    windows: int  # windows that keep a token at some layer
    fewest: int  # the fewest and the most tokens kept at one layer of one window
    most: int
    first_layer: int  # the first and last layer whose linear inputs keep one, 0-based
    last_layer: int


def kept_tokens(record: dict) -> KeptTokens | None:
    """What the a8-kept pass kept (None: the statistics flag no outlier token, nothing was kept)."""
    counts = {
        (window, int(layer)): len(positions)
        for window, by_layer in record["outlier_tokens"].items()
        for layer, positions in by_layer.items()
    }
    if not counts:
        return None
    layers = [layer for _, layer in counts]
    return KeptTokens(len({window for window, _ in counts}), min(counts.values()), max(counts.values()), min(layers), max(layers))


def kept_columns(record: dict) -> list[tuple[str, list[int]]]:
    """The W_down columns the w8-kept pass kept, (linear's qualified name, columns), in layer order."""
    return sorted(record["outlier_columns"].items(), key=lambda item: re.sub(r"\d+", lambda m: m.group().zfill(8), item[0]))


def table(losses: pd.DataFrame, model: str) -> pd.DataFrame:
    """One row per pass: the mean loss (over seeds for the controls, with their range) and its damage."""
    per_seed = losses.groupby(["quantization", "seed"]).loss.mean().reset_index()
    rows = per_seed.groupby("quantization", sort=False).loss.agg(["mean", "min", "max"]).reset_index()
    rows.columns = ["quantization", "loss", "loss_low", "loss_high"]
    full = rows.loss[rows.quantization == FULL]
    rows["damage"] = (rows.loss - (full.iloc[0] if len(full) else np.nan)).abs()
    rows.insert(0, "model", model)
    order = {name: i for i, name in enumerate(QUANTIZATIONS)}
    return rows.sort_values("quantization", key=lambda s: s.map(order)).reset_index(drop=True)


def table_markdown(table: pd.DataFrame, judged: dict[str, list[tuple[Claim, Finding]]]) -> str:
    """The quantization table across models (loss and damage per pass) and each model's two claims."""
    from .verdict_engine import claims_rows, markdown_table

    rows = [
        [row.model, row.quantization, f"{row.loss:.4f}", f"{row.loss_low:.4f}–{row.loss_high:.4f}", f"{row.damage:.4g}"]
        for row in table.itertuples()
    ]
    lines = [
        "# What the outliers cost a quantizer",
        "",
        "Next-token loss on the statistics' windows in full precision and quantized (quantization.py says which "
        "paper defines each quantizer); the range is over the controls' seeds. " + _DAMAGE + ".",
        "",
        *markdown_table(["model", "quantization", "loss", "range", "damage"], rows),
    ]
    for model, claims in judged.items():
        lines += ["", f"## {model}", "", *claims_rows(claims)]
    return "\n".join(lines) + "\n"
