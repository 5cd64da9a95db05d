"""Shared drawing code and data-derived figure choices for the notebooks.

Notebooks only read the capture stage's files and call these functions; every choice a
figure makes (which layer, which channels) is computed here from the statistics and
returned with the reason, so the caption can say why.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .config import UserError  # noqa: E402
from .io import atomic_file  # noqa: E402
from .statistics import SUN_FLOOR, SUN_RATIO  # noqa: E402

OUTLIER = "magenta"  # outlier tokens, as in the paper
NORMAL = "royalblue"  # other tokens
WEIGHT = "forestgreen"  # weights
HEATMAP = "YlGnBu"
WEIGHT_OUTLIER_FACTOR = 5.0  # × the reference median: a down-projection column that stands out
TOKEN_CLASS_LABELS = {"initial": "initial token", "strong_delimiter": "strong delimiter", "weak_semantic": "weak semantic", "other": "other"}

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "figure.dpi": 100})


class FigureDataError(UserError, ValueError):
    """A statistics file is missing, empty or lacks what a figure needs; the text names it."""


def read_table(stats_dir: str | Path, name: str, needed: tuple[str, ...] = ()) -> pd.DataFrame:
    """One statistics table, refusing a missing, unreadable or empty file by name."""
    path = Path(stats_dir) / f"{name}.parquet"
    try:
        table = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several kinds for a broken file
        raise FigureDataError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise FigureDataError(f"{path}: has no column {', '.join(missing)}")
    if table.empty:
        raise FigureDataError(f"{path}: is empty; rerun the capture rule that writes it")
    return table


def read_manifest(stats_dir: str | Path) -> dict:
    path = Path(stats_dir) / "manifest.json"
    if not path.is_file():
        raise FigureDataError(f"{path}: missing; rerun the rule that writes it")
    return json.loads(path.read_text())


def read_prompt_record(path: str | Path) -> dict:
    """The JSON beside a prompt dump: text, tokens, dtype, device and where the weights come from."""
    path = Path(path).with_suffix(".json")
    try:
        return json.loads(path.read_text())
    except Exception as error:
        raise FigureDataError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None


def read_prompt(path: str | Path, sites: tuple[str, ...]) -> tuple[dict, list[str]]:
    """A prompt dump as ({"site.layer": numpy array}, token labels), refusing one without `sites`."""
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        tensors, record = load_file(path), json.loads(path.with_suffix(".json").read_text())
    except Exception as error:
        raise FigureDataError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None
    missing = [site for site in sites if f"{site}.0" not in tensors]
    if missing:
        raise FigureDataError(f"{path}: has no {', '.join(missing)}")
    return tensors, record["tokens"]


def prompt_outlier_tokens(h) -> list[int]:
    """Positions of a prompt whose max |h| is > 100 and > 1000 × the prompt's median |h| (Sun et al.).

    The paper's 1000 × mean rule cannot fire on a short prompt of a narrow model: one outlier
    lifts the mean so much that max/mean stays below tokens × channels.
    """
    import numpy as np

    magnitude = np.abs(h)
    token_max = magnitude.max(axis=1)
    return [int(t) for t in ((token_max > SUN_FLOOR) & (token_max > SUN_RATIO * np.median(magnitude))).nonzero()[0]]


def layerwise(sites: pd.DataFrame, topk: pd.DataFrame, site: str) -> pd.DataFrame:
    """Per layer: top-1/2/3 and median of |x| at `site`, each averaged over windows (Figs 3a, 4a)."""
    top = topk[(topk.site == site) & (topk["rank"] <= 3)].pivot_table(index=["window", "layer"], columns="rank", values="value")
    top = top.groupby("layer").mean().rename(columns=lambda rank: f"top{rank}")
    median = sites[sites.site == site].groupby("layer").median_abs.mean().rename("median")
    return top.join(median)


def _first_layer_in_most_windows(rows: pd.DataFrame, windows: int, what: str) -> tuple[int, str]:
    """The first layer where at least half the windows have a row in `rows`; with the reason."""
    hits = rows.groupby("layer").window.nunique()
    layers = hits[hits >= windows / 2].index
    if len(layers) == 0:
        raise FigureDataError(f"no layer has {what} in half of the {windows} windows")
    layer = int(layers.min())
    return layer, f"layer {layer + 1} is the first where {hits[layer]} of {windows} windows have {what}"


def emergence_layer(outliers: pd.DataFrame, windows: int, site: str = "layer_output") -> tuple[int, str]:
    """The first layer where most windows have an activation-outlier token by the paper's rule."""
    return _first_layer_in_most_windows(outliers[(outliers.site == site) & outliers.paper_rule], windows, "an outlier token")


