"""Judgement on the trained attention variants: Table 2, the compression table and the claims.

Reads only the analysis folders that `variant_analysis.analyse` writes. Every comparison
between variants goes through `verdict_engine.compare_over_seeds`: a difference counts only when it
exceeds the spread over seeds (a stated margin with one seed, and then at most "partly"), and a
magnitude counts as an outlier only when it is massive by Sun et al.'s criterion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import field_metrics, verdict_engine
from .definitions import LOSS_FLOOR, METHODS, SUN_FLOOR, SUN_RATIO, is_massive
from .readers import read_manifest, read_table
from .variants import VARIANTS
from .verdict_engine import DOES_NOT_HOLD, HOLDS, NOT_MEASURED, NOT_SHOWN, PARTLY, Claim, Finding

SINK = 0.5  # mean weight on the first key, where a head should do nothing, from which it is an attention sink
# A run has converged once it has made this share of (a)'s improvement in validation loss. Halfway, on the
# steep part of the curves: near the plateau (90 %) the seeds' spread of final losses, not speed, decides.
CONVERGED = 0.5
SINK_MARGIN = 0.1  # one seed: attention weights must differ by more than this
RELATIVE_MARGIN = 0.1  # one seed: tokens to converge, or compression damage, must differ by more than this share of (a)'s
# the paper's Section 5: (a)–(c) keep massive activations, (d) and (e) lose them
KEEP = tuple(key for key, attention in VARIANTS.items() if attention.paper_keeps_massive is True)
LOSE = tuple(key for key, attention in VARIANTS.items() if attention.paper_keeps_massive is False)
ZOO = tuple(key for key, attention in VARIANTS.items() if attention.zoo)  # each judged against (a)


def _letter(variant: str) -> str:
    return VARIANTS[variant].letter


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 2: each variant's formulation and the parameters it adds, counted from the trained models."""
    first = runs.sort_values("seed").groupby("variant", sort=False).first().reset_index()
    first["order"] = first.variant.map(list(VARIANTS).index)
    first = first.sort_values("order")
    return pd.DataFrame(
        {
            "id": first.id,
            "variant": first.variant,
            "attention": first.name,
            "formulation": first.formulation,
            "parameters": first.parameters,
            "extra_parameters": first.extra_parameters,
            "extra_share": (first.extra_parameters / (first.parameters - first.extra_parameters)).map(lambda v: f"{v:.3%}"),
        }
    )


def compression_table(compression: pd.DataFrame) -> pd.DataFrame:
    """Validation loss (and perplexity, and testbed accuracy) per variant and method: mean and range over seeds."""
    rows = []
    for (variant, method), group in compression.groupby(["variant", "method"], sort=False):
        row = {
            "variant": variant,
            "method": method,
            "val_loss": group.val_loss.mean(),
            "val_loss_min": group.val_loss.min(),
            "val_loss_max": group.val_loss.max(),
            "perplexity": group.perplexity.mean(),
        }
        if group.backcopy_accuracy.notna().any():
            row["backcopy_accuracy"] = group.backcopy_accuracy.mean()
        rows.append(row)
    table = pd.DataFrame(rows)
    table["order"] = table.variant.map(list(VARIANTS).index) * 10 + table.method.map(list(METHODS).index)
    return table.sort_values("order").drop(columns="order").reset_index(drop=True)


def markdown(table: pd.DataFrame, title: str, note: str) -> str:
    shown = table.copy()
    for column in shown.columns:
        if shown[column].dtype.kind == "f":
            shown[column] = shown[column].map(lambda v: f"{v:.4f}")
    return "\n".join([f"# {title}", "", note, "", *verdict_engine.markdown_table(list(shown.columns), shown.values.tolist()), ""])


COMPRESSION_NOTE = (
    "Validation loss in full precision, with absmax per-tensor 8-bit weights (w8), with those and per-token 8-bit "
    "activations at every linear input (w8a8), and with the 50 % smallest-magnitude weights of every linear set to "
    "zero (prune50); mean and range over seeds, on the same validation batches for every variant."
)
TABLE2_NOTE = "Extra parameters are counted from the trained models (the paper's GPT-2 small: (e) adds 9,228 per layer)."


