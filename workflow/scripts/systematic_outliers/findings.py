"""The paper's claims, checked against the measured statistics: Table 1 and results/claims/{model}.md.

Everything here reads the capture stage's files through `figures` and uses the same
data-derived choices (emergence and disappearance layer) as the figures, so a claim and the
figure that shows it agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import figures
from .statistics import SUN_RATIO

# Shares at or above which an alignment or a class split counts as the paper's claim holding.
HOLDS = 0.8


@dataclass
class Evidence:
    """What the claims and Table 1 read for one model, loaded once."""

    model: str
    stats_dir: Path
    manifest: dict
    sites: pd.DataFrame
    topk: pd.DataFrame
    outliers: pd.DataFrame
    channel_max: pd.DataFrame
    attention_layers: pd.DataFrame | None  # None: the architecture has no attention capture (Falcon)
    attention_keys: pd.DataFrame | None
    weights: pd.DataFrame

    @classmethod
    def load(cls, model: str, stats_dir, weights_path) -> "Evidence":
        weights_path = Path(weights_path)
        manifest = figures.read_manifest(stats_dir)
        attention = "attn_probs" in manifest["sites"]
        return cls(
            model=model,
            stats_dir=Path(stats_dir),
            manifest=manifest,
            sites=figures.read_table(stats_dir, "sites", ("window", "layer", "site", "median_abs")),
            topk=figures.read_table(stats_dir, "topk", ("window", "layer", "site", "rank", "value")),
            outliers=figures.read_table(stats_dir, "activation_outliers", ("window", "layer", "site", "position", "channel",
                                                                           "token_class", "paper_rule", "sun_rule")),
            channel_max=figures.read_table(stats_dir, "channel_max", ("layer", "site", "max_abs")),
            attention_layers=figures.read_table(stats_dir, "attention_layers", ("window", "layer", "top1", "outlier_keys")) if attention else None,
            attention_keys=figures.read_table(stats_dir, "attention_keys", ("window", "layer", "position", "is_outlier")) if attention else None,
            weights=figures.read_table(weights_path.parent, weights_path.stem, ("layer", "max_ratio", "column_ratio",
                                                                                "top_columns", "top_column_rows", "mlp_down")),
        )

    def outlier_tokens(self) -> tuple[pd.DataFrame, str]:
        """Layer-output outlier tokens by the paper's rule, or by Sun's where the paper's finds none."""
        output = self.outliers[self.outliers.site == "layer_output"]
        for rule, name in (("paper_rule", "max |h| > 1000 × the window's mean |h|"), ("sun_rule", "Sun et al.: max |h| > 100 and > 1000 × the median")):
            chosen = output[output[rule]]
            if not chosen.empty:
                return chosen, name
        return output.iloc[:0], "no rule found any"


def alignment(evidence: Evidence) -> dict:
    """Table 1 for one model: how far weight, activation and attention outliers coincide.

    Columns of W_down that stand out (figures.weight_outlier_layers) are matched against the
    down-projection input's outlier channels of the same layer, the rows those columns write
    against the residual stream's outlier channels (Sun's rule on the corpus channel maxima), and
    the activation-outlier tokens against the attention-outlier keys of the same window.
    """
    standing_out = figures.weight_outlier_layers(evidence.weights)
    down_channels = figures.activation_outlier_channels(evidence.channel_max, evidence.sites, "down_proj_input")
    residual_channels = {c for cs in figures.activation_outlier_channels(evidence.channel_max, evidence.sites, "layer_output").values() for c in cs}
    columns_matched = sum(int(row.top_columns[0]) in down_channels.get(int(row.layer), ()) for row in standing_out.itertuples())
    written = [int(r) for row in standing_out.itertuples() for r in row.top_column_rows]
    rows_matched = sum(r in residual_channels for r in written)
    tokens, rule = evidence.outlier_tokens()
    activation = set(zip(tokens.window, tokens.position))
    if evidence.attention_keys is None:
        attention = set()
    else:
        keys = evidence.attention_keys[evidence.attention_keys.is_outlier]
        attention = set(zip(keys.window, keys.position))
    both = activation & attention
    return {
        "model": evidence.model,
        "weight_outlier_columns": len(standing_out),
        "columns_on_down_input_outlier_channels": columns_matched,
        "column_share": columns_matched / len(standing_out) if len(standing_out) else np.nan,
        "rows_written": len(written),
        "rows_on_residual_outlier_channels": rows_matched,
        "row_share": rows_matched / len(written) if written else np.nan,
        "activation_outlier_tokens": len(activation),
        "attention_outlier_keys": len(attention),
        "tokens_that_are_outlier_keys": len(both) / len(activation) if activation and evidence.attention_keys is not None else np.nan,
        "keys_that_are_outlier_tokens": len(both) / len(attention) if attention else np.nan,
        "residual_outlier_channels": " ".join(map(str, sorted(residual_channels))),
        "token_rule": rule,
    }


