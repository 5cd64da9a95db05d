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

OUTLIER = "magenta"  # outlier tokens, as in the paper
NORMAL = "royalblue"  # other tokens
WEIGHT = "forestgreen"  # weights
HEATMAP = "YlGnBu"
TOKEN_CLASS_LABELS = {"initial": "initial token", "strong_delimiter": "strong delimiter", "weak_semantic": "weak semantic", "other": "other"}

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "figure.dpi": 100})


class FigureDataError(ValueError):
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


def layerwise(sites: pd.DataFrame, topk: pd.DataFrame, site: str) -> pd.DataFrame:
    """Per layer: top-1/2/3 and median of |x| at `site`, each averaged over windows (Figs 3a, 4a)."""
    top = topk[(topk.site == site) & (topk["rank"] <= 3)].pivot_table(index=["window", "layer"], columns="rank", values="value")
    top = top.groupby("layer").mean().rename(columns=lambda rank: f"top{rank}")
    median = sites[sites.site == site].groupby("layer").median_abs.mean().rename("median")
    return top.join(median)


def emergence_layer(outliers: pd.DataFrame, windows: int, site: str = "layer_output") -> tuple[int, str]:
    """The first layer where at least half the windows have an activation-outlier token
    by the paper's rule; with the reason, for the caption."""
    hits = outliers[(outliers.site == site) & outliers.paper_rule].groupby("layer").window.nunique()
    layers = hits[hits >= windows / 2].index
    if len(layers) == 0:
        raise FigureDataError(f"no layer has {site} outlier tokens (max > 1000 × mean |x|) in half of the {windows} windows")
    layer = int(layers.min())
    return layer, f"layer {layer + 1} is the first where {hits[layer]} of {windows} windows have an outlier token"


def attention_outlier_layer(layers: pd.DataFrame, windows: int) -> tuple[int, str]:
    """The first layer where at least half the windows have attention-outlier keys; with the reason."""
    hits = layers[layers.outlier_keys > 0].groupby("layer").window.nunique()
    found = hits[hits >= windows / 2].index
    if len(found) == 0:
        raise FigureDataError(f"no layer has keys receiving 0.1 × the window length in half of the {windows} windows")
    layer = int(found.min())
    return layer, f"layer {layer + 1} is the first where {hits[layer]} of {windows} windows have outlier keys"


def plot_layerwise(ax, curves: pd.DataFrame, title: str) -> None:
    layers = curves.index + 1  # 1-based, as the paper prints them
    for column, style in (("top1", "o-"), ("top2", "o-"), ("top3", "o-"), ("median", "v-")):
        ax.plot(layers, curves[column], style, markersize=4, label=column.replace("top", "Top "))
    ax.set(xlabel="Layer", ylabel="Magnitude", title=title)
    ax.legend(frameon=False)


def plot_token_classes(ax, classes: pd.Series, title: str) -> None:
    """Pie of outlier-token classes; only the classes that occur (matplotlib refuses zero wedges' labels)."""
    counts = classes.value_counts()
    ax.pie(counts, labels=[TOKEN_CLASS_LABELS[c] for c in counts.index], autopct="%1.1f%%", startangle=90,
           colors=[OUTLIER if c == "initial" else "plum" if c == "strong_delimiter" else "lightsteelblue" for c in counts.index])
    ax.set_title(title)


def save(figure, stem: str | Path) -> None:
    """Write `stem`.png and `stem`.pdf."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        figure.savefig(stem.with_suffix(suffix), bbox_inches="tight", dpi=150)
