"""What the data says: every data-derived choice of the workflow, computed once, here.

The prompt dump, every figure notebook, the claims, Table 1 and the summary call these
functions; nothing else decides which layer, token, channel, column or head to show. Each
choice comes with the reason, so a caption or a claim can say why, and says explicitly when
the data has no outlier (`Choice.found` is False): the caller must handle it, and a figure
then shows the measured largest ratio instead of an outlier that is not there.

Every threshold is a named constant below, stated in the captions and the claims files. The
paper states none of them except its outlier definitions (definitions.PAPER_RATIO and
ATTENTION_SHARE); the others are ours. Imports no torch: the notebooks and claims read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .definitions import ATTENTION_SHARE, PAPER_RATIO, SUN_FLOOR, SUN_RATIO, WRITE_SHARE, is_massive  # noqa: F401 (read by the captions)

MOST_WINDOWS = 0.5  # a layer "has" something when at least this share of the windows has it
TICK_SHARE = 0.3  # channels whose |x| at the outlier tokens reaches this share of the largest are ticked
WEIGHT_OUTLIER_FACTOR = 5.0  # × the median max/mean ratio over all matrices: a down-projection column that stands out
SLICE_EDGES = (0, 1, 2)  # and the last column: the paper's W_down panels show [0, 1, 2, …, c-1, c, c+1, …, N-1]
CARRYING_DIMS = 2  # head dims starred in Fig 8
BUILT_SHARE = 0.5  # an outlier channel is built once its mean |h| reaches this share of its peak
TAKE_DOWN_STEP = 0.1  # a layer takes an outlier channel down when its mean |h| falls by at least this share there


def in_most_windows(count, windows: int):
    """Whether `count` of `windows` windows are "most windows": at least MOST_WINDOWS of them. The one
    rule behind every "in most windows"; element-wise on numpy arrays and pandas Series."""
    return count >= MOST_WINDOWS * windows


def magnitude_text(value: float) -> str:
    """A magnitude for the text: whole, with thousands separators, from 100 on; three significant digits below."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


@dataclass(frozen=True)
class Choice:
    """A data-derived choice: the value a figure shows, why, and whether the data has what is sought.

    With `found` False the value is still something to show (the layer with the largest ratio,
    say) and `why` says that nothing was found; claims read `found`, never the value alone.
    """

    value: Any
    why: str
    found: bool = True


def _override(value: int | None, what: str) -> Choice | None:
    if value is None or value < 0:
        return None
    return Choice(value, f"{what} {value + 1} was set in the config (figures.overrides)")


# ---------------------------------------------------------------------------------------------
# Layer-wise curves and the layers they point to.


def layerwise(sites: pd.DataFrame, topk: pd.DataFrame, site: str) -> pd.DataFrame:
    """Per layer: top-1/2/3, median and mean of |x| at `site`, each averaged over windows, and
    `ratio`, the mean top-1 over the mean median (Sun et al.'s measure; Figs 3a, 4a)."""
    top = topk[(topk.site == site) & (topk["rank"] <= 3)].pivot_table(index=["window", "layer"], columns="rank", values="value")
    top = top.groupby("layer").mean().rename(columns=lambda rank: f"top{rank}")
    at_site = sites[sites.site == site].groupby("layer")
    curves = top.join(at_site.median_abs.mean().rename("median")).join(at_site.mean_abs.mean().rename("mean"))
    curves["ratio"] = curves.top1 / curves["median"]
    return curves


def massive_layers(curves: pd.DataFrame) -> list[int]:
    """Every layer whose mean top-1 |x| is massive against its mean median."""
    return [int(layer) for layer in curves.index[is_massive(curves.top1, curves["median"])]]


def peak_layer(curves: pd.DataFrame) -> Choice:
    """The layer with the largest top-1/median ratio among the massive layers (found), or among all
    layers when none is massive (not found)."""
    massive = massive_layers(curves)
    layer = int(curves.ratio.loc[massive].idxmax()) if massive else int(curves.ratio.idxmax())
    row = curves.loc[layer]
    top1 = magnitude_text(row.top1)
    return Choice(
        layer,
        f"the largest mean top-1 |x| over the median{' of a massive layer' if massive else ''}, {row.ratio:,.0f}× "
        f"({top1} against {row['median']:.3g}), is at layer {layer + 1}; "
        + (
            f"{len(massive)} layer(s) massive"
            if massive
            else f"no layer is massive (Sun et al.: > {SUN_FLOOR:g} and > {SUN_RATIO:g}× the median)"
        ),
        bool(massive),
    )


