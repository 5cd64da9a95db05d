"""What the interventions say: losses beside their controls, the scaling-factor correlations with
bootstrap intervals, the interventions table and the claims (on verdict_engine).

Reads only what rule interventions wrote (readers.InterventionResults) and the statistics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .choices import attention_outlier_layers
from .definitions import ABLATIONS, BASELINE, CONTROLS, INTERVENTIONS, KEYS_REMOVED, LOSS_FLOOR, RANDOM_KEYS_REMOVED
from .readers import InterventionResults
from .verdict_engine import DOES_NOT_HOLD, HOLDS, NOT_MEASURED, PARTLY, Claim, Finding, graded, markdown_table

# Our thresholds: the papers state none for these judgements.
FAR_FACTOR = 10.0  # "far beyond the controls": the rise is ≥ this × the largest control rise (or the noise)
FAR_RISE = 0.5  # … and ≥ this many nats (perplexity × 1.65)
SOME_RISE = 0.05  # nats (perplexity × 1.05): the least rise that counts as hurting at all
RESTORED_HOLDS, RESTORED_PARTLY = 0.9, 0.5  # share of the zeroing's rise that the mean takes back
NEGATIVE_LAYERS = 0.5  # "most" attention-outlier layers
SMALL_VALUE, SMALLER_VALUE = 0.5, 1.0  # outlier keys' value norm / the median key's: holds below 0.5, partly below 1
BOOTSTRAP, INTERVAL = 1000, 0.95


def finite_losses(losses: pd.DataFrame) -> pd.DataFrame:
    """The losses with a non-finite one (logits that overflowed, as a float16 model's can) read as missing
    (NaN): an overflow is an artefact of the precision, not a measurement of what the edit does."""
    return losses.assign(loss=losses.loss.where(np.isfinite(losses.loss)))


def overflow(r: InterventionResults, names) -> str | None:
    """Why the passes `names` measured nothing when a window's loss is not finite: the logits overflowed,
    in the model's dtype (the interventions record says which); None when every loss is finite."""
    losses = r.losses[r.losses.intervention.isin(names)]
    bad = losses[~np.isfinite(losses.loss)]
    if bad.empty:
        return None
    counts = ", ".join(
        f"{name}: {int((~np.isfinite(group.loss)).sum())} of {len(group)} window-passes"
        for name, group in losses.groupby("intervention", sort=False)
        if not np.isfinite(group.loss).all()
    )
    return (
        f"the loss is not finite ({counts}): the logits of {r.record.get('model', 'the model')} overflowed in "
        f"{r.record.get('dtype', 'its dtype (not recorded)')}, an artefact of the precision, not a measurement"
    )


def loss_summary(losses: pd.DataFrame) -> pd.DataFrame:
    """Per intervention: the mean loss over windows (over seeds for the controls, with their range),
    its perplexity and the change from the baseline."""
    per_seed = finite_losses(losses).groupby(["intervention", "seed"]).loss.mean().reset_index()
    table = per_seed.groupby("intervention", sort=False).loss.agg(["mean", "min", "max", "count"])
    table.columns = ["loss", "loss_low", "loss_high", "seeds"]
    table["perplexity"] = np.exp(table.loss)
    table["change"] = table.loss - table.loss.get(BASELINE, np.nan)
    order = [name for name in INTERVENTIONS if name in table.index]
    return table.loc[order].reset_index()


def seed_losses(losses: pd.DataFrame, intervention: str) -> np.ndarray:
    """The mean loss over windows of each seed (one value for an intervention without seeds); infinite
    where a window's loss is not finite."""
    return finite_losses(losses[losses.intervention == intervention]).groupby("seed").loss.mean().to_numpy()


def value_norm_ratios(scaling: pd.DataFrame) -> pd.Series:
    """Per layer, the outlier keys' value norm over the median key's: the median over windows of the per-window
    ratios that are defined (finite: the median key's value norm is not 0); NaN where none is."""
    ratios = scaling.value_norm_ratio.astype(float)
    ratios = ratios.where(np.isfinite(ratios))
    return ratios.groupby(scaling.layer).median()


def correlations(scaling: pd.DataFrame, resamples: int = BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Per layer: the mean over windows of the per-window rank correlation (attention share on the
    outlier keys vs head output norm), its bootstrap interval over windows (none from fewer than
    two windows), the median value-norm ratio and the mean share."""
    rows = []
    rng = np.random.default_rng(seed)
    tail = (1 - INTERVAL) / 2
    ratios = value_norm_ratios(scaling)
    for layer, group in scaling.groupby("layer"):
        values = group.correlation.dropna().to_numpy()  # undefined where every share (or norm) is the same
        means = rng.choice(values, size=(resamples, len(values))).mean(axis=1) if len(values) >= 2 else np.full(1, np.nan)
        rows.append(
            {
                "layer": int(layer),
                "correlation": float(values.mean()) if len(values) else np.nan,
                "low": float(np.quantile(means, tail)),
                "high": float(np.quantile(means, 1 - tail)),
                "windows": len(values),
                "value_norm_ratio": float(ratios[layer]),
                "mean_share": float(group.mean_share.mean()),
            }
        )
    return pd.DataFrame(rows, columns=["layer", "correlation", "low", "high", "windows", "value_norm_ratio", "mean_share"])


def sink_layers(m) -> list[int]:
    """The attention-outlier layers of the model judged (`verdicts.Measured`): those the scaling claims look at."""
    return evidence_sink_layers(m.evidence)


def evidence_sink_layers(evidence) -> list[int]:
    return attention_outlier_layers(evidence.attention_layers, evidence.windows) if evidence.has_attention else []


# ---------------------------------------------------------------------------------------------
# Judges: each reads `verdicts.Measured` (m.interventions may be None: the rule was not run).


def _rise_against_control(r: InterventionResults, edited: str) -> tuple[str, float, str]:
    """(the verdict of `edited` against its control (`_hurts`; not measured when a loss of either is not
    finite, `overflow`), the rise of `edited` over the baseline, a sentence with the numbers)."""
    control = CONTROLS[edited]
    if (overflowed := overflow(r, [edited, control])) is not None:
        return NOT_MEASURED, np.nan, f"not measured: {overflowed}"
    losses = r.losses
    baseline = float(seed_losses(losses, BASELINE).mean())
    rise = float(seed_losses(losses, edited).mean()) - baseline
    controls = seed_losses(losses, control) - baseline
    noise = max(float(np.ptp(controls)), LOSS_FLOOR)
    text = (
        f"loss {baseline:.3f} → {baseline + rise:.3f} nats (perplexity {np.exp(baseline):,.1f} → {np.exp(baseline + rise):,.4g}"
        f"); {control}: {controls.min():+.3f} to {controls.max():+.3f} over {len(controls)} seeds"
    )
    return _hurts(rise, float(controls.max()), noise), rise, text


def _hurts(rise: float, control: float, noise: float) -> str:
    """holds: far beyond the controls; partly: beyond them and by at least SOME_RISE; else does not hold."""
    if rise >= FAR_RISE and rise >= FAR_FACTOR * max(control, noise):
        return HOLDS
    return PARTLY if rise > control + noise and rise >= SOME_RISE else DOES_NOT_HOLD


def _not_run(r: InterventionResults | None) -> Finding | None:
    if r is None:
        return Finding("the interventions were not run", NOT_MEASURED)
    if (overflowed := overflow(r, [BASELINE])) is not None:
        return Finding(f"the unedited model's loss is not finite on these windows, nothing to compare: {overflowed}", NOT_MEASURED)
    return None


ABLATION_TEXT = {
    "once": "zeroed once, at each channel's emergence layer (Sun et al.)",
    "held": "held at zero from each channel's emergence to its disappearance",
}


EFFECT = {
    HOLDS: "breaks the model",
    PARTLY: "hurts",
    DOES_NOT_HOLD: "no more than its controls",
    NOT_MEASURED: "overflowed",
}  # an ablation's verdict, in words


def ablation_where(record: dict, kind: str) -> str:
    """Which channels at which layers an activation ablation edits (1-based), from the record."""
    targets = record["activation"][kind]
    if kind == "once":
        return ", ".join(f"channel {t['channel']} at layer {t['layers'][0] + 1}" for t in targets)
    return ", ".join(f"channel {t['channel']} at layers {t['layers'][0] + 1}–{t['layers'][-1] + 1}" for t in targets)


def activation_ablations(r: InterventionResults) -> dict[str, tuple[str, float, str]]:
    """Per activation ablation (once, held): whether it breaks the model against its controls (`_hurts`;
    not measured where a loss overflowed), its loss rise and a sentence with the numbers."""
    found = {}
    for kind, (zeroed, _, _) in ABLATIONS.items():
        verdict, rise, text = _rise_against_control(r, zeroed)
        found[kind] = (verdict, rise, f"{ABLATION_TEXT[kind]} ({ablation_where(r.record, kind)}): {text}")
    return found


def breaking_ablation(found: dict[str, tuple[str, float, str]]) -> str:
    """The ablation the verdict comes from: the one that hurts most by its verdict, Sun et al.'s on a tie;
    one that was not measured (an overflow) only when neither was."""
    rank = {HOLDS: 2, PARTLY: 1, DOES_NOT_HOLD: 0, NOT_MEASURED: -1}
    return max(ABLATIONS, key=lambda kind: rank[found[kind][0]])  # the first of equals: "once"


def _rise_value(found: dict[str, tuple[str, float, str]], kind: str, r: InterventionResults) -> str:
    verdict, rise, _ = found[kind]
    return f"overflow in {r.record.get('dtype', 'its dtype')} ({kind})" if verdict == NOT_MEASURED else f"{rise:+.3f} nats ({kind})"


def judge_needed(m) -> Finding:
    r = m.interventions
    if (missing := _not_run(r)) is not None:
        return missing
    found = activation_ablations(r)
    both = "; ".join(text for _, _, text in found.values())
    if not r.record["activation"]["found"]:
        return Finding(f"no activation outlier; on each window's largest |h| instead: {both}", DOES_NOT_HOLD, _rise_value(found, "once", r))
    kind = breaking_ablation(found)
    verdict = found[kind][0]
    unmeasured = [k for k in ABLATIONS if found[k][0] == NOT_MEASURED]
    if verdict == NOT_MEASURED:
        by = "; neither ablation was measured"
    elif verdict == DOES_NOT_HOLD and unmeasured:  # what the overflowed ablation does is not known: no finding either way
        verdict, by = NOT_MEASURED, f"; the {kind} ablation does not hurt beyond its controls and the {unmeasured[0]} one overflowed"
        kind = unmeasured[0]
    elif verdict == DOES_NOT_HOLD:
        by = "; neither ablation hurts beyond its controls"
    else:
        by = f"; the verdict is the {kind} ablation's"
    return Finding(both + by, verdict, _rise_value(found, kind, r))


def judge_value(m) -> Finding:
    r = m.interventions
    if (missing := _not_run(r)) is not None:
        return missing
    found = activation_ablations(r)
    kind = breaking_ablation(found)
    verdict, rise, _ = found[kind]
    if not r.record["activation"]["found"] or verdict == DOES_NOT_HOLD:
        changes = ", ".join(f"{found[k][1]:+.3f} nats {k}" for k in ABLATIONS)
        return Finding(
            f"zeroing changed the loss by {changes}, which does not count as hurting: nothing for the mean to restore", NOT_MEASURED
        )
    zeroed, mean, _ = ABLATIONS[kind]
    if (overflowed := overflow(r, [mean])) is not None:
        return Finding(f"set to their mean instead of 0 in the {kind} ablation: {overflowed}", NOT_MEASURED, "overflow")
    baseline = float(seed_losses(r.losses, BASELINE).mean())
    mean_rise = float(seed_losses(r.losses, mean).mean()) - baseline
    restored = 1 - mean_rise / rise  # rise > 0: zeroing hurt
    edited = {(t["channel"], layer) for t in r.record["activation"][kind] for layer in t["layers"]}
    values = [v["value"] for v in r.record["mean_values"] if (v["channel"], v["layer"]) in edited]
    shown = (
        ", ".join(f"{v:,.1f}" for v in values) if len(values) <= 4 else f"{len(values)} values, {min(values):,.1f} to {max(values):,.1f}"
    )
    return Finding(
        f"set to their mean instead of 0 in the {kind} ablation, the one that hurt ({shown}): the loss is {mean_rise:+.4f} nats from "
        f"the baseline, against {rise:+.3f} zeroed: {restored:.1%} restored",
        graded(restored, RESTORED_HOLDS, RESTORED_PARTLY),
        f"{restored:.1%} restored ({kind})",
    )


def judge_sink_needed(m) -> Finding:
    r = m.interventions
    if (missing := _not_run(r)) is not None:
        return missing
    if not r.record.get("sink"):
        return Finding(f"no sink ablation: {r.record['sink_not_measured']}", NOT_MEASURED)
    verdict, rise, text = _rise_against_control(r, KEYS_REMOVED)
    sink = r.record["sink"]
    value = f"overflow in {r.record.get('dtype', 'its dtype')}" if verdict == NOT_MEASURED else f"{rise:+.3f} nats"
    if not sink["found"]:
        return Finding(
            f"no attention-outlier layer; removing each window's most attended key from layer {sink['first_layer'] + 1} on: {text}",
            DOES_NOT_HOLD,
            value,
        )
    return Finding(f"removing the outlier keys from layer {sink['first_layer'] + 1} on: {text}", verdict, value)


def _no_reading(r: InterventionResults | None) -> Finding | None:
    """Not measured when there is no scaling reading, with why; None when there is one."""
    if r is None:
        return Finding("no attention to read: the interventions were not run", NOT_MEASURED)
    if r.scaling.empty:
        return Finding(f"no attention to read: {r.record['sink_not_measured'] or 'no window has keys to read'}", NOT_MEASURED)
    return None


def judge_scaling(m) -> Finding:
    return scaling_finding(m.interventions, sink_layers(m) if m.interventions is not None else [])


def scaling_finding(r: InterventionResults | None, layers: list[int]) -> Finding:
    """The scaling-factor claim from the interventions' reading and the attention-outlier `layers`."""
    if (missing := _no_reading(r)) is not None:
        return missing
    table = correlations(r.scaling).set_index("layer")
    if r.scaling.window.nunique() < 2:
        return Finding(f"fewer than 2 windows ({r.scaling.window.nunique()}): no interval over windows", NOT_MEASURED)
    if not layers:
        mean = table.correlation.mean()
        return Finding(
            "no attention-outlier layer; over all layers, on each window's most attended key, "
            + (f"the mean correlation is {mean:+.2f}" if pd.notna(mean) else "no correlation is defined"),
            DOES_NOT_HOLD,
            "no sink layer",
        )
    at_sinks = table.reindex(layers)
    read = at_sinks[at_sinks.low.notna()]  # an interval over windows: a correlation defined in at least two windows
    unread = len(layers) - len(read)
    unread_text = (
        f"{unread} of {len(layers)} attention-outlier layers have no correlation defined in two windows or more (where it is "
        "undefined, the share on the outlier keys, or the head output norm, is the same for every head and query: a constant has "
        "no rank correlation)"
    )
    if read.empty:
        return Finding(f"not measured: {unread_text}", NOT_MEASURED, "undefined")
    negative = int((read.high < 0).sum())
    positive = int((read.low > 0).sum())
    others = table.drop(index=at_sinks.index, errors="ignore")
    share = negative / len(read)
    verdict = HOLDS if share >= NEGATIVE_LAYERS else PARTLY if negative > positive else DOES_NOT_HOLD
    other_text = f"; in the {len(others)} other layers the median is {others.correlation.median():+.2f}" if len(others) else ""
    return Finding(
        f"{negative} of {len(read)} attention-outlier layers with a correlation have a {INTERVAL:.0%} interval below 0 ({positive} "
        f"above); median correlation there {read.correlation.median():+.2f}{other_text}"
        + (f"; {unread_text}, not judged" if unread else ""),
        verdict,
        f"{negative}/{len(read)} layers negative",
    )


def judge_small_values(m) -> Finding:
    r = m.interventions
    if (missing := _no_reading(r)) is not None:
        return missing
    layers = sink_layers(m)
    if not layers:
        return Finding("no attention-outlier layer", DOES_NOT_HOLD, "no sink layer")
    everywhere = value_norm_ratios(r.scaling).reindex(layers)
    read = set(r.scaling.layer)
    ratios = everywhere.dropna()
    undefined = [layer for layer in layers if layer in read and pd.isna(everywhere[layer])]
    undefined_text = (
        f"in {len(undefined)} of {len(layers)} attention-outlier layers the median key's value norm is 0 in every window: the ratio "
        "has a zero denominator"
    )
    if ratios.empty:
        if undefined:
            return Finding(f"not measured: {undefined_text}", NOT_MEASURED, "undefined")
        return Finding("no value norms were read in the attention-outlier layers", NOT_MEASURED)
    small, smaller = float((ratios < SMALL_VALUE).mean()), float((ratios < SMALLER_VALUE).mean())
    verdict = HOLDS if small >= NEGATIVE_LAYERS else PARTLY if smaller >= NEGATIVE_LAYERS else DOES_NOT_HOLD
    return Finding(
        f"outlier keys' value norm / the median key's, median over windows and heads: {ratios.min():.2f}–{ratios.max():.2f} "
        f"over {len(ratios)} attention-outlier layers (median {ratios.median():.2f}); below {SMALL_VALUE:g} in {small:.0%}, "
        f"below {SMALLER_VALUE:g} in {smaller:.0%}" + (f"; {undefined_text}, not judged" if undefined else ""),
        verdict,
        f"median {ratios.median():.2f}",
    )


SUN = "Sun et al., LLaMA-2-7B"
INTERVENTION_CLAIMS = [
    Claim(
        "needed",
        "The activation outliers are needed: zeroing them breaks the model",
        "two ablations of each outlier channel's entries at the tokens where it is massive at its emergence layer: set to 0 once, at "
        "the output of that layer (Sun et al.), and held at 0 at the output of every layer from there through the one where it is no "
        "longer massive; each "
        f"against as many random channels at the same layers and tokens. An ablation breaks the model when the mean loss rises by ≥ "
        f"{FAR_RISE:g} nats and ≥ {FAR_FACTOR:g}× the largest rise of its control (or their seed spread); it hurts when it rises by ≥ "
        f"{SOME_RISE:g} nats and beyond the controls by more than their seed spread (at least {LOSS_FLOOR:g}). Holds when either "
        "breaks it, partly when either hurts, does not hold otherwise or without outliers; the measured text says which ablation. "
        "A loss that is not finite (logits that overflowed, as a float16 model's can) is no measurement: that ablation is not "
        "measured, and the claim is not measured when the other does not hurt either",
        f"{SUN}: perplexity 5.47 → ∞ (WikiText); random channels unchanged",
        judge_needed,
    ),
    Claim(
        "value",
        "… but not their exact value: their mean restores the model",
        "share of the zeroing's loss rise taken back by setting the same entries to their mean over the windows (layer by layer "
        f"when held), in the ablation the claim above comes from: holds ≥ {RESTORED_HOLDS:.0%}, partly ≥ {RESTORED_PARTLY:.0%}; not "
        "measured when zeroing does not hurt (the claim above does not hold) or the mean's loss is not finite (an overflow)",
        f"{SUN}: perplexity 5.47 at the mean (unchanged)",
        judge_value,
    ),
    Claim(
        "sink_needed",
        "The attention sink is needed: heads park attention there",
        f"from the first attention-outlier layer on, every head's attention on the window's outlier keys removed and renormalised; "
        f"holds: the loss rises by ≥ {FAR_RISE:g} nats and ≥ {FAR_FACTOR:g}× the largest rise of removing as many random keys; "
        f"partly: by ≥ {SOME_RISE:g} nats and beyond the controls' seed spread; does not hold otherwise or without attention "
        "outliers; not measured when the architecture's attention cannot be edited or a loss is not finite (an overflow)",
        "no number (the paper's reading, Section 4)",
        judge_sink_needed,
    ),
    Claim(
        "scaling_factor",
        "The sink acts as a context-aware scaling factor",
        f"per layer, the rank correlation over (head, query) of the attention share on the outlier keys and the head's output norm, "
        f"averaged over windows with a {INTERVAL:.0%} bootstrap interval ({BOOTSTRAP} resamples of the windows); holds: the interval "
        f"is below 0 in ≥ {NEGATIVE_LAYERS:.0%} of the attention-outlier layers; partly: in more of them than it is above 0; "
        "does not hold otherwise or without attention outliers. A layer whose correlation is defined in fewer than two windows (a "
        "constant share or norm has no rank correlation) is not judged, and the claim is not measured when no attention-outlier "
        "layer has one, without attention to read or with one window",
        "no number (the paper's reading, Section 4)",
        judge_scaling,
    ),
    Claim(
        "small_values",
        "… whose keys carry small values",
        f"the outlier keys' mean value norm over the median key's, per layer (median over windows and key-value heads): holds "
        f"below {SMALL_VALUE:g} in ≥ {NEGATIVE_LAYERS:.0%} of the attention-outlier layers, partly below {SMALLER_VALUE:g} there; "
        "does not hold otherwise or without attention outliers; a layer whose median key's value norm is 0 in every window (a zero "
        "denominator) is not judged, and the claim is not measured when no layer has a ratio",
        "no number (Sun et al. and the paper show small values at the sink)",
        judge_small_values,
    ),
]


# ---------------------------------------------------------------------------------------------
# The table across models.


def table(results: dict[str, InterventionResults]) -> pd.DataFrame:
    """results/tables/interventions.csv: one row per model and intervention."""
    rows = []
    for model, r in results.items():
        sink = r.record.get("sink")
        for row in loss_summary(r.losses).itertuples():
            kind = next((k for k, names in ABLATIONS.items() if row.intervention in names), None)
            if kind and row.intervention == ABLATIONS[kind][2]:
                where = f"as many other channels, drawn per seed, at the layers and tokens of: {ablation_where(r.record, kind)}"
            elif kind:
                where = ablation_where(r.record, kind)
            elif row.intervention in (KEYS_REMOVED, RANDOM_KEYS_REMOVED):
                where = f"from layer {sink['first_layer'] + 1}" if sink else ""
            else:
                where = ""
            rows.append(
                {
                    "model": model,
                    "intervention": row.intervention,
                    "where": where,
                    "seeds": int(row.seeds),
                    "loss": row.loss,
                    "loss_low": row.loss_low,
                    "loss_high": row.loss_high,
                    "perplexity": row.perplexity,
                    "change": row.change,
                }
            )
    return pd.DataFrame(rows)


def table_markdown(losses: pd.DataFrame, scaling: dict[str, str]) -> str:
    shown = [
        [
            r.model,
            r.intervention,
            r.where or "–",
            r.seeds,
            f"{r.loss:.3f}" + (f" ({r.loss_low:.3f}–{r.loss_high:.3f})" if r.seeds > 1 else ""),
            f"{r.perplexity:,.4g}",
            f"{r.change:+.3f}",
        ]
        for r in losses.itertuples()
    ]
    return "\n".join(
        [
            "# Interventions: what the outliers do",
            "",
            "Mean next-token loss (nats) over the statistics' windows; controls: the mean over seeds with the range of the seeds' means. "
            "Activation ablations: each outlier channel at the outlier tokens, zeroed once at its emergence layer's output (Sun et al.) "
            "or held at zero from its emergence to its disappearance; sink ablation: the "
            "window's outlier keys removed from every head's softmax from the first attention-outlier layer on.",
            "",
            *markdown_table(["model", "intervention", "where", "seeds", "loss", "perplexity", "change"], shown),
            "",
            "## The scaling-factor reading",
            "",
            *markdown_table(["model", "correlation in the attention-outlier layers"], [[k, v] for k, v in scaling.items()]),
            "",
        ]
    )


def scatter_layers(layers: list[int], sinks: list[int], count: int = 3) -> tuple[list[int], str]:
    """The layers whose (share, output norm) points the scaling figure shows, and why: the first, middle
    and last attention-outlier layer, or of all `layers` read when there is none."""
    pool, what = (sinks, "attention-outlier layers") if sinks else (sorted(layers), "layers (no attention-outlier layer)")
    picked = sorted({pool[round(i * (len(pool) - 1) / max(count - 1, 1))] for i in range(count)}) if pool else []
    return picked, f"the first, middle and last of the {len(pool)} {what}"
