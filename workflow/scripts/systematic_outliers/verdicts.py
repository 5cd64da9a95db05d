"""The paper's LLM claims, Table 1 and the scorecard across models, on the verdict engine.

Each claim (verdict_engine.Claim) states what the paper says, our criterion with its numbers, and
the paper's value for LLaMA-2-7B where it states one. Every verdict is reachable for every claim:
"not measured" when the architecture lacks the sites or there is nothing to compare (no outlier to
locate), "does not hold" when the measurement says so. The intervention claims
(intervention_report.py) follow these; the GPT-2 claims are variant_report.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from . import choices, field_metrics, quantization_report
from .choices import MOST_WINDOWS, WEIGHT_OUTLIER_FACTOR
from .definitions import ATTENTION_SHARE, PAPER_RATIO, SUN_FLOOR, SUN_RATIO, TOKEN_CLASSES, TOP, WRITE_SHARE
from .intervention_report import INTERVENTION_CLAIMS
from .readers import Evidence, InterventionResults, windows_text
from .verdict_engine import DOES_NOT_HOLD, HOLDS, NOT_MEASURED, PARTLY, Claim, Finding, claims_markdown, graded, markdown_table

# Our thresholds (the paper states none for these judgements), each printed beside its verdict.
SHARE_HOLDS, SHARE_PARTLY = 0.8, 0.5  # an alignment or a split of tokens
MASSIVE_PARTLY = 100.0  # × the median: an order of magnitude short of Sun et al.'s 1000
WEIGHT_PARTLY = 2.0  # × the median ratio over all matrices
ATTENTION_LAYERS_HOLDS = 0.25  # share of the layers with outlier keys in most windows
FEW_CHANNELS = 4  # "a few fixed channels"
EARLY, LATE = 0.25, 0.75  # emergence within the first quarter of the layers; still present at three quarters
CANCEL_FALL = 0.5  # an outlier channel's mean |h| falls by at least half over the layers that take it down
CANCEL_WRITTEN = 0.5  # … and its MLPs' writes against it there account for at least half of that fall


# ---------------------------------------------------------------------------------------------
# The LLM claims.


@dataclass
class Measured:
    """What the LLM judges read: a model's evidence, its choices, the prompt dump and Table 1."""

    evidence: Evidence
    chosen: choices.ModelChoices
    prompt: dict
    tokens: list[str]
    record: dict
    table1: dict
    interventions: InterventionResults | None = None  # None: rule interventions was not run
    quantization: pd.DataFrame | None = None  # the losses of rule quantization; None: not run

    @property
    def layers(self) -> int:
        return self.record["layers"]


def alignment(evidence: Evidence, chosen: choices.ModelChoices) -> dict:
    """Table 1 for one model: how far weight, activation and attention outliers coincide.

    The outstanding W_down columns (choices.weight_outlier_columns) are matched against the
    down-projection input's massive channels of the same layer, the rows those columns write
    against the residual stream's massive channels, and the activation-outlier tokens (paper's
    rule, any layer) against the attention-outlier keys of the same window (any layer).
    """
    standing_out = chosen.weight_columns
    down_channels = choices.residual_outlier_channels(evidence.channel_max, evidence.sites, "down_proj_input")
    residual = sorted(
        {c for cs in choices.residual_outlier_channels(evidence.channel_max, evidence.sites, "layer_output").values() for c in cs}
    )
    columns_matched = sum(int(row.column) in down_channels.get(int(row.layer), ()) for row in standing_out.itertuples())
    written = [int(r) for row in standing_out.itertuples() for r in row.top_column_rows]
    rows_matched = sum(r in residual for r in written)
    activation = set(zip(chosen.outlier_tokens.window, chosen.outlier_tokens.position))
    attention = set()
    if evidence.has_attention:
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
        "attention_outlier_keys": len(attention) if evidence.has_attention else np.nan,
        "tokens_that_are_outlier_keys": len(both) / len(activation) if activation and evidence.has_attention else np.nan,
        "keys_that_are_outlier_tokens": len(both) / len(attention) if attention and activation else np.nan,
        "residual_outlier_channels": " ".join(map(str, residual)),
    }


def _no_attention(m: Measured) -> Finding:
    return Finding(f"{m.evidence.manifest['model_type']} has no attention capture (see architecture.json of the model)", NOT_MEASURED, "–")