def _first_layer_in_most_windows(rows: pd.DataFrame, windows: int, what: str) -> Choice:
    hits = rows.groupby("layer").window.nunique()
    layers = hits[in_most_windows(hits, windows)].index
    if len(layers) == 0:
        return Choice(None, f"no layer has {what} in {MOST_WINDOWS:.0%} of the {windows} windows", False)
    layer = int(layers.min())
    return Choice(layer, f"layer {layer + 1} is the first where {hits[layer]} of {windows} windows have {what}")


def outlier_token_rows(outliers: pd.DataFrame, site: str = "layer_output") -> pd.DataFrame:
    """The activation-outlier tokens at `site` by the paper's rule (definitions.is_paper_outlier)."""
    return outliers[(outliers.site == site) & outliers.paper_rule]


def emergence_layer(outliers: pd.DataFrame, windows: int, curves: pd.DataFrame, override: int | None = None) -> Choice:
    """The first layer where most windows have an activation-outlier token (paper's rule) in the
    layer outputs. Without one: not found, and the layer to show is the peak-ratio layer."""
    chosen = _override(override, "layer") or _first_layer_in_most_windows(outlier_token_rows(outliers), windows, "an outlier token")
    if chosen.found:
        return chosen
    peak = peak_layer(curves)
    return Choice(peak.value, f"{chosen.why}; shown: layer {peak.value + 1}, where {peak.why}", False)


def last_outlier_layer(outliers: pd.DataFrame, windows: int) -> int | None:
    """The last layer where most windows have an activation-outlier token in the layer outputs."""
    hits = outlier_token_rows(outliers).groupby("layer").window.nunique()
    layers = hits[in_most_windows(hits, windows)].index
    return int(layers.max()) if len(layers) else None


def disappearance_layer(curves: pd.DataFrame, after: int, override: int | None = None) -> Choice:
    """The layer after `after` whose mean top-1 |h| falls the most from the layer before.
    If it never falls: not found, and the last layer is the one to show."""
    chosen = _override(override, "layer")
    if chosen:
        return chosen
    drops = (curves.top1.shift(1) - curves.top1).loc[after + 1 :]
    last = int(curves.index.max())
    if drops.empty or drops.max() <= 0:
        return Choice(last, f"the mean top-1 |h| never falls after layer {after + 1}; shown: the last layer, {last + 1}", False)
    layer = int(drops.idxmax())
    return Choice(
        layer, f"layer {layer + 1} lowers the mean top-1 the most, from {curves.top1[layer - 1]:,.0f} to {curves.top1[layer]:,.0f}"
    )


# ---------------------------------------------------------------------------------------------
# Each outlier channel through the layers: where it appears, how it is built, who writes it.