def shown_block(layers: int) -> int:
    """The block whose output Fig 10 shows: the middle one, as the paper's block 6 of 12."""
    return (layers + 1) // 2


def largest_channel(h) -> int:
    """The channel of the largest |h| on the prompt, ticked in Fig 10 whether or not it is an outlier (the caption gives its size)."""
    return int(np.abs(np.asarray(h)).max(axis=0).argmax())


# ---------------------------------------------------------------------------------------------
# Convergence: one definition, for the claims and the convergence figure.


def convergence(curves: pd.DataFrame) -> tuple[float, dict[str, dict[int, float]], float]:
    """(target loss, tokens each (variant, seed) run needs to reach it, resolution in tokens).

    The target is (a)'s mean validation loss after CONVERGED of its improvement from the first
    logged evaluation to the last (the first trained variant stands in without (a)). A run that
    never reaches it counts as needing one evaluation interval more than it trained: censored,
    so it can only lose the comparison.
    """
    reference = "default" if "default" in set(curves.variant) else curves.variant.iloc[0]
    mean = curves[curves.variant == reference].groupby("tokens").val_loss.mean()
    target = float(mean.iloc[-1] + (1 - CONVERGED) * (mean.iloc[0] - mean.iloc[-1]))
    logged = np.sort(curves.tokens.unique())
    resolution = float(np.diff(logged).min()) if len(logged) > 1 else float(logged[0])
    reached: dict[str, dict[int, float]] = {}
    for (variant, seed), run in curves.groupby(["variant", "seed"]):
        run = run.sort_values("tokens")
        below = run[run.val_loss <= target]
        reached.setdefault(variant, {})[int(seed)] = float(below.tokens.iloc[0]) if len(below) else float(run.tokens.max() + resolution)
    return target, reached, resolution


# ---------------------------------------------------------------------------------------------
# Per-variant measures, per seed.


@dataclass(frozen=True)
class Convergence:
    """The target the training runs are timed against (`convergence`)."""

    target: float  # the validation loss a run must reach
    resolution: float  # tokens between logged evaluations


class Measures(dict):
    """What `measures` returns: variant -> its measures, for the trained variants only (in the order of
    VARIANTS), and `convergence`, the target each variant's `tokens` count up to."""

    def __init__(self, variants: dict[str, dict], convergence: Convergence):
        super().__init__(variants)
        self.convergence = convergence