def _no_tokens(m: Measured) -> Finding:
    return Finding(
        f"no activation-outlier token (max |h| > {PAPER_RATIO:g} × the window's mean |h|) in any layer output of "
        f"{m.evidence.windows} windows: nothing to locate",
        NOT_MEASURED,
        "no outlier",
    )


def judge_activation(m: Measured) -> Finding:
    curves = m.chosen.curves
    peak = curves.loc[m.chosen.peak.value]
    layer = m.chosen.peak.value + 1
    near = bool(((curves.top1 > SUN_FLOOR) & (curves.ratio >= MASSIVE_PARTLY)).any())  # short of massive: the "partly"
    verdict = HOLDS if m.chosen.peak.found else PARTLY if near else DOES_NOT_HOLD
    return Finding(
        f"over {m.layers} layers, {m.chosen.peak.why}",
        verdict,
        f"{choices.magnitude_text(peak.top1)} ({peak.ratio:,.0f}× median) at layer {layer}",
    )


def judge_weight(m: Measured) -> Finding:
    down = choices.down_projections(m.evidence.weights)
    if down.empty:
        return Finding("no MLP down projection in the weights of this architecture", NOT_MEASURED, "–")
    top = down.loc[down.column_ratio.idxmax()]
    reference = choices.reference_median(m.evidence.weights)
    factor = top.column_ratio / reference
    return Finding(
        f"{top.label} of layer {int(top.layer) + 1}: max/mean {top.column_ratio:,.0f}, {factor:.1f}× the "
        f"median over all matrices ({reference:.0f})",
        graded(factor, WEIGHT_OUTLIER_FACTOR, WEIGHT_PARTLY),
        f"{top.label}, layer {int(top.layer) + 1}: {top.column_ratio:,.0f} ({factor:.1f}× median)",
    )


def judge_attention(m: Measured) -> Finding:
    if not m.evidence.has_attention:
        return _no_attention(m)
    layers = choices.attention_outlier_layers(m.evidence.attention_layers, m.evidence.windows)
    curves = choices.attention_curves(m.evidence.attention_layers)
    top = int(curves.top1.idxmax())
    softmax = len(choices.softmax_layers(m.evidence.attention_layers))  # a hybrid's other layers have no keys to weigh
    share = len(layers) / softmax
    verdict = HOLDS if share >= ATTENTION_LAYERS_HOLDS else PARTLY if layers else DOES_NOT_HOLD
    counted = f"{len(layers)} of {softmax} layers" + (" with softmax attention" if softmax < m.layers else "")  # the share's terms
    return Finding(
        f"keys receiving ≥ {ATTENTION_SHARE:g} × the window length in most of {m.evidence.windows} windows at {counted}"
        + (f" (of {m.layers})" if softmax < m.layers else "")
        + (f" (from layer {layers[0] + 1})" if layers else "")
        + f"; the largest mean top-1 is {curves.top1[top]:.1f} at layer {top + 1} (threshold {curves.threshold[top]:.1f})",
        verdict,
        f"{counted}, top-1 {curves.top1[top]:.0f} of {m.evidence.manifest['window_length']}",
    )


def judge_learned_sink(m: Measured) -> Finding:
    if not m.evidence.has_attention:
        return _no_attention(m)
    curves = choices.sink_curves(m.evidence)
    if curves is None:
        return Finding(
            f"{m.evidence.manifest['model_type']} has no learned attention sink (a per-head logit in the softmax, as gpt-oss's)",
            NOT_MEASURED,
            "no learned sink",
        )
    sink_layers = set(curves.index[choices.in_most_windows(curves.sink_windows, m.evidence.windows)])
    key_layers = set(curves.index[choices.in_most_windows(curves.key_windows, m.evidence.windows)])
    parking = sorted(sink_layers | key_layers)
    peak = int(curves.sink.idxmax())
    where = f"the learned sink's largest mean is {curves.sink[peak]:.1f} at layer {peak + 1} (threshold {curves.threshold[peak]:.1f})"
    if not parking:
        return Finding(
            f"neither the learned sink nor any key reaches the threshold in most windows at any layer; {where}", NOT_MEASURED, "no sink"
        )
    first = curves.first_token_windows[list(key_layers)].sum() / max(curves.key_windows[list(key_layers)].sum(), 1)
    on_sink, on_keys = len(sink_layers) / len(parking), len(key_layers) / len(parking)
    verdict = HOLDS if on_sink >= SHARE_HOLDS and on_keys <= 1 - SHARE_HOLDS else PARTLY if on_sink >= SHARE_PARTLY else DOES_NOT_HOLD
    return Finding(
        f"of {len(parking)} layers where attention parks (≥ {ATTENTION_SHARE:g} × the window length in most windows), the learned "
        f"sink takes it at {len(sink_layers)} and a real key at {len(key_layers)}"
        + (f" (the first token is that key in {first:.0%} of their windows)" if key_layers else "")
        + f"; {where}",
        verdict,
        f"sink at {len(sink_layers)}, keys at {len(key_layers)} of {len(parking)} layers",
    )