def attention_outlier_layer(layers: pd.DataFrame, windows: int) -> tuple[int, str]:
    """The first layer where most windows have keys receiving 0.1 × the window length."""
    return _first_layer_in_most_windows(layers[layers.outlier_keys > 0], windows, "outlier keys")


def disappearance_layer(curves: pd.DataFrame, after: int) -> tuple[int, str]:
    """The layer after `after` whose top-1 |x| falls the most from the layer before; with the reason."""
    drops = (curves.top1.shift(1) - curves.top1).loc[after + 1 :]
    if drops.empty or drops.max() <= 0:
        raise FigureDataError(f"the top-1 magnitude never falls after layer {after + 1}")
    layer = int(drops.idxmax())
    return layer, f"layer {layer + 1} lowers the mean top-1 the most, from {curves.top1[layer - 1]:,.0f} to {curves.top1[layer]:,.0f}"


def outlier_channels(values, tokens: list[int], share: float = 0.3) -> list[int]:
    """Channels whose |x| at the outlier tokens reaches `share` of the largest: the ones to tick."""
    magnitude = abs(values[tokens]).max(axis=0)
    return sorted(int(c) for c in (magnitude >= share * magnitude.max()).nonzero()[0])


def plot_3d(ax, values, labels: list[str], highlighted: list[int], ticked: list[int], title: str,
            color_others: str = NORMAL, zlabel: str = "", signed: bool = False, zlim: float | None = None) -> None:
    """values [lines, width] as one line per row along the width (the paper's wireframes, rstride=0):
    rows in `highlighted` magenta, the others `color_others`; |values| unless `signed`."""
    import numpy as np

    shown = np.asarray(values) if signed else np.abs(values)
    width = np.arange(shown.shape[1])
    for row in range(shown.shape[0]):
        color = OUTLIER if row in highlighted else color_others
        ax.plot(width, np.full_like(width, row), shown[row], color=color, linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xticks(ticked, [str(c) for c in ticked], fontsize=6)
    ax.tick_params(axis="z", labelsize=6)
    top = zlim or float(np.abs(shown).max()) * 1.05 or 1.0
    ax.set_zlim(-top if signed else 0, top)
    ax.set_title(title, fontsize=9)
    ax.set_zlabel(zlabel)
    ax.view_init(elev=25, azim=-60)


def plot_attention(ax, values, tokens: list[str], title: str, colorbar: bool = True, query_labels: bool = True) -> None:
    """A [query, key] attention map with the upper (future) triangle masked, YlGnBu as in the paper."""
    import numpy as np
    import seaborn as sns

    values = np.asarray(values, dtype=float)
    upper = np.triu(np.ones_like(values, dtype=bool), k=1)
    sns.heatmap(np.where(upper, np.nan, values), mask=upper, cmap=HEATMAP, ax=ax, square=True, cbar=colorbar,
                xticklabels=tokens, yticklabels=tokens if query_labels else False, cbar_kws={"shrink": 0.7})
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)