@dataclass(frozen=True)
class ChannelLife:
    """One massive residual channel through the layers (0-based layers; magnitudes are means over the
    windows of the channel's largest |h| in each window, `writes` of what the layer adds onto it after
    its attention, the MLP's write as the stream receives it, signed so that positive adds to the outlier).

    Both are per-window extremes over tokens, so a write is the largest in the window, at the outlier's
    token when the MLP writes the outlier there (a massive write); in a block with a scaled residual or a
    post-norm the difference also holds the residual's own change. Writes exist only in layers with an
    attn_residual site (none in a parallel block: `writer` is then None)."""

    channel: int
    emergence: int  # the first layer whose output has it massive (Sun et al.) in most windows
    last: int  # the last such layer
    disappearance: int | None  # the first layer after `last`, where most windows no longer have it; None: massive to the end
    peak: int  # the layer of its largest mean |h| from its emergence to its last massive layer
    built: int  # the first layer from the emergence on where its mean |h| reaches BUILT_SHARE of the peak
    magnitude: dict[int, float]  # layer -> mean |h|
    writes: dict[int, float]  # layer -> the MLP's mean write onto it (layer_output − attn_residual); empty without attn_residual
    windows: tuple[int, int] = (1, 1)  # (the most windows it is massive in at one layer, of how many)

    @property
    def in_most(self) -> bool:
        """Massive in most windows of some layer; otherwise only its corpus maximum is massive, and its
        layers are those where it is massive in any window."""
        return bool(in_most_windows(*self.windows))

    @property
    def gradual(self) -> bool:
        return self.built > self.emergence

    @property
    def writer(self) -> int | None:
        """The layer whose MLP writes the most onto the channel up to its peak; None without MLP writes or
        when no MLP adds to it (attention built it)."""
        before = {layer: w for layer, w in self.writes.items() if layer <= self.peak and w > 0}
        return max(before, key=before.get) if before else None

    @property
    def held_layers(self) -> list[int]:
        """The layers whose outputs the held ablation edits: from its emergence through the layer where it is
        no longer massive (what that layer writes, cancelling or not, is held too), or to the last layer."""
        return list(range(self.emergence, self.end + 1))

    @property
    def end(self) -> int:
        """The last layer of its life: where it is no longer massive, or the last layer."""
        return self.disappearance if self.disappearance is not None else max(self.magnitude)

    def take_down(self, step: float = TAKE_DOWN_STEP) -> TakeDown | None:
        """Where the channel is taken down: the run of consecutive layers, each lowering its mean |h| by at
        least `step` from the layer before, that starts after its peak and by the end of its life
        (`end`) and goes on as long as the next layer lowers it so, with the largest fall from the value
        arriving at the run; None when no layer after the peak lowers it by `step`."""
        m = self.magnitude
        last = max(m)
        lowers = {layer: m[layer] <= (1 - step) * m[layer - 1] for layer in range(self.peak + 1, last + 1)}
        runs = []
        for start in range(self.peak + 1, self.end + 1):
            if lowers[start] and not lowers.get(start - 1, False):
                stop = start
                while stop + 1 <= last and lowers[stop + 1]:
                    stop += 1
                runs.append(list(range(start, stop + 1)))
        if not runs:
            return None
        layers = max(runs, key=lambda run: 1 - m[run[-1]] / m[run[0] - 1])
        written = [self.writes.get(layer) for layer in layers]
        return TakeDown(
            self.channel,
            tuple(layers),
            m[layers[0] - 1],
            tuple(m[layer] for layer in layers),
            tuple(written) if all(w is not None for w in written) else None,
        )

    def describe(self) -> str:
        """One clause for captions, claims and the atlas, 1-based."""
        m = self.magnitude
        if self.gradual:
            text = (
                f"channel {self.channel} is built over layers {self.emergence + 1}–{self.built + 1} "
                f"(|h| {m[self.emergence]:,.0f} → {m[self.built]:,.0f}; peak {m[self.peak]:,.0f} at layer {self.peak + 1})"
            )
        else:
            text = (
                f"channel {self.channel} appears at layer {self.emergence + 1} "
                f"(|h| {m[self.emergence]:,.0f}; peak {m[self.peak]:,.0f} at layer {self.peak + 1})"
            )
        if self.writer is not None:
            text += f", written most by the MLP of layer {self.writer + 1} ({self.writes[self.writer]:+,.0f})"
        text += (
            f", no longer massive from layer {self.disappearance + 1}" if self.disappearance is not None else ", massive to the last layer"
        )
        return text if self.in_most else text + f" (massive in at most {self.windows[0]} of {self.windows[1]} windows at a layer)"


@dataclass(frozen=True)
class TakeDown:
    """Where an outlier channel is taken down (`ChannelLife.take_down`): 0-based consecutive layers, the
    mean |h| arriving at the first and left after each, and the MLP's write onto the channel in each
    (signed: negative writes against it; None without MLP writes captured)."""

    channel: int
    layers: tuple[int, ...]
    arriving: float
    left: tuple[float, ...]
    writes: tuple[float, ...] | None

    @property
    def fall(self) -> float:
        """The share of the arriving |h| taken down over the layers."""
        return 1 - self.left[-1] / self.arriving

    @property
    def steps(self) -> list[float]:
        """The share each layer takes down of what arrives at it."""
        before = (self.arriving,) + self.left[:-1]
        return [1 - after / arriving for arriving, after in zip(before, self.left)]

    @property
    def against(self) -> float | None:
        """The share of the fall that the MLPs' writes against the channel (of the opposite sign) account
        for; None without MLP writes."""
        if self.writes is None:
            return None
        return sum(max(0.0, -w) for w in self.writes) / (self.arriving - self.left[-1])

    def layers_text(self) -> str:
        first, last = self.layers[0] + 1, self.layers[-1] + 1
        return f"layer {first}" if first == last else f"layers {first}–{last}"