def judge_positions(m: Measured) -> Finding:
    if not m.chosen.emergence.found:
        return _no_tokens(m)
    layer = m.chosen.emergence.value
    tokens = m.chosen.outlier_tokens[m.chosen.outlier_tokens.layer == layer]
    classes = tokens.token_class.value_counts(normalize=True)
    share = classes.reindex(["initial", "strong_delimiter", "weak_semantic"]).fillna(0)
    expected = share.sum()
    both = share["initial"] > 0 and share["strong_delimiter"] + share["weak_semantic"] > 0
    verdict = graded(expected, SHARE_HOLDS, SHARE_PARTLY)
    if verdict == HOLDS and not both:
        verdict = PARTLY
    split = ", ".join(f"{k.replace('_', ' ')} {v:.1%}" for k, v in classes.items())
    return Finding(
        f"{len(tokens)} outlier tokens at the emergence layer {layer + 1}: {split}" + ("" if both else "; not both kinds"), verdict, split
    )


def judge_channels(m: Measured) -> Finding:
    tokens = m.chosen.outlier_tokens
    if tokens.empty:
        return _no_tokens(m)
    channels = tokens.channel.value_counts(normalize=True)
    share = channels.head(FEW_CHANNELS).sum()
    return Finding(
        f"{len(channels)} channel(s) carry the outlier tokens' maxima; the top {FEW_CHANNELS} carry {share:.0%}: "
        + ", ".join(f"{c}: {v:.0%}" for c, v in channels.head(FEW_CHANNELS).items()),
        graded(share, SHARE_HOLDS, SHARE_PARTLY),
        " ".join(map(str, channels.head(FEW_CHANNELS).index)),
    )


def judge_lifetime(m: Measured) -> Finding:
    if not m.chosen.emergence.found:
        return _no_tokens(m)
    first = m.chosen.emergence.value
    last = choices.last_outlier_layer(m.evidence.outliers, m.evidence.windows)
    last = first if last is None else last  # an override may name a layer without outlier tokens
    early, late = first + 1 <= EARLY * m.layers, last + 1 >= LATE * m.layers
    verdict = HOLDS if early and late else PARTLY if early or late else DOES_NOT_HOLD
    return Finding(
        f"they emerge at layer {first + 1} of {m.layers} ({m.chosen.emergence.why}) and are in most windows until layer {last + 1}",
        verdict,
        f"layers {first + 1}–{last + 1} of {m.layers}",
    )


def judge_weight_writes(m: Measured) -> Finding:
    t = m.table1
    if not t["rows_written"]:
        return Finding("no W_down column stands out: nothing to compare", NOT_MEASURED, "–")
    columns = "; ".join(
        f"{row.label} of layer {int(row.layer) + 1} → rows {' '.join(map(str, row.top_column_rows))}"
        for row in m.chosen.weight_columns.itertuples()
    )
    return Finding(
        f"{t['rows_on_residual_outlier_channels']} of {t['rows_written']} rows written by the {t['weight_outlier_columns']} "
        f"outstanding W_down columns ({columns}) are massive residual channels ({t['residual_outlier_channels'] or 'there are none'}); "
        f"{t['columns_on_down_input_outlier_channels']} of the columns are massive down-input channels of their layer",
        graded(t["row_share"], SHARE_HOLDS, SHARE_PARTLY),
        f"{t['row_share']:.0%} of rows",
    )


def judge_keys_are_tokens(m: Measured) -> Finding:
    if not m.evidence.has_attention:
        return _no_attention(m)
    t = m.table1
    if not t["activation_outlier_tokens"]:
        return _no_tokens(m)
    tokens_keys = t["tokens_that_are_outlier_keys"]
    keys_tokens = 0.0 if pd.isna(t["keys_that_are_outlier_tokens"]) else t["keys_that_are_outlier_tokens"]  # no outlier key at all
    low, high = min(tokens_keys, keys_tokens), max(tokens_keys, keys_tokens)
    verdict = HOLDS if low >= SHARE_HOLDS else PARTLY if high >= SHARE_HOLDS or low >= SHARE_PARTLY else DOES_NOT_HOLD
    return Finding(
        f"{tokens_keys:.0%} of {t['activation_outlier_tokens']} activation-outlier tokens are outlier keys of their window; "
        f"{keys_tokens:.0%} of {t['attention_outlier_keys']} outlier keys are activation-outlier tokens",
        verdict,
        f"{tokens_keys:.0%} of tokens, {keys_tokens:.0%} of keys",
    )