def measures(analysis_dir: Path) -> Measures:
    """Per variant: per-seed outlier ratio and massiveness, the sink measures at its sink layer,
    final loss, compression damage; and the convergence of every run.

    The sink layer is the block whose first-key weight differs most between the positions that
    should do nothing and those that copy (testbed), or that puts most weight on the first key
    (text), over the mean of the seeds; what a head parks there is its weight on the first key and
    on k′, times S_c for (e), so each variant is read where its own sink is. There, per seed: `sink` is the weight on the first key at
    the positions that should do nothing, `extra` on k′, `scale` S_c, `effective` the first-key
    weight times S_c (what the sink still contributes) and `value` the first token's value norm
    over the median token's.
    """
    analysis_dir = Path(analysis_dir)
    layerwise = read_table(analysis_dir, "layerwise", ("variant", "seed", "layer", "top1", "median", "kurtosis"))
    heads = read_table(analysis_dir, "heads", ("variant", "seed", "layer", "head", "first_key"))
    sink = read_table(analysis_dir, "sink", ("variant", "seed", "layer", "positions", "first_key", "extra_key", "scale", "first_value"))
    runs = read_table(analysis_dir, "runs", ("variant", "seed", "val_loss"))
    compression = read_table(analysis_dir, "compression", ("variant", "seed", "method", "val_loss"))
    curves = read_table(analysis_dir, "curves", ("variant", "seed", "tokens", "val_loss"))
    quiet = "non_trigger" if "non_trigger" in set(sink.positions) else "all"
    target, reached, resolution = convergence(curves)
    out = Measures({}, Convergence(target, resolution))
    for variant in [v for v in VARIANTS if v in set(runs.variant)]:
        rows = layerwise[layerwise.variant == variant].assign(ratio=lambda t: t.top1 / t["median"])
        rows["massive"] = is_massive(rows.top1, rows["median"])
        peaks = rows.loc[rows.groupby("seed").ratio.idxmax()].set_index("seed")
        # where the head parks what it does not want: the first key and k′, times S_c for (e)
        parked = sink[sink.variant == variant].assign(parked=lambda t: (t.first_key + t.extra_key.fillna(0)) * t.scale.fillna(1))
        mean_parked = parked.groupby(["layer", "positions"]).parked.mean()
        at_quiet = mean_parked.xs(quiet, level="positions")
        contrast = at_quiet - mean_parked.xs("trigger", level="positions") if quiet == "non_trigger" else at_quiet
        layer = int(contrast.idxmax())
        there = sink[(sink.variant == variant) & (sink.layer == layer) & (sink.positions == quiet)].set_index("seed").sort_index()
        scale = there.scale.fillna(1.0)  # S_c of (e), the gates' mean; 1 where nothing scales the output
        full = compression[(compression.variant == variant) & (compression.method == "full")].set_index("seed").val_loss
        damage = {
            method: (compression[(compression.variant == variant) & (compression.method == method)].set_index("seed").val_loss - full)
            for method in METHODS[1:]
        }
        out[variant] = {
            "ratio": peaks.ratio,
            "top1": peaks.top1,
            "massive": rows.groupby("seed").massive.any(),  # some layer massive, per seed
            "layer": layer,
            "sink": there.first_key,
            "extra": there.extra_key,
            "scale": there.scale,
            "effective": there.first_key * scale,
            "value": there.first_value,
            "loss": runs[runs.variant == variant].set_index("seed").val_loss,
            "damage": damage,
            "tokens": pd.Series(reached[variant]),
            # the field's metrics (field_metrics): Sink_1^ε over (layer, head) pairs, kurtosis over the block outputs
            **{
                field_metrics.sink_label(epsilon): alpha.groupby("seed").agg(lambda a, e=epsilon: field_metrics.sink_rate(a, e))
                for alpha in [heads[heads.variant == variant].set_index("seed").first_key]
                for epsilon in field_metrics.SINK_EPSILONS
            },
            "kurtosis": rows[rows.layer > 0].groupby("seed").kurtosis.mean(),
            "kurtosis_max": rows[rows.layer > 0].groupby("seed").kurtosis.max(),
        }
    return out


def _span(values: pd.Series, digits: int = 2) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    mean = f"{values.mean():,.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ({values.min():,.{digits}f}–{values.max():,.{digits}f})"


# ---------------------------------------------------------------------------------------------
# The claims, each judged on one task's measures.


def judge_massive(m: Measures) -> Finding:
    keep, lose = [v for v in KEEP if v in m], [v for v in LOSE if v in m]
    if not keep or not lose:
        return Finding(f"needs one of {', '.join(KEEP)} and one of {', '.join(LOSE)}", NOT_MEASURED)
    # (a)–(c) keep them only when every seed has them; (d)/(e) keep them when any seed does
    massive = {v: bool(m[v]["massive"].all()) for v in keep} | {v: bool(m[v]["massive"].any()) for v in lose}
    text = "; ".join(
        f"{_letter(v)} top-1 {_span(m[v]['top1'], 1)}, {_span(m[v]['ratio'], 0)}× the median" + (" (massive)" if massive[v] else "")
        for v in keep + lose
    )
    seeds = min(len(m[v]["massive"]) for v in keep + lose)
    if any(massive[v] for v in lose):
        verdict = DOES_NOT_HOLD
    elif not any(massive[v] for v in keep):
        verdict = NOT_SHOWN
    else:
        verdict = HOLDS if all(massive[v] for v in keep) and seeds > 1 else PARTLY
    return Finding(text + (f"; {seeds} seed, so at most partly" if seeds == 1 else ""), verdict)


def _untrained(m: Measures, *variants: str) -> Finding | None:
    """ "Not measured" when a variant the claim compares was not trained."""
    for needed in variants:
        if needed not in m:
            return Finding(f"needs {_letter(needed)} {needed}", NOT_MEASURED)
    return None