def weight_slice(prompt: dict, layer: int, name: str, focus: list[int] | None = None):
    """The kept columns of one MLP matrix at `layer` as (channels, [channels, d_model]); with
    `focus`, only the edges and the focus channels with their neighbours, as the paper shows."""
    import numpy as np

    key = f"{name}_weight.{layer}"
    if key not in prompt:
        raise FigureDataError(f"the prompt dump has no {key}; rerun rule dump_prompt")
    channels = prompt[f"weight_channels.{layer}"]
    matrix = prompt[key].T if name == "down_proj" else prompt[key]  # down: [d_model, channels]
    if focus is not None:
        wanted = {0, 1, 2, int(channels[-1])} | {c + d for c in focus for d in (-1, 0, 1)}
        keep = np.isin(channels, sorted(wanted))
        channels, matrix = channels[keep], matrix[keep]
    return [int(c) for c in channels], matrix


def written_rows(column, share: float = 0.5) -> list[int]:
    """Rows of one weight column whose |W| reaches `share` of its largest: the channels it writes."""
    import numpy as np

    magnitude = np.abs(column)
    return sorted(int(r) for r in (magnitude >= share * magnitude.max()).nonzero()[0])


def reference_median(weights: pd.DataFrame) -> float:
    """The median max/mean ratio over every matrix of the model (the paper's reference line is a mean)."""
    return float(weights.max_ratio.median())


def weight_outlier_layers(weights: pd.DataFrame, factor: float = WEIGHT_OUTLIER_FACTOR) -> pd.DataFrame:
    """Down-projection rows of the weight table whose column ratio is `factor` × the reference median or more."""
    down = weights[weights.mlp_down]
    return down[down.column_ratio >= factor * reference_median(weights)]


def activation_outlier_channels(channel_max: pd.DataFrame, sites: pd.DataFrame, site: str) -> dict[int, list[int]]:
    """Per layer, the channels whose corpus max |x| at `site` passes Sun's rule against the layer's
    mean median (> 100 and > 1000 × median); layers without any are left out."""
    import numpy as np

    medians = sites[sites.site == site].groupby("layer").median_abs.mean()
    found = {}
    for row in channel_max[channel_max.site == site].itertuples():
        values = np.asarray(row.max_abs)
        channels = ((values > SUN_FLOOR) & (values > SUN_RATIO * medians[row.layer])).nonzero()[0]
        if len(channels):
            found[int(row.layer)] = [int(c) for c in channels]
    return found


def spread_head(heads: pd.DataFrame, after: int) -> tuple[int, int, str]:
    """The layer (from `after` on) and head that put the largest mean share of attention on the outlier keys."""
    share = heads[heads.layer >= after].groupby(["layer", "head"]).outlier_share.mean()
    if share.empty or share.max() <= 0:
        raise FigureDataError(f"no head after layer {after + 1} attends to outlier keys")
    layer, head = (int(v) for v in share.idxmax())
    return layer, head, (f"layer {layer + 1}, head {head + 1} puts the largest mean share of its attention on the "
                         f"windows' outlier keys, {share.max():.2f}")


def carrying_dims(query, key, outlier_tokens: list[int], count: int = 2) -> list[int]:
    """Head dims that contribute most to the logits of later queries on the outlier keys:
    the largest mean_i q[i, d] · k[o, d] over queries i ≥ o (pre-rotary, so approximate under RoPE)."""
    import numpy as np

    contribution = np.zeros(query.shape[1])
    for o in outlier_tokens:
        contribution += query[o:].mean(axis=0) * key[o]
    return sorted(int(d) for d in np.argsort(contribution)[::-1][:count])


def plot_layerwise(ax, curves: pd.DataFrame, title: str, first_layer: int = 1) -> None:
    """Top-1/2/3 and median per layer; `curves` is indexed 0-based, printed from `first_layer`
    (1, as the paper prints decoder layers; 0 where row 0 is the embedding output)."""
    layers = curves.index + first_layer
    for column, style in (("top1", "o-"), ("top2", "o-"), ("top3", "o-"), ("median", "v-")):
        ax.plot(layers, curves[column], style, markersize=4, label=column.replace("top", "Top "))
    ax.set(xlabel="Layer" if first_layer else "Layer (0: embedding)", ylabel="Magnitude", title=title)
    ax.legend(frameon=False)