def cancelled(life: choices.ChannelLife) -> tuple[str, str, str]:
    """One channel's cancellation (`ChannelLife.take_down`): its verdict, a clause with the numbers (1-based layers)
    and the scorecard's short value."""
    down = life.take_down()
    if down is None:
        end = f"its last layer, {life.end + 1}" if life.disappearance is None else f"layer {life.end + 1}, where it is no longer massive"
        return (
            DOES_NOT_HOLD,
            f"channel {life.channel}: no layer from its peak at layer {life.peak + 1} to {end} lowers its mean |h| by ≥ "
            f"{choices.TAKE_DOWN_STEP:.0%} (|h| {life.magnitude[life.peak]:,.0f} → {life.magnitude[life.end]:,.0f})",
            f"channel {life.channel}: not taken down",
        )
    steps = ", ".join(f"−{step:.0%}" for step in down.steps)
    text = f"channel {life.channel}: |h| {down.arriving:,.0f} → {down.left[-1]:,.0f} (−{down.fall:.0%}) over {down.layers_text()} ({steps})"
    against = down.against
    if against is None:
        text += "; the MLP's writes onto it are not captured (no attn_residual site)"
    else:
        text += f", its MLPs writing {', '.join(f'{w:+,.0f}' for w in down.writes)}: {against:.0%} of the fall against it"
    if down.fall < CANCEL_FALL:
        verdict = DOES_NOT_HOLD
    else:
        verdict = HOLDS if against is not None and against >= CANCEL_WRITTEN else PARTLY
    value = f"channel {life.channel}: {down.layers_text()}, −{down.fall:.0%}" + (f", MLP {against:.0%}" if against is not None else "")
    return verdict, text, value


def judge_cancellation(m: Measured) -> Finding:
    if not m.chosen.emergence.found:
        return _no_tokens(m)
    lives = m.chosen.channels
    if not lives:
        return Finding("no residual channel is massive (Sun et al.) at any layer output: no channel to follow", NOT_MEASURED, "no channel")
    judged = [life for life in lives if life.in_most] or lives  # a channel massive in a few windows only is said, not judged
    found = [cancelled(life) for life in judged]
    verdicts = [verdict for verdict, _, _ in found]
    verdict = HOLDS if set(verdicts) == {HOLDS} else DOES_NOT_HOLD if set(verdicts) == {DOES_NOT_HOLD} else PARTLY
    text = "; ".join(clause for _, clause, _ in found)
    left_out = [life for life in lives if life not in judged]
    if left_out:
        text += "; not judged, massive in a few windows only: " + ", ".join(
            f"channel {life.channel} ({life.windows[0]} of {life.windows[1]})" for life in left_out
        )
    return Finding(text, verdict, "; ".join(value for _, _, value in found))