def _sink_missing(m: Measures, variant: str) -> Finding | None:
    """Why a sink claim about `variant` cannot be judged: the variant or (a) was not trained, or (a) has no sink to replace."""
    untrained = _untrained(m, variant, "default")
    if untrained:
        return untrained
    sink = m["default"]["sink"].mean()
    if sink < SINK:
        return Finding(
            f"(a) puts only {sink:.2f} on the first key at its sink layer {m['default']['layer']}: no sink to replace", NOT_SHOWN
        )
    return None


def judge_attention_bias(m: Measures) -> Finding:
    missing = _sink_missing(m, "attention_bias")
    if missing:
        return missing
    d = m["attention_bias"]
    comparison = verdict_engine.compare_over_seeds(d["extra"], d["sink"], lower_is_better=False, margin=SINK_MARGIN, digits=2)
    return Finding(
        f"at its sink layer {d['layer']}, (d) puts {_span(d['extra'])} on k′ and {_span(d['sink'])} on the first key where "
        f"the head should do nothing ((a): {_span(m['default']['sink'])} on the first key); {comparison.text}",
        comparison.verdict,
    )


def judge_context_scale(m: Measures) -> Finding:
    missing = _sink_missing(m, "context_scale")
    if missing:
        return missing
    e, a = m["context_scale"], m["default"]
    comparison = verdict_engine.compare_over_seeds(e["effective"], a["sink"], lower_is_better=True, margin=SINK_MARGIN, digits=2)
    return Finding(
        f"at its sink layer {e['layer']}, S_c is {_span(e['scale'], 3)} where the head should do nothing; its softmax puts "
        f"{_span(e['sink'])} on the first key, which after S_c contributes {_span(e['effective'], 3)} against "
        f"{_span(a['sink'])} for (a); {comparison.text}",
        comparison.verdict,
    )


def _fewer_tokens(m: Measures, variant: str) -> verdict_engine.Comparison:
    """Does `variant` reach the convergence target in fewer tokens than (a), beyond the seeds' spread?"""
    a = m["default"]["tokens"]
    margin = RELATIVE_MARGIN * a.mean()
    return verdict_engine.compare_over_seeds(
        m[variant]["tokens"], a, lower_is_better=True, margin=margin, floor=m.convergence.resolution, unit=" tokens", digits=3
    )


def judge_convergence(m: Measures) -> Finding:
    untrained = _untrained(m, "default", "context_scale")
    if untrained:
        return untrained
    a, e, c = m["default"], m["context_scale"], m.convergence
    comparison = _fewer_tokens(m, "context_scale")
    return Finding(
        f"tokens until the validation loss is {c.target:.4f} ({CONVERGED:.0%} of (a)'s improvement): (e) "
        f"{_span(e['tokens'], 0)}, (a) {_span(a['tokens'], 0)} (logged every {c.resolution:,.0f}); final loss (e) "
        f"{_span(e['loss'], 4)}, (a) {_span(a['loss'], 4)}; {comparison.text}",
        comparison.verdict,
    )


def judge_compression(m: Measures, variant: str = "context_scale") -> Finding:
    untrained = _untrained(m, "default", variant)
    if untrained:
        return untrained
    a, e, letter = m["default"], m[variant], _letter(variant)
    parts, outcomes = [], []
    for method in METHODS[1:]:
        margin = RELATIVE_MARGIN * abs(a["damage"][method].mean())
        comparison = verdict_engine.compare_over_seeds(
            e["damage"][method], a["damage"][method], lower_is_better=True, margin=margin, floor=LOSS_FLOOR, unit=" nats", digits=2
        )
        outcomes.append(comparison.verdict)
        parts.append(f"{method}: {letter} {_span(e['damage'][method], 4)}, (a) {_span(a['damage'][method], 4)}, {comparison.verdict}")
    favourable = [o for o in outcomes if o in (HOLDS, PARTLY)]
    if NOT_MEASURED in outcomes:
        verdict = NOT_MEASURED
    elif set(outcomes) == {NOT_SHOWN}:
        verdict = NOT_SHOWN
    elif not favourable:
        verdict = DOES_NOT_HOLD
    elif outcomes.count(HOLDS) == len(outcomes):
        verdict = HOLDS
    else:
        verdict = PARTLY
    return Finding("damage (validation loss compressed minus full): " + "; ".join(parts), verdict)


