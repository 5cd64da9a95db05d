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
from .statistics import SUN_FLOOR, SUN_RATIO  # noqa: E402

OUTLIER = "magenta"  # outlier tokens, as in the paper
NORMAL = "royalblue"  # other tokens
WEIGHT = "forestgreen"  # weights
HEATMAP = "YlGnBu"
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
        raise FigureDataError(f"{path}: missing; rerun the capture rule that writes it")
    return json.loads(path.read_text())


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


def plot_3d(ax, values, tokens: list[str], outlier_tokens: list[int], ticked_channels: list[int], title: str,
            color_others: str = NORMAL, zlabel: str = "") -> None:
    """|values| [tokens, channels] as one line per token along the channels (the paper's wireframes,
    rstride=0): outlier tokens magenta, the others `color_others`."""
    import numpy as np

    magnitude = np.abs(values)
    channels = np.arange(magnitude.shape[1])
    for position in range(magnitude.shape[0]):
        color = OUTLIER if position in outlier_tokens else color_others
        ax.plot(channels, np.full_like(channels, position), magnitude[position], color=color, linewidth=0.8)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.set_xticks(ticked_channels, [str(c) for c in ticked_channels], fontsize=7)
    ax.set_zlim(0, magnitude.max() * 1.05)
    ax.set_title(title, fontsize=10)
    ax.set_zlabel(zlabel)
    ax.view_init(elev=25, azim=-60)


def plot_layerwise(ax, curves: pd.DataFrame, title: str) -> None:
    layers = curves.index + 1  # 1-based, as the paper prints them
    for column, style in (("top1", "o-"), ("top2", "o-"), ("top3", "o-"), ("median", "v-")):
        ax.plot(layers, curves[column], style, markersize=4, label=column.replace("top", "Top "))
    ax.set(xlabel="Layer", ylabel="Magnitude", title=title)
    ax.legend(frameon=False)


def plot_token_classes(ax, classes: pd.Series, title: str) -> None:
    """Pie of outlier-token classes; only the classes that occur (matplotlib refuses zero wedges' labels)."""
    counts = classes.value_counts()
    ax.pie(counts, labels=[TOKEN_CLASS_LABELS[c] for c in counts.index], autopct="%1.1f%%", startangle=90, labeldistance=1.08,
           colors=[OUTLIER if c == "initial" else "plum" if c == "strong_delimiter" else "lightsteelblue" for c in counts.index])
    ax.set_title(title)


def save(figure, stem: str | Path) -> None:
    """Write `stem`.png and `stem`.pdf."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        figure.savefig(stem.with_suffix(suffix), bbox_inches="tight", dpi=150)