LLM_CLAIMS = [
    Claim(
        "activation",
        "Activation outliers exist: a few values thousands of times the median",
        f"holds: the mean top-1 |h| of some layer is massive (> {SUN_FLOOR:g} and > {SUN_RATIO:g}× the layer's median, Sun et al.); "
        f"partly: some layer > {SUN_FLOOR:g} and ≥ {MASSIVE_PARTLY:g}×; else does not hold",
        "≈ 2,380 at layers 2–30 (Fig 3a)",
        judge_activation,
    ),
    Claim(
        "weight",
        "Weight outliers exist: single down-projection columns with a large max/mean ratio",
        f"the largest W_down column max/mean over the median over all matrices: holds ≥ {WEIGHT_OUTLIER_FACTOR:g}×, partly ≥ "
        f"{WEIGHT_PARTLY:g}×; not measured without an MLP down projection",
        "column 7890 of layer 2, ≈ 1,170; layers 31/32 ≈ 565/585; others ≲ 200 (Fig 5)",
        judge_weight,
    ),
    Claim(
        "attention",
        "Attention outliers exist: keys that take much of the attention",
        f"keys receiving ≥ {ATTENTION_SHARE:g} × the window length (head mean) in ≥ {MOST_WINDOWS:.0%} of the windows: holds in ≥ "
        f"{ATTENTION_LAYERS_HOLDS:.0%} of the layers with softmax attention, partly in at least one",
        "top-1 ≈ 520 of 1,024 at layer 3, ≈ 300–520 up to layer 32 (Fig 6a)",
        judge_attention,
    ),
    Claim(
        "learned_sink",
        "Attention outliers are an implicit sink: given an explicit one, attention parks there instead",
        f"of the layers where the learned sink or a real key receives ≥ {ATTENTION_SHARE:g} × the window length (head mean) in "
        f"≥ {MOST_WINDOWS:.0%} of the windows: holds when the sink does at ≥ {SHARE_HOLDS:.0%} of them and real keys at ≤ "
        f"{1 - SHARE_HOLDS:.0%}, partly when the sink does at ≥ {SHARE_PARTLY:.0%}; not measured without a learned sink (gpt-oss has one)",
        "– (the paper's reading, Section 4; tested on models with a learned sink)",
        judge_learned_sink,
    ),
    Claim(
        "positions",
        "They sit at the first token and at delimiters",
        f"share of the outlier tokens at the emergence layer that are initial, strong-delimiter or weak-semantic: holds ≥ "
        f"{SHARE_HOLDS:.0%} with both the initial token and delimiters or weak-semantic tokens among them, partly ≥ {SHARE_PARTLY:.0%}; "
        "not measured without outlier tokens",
        "initial 50.0 %, '.' 40.5 %, '_' 9.5 % at layer 2 (Fig 3b)",
        judge_positions,
    ),
    Claim(
        "channels",
        "… in a few fixed channels",
        f"share of the outlier tokens whose largest channel is one of the {FEW_CHANNELS} most frequent: holds ≥ {SHARE_HOLDS:.0%}, "
        f"partly ≥ {SHARE_PARTLY:.0%}",
        "1415, 2533 (Figs 1c, 3c)",
        judge_channels,
    ),
    Claim(
        "lifetime",
        "… from an early layer to a late one",
        f"holds: they emerge (in ≥ {MOST_WINDOWS:.0%} of the windows) within the first {EARLY:.0%} of the layers and are still "
        f"present at {LATE:.0%} of the depth; partly: one of the two",
        "layers 2–30 of 32 (Fig 3a)",
        judge_lifetime,
    ),
    Claim(
        "weight_writes",
        "The weight-outlier columns write the activation-outlier channels",
        f"share of the rows written by outstanding W_down columns (≥ {WEIGHT_OUTLIER_FACTOR:g}× the median ratio; at most {TOP} "
        f"rows with ≥ {WRITE_SHARE:g} × the column's largest) that are massive residual channels: holds ≥ {SHARE_HOLDS:.0%}, partly ≥ {SHARE_PARTLY:.0%}; not "
        "measured when no column stands out",
        "100 % (Table 1 as quoted by a third party; unconfirmed)",
        judge_weight_writes,
    ),
    Claim(
        "keys_are_tokens",
        "The attention-outlier keys are the activation-outlier tokens",
        f"shares of the activation-outlier tokens that are outlier keys of their window and of the outlier keys that are "
        f"activation-outlier tokens: holds when both are ≥ {SHARE_HOLDS:.0%}, partly when one is or both are ≥ {SHARE_PARTLY:.0%}",
        "95 % (Table 1 as quoted by a third party; unconfirmed)",
        judge_keys_are_tokens,
    ),
    Claim(
        "cancellation",
        "Late layers cancel them",
        "per outlier channel (each massive in most windows of some layer; all of them when none is), over the layers that take "
        "it down: the run of consecutive layers, each "
        f"lowering its mean |h| by ≥ {choices.TAKE_DOWN_STEP:.0%}, that starts after its peak and by the layer where it is no longer "
        "massive (or the last layer), with the largest fall from the value arriving at it. Holds: it falls by ≥ "
        f"{CANCEL_FALL:.0%} there and the MLPs' writes against it (opposite sign; the mean over windows of each window's extreme "
        f"write) account for ≥ {CANCEL_WRITTEN:.0%} of the fall; partly: the fall without the MLPs' doing; does not hold: a smaller "
        "fall or none. The claim holds when every judged channel holds, does not hold when none holds or partly, partly otherwise; "
        "not measured without outliers",
        "layer 31: x_down channels 3721, 7006 cancel 1415, 2533 (Figs 4c, 9)",
        judge_cancellation,
    ),
]