def judge_sigmoid(m: Measures) -> Finding:
    missing = _sink_missing(m, "sigmoid")
    if missing:
        return missing
    f, a = m["sigmoid"], m["default"]
    comparison = verdict_engine.compare_over_seeds(f["sink"], a["sink"], lower_is_better=True, margin=SINK_MARGIN, digits=2)
    return Finding(
        f"weight on the first key where the head should do nothing: (f) {_span(f['sink'])} at block {f['layer']}, "
        f"(a) {_span(a['sink'])}; {comparison.text}",
        comparison.verdict,
    )


_SEEDS = "a difference counts only beyond the larger range over seeds of the two (one seed: the stated margin, and at most partly)"
GPT2_CLAIMS = [
    Claim(
        "massive",
        "(a)–(c) keep massive activations, (d) and (e) lose them",
        f"massive: the mean top-1 |h| of some layer is > {SUN_FLOOR:g} and > {SUN_RATIO:g}× its median (Sun et al.); holds: (a)–(c) "
        "massive in every seed "
        "and (d), (e) in none (with more than one seed); partly: some of (a)–(c), or one seed; does not hold: (d) or (e) massive in "
        "any seed; not shown at this scale: none of (a)–(c) massive",
        "(a)–(c) ≈ 1–1.5k peaks, (d)/(e) none (Fig 10)",
        judge_massive,
    ),
    Claim(
        "attention_bias",
        "(d) moves the attention sink onto k′",
        f"at (d)'s sink layer, where the head should do nothing, more weight on k′ than on the first key; {_SEEDS} "
        f"(margin {SINK_MARGIN:g}); not shown at this scale when (a) has no sink (< {SINK:g} on the first key)",
        "",
        judge_attention_bias,
    ),
    Claim(
        "context_scale",
        "(e) makes the attention sink unnecessary",
        f"(e)'s first-key weight × S_c below (a)'s first-key weight; {_SEEDS} (margin {SINK_MARGIN:g}); not shown at this scale "
        f"when (a) has no sink",
        "",
        judge_context_scale,
    ),
    Claim(
        "convergence",
        "(e) converges faster than (a)",
        f"fewer tokens to reach {CONVERGED:.0%} of (a)'s improvement in validation loss; {_SEEDS} (margin {RELATIVE_MARGIN:.0%} of "
        "(a)'s tokens; never less than one evaluation interval)",
        "unconfirmed (the paper's figure could not be read)",
        judge_convergence,
    ),
    Claim(
        "compression",
        "(e) compresses better than (a)",
        f"smaller damage for w8, w8a8 and prune50 each; {_SEEDS} (margin {RELATIVE_MARGIN:.0%} of (a)'s damage), and never below "
        f"{LOSS_FLOOR:g} nats; holds: all three; partly: "
        "some; does not hold: none and some worse; not shown at this scale: all three within the noise",
        "w8 PPL 93.44 → 29.22, 50 % sparse 7235 → 39 (third party; unconfirmed)",
        judge_compression,
    ),
    Claim(
        "sigmoid",
        "Sigmoid attention (f) needs no sink",
        f"(f)'s first-key weight below (a)'s where the head should do nothing; {_SEEDS} (margin {SINK_MARGIN:g}); not shown at this "
        "scale when (a) has no sink",
        "",
        judge_sigmoid,
    ),
]


# ---------------------------------------------------------------------------------------------
# The sink-free mechanisms of the literature (VARIANTS with `zoo`), each against (a).


def judge_zoo_sink(m: Measures, variant: str) -> Finding:
    missing = _sink_missing(m, variant)
    if missing:
        return missing
    v, a = m[variant], m["default"]
    comparison = verdict_engine.compare_over_seeds(v["effective"], a["sink"], lower_is_better=True, margin=SINK_MARGIN, digits=2)
    parked = f", {_span(v['extra'])} on its sink" if v["extra"].notna().any() else ""
    scaled = f", scaled by {_span(v['scale'], 3)}" if v["scale"].notna().any() else ""
    return Finding(
        f"where the head should do nothing, at its sink layer {v['layer']}: {_letter(variant)} puts {_span(v['sink'])} on the first "
        f"key{parked}{scaled}, so the first key contributes {_span(v['effective'], 3)}; (a) {_span(a['sink'])}; {comparison.text}",
        comparison.verdict,
    )