def _by_layer(table: pd.DataFrame, site: str, windows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """[windows, layers, channels] of the signed channel extremes at `site` (NaN where a layer lacks the
    site) and the layers present; None when the site was not captured."""
    rows = table[table.site == site]
    if rows.empty:
        return None
    layers = int(table.layer.max()) + 1
    values = np.full((windows, layers, len(rows.value.iloc[0])), np.nan)
    values[rows.window.to_numpy(), rows.layer.to_numpy()] = np.stack(rows.value.to_numpy())
    return values, np.sort(rows.layer.unique())


def channel_lives(evidence) -> list[ChannelLife]:
    """Every massive residual channel (Sun et al.) at the layer outputs, the largest peak first: each
    channel massive against its window's median |h| in most windows of some layer, and each whose
    corpus maximum is massive (`residual_outlier_channels`), followed then through the layers where it
    is massive in any window. Read from the per-window channel extremes of the statistics, so a
    channel's growth, its writer and its end are its own, whatever the other channels do."""
    windows = evidence.windows
    residual = _by_layer(evidence.channel_extremes, "layer_output", windows)
    if residual is None:
        return []
    values, _ = residual
    medians = evidence.sites[evidence.sites.site == "layer_output"].pivot_table(index="window", columns="layer", values="median_abs")
    medians = medians.reindex(index=range(windows), columns=range(values.shape[1])).to_numpy()
    magnitude = np.abs(values)
    massive_windows = is_massive(magnitude, medians[:, :, None]).sum(axis=0)  # [layers, channels]
    most = in_most_windows(massive_windows, windows)
    by_corpus = {c for cs in residual_outlier_channels(evidence.channel_max, evidence.sites, "layer_output").values() for c in cs}
    mean_magnitude = np.nanmean(magnitude, axis=0)  # [layers, channels]
    mean_signed = np.nanmean(values, axis=0)
    mlp = _by_layer(evidence.channel_extremes, "mlp_write", windows)
    lives = []
    for channel in sorted(set(np.nonzero(most.any(axis=0))[0].tolist()) | by_corpus):
        layers = np.nonzero(most[:, channel] if most[:, channel].any() else massive_windows[:, channel] > 0)[0]
        if not len(layers):  # massive by its corpus maximum against the mean median, in no window against its own
            continue
        first, last = int(layers.min()), int(layers.max())
        curve = mean_magnitude[:, channel]
        peak = first + int(np.nanargmax(curve[first : last + 1]))  # while it is massive: not what is left after it
        built = first + int(np.argmax(curve[first : peak + 1] >= BUILT_SHARE * curve[peak]))
        sign = np.sign(mean_signed[peak, channel]) or 1.0
        writes = {}
        if mlp is not None:
            written, present = mlp
            writes = {int(layer): float(sign * np.nanmean(written[:, layer, channel])) for layer in present}
        lives.append(
            ChannelLife(
                channel=int(channel),
                emergence=first,
                last=last,
                disappearance=last + 1 if last + 1 < len(curve) else None,
                peak=peak,
                built=built,
                magnitude={layer: float(v) for layer, v in enumerate(curve)},
                writes=writes,
                windows=(int(massive_windows[:, channel].max()), windows),
            )
        )
    return sorted(lives, key=lambda life: -life.magnitude[life.peak])


def creation_layer(lives: list[ChannelLife], emergence: Choice, override: int | None = None) -> Choice:
    """The layer whose MLP makes the largest outlier channel (Figs 4b and 7): the layer that writes the
    most onto it, or its emergence without MLP writes; without outlier channels, the emergence choice."""
    chosen = _override(override, "layer")
    if chosen:
        return chosen
    if not lives:
        return emergence
    largest = lives[0]
    layer = largest.writer if largest.writer is not None else largest.emergence
    why = (
        f"the MLP of layer {layer + 1} writes the most onto channel {largest.channel}, the largest outlier "
        f"({largest.writes[layer]:+,.0f} on average over the windows)"
        if largest.writer is not None
        else f"channel {largest.channel}, the largest outlier, emerges at layer {layer + 1} (no MLP write onto it is captured)"
    )
    if largest.gradual:
        why += f"; it is built over layers {largest.emergence + 1}–{largest.built + 1}"
    earlier = [life for life in lives[1:] if life.emergence < layer]  # other channels, there before it is written
    if earlier:
        why += "; earlier: " + ", ".join(f"channel {life.channel} from layer {life.emergence + 1}" for life in earlier)
    return Choice(layer, why)


def attention_curves(attention_layers: pd.DataFrame) -> pd.DataFrame:
    return attention_layers.groupby("layer")[["top1", "top2", "median", "threshold"]].mean()


def sink_curves(evidence) -> pd.DataFrame | None:
    """Per layer, means over the windows: the attention the learned sink receives (head mean of the
    sum over queries, on the scale of the top-1 key: `sink`), the top-1 real key's (`top1`) and the
    threshold; in how many windows each reaches the threshold, and in how many the top-1 key is the
    first token. None without a learned sink."""
    if evidence.attention_sink is None:
        return None
    sink = evidence.attention_sink.groupby(["window", "layer"]).cumulative.mean().rename("sink").reset_index()
    keys = evidence.attention_keys
    top = keys[keys["rank"] == 1][["window", "layer", "position"]]
    table = sink.merge(evidence.attention_layers[["window", "layer", "top1", "threshold"]], on=["window", "layer"])
    table = table.merge(top, on=["window", "layer"], how="left")
    table["sink_over"] = table.sink >= table.threshold
    table["key_over"] = table.top1 >= table.threshold
    table["first_is_top"] = (table.position == 0) & table.key_over  # among the windows where a key reaches it
    return table.groupby("layer").agg(
        sink=("sink", "mean"),
        top1=("top1", "mean"),
        threshold=("threshold", "mean"),
        sink_windows=("sink_over", "sum"),
        key_windows=("key_over", "sum"),
        first_token_windows=("first_is_top", "sum"),
    )


def attention_layer(attention_layers: pd.DataFrame, windows: int, override: int | None = None) -> Choice:
    """The first layer where most windows have keys receiving ≥ 0.1 × the window length.
    Without one: not found, and the layer whose top key receives the most is shown."""
    chosen = _override(override, "layer") or _first_layer_in_most_windows(
        attention_layers[attention_layers.outlier_keys > 0], windows, "outlier keys"
    )
    if chosen.found:
        return chosen
    curves = attention_curves(attention_layers)
    layer = int(curves.top1.idxmax())
    return Choice(
        layer,
        f"{chosen.why}; shown: layer {layer + 1}, whose top key receives the most, {curves.top1[layer]:.1f} "
        f"(the threshold is {curves.threshold[layer]:.1f})",
        False,
    )


def softmax_layers(attention_layers: pd.DataFrame) -> list[int]:
    """The layers with softmax attention: every layer but a hybrid's linear-attention or state-space ones."""
    return sorted(int(layer) for layer in attention_layers.layer.unique())


def next_layer(layer: int, attention_layers: list[int]) -> Choice:
    """The layer whose attention Fig 1(d) shows: the first with softmax attention after `layer`, where
    the outlier token is first a key with its outlier already in the residual (the last before it at the end)."""
    after = [a for a in attention_layers if a > layer]
    if after and after[0] == layer + 1:
        return Choice(layer + 1, f"the next layer, {layer + 2}")
    if after:
        return Choice(after[0], f"layer {after[0] + 1}, the next with softmax attention")
    if layer in attention_layers:
        return Choice(layer, f"layer {layer + 1} itself, the last")
    before = max(a for a in attention_layers if a < layer)
    return Choice(before, f"layer {before + 1}, the last with softmax attention")


def attention_outlier_layers(attention_layers: pd.DataFrame, windows: int) -> list[int]:
    """Every layer where most windows have outlier keys."""
    hits = attention_layers[attention_layers.outlier_keys > 0].groupby("layer").window.nunique()
    return sorted(int(layer) for layer in hits[in_most_windows(hits, windows)].index)


def spread_head(heads: pd.DataFrame, after: int, override: tuple[int, int] | None = None) -> Choice:
    """(layer, head) from `after` on putting the largest mean share of attention on the windows'
    outlier keys. Without outlier keys: not found, head 1 of layer `after` is shown."""
    if override is not None and min(override) >= 0:
        return Choice(tuple(override), f"layer {override[0] + 1}, head {override[1] + 1} were set in the config (figures.overrides)")
    layers = sorted(int(layer) for layer in heads.layer.unique())  # a hybrid's softmax layers only
    share = heads[heads.layer >= after].groupby(["layer", "head"]).outlier_share.mean()
    if share.empty or share.max() <= 0:
        shown = next((layer for layer in layers if layer >= after), layers[-1])
        return Choice((shown, 0), f"no head from layer {after + 1} on attends to outlier keys; shown: layer {shown + 1}, head 1", False)
    layer, head = (int(v) for v in share.idxmax())
    return Choice(
        (layer, head),
        f"layer {layer + 1}, head {head + 1} puts the largest mean share of its attention on the windows' outlier keys, {share.max():.2f}",
    )


# ---------------------------------------------------------------------------------------------
# Tokens, channels and rows.


def prompt_outlier_tokens(prompt: dict) -> list[int]:
    """Positions of the prompt whose max |h| is massive (Sun et al., definitions.is_massive) against
    the prompt's median |h| of that layer, in the output of any layer.

    Read from the prompt alone, so the prompt dump (which keeps the weights these tokens need)
    and every figure agree. The paper's rule (× the mean) cannot fire on a short prompt of a
    narrow model: one outlier lifts the mean so much that max/mean stays below tokens × channels.
    """
    found = set()
    layer = 0
    while f"layer_output.{layer}" in prompt:
        magnitude = np.abs(np.asarray(prompt[f"layer_output.{layer}"]))
        found |= set(is_massive(magnitude.max(axis=1), np.median(magnitude)).nonzero()[0].tolist())
        layer += 1
    return sorted(int(t) for t in found)


def ticked_channels(values, tokens: list[int], share: float = TICK_SHARE) -> list[int]:
    """Channels whose |x| at the outlier `tokens` reaches `share` of the largest there; none without tokens."""
    if not tokens:
        return []
    magnitude = np.abs(np.asarray(values)[tokens]).max(axis=0)
    return sorted(int(c) for c in (magnitude >= share * magnitude.max()).nonzero()[0])


def written_rows(column, share: float = WRITE_SHARE) -> list[int]:
    """Rows of one weight column whose |W| reaches `share` of its largest: the channels it writes."""
    magnitude = np.abs(np.asarray(column))
    return sorted(int(r) for r in (magnitude >= share * magnitude.max()).nonzero()[0])


def residual_outlier_channels(channel_max: pd.DataFrame, sites: pd.DataFrame, site: str) -> dict[int, list[int]]:
    """Per layer, the channels whose corpus max |x| at `site` is massive against the layer's mean
    median (Sun et al., definitions.is_massive); layers without any are left out."""
    medians = sites[sites.site == site].groupby("layer").median_abs.mean()
    found = {}
    for row in channel_max[channel_max.site == site].itertuples():
        channels = is_massive(row.max_abs, medians[row.layer]).nonzero()[0]
        if len(channels):
            found[int(row.layer)] = [int(c) for c in channels]
    return found


def carrying_dims(query, key, tokens: list[int], count: int = CARRYING_DIMS) -> list[int]:
    """Head dims that contribute most to the logits of later queries on the outlier `tokens`:
    the largest mean_i q[i, d] · k[o, d] over queries i ≥ o (pre-rotary, so approximate under
    RoPE); none without outlier tokens."""
    if not tokens:
        return []
    contribution = np.zeros(query.shape[1])
    for o in tokens:
        contribution += query[o:].mean(axis=0) * key[o]
    return sorted(int(d) for d in np.argsort(contribution)[::-1][:count])


# ---------------------------------------------------------------------------------------------
# Weights.


def reference_median(weights: pd.DataFrame) -> float:
    """The median max/mean ratio over every matrix of the model (the paper's reference line is a mean)."""
    return float(weights.max_ratio.median())


def down_projections(weights: pd.DataFrame) -> pd.DataFrame:
    """The W_down rows of the weight table (one per expert in a mixture-of-experts layer), with
    `expert` (-1 in a dense MLP), `column`: the top column as a channel of down_proj_input (inside
    experts expert × intermediate + column, as the statistics and the prompt dump name it) and
    `label` for text ("column c" or "expert e, column c")."""
    down = weights[weights.mlp_down].copy()
    down["expert"] = pd.to_numeric(down.module.str.extract(r"\[(\d+)\]$")[0]).fillna(-1).astype(int)
    local = down.top_columns.map(lambda columns: int(columns[0]))
    down["column"] = np.where(down.expert >= 0, down.expert.clip(lower=0) * down["columns"] + local, local)
    down["label"] = [f"expert {e}, column {c}" if e >= 0 else f"column {c}" for e, c in zip(down.expert, local)]
    return down


def layer_down_projections(weights: pd.DataFrame) -> pd.DataFrame:
    """One W_down row per layer, indexed by layer: in a mixture-of-experts layer the expert whose top
    column ratio is the largest."""
    down = down_projections(weights)
    return down.loc[down.groupby("layer").column_ratio.idxmax()].set_index("layer")


def module_ratios(weights: pd.DataFrame) -> pd.DataFrame:
    """[layer × module] max/mean ratio of every matrix (Fig 5a); a module of the experts as the largest over them."""
    kind = weights.module.str.replace(r"\[\d+\]$", "", regex=True)
    return weights.assign(module=kind).pivot_table(index="layer", columns="module", values="max_ratio", aggfunc="max")


def weight_outlier_columns(weights: pd.DataFrame, factor: float = WEIGHT_OUTLIER_FACTOR) -> pd.DataFrame:
    """Down-projection rows of the weight table (`down_projections`) whose top column ratio is
    `factor` × the reference median or more (possibly none; several experts of a layer may)."""
    down = down_projections(weights)
    return down[down.column_ratio >= factor * reference_median(weights)]


def weight_panel_layers(weights: pd.DataFrame, count: int = 2) -> list[int]:
    """The layers whose down projection has the largest top column ratio (Fig 5b/c), standing out or not."""
    return sorted(int(layer) for layer in layer_down_projections(weights).column_ratio.nlargest(count).index)


# ---------------------------------------------------------------------------------------------
# All of a model's choices at once: what every notebook, claim and table of the model uses.


@dataclass(frozen=True)
class ModelChoices:
    curves: pd.DataFrame  # layerwise(…, "layer_output")
    peak: Choice  # the layer with the largest top-1/median ratio; found: massive there
    emergence: Choice
    disappearance: Choice
    attention: Choice | None  # None: no attention capture for this architecture
    spread: Choice | None
    outlier_tokens: pd.DataFrame  # corpus (window, layer, token) rows by the paper's rule, layer outputs
    weight_columns: pd.DataFrame  # down-projection layers whose top column stands out
    channels: list[ChannelLife]  # each massive residual channel, the largest first; empty without any
    creation: Choice  # the layer whose MLP makes the largest outlier channel (Figs 4b, 7)


def for_model(evidence, overrides: dict | None = None) -> ModelChoices:
    """Every choice for one model from its `readers.Evidence`; `overrides` holds the config's
    figures.overrides as 0-based layers and heads (-1 or absent: choose from the data)."""
    overrides = overrides or {}
    curves = layerwise(evidence.sites, evidence.topk, "layer_output")
    lives = channel_lives(evidence)
    emergence = emergence_layer(evidence.outliers, evidence.windows, curves, overrides.get("emergence_layer"))
    if emergence.found or overrides.get("disappearance_layer", -1) >= 0:
        disappearance = disappearance_layer(curves, emergence.value, overrides.get("disappearance_layer"))
    else:
        last = int(curves.index.max())
        disappearance = Choice(last, f"no activation outlier to cancel; shown: the last layer, {last + 1}", False)
    attention = spread = None
    if evidence.has_attention:
        attention = attention_layer(evidence.attention_layers, evidence.windows, overrides.get("attention_layer"))
        spread_override = (overrides.get("spread_layer", -1), overrides.get("spread_head", -1))
        spread = spread_head(evidence.attention_heads, emergence.value, spread_override)
    return ModelChoices(
        curves=curves,
        peak=peak_layer(curves),
        emergence=emergence,
        disappearance=disappearance,
        attention=attention,
        spread=spread,
        outlier_tokens=outlier_token_rows(evidence.outliers),
        weight_columns=weight_outlier_columns(evidence.weights),
        channels=lives,
        creation=creation_layer(lives, emergence, overrides.get("emergence_layer")),
    )


def top_channels(channel_max: pd.DataFrame, site: str, count: int = 2) -> list[tuple[int, list[int]]]:
    """Per layer, the `count` channels with the largest corpus max |x| at `site`, largest first (Fig 3c)."""
    rows = channel_max[channel_max.site == site].sort_values("layer")
    return [(int(row.layer), [int(c) for c in np.argsort(-np.asarray(row.max_abs), kind="stable")[:count]]) for row in rows.itertuples()]


def prompt_ratio(values, routed: bool = False) -> str:
    """The largest |x| of a prompt tensor against its median, in words: what a panel without an outlier
    shows. `routed`: the experts' inputs side by side, zero where a token was not routed, so the
    median of the nonzero entries, as the statistics' routed-only median."""
    magnitude = np.abs(np.asarray(values))
    kept = magnitude[magnitude > 0] if routed else magnitude
    median = float(np.median(kept)) if kept.size else 0.0
    largest = float(magnitude.max())
    shown = magnitude_text(largest)
    return f"largest |x| {shown}, {largest / median if median else float('inf'):,.0f}× the median"


# ---------------------------------------------------------------------------------------------
# What the interventions act on (interventions.py runs them).


@dataclass(frozen=True)
class ChannelTarget:
    channel: int
    layers: tuple[int, ...]  # the decoder layers whose outputs are edited
    tokens: dict[int, list[int]]  # window -> positions


@dataclass(frozen=True)
class ActivationTargets:
    """The two activation ablations: `once` (Sun et al.) edits each outlier channel at its own emergence
    layer; `held` edits it at every layer from its emergence to its disappearance, so that what later
    layers write onto it again is removed too."""

    once: list[ChannelTarget]
    held: list[ChannelTarget]

    @property
    def channels(self) -> list[int]:
        return sorted({target.channel for target in self.once})


@dataclass(frozen=True)
class SinkTargets:
    first_layer: int  # keys are removed at this layer and every later one
    keys: dict[int, list[int]]  # window -> key positions


def _positions(rows: pd.DataFrame, windows: int) -> dict[int, list[int]]:
    found = rows.groupby("window").position.apply(lambda p: sorted({int(v) for v in p}))
    return {window: found.get(window, []) for window in range(windows)}


def channel_tokens(outliers: pd.DataFrame, channel: int, layer: int, windows: int) -> dict[int, list[int]]:
    """Each window's tokens where `channel` is massive (Sun et al.) at the output of `layer`."""
    rows = outliers[(outliers.site == "layer_output") & (outliers.layer == layer)]
    return _positions(rows[np.array([channel in massive for massive in rows.massive_channels], dtype=bool)], windows)


def activation_targets(evidence, chosen: ModelChoices) -> Choice:
    """The activation ablations' entries: for each outlier channel (`ChannelLife`), its entries at the
    tokens of each window where it is massive (Sun et al.) at its emergence layer, edited there (once)
    or, the same entries, at every layer that carries it (held). Without outlier channels (not found):
    each window's largest |h| at the layer shown, once there and held from there to the last layer,
    so that the ablations and their controls still run."""
    lives = chosen.channels
    if lives:
        once, held = [], []
        for life in lives:
            tokens = channel_tokens(evidence.outliers, life.channel, life.emergence, evidence.windows)
            once.append(ChannelTarget(life.channel, (life.emergence,), tokens))
            held.append(ChannelTarget(life.channel, tuple(life.held_layers), tokens))
        return Choice(ActivationTargets(once, held), "; ".join(life.describe() for life in lives))
    layer = chosen.emergence.value
    last = int(chosen.curves.index.max())
    top = evidence.topk[(evidence.topk.site == "layer_output") & (evidence.topk.layer == layer) & (evidence.topk["rank"] == 1)]
    tokens = _positions(top, evidence.windows)
    channels = sorted({int(c) for c in top.channel})
    return Choice(
        ActivationTargets(
            [ChannelTarget(c, (layer,), tokens) for c in channels],
            [ChannelTarget(c, tuple(range(layer, last + 1)), tokens) for c in channels],
        ),
        f"no activation outlier: no residual channel is massive (Sun et al.) in any layer ({chosen.emergence.why}); "
        f"ablated instead: each window's largest |h| at layer {layer + 1}, in channel(s) {', '.join(map(str, channels))}, "
        "and held from there to the last layer",
        False,
    )


def sink_targets(evidence) -> Choice | None:
    """The sink ablation's keys: each window's outlier keys (≥ 0.1 × the window length in any layer),
    removed from the first layer with outlier keys in most windows on. Without such a layer (not
    found): each window's most attended key at the layer whose top key receives the most. None
    without attention capture."""
    if not evidence.has_attention:
        return None
    layers = attention_outlier_layers(evidence.attention_layers, evidence.windows)
    keys = evidence.attention_keys
    if layers:
        chosen = _positions(keys[keys.is_outlier], evidence.windows)
        counts = sorted({len(v) for v in chosen.values()})
        return Choice(
            SinkTargets(layers[0], chosen),
            f"from layer {layers[0] + 1}, the first with outlier keys in most windows, on: each window's outlier keys "
            f"(≥ {ATTENTION_SHARE:g} × the window length in any layer), {counts[0]}–{counts[-1]} per window",
        )
    shown = attention_layer(evidence.attention_layers, evidence.windows)
    chosen = _positions(keys[(keys.layer == shown.value) & (keys["rank"] == 1)], evidence.windows)
    return Choice(
        SinkTargets(shown.value, chosen),
        f"no layer has outlier keys in most windows; removed instead, from layer {shown.value + 1} on: each window's "
        "most attended key there",
        False,
    )