def measure(model: str, stats_dir, weights_path, prompt_path, interventions_path=None, quantization_path=None) -> Measured:
    """Load one model's files and make its choices: the input of its claims, Table 1 row and atlas row.
    Always the data's own choices: figures.overrides steer what the figures show, never a verdict."""
    from .readers import read_prompt, read_prompt_record

    evidence = Evidence.load(model, stats_dir, weights_path)
    chosen = choices.for_model(evidence)
    prompt, tokens = read_prompt(prompt_path, ("layer_output",))
    interventions = InterventionResults.load(interventions_path) if interventions_path else None
    quantization = pd.read_parquet(quantization_path) if quantization_path else None
    table1 = alignment(evidence, chosen)
    return Measured(evidence, chosen, prompt, tokens, read_prompt_record(prompt_path), table1, interventions, quantization)


# what the outliers cost a quantizer, judged on a model's quantization losses
QUANTIZATION_CLAIMS = [replace(claim, judge=lambda m, judge=claim.judge: judge(m.quantization)) for claim in quantization_report.CLAIMS]


def all_claims() -> list[Claim]:
    """The LLM claims read from the statistics, then those the interventions test, then the quantization's."""
    return LLM_CLAIMS + INTERVENTION_CLAIMS + QUANTIZATION_CLAIMS


def judge(m: Measured) -> list[tuple[Claim, Finding]]:
    return [(claim, claim.judge(m)) for claim in all_claims()]


def claims_file(m: Measured) -> str:
    """results/claims/{model}.md."""
    e = m.evidence
    return claims_markdown(
        f"The paper's claims, checked on {e.model}",
        [
            f"Measured on {windows_text(e.manifest)} ({e.stats_dir}) and the prompt {m.record['text']!r}, "
            f"in {e.manifest['dtype']} on {e.manifest['device']}. Weight numbers: {m.record['weights']}.",
            'The paper states its claims qualitatively; each criterion is ours and is printed beside its verdict. "Massive" is Sun et '
            f"al.'s criterion (> {SUN_FLOOR:g} and > {SUN_RATIO:g}× the median of the same layer); an activation-outlier token is the "
            f"paper's (max |h| > {PAPER_RATIO:g} × the window's mean |h|); \"not measured\": the architecture lacks the sites, or there "
            'is nothing to compare. The paper column is the paper\'s value for LLaMA-2-7B (from its text and figures; "≈": read off a plot).',
            *(
                [
                    f"The {len(INTERVENTION_CLAIMS)} claims after them test what the outliers do by editing the forward pass on the same "
                    f"windows (rule interventions, "
                    f"controls over seeds {', '.join(map(str, m.interventions.record['seeds']))}): {m.interventions.record['activation']['why']}; "
                    + (
                        f"keys: {m.interventions.record['sink']['why']}."
                        if m.interventions.record.get("sink")
                        else f"no sink ablation: {m.interventions.record['sink_not_measured']}."
                    )
                ]
                if m.interventions
                else []
            ),
            f"The last {len(QUANTIZATION_CLAIMS)} ask what the outliers cost an 8-bit quantizer, on the same windows (rule quantization; "
            "the quantizers and the papers that define them: results/tables/quantization.md).",
        ],
        judge(m),
    )


def atlas_row(m: Measured) -> dict:
    """Where a model's outliers are: one row of the atlas."""
    c, e = m.chosen, m.evidence
    peak = c.curves.loc[c.peak.value]
    residual = sorted({ch for chs in choices.residual_outlier_channels(e.channel_max, e.sites, "layer_output").values() for ch in chs})
    classes = c.outlier_tokens.token_class.value_counts(normalize=True)
    sinks = choices.attention_outlier_layers(e.attention_layers, e.windows) if e.has_attention else []
    weights = c.weight_columns
    metrics = field_metrics.of_model(e.sites, e.attention_first_key)
    return {
        "model": e.model,
        "layers": m.layers,
        "emergence_layer": c.emergence.value + 1 if c.emergence.found else "none",
        "disappearance_layer": (c.disappearance.value + 1 if c.disappearance.found else "never") if c.emergence.found else "none",
        "outlier_channels": " ".join(map(str, residual)) or "none",
        "channel_lives": "; ".join(life.describe() for life in c.channels) or "none",
        "peak_magnitude": round(float(peak.top1), 1),
        "peak_ratio_to_median": round(float(peak.ratio), 1),
        "peak_layer": c.peak.value + 1,
        "token_classes": ", ".join(f"{k} {v:.0%}" for k, v in classes.items()) or "none",
        "first_sink_layer": (sinks[0] + 1 if sinks else "none") if e.has_attention else "not captured",
        **{
            label: f"{metrics[label]:.0%}" if metrics[label] is not None else "not captured"
            for label in map(field_metrics.sink_label, field_metrics.SINK_EPSILONS)
        },
        "kurtosis_mean_over_layers": round(metrics["kurtosis"], 1),
        "kurtosis_max": f"{metrics['kurtosis_max']:,.0f} at layer {metrics['kurtosis_max_layer'] + 1}",
        "weight_outliers": "; ".join(
            f"layer {int(r.layer) + 1} {r.label} → rows {' '.join(map(str, r.top_column_rows))}" for r in weights.itertuples()
        )
        or "none",
    }