def judge_zoo_massive(m: Measures, variant: str) -> Finding:
    untrained = _untrained(m, "default", variant)
    if untrained:
        return untrained
    v, a = m[variant], m["default"]
    text = "; ".join(
        f"{_letter(k)} top-1 {_span(m[k]['top1'], 1)}, {_span(m[k]['ratio'], 0)}× the median, massive in "
        f"{int(m[k]['massive'].sum())} of {len(m[k]['massive'])} seeds"
        for k in ("default", variant)
    )
    seeds = min(len(v["massive"]), len(a["massive"]))
    if v["massive"].any():
        verdict = DOES_NOT_HOLD
    elif not a["massive"].any():
        verdict = NOT_SHOWN
    else:
        verdict = HOLDS if a["massive"].all() and seeds > 1 else PARTLY
    return Finding(text, verdict)


def judge_zoo_convergence(m: Measures, variant: str) -> Finding:
    """No slower: holds unless slower than (a) beyond the seed spread; one seed: at most partly."""
    untrained = _untrained(m, "default", variant)
    if untrained:
        return untrained
    a, v, c = m["default"], m[variant], m.convergence
    comparison = _fewer_tokens(m, variant)
    single = min(len(v["tokens"]), len(a["tokens"])) < 2
    verdict = {HOLDS: HOLDS, PARTLY: PARTLY, NOT_SHOWN: PARTLY if single else HOLDS}.get(comparison.verdict, comparison.verdict)
    return Finding(
        f"tokens until the validation loss is {c.target:.4f}: {_letter(variant)} {_span(v['tokens'], 0)}, (a) {_span(a['tokens'], 0)}; "
        f"final loss {_letter(variant)} {_span(v['loss'], 4)}, (a) {_span(a['loss'], 4)}; {comparison.text}",
        verdict,
    )


def zoo_claims(variant: str) -> list[Claim]:
    attention = VARIANTS[variant]
    name = f"{attention.letter} {variant}"
    return [
        Claim(
            f"{variant}.sink",
            f"{name} removes the attention sink where the head should do nothing",
            f"its first-key weight (times the factor on its output, where it has one) below (a)'s, at the positions that should do "
            f"nothing; {_SEEDS} (margin {SINK_MARGIN:g}); not shown at this scale when (a) has no sink (< {SINK:g})",
            _softpick_anchor(variant, "sink_rate"),
            lambda m: judge_zoo_sink(m, variant),
        ),
        Claim(
            f"{variant}.massive",
            f"{name} has no massive activations",
            f"massive as Sun et al. (> {SUN_FLOOR:g} and > {SUN_RATIO:g}× the median of the layer); holds: (a) massive in every seed "
            "and this variant in "
            "none (more than one seed); partly: (a) in some seeds, or one seed; does not hold: this variant massive in any seed; not "
            "shown at this scale: (a) has none",
            _softpick_anchor(variant, "max_abs"),
            lambda m: judge_zoo_massive(m, variant),
        ),
        Claim(
            f"{variant}.convergence",
            f"{name} converges no slower than (a)",
            f"tokens to reach {CONVERGED:.0%} of (a)'s improvement in validation loss; does not hold: more than (a) beyond the noise; "
            f"{_SEEDS} (margin {RELATIVE_MARGIN:.0%} of (a)'s tokens; never less than one evaluation interval)",
            "",
            lambda m: judge_zoo_convergence(m, variant),
        ),
        Claim(
            f"{variant}.compression",
            f"{name} compresses better than (a)",
            f"smaller damage for w8, w8a8 and prune50 each, as for (e); {_SEEDS} (margin {RELATIVE_MARGIN:.0%} of (a)'s damage), and "
            f"never below {LOSS_FLOOR:g} nats",
            "",
            lambda m: judge_compression(m, variant),
        ),
    ]