VARIANT_COLORS = {"default": "tab:blue", "fixed_bias": "tab:orange", "context_bias": "tab:green",
                  "attention_bias": "tab:red", "context_scale": "tab:purple", "sigmoid": "tab:brown"}


def plot_token_classes(ax, classes: pd.Series, title: str) -> None:
    """Pie of outlier-token classes; only the classes that occur (matplotlib refuses zero wedges' labels)."""
    counts = classes.value_counts()
    ax.pie(counts, labels=[TOKEN_CLASS_LABELS[c] for c in counts.index], autopct="%1.1f%%", startangle=90, labeldistance=1.08,
           colors=[OUTLIER if c == "initial" else "plum" if c == "strong_delimiter" else "lightsteelblue" for c in counts.index])
    ax.set_title(title)


def save(figure, stem: str | Path) -> None:
    """Write `stem`.png and `stem`.pdf, each whole or not at all."""
    stem = Path(stem)
    for suffix in (".png", ".pdf"):
        with atomic_file(stem.with_suffix(suffix)) as scratch:
            figure.savefig(scratch, bbox_inches="tight", dpi=150, format=suffix[1:])


def write_caption(stem: str | Path, caption: str) -> None:
    """`stem`.caption.txt, whole or not at all."""
    with atomic_file(Path(f"{stem}.caption.txt")) as scratch:
        scratch.write_text(caption + "\n")


def flow_figure(rows: int, columns: int, panels: dict[str, tuple[int, int, str]], cell=(3.3, 2.8)):
    """A figure with one axes per panel on a rows × columns grid: panels maps a name to
    (row, column, "3d" or "2d"). Cells keep room between panels for the arrows."""
    figure = plt.figure(figsize=(columns * cell[0], rows * cell[1]))
    axes = {}
    for name, (row, column, kind) in panels.items():
        left, bottom = column / columns, 1 - (row + 1) / rows
        rect = [left + 0.12 / columns, bottom + 0.1 / rows, 0.76 / columns, 0.76 / rows]
        axes[name] = figure.add_axes(rect, projection="3d" if kind == "3d" else None)
    return figure, axes


def draw_edges(figure, axes: dict, edges: list[tuple]) -> None:
    """Arrows between panels, each (source, target, label) or (source, target, label, "under"):
    straight from side to side, or ("under") down below every panel and up into the target.
    The label sits on the arrow in a box, as an operation in a data-flow diagram."""
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as Polyline

    box = dict(boxstyle="round,pad=0.25", facecolor="lightyellow", edgecolor="gray")
    for source, target, label, *route in edges:
        a, b = axes[source].get_position(), axes[target].get_position()
        if route == ["under"]:
            level = 0.02
            points = [(a.x0 + a.width / 2, a.y0), (a.x0 + a.width / 2, level), (b.x0 + b.width / 2, level), (b.x0 + b.width / 2, b.y0)]
            middle = ((points[1][0] + points[2][0]) / 2, level)
        else:
            (ax_, ay), (bx, by) = (a.x0 + a.width / 2, a.y0 + a.height / 2), (b.x0 + b.width / 2, b.y0 + b.height / 2)
            if abs(bx - ax_) > abs(by - ay):  # mostly sideways: leave and enter through the sides
                points = [(a.x1 if bx > ax_ else a.x0, ay), (b.x0 if bx > ax_ else b.x1, by)]
            else:
                points = [(ax_, a.y0 if by < ay else a.y1), (bx, b.y1 if by < ay else b.y0)]
            middle = ((points[0][0] + points[1][0]) / 2, (points[0][1] + points[1][1]) / 2)
        codes = [Polyline.MOVETO] + [Polyline.LINETO] * (len(points) - 1)
        figure.add_artist(FancyArrowPatch(path=Polyline(points, codes), arrowstyle="-|>", mutation_scale=14,
                                          color="dimgray", linewidth=1.2, transform=figure.transFigure))
        if label:
            figure.text(*middle, label, ha="center", va="center", fontsize=9, bbox=box, transform=figure.transFigure)