@dataclass(frozen=True)
class AtlasData:
    """What the atlas figure draws for several models side by side, computed here once (figure: notebooks/atlas)."""

    curves: pd.DataFrame  # model, layer, depth ((layer + 1) / layers), ratio (mean top-1 |h| over the median)
    marks: pd.DataFrame  # model, emergence, disappearance: relative depths, NaN where the data has none
    verdicts: pd.DataFrame  # one row per claim (its text), one column per model, and `paper` (the paper's value)
    classes: pd.DataFrame  # one row per model, one column per token class: the share of its outlier tokens
    metrics: pd.DataFrame  # one row per model: massive_channels, sink_rate (Sink_1^0.3), kurtosis, max_abs, a8_tensor_damage


def atlas_data(measured: list[Measured]) -> AtlasData:
    curves, marks, verdicts, classes, metrics = [], [], {}, {}, []
    sink_label = field_metrics.sink_label(0.3)

    def depth(layer, layers):  # the 1-based layer over the depth: 1.0 is the last layer
        return (layer + 1) / layers

    for m in measured:
        c, e = m.chosen, m.evidence
        curves.append(
            pd.DataFrame(
                {
                    "model": e.model,
                    "layer": c.curves.index,
                    "depth": depth(c.curves.index.to_numpy(), m.layers),
                    "ratio": c.curves.ratio.to_numpy(),
                }
            )
        )
        marks.append(
            {
                "model": e.model,
                "emergence": depth(c.emergence.value, m.layers) if c.emergence.found else float("nan"),
                "disappearance": depth(c.disappearance.value, m.layers) if c.emergence.found and c.disappearance.found else float("nan"),
            }
        )
        verdicts[e.model] = {claim.text: finding.verdict for claim, finding in judge(m)}
        classes[e.model] = c.outlier_tokens.token_class.value_counts(normalize=True).to_dict()
        residual = {ch for chs in choices.residual_outlier_channels(e.channel_max, e.sites, "layer_output").values() for ch in chs}
        field = field_metrics.of_model(e.sites, e.attention_first_key)
        metrics.append(
            {
                "model": e.model,
                "massive_channels": len(residual),
                "sink_rate": field[sink_label],
                "kurtosis": field["kurtosis"],
                "max_abs": float(c.curves.top1.max()),
                "a8_tensor_damage": quantization_report.a8_tensor_damage(m.quantization),
            }
        )
    grid = pd.DataFrame(verdicts)
    grid.insert(0, "paper", [claim.paper for claim in all_claims()])
    return AtlasData(
        pd.concat(curves, ignore_index=True),
        pd.DataFrame(marks),
        grid,
        pd.DataFrame(classes, columns=list(classes)).T.reindex(columns=list(TOKEN_CLASSES)).fillna(0.0),
        pd.DataFrame(metrics).set_index("model"),
    )


PAPER_ATLAS = {  # LLaMA-2-7B as the paper shows it (its Figs 1, 3–6 and Table 1; "≈": read off a plot)
    "model": "paper: LLaMA-2-7B",
    "layers": 32,
    "emergence_layer": 2,
    "disappearance_layer": 31,
    "outlier_channels": "1415 2533",
    "channel_lives": "1415 and 2533 appear at layer 2, written by its MLP (column 7890), until layer 30 (Figs 3a, 7, 9)",
    "peak_magnitude": "≈ 2,380",
    "peak_ratio_to_median": "–",
    "peak_layer": "2–30",
    "token_classes": "initial 50.0%, strong delimiter 40.5%, weak semantic 9.5%",
    "first_sink_layer": 3,
    "sink_rate_0.3": "–",  # the field's metrics: the paper reports none
    "sink_rate_0.2": "–",
    "kurtosis_mean_over_layers": "–",
    "kurtosis_max": "–",
    "weight_outliers": "layer 2 column 7890 → rows 1415 2533; layer 31 column 7006; layer 32 column 3228 → row 1512",
}