def _softpick_anchor(variant: str, metric: str) -> str:
    """The Softpick paper's value of `metric` for `variant` beside softmax's, for the claims' paper column."""
    anchor = VARIANTS[variant].softpick_table3
    if not anchor:
        return ""
    shown = lambda table: f"{table[metric]:.1%}" if metric == "sink_rate" else f"{table[metric]:,g}"  # noqa: E731
    label = {"sink_rate": "Sink_1^0.3", "max_abs": "max |h|"}[metric]
    return f"{label} {shown(anchor)} against softmax's {shown(VARIANTS['default'].softpick_table3)} (Softpick paper, 340M, 10k steps)"


# ---------------------------------------------------------------------------------------------
# The field's metrics for every variant, ranked, beside the Softpick paper's 340M models.

RANKED = {  # column: (what, digits); lower is better for every one
    "sink_rate_0.3": ("Sink_1^0.3", 2),
    "kurtosis": ("kurtosis (mean over blocks)", 1),
    "top1": ("max |h|", 1),
    "loss": ("final val loss", 4),
    "w8a8": ("W8A8 damage", 4),
}


def ranking(m: Measures) -> pd.DataFrame:
    """One row per trained variant: each metric's mean, min and max over seeds, its rank (1 = lowest
    mean) and the Softpick paper's value where it has the variant."""
    rows = []
    for variant, v in m.items():
        values = {
            "sink_rate_0.3": v["sink_rate_0.3"],
            "sink_rate_0.2": v["sink_rate_0.2"],
            "kurtosis": v["kurtosis"],
            "top1": v["top1"],
            "ratio": v["ratio"],
            "loss": v["loss"],
            "w8a8": v["damage"]["w8a8"],
        }
        row = {"variant": variant, "id": _letter(variant), "seeds": len(v["loss"])}
        for name, series in values.items():
            row |= {f"{name}_mean": float(series.mean()), f"{name}_min": float(series.min()), f"{name}_max": float(series.max())}
        anchor = VARIANTS[variant].softpick_table3 or {}
        row |= {f"softpick_{k}": anchor.get(k, float("nan")) for k in ("sink_rate", "kurtosis", "max_abs")}
        rows.append(row)
    table = pd.DataFrame(rows)
    for name in RANKED:
        table[f"{name}_rank"] = table[f"{name}_mean"].rank(method="min").astype(int)
    return table


def ordering_text(table: pd.DataFrame) -> str:
    """The Sink_1^0.3 ordering of the variants the Softpick paper has, ours beside theirs: of the pairs
    the paper orders, how many are in the same order here, in the opposite one, and tied here."""
    shared = table.dropna(subset=["softpick_sink_rate"]).set_index("id")
    if len(shared) < 2:
        return "Fewer than two of the Softpick paper's variants were trained: no ordering to compare."
    ours, theirs = shared["sink_rate_0.3_mean"], shared.softpick_sink_rate
    order = lambda values: " < ".join(values.sort_values(kind="stable").index)  # noqa: E731
    pairs = [(i, j) for i in shared.index for j in shared.index if theirs[i] < theirs[j]]
    same = sum(ours[i] < ours[j] for i, j in pairs)
    tied = sum(ours[i] == ours[j] for i, j in pairs)
    return (
        f"Sink_1^0.3 from fewest sinks to most: here {order(ours)}; Softpick paper {order(theirs)}. Of the {len(pairs)} pairs the "
        f"paper orders, {same} are in the same order here, {len(pairs) - same - tied} in the opposite one and {tied} tied here."
    )


def ranking_markdown(table: pd.DataFrame) -> list[str]:
    def cell(row, name, digits):
        low, high, mean = row[f"{name}_min"], row[f"{name}_max"], row[f"{name}_mean"]
        spread = "" if row.seeds == 1 else f" ({low:,.{digits}f}–{high:,.{digits}f})"
        return f"{mean:,.{digits}f}{spread}"

    def anchor(value, percent=False):
        return "–" if pd.isna(value) else f"{value:.1%}" if percent else f"{value:,g}"

    rows = [
        [f"{row.id} {row.variant}"]
        + [f"{cell(row, name, digits)} [{row[f'{name}_rank']}]" for name, (_, digits) in RANKED.items()]
        + [cell(row, "sink_rate_0.2", 2), anchor(row.softpick_sink_rate, True), anchor(row.softpick_kurtosis), anchor(row.softpick_max_abs)]
        for _, row in table.sort_values("id").iterrows()
    ]
    header = [label + " [rank]" for label, _ in RANKED.values()]
    return verdict_engine.markdown_table(["variant", *header, "Sink_1^0.2", "Softpick paper: Sink_1^0.3", "kurtosis", "max |h|"], rows)