def _cell(text) -> str:
    """Text for a Markdown table cell: its own pipes escaped."""
    return str(text).replace("|", "\\|")


NOT_MEASURED = "not measured"


def _verdict(holds: bool | None | str) -> str:
    return holds if holds == NOT_MEASURED else {True: "holds", False: "does not hold", None: "partly"}[holds]


def claims(evidence: Evidence, prompt: dict, tokens: list[str], record: dict, overrides: dict | None = None) -> str:
    """results/claims/{model}.md: each of the paper's claims, the numbers measured here, and a verdict."""
    overrides = overrides or {}
    windows, layers = evidence.manifest["windows"], record["layers"]
    h = figures.layerwise(evidence.sites, evidence.topk, "layer_output")
    ratio = h.top1 / h["median"]
    peak = int(ratio.idxmax())
    if "emergence_layer" in overrides:
        emergence, emergence_why = overrides["emergence_layer"], "set in the config"
    else:
        emergence, emergence_why = figures.emergence_layer(evidence.outliers, windows)
    if "disappearance_layer" in overrides:
        disappearance, disappearance_why = overrides["disappearance_layer"], "set in the config"
    else:
        try:
            disappearance, disappearance_why = figures.disappearance_layer(h, after=emergence)
        except figures.FigureDataError as never:  # outliers that last to the output: a finding, not an error
            disappearance, disappearance_why = None, str(never)
    reference = figures.reference_median(evidence.weights)
    down = evidence.weights[evidence.weights.mlp_down]
    top_weight = down.loc[down.column_ratio.idxmax()] if not down.empty else None
    no_attention = f"{evidence.manifest['model_type']} has no attention capture (architectures.ARCHITECTURES)"
    if evidence.attention_layers is not None:
        attention_hits = evidence.attention_layers[evidence.attention_layers.outlier_keys > 0].groupby("layer").window.nunique()
        attention_layers = sorted(int(layer) for layer in attention_hits[attention_hits >= windows / 2].index)
    tokens_found, rule = evidence.outlier_tokens()
    classes = tokens_found.token_class.value_counts(normalize=True)
    channels = tokens_found.channel.value_counts(normalize=True)
    table1 = alignment(evidence)
    # the cancelling layer on the prompt: what the MLP writes against what arrives on the outlier channel
    marked = figures.prompt_outlier_tokens(prompt[f"layer_output.{emergence}"]) or [0]
    rows = []

    def claim(text, measured, holds):
        rows.append(f"| {_cell(text)} | {_cell(measured)} | {_verdict(holds)} |")

    claim("Activation outliers exist: a few values thousands of times the median",
          f"mean top-1 |h| {h.top1[peak]:,.0f} at layer {peak + 1}, {ratio[peak]:,.0f} × the median |h| there",
          bool(ratio[peak] >= SUN_RATIO and h.top1[peak] > 100))
    if top_weight is None:
        claim("Weight outliers exist in the down projection", "no MLP down projection in the capture table", False)
    else:
        claim("Weight outliers exist: single down-projection columns with a large max/mean ratio",
              f"column {int(top_weight.top_columns[0])} of layer {int(top_weight.layer) + 1}: ratio {top_weight.column_ratio:,.0f}, "
              f"{top_weight.column_ratio / reference:.1f} × the median over all matrices ({reference:.0f})",
              bool(top_weight.column_ratio >= figures.WEIGHT_OUTLIER_FACTOR * reference))
    if evidence.attention_layers is None:
        claim("Attention outliers exist: keys that take much of the attention", no_attention, NOT_MEASURED)
    else:
        claim("Attention outliers exist: keys that take much of the attention",
              f"keys receiving ≥ 0.1 × the window length in most of {windows} windows at {len(attention_layers)} of {layers} layers "
              f"(from layer {attention_layers[0] + 1})" if attention_layers else f"no layer has such keys in most of {windows} windows",
              bool(attention_layers))
    share = classes.reindex(["initial", "strong_delimiter", "weak_semantic"]).fillna(0)
    delimiters = share["strong_delimiter"] + share["weak_semantic"]
    claim("They sit at the first token and at delimiters",
          f"{len(tokens_found)} outlier (window, layer, token) rows by {rule}: " + ", ".join(f"{k.replace('_', ' ')} {v:.0%}" for k, v in classes.items())
          + ("; no delimiter among them" if len(tokens_found) and not delimiters else ""),
          False if tokens_found.empty or share.sum() < HOLDS else True if delimiters else None)
    claim("… in a few fixed channels",
          f"{len(channels)} channel(s) carry the outlier tokens' maxima; " + ", ".join(f"{c}: {v:.0%}" for c, v in channels.head(3).items()),
          bool(len(channels) and channels.head(4).sum() >= HOLDS))
    early = emergence < layers / 4
    late = disappearance is None or disappearance >= layers - 4
    claim("… from an early layer to a late one",
          f"they emerge at layer {emergence + 1} of {layers} ({emergence_why}) and "
          + (f"last to the output ({disappearance_why})" if disappearance is None else f"are cancelled at layer {disappearance + 1} ({disappearance_why})"),
          True if early and late else None if late else False)
    claim("The weight-outlier columns write the activation-outlier channels",
          f"{table1['rows_on_residual_outlier_channels']} of {table1['rows_written']} rows written by the {table1['weight_outlier_columns']} "
          f"outstanding W_down columns are residual outlier channels ({table1['residual_outlier_channels'] or 'none'}); "
          f"{table1['columns_on_down_input_outlier_channels']} of the columns are down-input outlier channels of their layer",
          None if not table1["rows_written"] else bool(table1["row_share"] >= HOLDS))
    if evidence.attention_keys is None:
        claim("The attention-outlier keys are the activation-outlier tokens", no_attention, NOT_MEASURED)
    else:
        claim("The attention-outlier keys are the activation-outlier tokens",
              f"{table1['tokens_that_are_outlier_keys']:.0%} of {table1['activation_outlier_tokens']} activation-outlier tokens are outlier keys; "
              f"{table1['keys_that_are_outlier_tokens']:.0%} of {table1['attention_outlier_keys']} outlier keys are activation-outlier tokens",
              None if not table1["activation_outlier_tokens"] else bool(table1["tokens_that_are_outlier_keys"] >= HOLDS))
    if disappearance is None:
        claim("Late layers cancel them", disappearance_why, False)
    else:
        fall = 1 - h.top1[disappearance] / h.top1[disappearance - 1]
        measured = f"at layer {disappearance + 1} the mean top-1 |h| falls by {fall:.0%}"
        if f"down_proj_output.{disappearance}" in prompt and f"attn_residual.{disappearance}" in prompt:
            arriving = prompt[f"attn_residual.{disappearance}"]
            token, channel = marked[0], int(np.abs(arriving[marked[0]]).argmax())
            written = prompt[f"down_proj_output.{disappearance}"][token, channel]
            claim("Late layers cancel them",
                  f"{measured}; on the prompt its MLP writes {written:+,.0f} onto channel {channel} of {tokens[token]!r}, "
                  f"which arrives at {arriving[token, channel]:+,.0f}",
                  bool(fall >= 0.5 and np.sign(written) == -np.sign(arriving[token, channel])))
        else:  # parallel blocks (no attention residual) or no MLP sites: only the fall is measured
            claim("Late layers cancel them", f"{measured}; the MLP's own contribution is not captured for this architecture",
                  None if fall >= 0.5 else False)

    return "\n".join([
        f"# The paper's claims, checked on {evidence.model}",
        "",
        f"Measured on {windows} windows of {evidence.manifest['window_length']} tokens ({evidence.stats_dir}) and the prompt "
        f"{record['text']!r}, in {evidence.manifest['dtype']} on {evidence.manifest['device']}. Weight numbers: {record['weights']}.",
        f"A claim holds when the measured share is at least {HOLDS:.0%} (or, for existence, the paper's thresholds are met); "
        "\"partly\" says it holds in part, as the measured column states; \"not measured\": the capture table lacks the sites.",
        "",
        "| claim | measured | verdict |",
        "|---|---|---|",
        *rows,
        "",
    ])


def alignment_markdown(table: pd.DataFrame) -> str:
    shown = table.copy()
    for column in ("column_share", "row_share", "tokens_that_are_outlier_keys", "keys_that_are_outlier_tokens"):
        shown[column] = shown[column].map(lambda v: "–" if pd.isna(v) else f"{v:.0%}")
    header = "| " + " | ".join(shown.columns) + " |"
    lines = [header, "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([
        "# Table 1: alignment of weight, activation and attention outliers",
        "",
        "Weight-outlier columns: W_down columns whose max/mean ratio is at least "
        f"{figures.WEIGHT_OUTLIER_FACTOR:g} × the median over all matrices; rows written: those with |W| ≥ 0.5 × the column's largest. "
        "Outlier channels: corpus channel maxima > 100 and > 1000 × the median (Sun et al.). Tokens and keys are matched per window.",
        "",
        *lines,
        "",
    ])