def summary(measured: list[Measured]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The scorecard (one row per claim and model, with the paper's value), the atlas, and both as Markdown."""
    rows = []
    for m in measured:
        for claim, finding in judge(m):
            rows.append(
                {
                    "claim": claim.text,
                    "paper_llama2_7b": claim.paper or "–",
                    "model": m.evidence.model,
                    "measured": finding.value,
                    "verdict": finding.verdict,
                    "criterion": claim.criterion,
                }
            )
    scorecard = pd.DataFrame(rows)
    atlas = pd.DataFrame([PAPER_ATLAS] + [atlas_row(m) for m in measured]).astype(str)
    order = {claim.text: i for i, claim in enumerate(all_claims())}
    shown = scorecard.sort_values("claim", key=lambda s: s.map(order), kind="stable")
    text = "\n".join(
        [
            "# Scorecard: the paper's claims across models",
            "",
            'Each claim with the paper\'s own value for LLaMA-2-7B (from its text and figures; "≈" read off a plot, "unconfirmed" where the '
            "paper's text could not be read), the value measured for each configured model and the verdict; the criteria are in each "
            "model's claims file and in summary.csv.",
            "",
            *markdown_table(
                ["claim", "paper (LLaMA-2-7B)", "model", "measured", "verdict"],
                shown[["claim", "paper_llama2_7b", "model", "measured", "verdict"]].values.tolist(),
            ),
            "",
            "## Atlas: where each model's outliers are",
            "",
            "Layers are 1-based. Outlier channels: residual channels whose corpus maximum is massive (Sun et al.). Channel lives: each "
            "massive channel (in most windows of some layer, or by its corpus maximum), where it appears (or over which layers it is "
            f"built, to {choices.BUILT_SHARE:.0%} of its peak), which layer's MLP writes the most onto it and from which layer it is no "
            "longer massive. Peak: the layer "
            "with the largest mean top-1 |h| over the median. Token classes: the activation-outlier tokens (paper's rule) over all "
            "layers. First sink layer: the first with outlier keys in most windows. Sink rates (Gu et al.'s Sink_1^ε, the "
            f"field's metric): the share of (layer, head) pairs whose mean weight on the first key over the first "
            f"{field_metrics.SINK_WINDOW} queries of a window (mean over windows) exceeds ε. Kurtosis: of each layer's output over "
            "tokens × channels (3 for a Gaussian; Bondarenko et al.), mean over windows, then its mean over layers and its largest. "
            "Weight outliers: outstanding W_down columns and the rows they write.",
            "",
            *markdown_table(list(atlas.columns), atlas.values.tolist()),
            "",
        ]
    )
    return scorecard, atlas, text


def alignment_markdown(table: pd.DataFrame) -> str:
    shown = table.copy()
    for column in ("column_share", "row_share", "tokens_that_are_outlier_keys", "keys_that_are_outlier_tokens"):
        shown[column] = shown[column].map(lambda v: "–" if pd.isna(v) else f"{v:.0%}")
    shown = shown.fillna("–").replace("", "–")
    return "\n".join(
        [
            "# Table 1: alignment of weight, activation and attention outliers",
            "",
            f"Weight-outlier columns: W_down columns whose max/mean ratio is at least {WEIGHT_OUTLIER_FACTOR:g} × the median over all "
            f"matrices; rows written: those with |W| ≥ {WRITE_SHARE:g} × the column's largest (at most {TOP}). Outlier channels: corpus "
            f"channel maxima > {SUN_FLOOR:g} and > {SUN_RATIO:g} × the median (Sun et al.). Activation-outlier tokens: max |h| > "
            f"{PAPER_RATIO:g} × the window's mean |h| in any layer output; outlier keys: ≥ {ATTENTION_SHARE:g} × the window length in "
            "any layer; matched per window. "
            "–: nothing to compare (no outlier of that kind, or no attention capture).",
            "",
            *markdown_table(list(shown.columns), shown.values.tolist()),
            "",
        ]
    )