def judge(m: Measures) -> list[tuple[Claim, Finding]]:
    """The paper's claims, then four for each trained variant of the zoo."""
    claims = GPT2_CLAIMS + [claim for variant in ZOO if variant in m for claim in zoo_claims(variant)]
    return [(claim, claim.judge(m)) for claim in claims]


def claims(tasks: dict[str, Path]) -> str:
    """results/claims/gpt2.md: the paper's Section 5 claims, per task, with the numbers and the verdicts."""
    sections = [
        "# The paper's attention-variant claims, checked",
        "",
        "Outlier ratio: the largest mean top-1 |h| over the median |h| of the same layer (layer 0 = embedding output). The sink "
        "columns are read at each variant's sink layer (the block whose parked attention, on the first key and k′ times S_c, "
        "differs most between the positions that should do nothing, the testbed's non-trigger positions, and those that copy; "
        "in text, the block with the most), at the positions that should do nothing: the weight on the first key, on k′, S_c, what the first key still "
        "contributes (weight × S_c), and the first token's value norm over the median token's. Compression damage: validation "
        "loss of the compressed model minus in full precision. Values are means over seeds with their range. The paper column: "
        "its GPT-2 124M after 50k iterations of OpenWebText, where it states a value.",
        "",
    ]
    for task, analysis_dir in tasks.items():
        m = measures(analysis_dir)
        seeds = read_manifest(analysis_dir)["seeds"]
        rows = []
        for variant, v in m.items():
            rows.append(
                [
                    f"{_letter(variant)} {variant}",
                    _span(v["ratio"], 1),
                    v["layer"],
                    _span(v["sink"]),
                    _span(v["extra"]),
                    _span(v["scale"], 3),
                    _span(v["effective"], 3),
                    _span(v["value"]),
                    _span(v["loss"], 4),
                    " / ".join(_span(v["damage"][method], 4) for method in METHODS[1:]),
                ]
            )
        judged = judge(m)
        sections += [
            f"## Task {task} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}: {', '.join(map(str, seeds))})",
            "",
            *verdict_engine.markdown_table(
                [
                    "variant",
                    "outlier ratio",
                    "sink layer",
                    "on first key",
                    "on k′",
                    "S_c",
                    "first key × S_c",
                    "first value / median",
                    "final val loss",
                    "w8 / w8a8 / prune50 damage",
                ],
                rows,
            ),
            "",
            *verdict_engine.claims_rows(judged),
            "",
            *ranking_section(ranking(m), f"### The field's metrics, ranked ({task})", analysis_dir),
        ]
    return "\n".join(sections)


def ranking_section(table: pd.DataFrame, title: str, analysis_dir: Path) -> list[str]:
    note = RANKING_NOTE.format(window=read_manifest(analysis_dir)["sink_window"])
    return [title, "", note, "", *ranking_markdown(table), "", ordering_text(table), ""]


def ranking_file(table: pd.DataFrame, task: str, analysis_dir: Path) -> str:
    """results/tables/gpt2/{task}/ranking.md."""
    return "\n".join(ranking_section(table, f"# The attention variants on the field's metrics, task {task}", analysis_dir))


RANKING_NOTE = (
    "Mean over seeds (min–max) and [rank], 1 = lowest mean: ranks order the means, and a difference within the seeds' range is "
    "not a finding (the claims above judge each variant against (a) with the seed spread). Sink_1^ε (Gu et al.): the share of (layer, head) pairs whose mean "
    "weight on the first key over the first {window} queries exceeds ε, the mean over validation batches; for (g) and (h) "
    "the first real key, not the pseudo-key. Kurtosis of the block outputs over tokens × channels (3 for a Gaussian), mean "
    "over blocks. Max |h|: the mean top-1 |h| of the peak layer. W8A8 damage: validation loss with 8-bit weights and "
    "activations minus in full precision. The Softpick paper's columns: its Table 3 (340M models, 10k steps, ε = 0.3), for "
    "the variants it trained; its (i) is gated attention as Qiu et al."
)
