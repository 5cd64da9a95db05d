"""How the figures are drawn: matplotlib/seaborn helpers shared by the notebooks.

Nothing here decides what to show: the notebooks read files through `readers`, take every
choice from `choices`, and pass the chosen values in.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_file  # noqa: E402

OUTLIER = "magenta"  # outlier tokens, as in the paper
NORMAL = "royalblue"  # other tokens
WEIGHT = "forestgreen"  # weights
HEATMAP = "YlGnBu"
TOKEN_CLASS_LABELS = {
    "initial": "initial token",
    "strong_delimiter": "strong delimiter",
    "weak_semantic": "weak semantic",
    "other": "other",
}

TOKEN_CLASS_COLOURS = {"initial": OUTLIER, "strong_delimiter": "darkorange", "weak_semantic": "gold", "other": "gray"}
VERDICT_COLOURS = {  # the verdict grid of the atlas
    "holds": "#4daf4a",
    "partly": "#fdbf6f",
    "does not hold": "#e41a1c",
    "not measured": "#d9d9d9",
}

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "figure.dpi": 100})


def plot_3d(
    ax,
    values,
    labels: list[str],
    highlighted: list[int],
    ticked: list[int],
    title: str,
    color_others: str = NORMAL,
    zlabel: str = "",
    signed: bool = False,
    zlim: float | None = None,
) -> None:
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
    sns.heatmap(
        np.where(upper, np.nan, values),
        mask=upper,
        cmap=HEATMAP,
        ax=ax,
        square=True,
        cbar=colorbar,
        xticklabels=tokens,
        yticklabels=tokens if query_labels else False,
        cbar_kws={"shrink": 0.7},
    )
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)


def note(ax, text: str, y: float = 0.92) -> None:
    """A boxed remark inside a panel, e.g. that no outlier was found there, its top at `y` (axes fraction)."""
    import textwrap

    box = dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor=OUTLIER, alpha=0.9)
    text = "\n".join(textwrap.fill(line, 44) for line in text.split("\n"))
    place = ax.text2D if hasattr(ax, "text2D") else ax.text  # 3-D axes place text in axes coordinates with text2D
    place(0.5, y, text, transform=ax.transAxes, ha="center", va="top", fontsize=7, bbox=box)


def plot_layerwise(ax, curves: pd.DataFrame, title: str, first_layer: int = 1) -> None:
    """Top-1/2/3 and median per layer; `curves` is indexed 0-based, printed from `first_layer`
    (1, as the paper prints decoder layers; 0 where row 0 is the embedding output)."""
    layers = curves.index + first_layer
    for column, style in (("top1", "o-"), ("top2", "o-"), ("top3", "o-"), ("median", "v-")):
        ax.plot(layers, curves[column], style, markersize=4, label=column.replace("top", "Top "))
    ax.set(xlabel="Layer" if first_layer else "Layer (0: embedding)", ylabel="Magnitude", title=title)
    ax.legend(frameon=False)


CHANNEL_COLORS = ("darkviolet", "teal", "saddlebrown", "gray")  # outlier channels, largest first


def mark_channel_lives(ax, lives: list, draw_curves: bool, count: int = len(CHANNEL_COLORS)) -> None:
    """Each outlier channel (`choices.ChannelLife`, the `count` largest): a dotted line at its emergence
    layer labelled with the channel, a shaded span where it is built over several layers and, with
    `draw_curves`, its mean |h| per layer as a dashed line (1-based layers, as plot_layerwise)."""
    for index, life in enumerate(lives[:count]):
        colour = CHANNEL_COLORS[index]
        if draw_curves:
            layers = sorted(life.magnitude)
            ax.plot(
                [layer + 1 for layer in layers],
                [life.magnitude[layer] for layer in layers],
                "--",
                color=colour,
                linewidth=1.2,
                label=f"channel {life.channel}",
            )
        ax.axvline(life.emergence + 1, color=colour, linestyle=":", linewidth=1.2)
        ax.annotate(
            f"ch {life.channel}",
            xy=(life.emergence + 1, 0.08 + 0.07 * index),  # low in the panel, clear of the legend and the peaks
            xycoords=("data", "axes fraction"),
            xytext=(3, 0),
            textcoords="offset points",
            color=colour,
            fontsize=8,
            va="bottom",
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )
        if life.gradual:
            ax.axvspan(life.emergence + 1, life.built + 1, color=colour, alpha=0.12, linewidth=0)
    if draw_curves and lives:
        ax.legend(frameon=False, fontsize=8)


# One colour per attention variant, by its letter: (a)–(f) keep tab10's first six; none is gray or black, which the
# sink figure keeps for k′ and the output factor.
VARIANT_PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
    "black",
    "gold",
)


def variant_colour(letter: str) -> str:
    """The colour of variant "(a)" … "(l)"."""
    return VARIANT_PALETTE[ord(letter.strip("()")) - ord("a")]


def trained_variants(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trained variant of an analysis' runs table, in letter order: variant, id, name, colour, label."""
    table = runs.drop_duplicates("variant").sort_values("id")[["variant", "id", "name"]].reset_index(drop=True)
    return table.assign(colour=table.id.map(variant_colour), label=table.id + " " + table.name)


def small_multiples(count: int, width: float = 3.4, height: float = 3.0, columns: int = 4, **kwargs):
    """A grid of `count` panels, `columns` wide; the unused panels are switched off. Returns (figure, flat list of used axes)."""
    columns = min(columns, count)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False, **kwargs)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_axis_off()
    return figure, flat[:count]


def plot_token_classes(ax, classes: pd.Series, title: str, empty: str = "none found") -> None:
    """Pie of outlier-token classes; only the classes that occur (matplotlib refuses zero wedges' labels).
    Without any token, the panel says `empty` instead."""
    counts = classes.value_counts()
    ax.set_title(title)
    if counts.empty:
        ax.set_axis_off()
        note(ax, empty)
        return
    ax.pie(
        counts,
        labels=[TOKEN_CLASS_LABELS[c] for c in counts.index],
        autopct="%1.1f%%",
        startangle=90,
        labeldistance=1.08,
        colors=[OUTLIER if c == "initial" else "plum" if c == "strong_delimiter" else "lightsteelblue" for c in counts.index],
    )


def plot_losses(ax, passes: dict[str, tuple], colours: dict[str, str], title: str, changes: bool = False, title_width: int = 60) -> None:
    """Next-token loss per pass (the interventions' and the quantization's figures). `passes`: name → (each window's
    loss, each seed's mean loss over the windows), in the order drawn, the first the unedited model. Each window's loss
    as a gray dot, the mean of the seeds' means as a bar in `colours[name]` with its value above (with `changes`, also
    its change from the first pass, which a bar's height may not show), each seed's mean as a dash where a control has
    several seeds, and the first pass's loss as a dotted line across. The title is wrapped at `title_width` characters."""
    import textwrap

    import numpy as np

    rng = np.random.default_rng(0)  # the same jitter on every run
    reference = next(iter(passes.values()))[1].mean()
    for x, (name, (window_losses, seed_losses)) in enumerate(passes.items()):
        ax.scatter(x + rng.uniform(-0.25, 0.25, len(window_losses)), window_losses, s=6, color="lightgray", zorder=1)
        loss = seed_losses.mean()
        ax.bar(x, loss, width=0.6, color=colours[name], alpha=0.35, zorder=0)
        if len(seed_losses) > 1:
            ax.scatter(np.full(len(seed_losses), x), seed_losses, marker="_", s=300, color=colours[name], zorder=2)
        text = f"{loss:.3f}" + (f"\n{loss - reference:+.2g}" if changes and x else "")
        box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}  # clear of the dots
        ax.annotate(text, (x, loss), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8, bbox=box, zorder=3)
    ax.axhline(reference, color="black", linestyle=":", linewidth=1)
    ax.margins(y=0.15)  # room above the tallest bar for its two-line label; the bars keep their bottom at 0
    ax.set_xticks(range(len(passes)), [textwrap.fill(name, 16) for name in passes], fontsize=8)
    ax.set(ylabel="Next-token loss (nats)")
    ax.set_title("\n".join(textwrap.fill(line, title_width, break_on_hyphens=False) for line in title.split("\n")), fontsize=10)


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
        figure.add_artist(
            FancyArrowPatch(
                path=Polyline(points, codes),
                arrowstyle="-|>",
                mutation_scale=14,
                color="dimgray",
                linewidth=1.2,
                transform=figure.transFigure,
            )
        )
        if label:
            figure.text(*middle, label, ha="center", va="center", fontsize=9, bbox=box, transform=figure.transFigure)


def plot_layer_diagram(ax, attention: list, mlp: list, parallel: bool, title: str) -> None:
    """One decoder layer (architectures.layer_diagram), drawn bottom to top as the paper's schematic:
    the residual stream on the left, each branch a column of blocks (side by side in a parallel block)
    that adds back into it; each block names its modules, the capture sites it gives are gray on the
    arrow above it, interventions magenta beside it. The axes are in inches and size the figure, so the
    text stays readable at its printed size."""
    import textwrap

    from matplotlib.patches import FancyBboxPatch

    from .architectures import ACTIVATION_ABLATION

    line, width, gap, margin = 0.14, 2.7, 0.45, 0.6  # inches: a line of 7-pt text, a block, the arrow between blocks
    ax.set_axis_off()

    def arrow(start, end):
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color="black", linewidth=1, shrinkA=0, shrinkB=0))

    def column(blocks, left, bottom):
        """The blocks from `bottom` up, left edge at `left`; returns the top of the arrow out of the last."""
        middle, y = left + width / 2, bottom
        for index, block in enumerate(blocks):
            name = textwrap.fill(block.name, 34)
            name_height = (line + (0.05 if "$" in name else 0)) * (name.count("\n") + 1)  # mathtext sits taller
            height = 0.16 + name_height + line * max(len(block.modules), 1)
            ax.add_patch(
                FancyBboxPatch(
                    (left, y), width, height, boxstyle="round,pad=0.02", facecolor="whitesmoke", edgecolor="black", linewidth=0.8
                )
            )
            top = y + height
            ax.text(left + 0.08, top - 0.05, name, ha="left", va="top", fontsize=8)
            ax.text(
                left + 0.08,
                top - 0.07 - name_height,
                "\n".join(block.modules) or "–",
                ha="left",
                va="top",
                fontsize=6.5,
                family="monospace",
                color="dimgray",
            )
            if block.notation:
                ax.text(left + width - 0.08, y + height / 2 - 0.04, block.notation, ha="right", va="center", fontsize=10)
            if block.intervention:
                ax.text(
                    left + width + 0.1,
                    y + height / 2,
                    textwrap.fill(block.intervention, 24),
                    ha="left",
                    va="center",
                    fontsize=7,
                    color=OUTLIER,
                )
            if index < len(blocks) - 1:
                arrow((middle, top), (middle, top + gap))
            else:  # on into the line back to the stream
                ax.plot([middle, middle], [top, top + gap], color="black", linewidth=1)
            if block.sites:
                ax.text(middle + 0.07, top + gap / 2, ", ".join(block.sites), ha="left", va="center", fontsize=6.5, color="gray")
            y = top + gap
        return y

    def branches(columns, junction):
        """Columns that read the stream at `junction` and add back into it at one point; returns its height."""
        lefts = [margin + i * (width + 1.9) for i in range(len(columns))]  # room for the magenta notes between
        middles = [left + width / 2 for left in lefts]
        ax.plot([0, middles[-1]], [junction, junction], color="black", linewidth=1)
        tops = [column(blocks, left, junction + 0.25) for blocks, left in zip(columns, lefts)]
        for x in middles:
            arrow((x, junction), (x, junction + 0.25))
        top = max(tops)
        for x, y in zip(middles, tops):
            ax.plot([x, x], [y, top], color="black", linewidth=1)
        ax.plot([middles[-1], 0.1], [top, top], color="black", linewidth=1)
        arrow((middles[0], top), (0.1, top))
        ax.add_patch(plt.Circle((0, top), 0.1, facecolor="white", edgecolor="black", linewidth=0.8, zorder=3))
        ax.text(0, top, "+", ha="center", va="center", fontsize=9, zorder=4)
        return top

    ax.text(0, -0.08, "$h_{\\ell-1}$  layer_input", ha="center", va="top", fontsize=8)
    if parallel:
        end = branches([attention] + ([mlp] if mlp else []), 0.3)
        ax.plot([0, 0], [0, end - 0.1], color="black", linewidth=1)
    else:
        middle = branches([attention], 0.3)
        ax.plot([0, 0], [0, middle - 0.1], color="black", linewidth=1)
        ax.text(-0.15, middle, "attn_residual", ha="right", va="center", fontsize=6.5, color="gray")
        end = branches([mlp], middle + 0.35)
        ax.plot([0, 0], [middle + 0.1, end - 0.1], color="black", linewidth=1)
    arrow((0, end + 0.1), (0, end + 0.55))
    ax.text(0, end + 0.6, "$h_\\ell$  layer_output", ha="center", va="bottom", fontsize=8)
    ax.text(-0.15, end + 0.3, textwrap.fill(ACTIVATION_ABLATION, 24), ha="right", va="center", fontsize=7, color=OUTLIER)
    right = margin + (2 if parallel and mlp else 1) * (width + 1.9) - 0.4
    left, top = -1.75, end + 1.0
    ax.set_xlim(left, right)
    ax.set_ylim(-0.35, top)
    ax.set_aspect("equal")
    ax.set_position([0, 0, 1, top / (top + 0.45)])  # the title above, in the remaining 0.45 in
    ax.figure.set_size_inches(right - left, top + 0.35 + 0.45)
    ax.set_title(title, fontsize=10, pad=6)


# ---------------------------------------------------------------------------------------------
# The atlas: every model of a run side by side, one to a dozen and more.

MODEL_MARKERS = ("o", "s", "D", "P", "X", "*", "h", "p")  # no triangles: the atlas marks emergence and cancellation with them
MODEL_LINESTYLES = ("-", "--", "-.")
VERDICT_WORDS = {"holds": "holds", "partly": "partly", "does not hold": "does not\nhold", "not measured": "not\nmeasured"}
VERDICT_SYMBOLS = {"holds": "✓", "partly": "◐", "does not hold": "✗", "not measured": "–"}


def model_styles(models: list[str]) -> dict[str, dict]:
    """A colour, a marker and a line style per model, for lines and dots that stay apart at a dozen models: ten
    colours and eight markers cycle side by side (no two of the first forty models share both), and every ten
    models the line style changes."""
    colours = plt.get_cmap("tab10").colors
    return {
        model: {
            "color": colours[i % len(colours)],
            "marker": MODEL_MARKERS[i % len(MODEL_MARKERS)],
            "linestyle": MODEL_LINESTYLES[(i // len(colours)) % len(MODEL_LINESTYLES)],
        }
        for i, model in enumerate(models)
    }


def centred_rows(ax, count: int, least: int = 3) -> None:
    """Rows 0 … `count` − 1 top to bottom, centred in room for at least `least` rows, so a single model's bar or dot
    is not stretched over the whole panel."""
    pad = max(least - count, 0) / 2
    ax.set_ylim(count - 0.5 + pad, -0.5 - pad)


def shade_rows(ax, count: int) -> None:
    """Every other row shaded, for the eye to follow a model's row across panels."""
    for row in range(1, count, 2):
        ax.axhspan(row - 0.5, row + 0.5, color="0.93", zorder=0, linewidth=0)


def plot_verdict_grid(
    ax, grid: pd.DataFrame, side: list[str], side_title: str, aspect: float | str = "auto", wrap: int = 52, side_wrap: int = 46
) -> list:
    """Each row's verdict (the index: the claims) per column (the models), coloured by VERDICT_COLOURS and named in its
    cell; the rows' labels wrapped at `wrap` characters on the left, `side` (one text per row, e.g. the paper's value)
    wrapped at `side_wrap` in gray on the right under `side_title`, the columns' names on top. Returns the cells' texts,
    for `fit_verdict_texts` once the figure is laid out. `aspect`: a cell's height over its width."""
    import textwrap

    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.transforms import blended_transform_factory

    codes = {verdict: i for i, verdict in enumerate(VERDICT_COLOURS)}
    cells = grid.apply(lambda column: column.map(codes)).to_numpy(dtype=float)
    rows, columns = cells.shape
    ax.imshow(cells, cmap=ListedColormap(list(VERDICT_COLOURS.values())), vmin=-0.5, vmax=len(codes) - 0.5, aspect=aspect)
    ax.set_xticks(np.arange(columns + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(which="major", length=0)
    texts = [
        ax.text(column, row, VERDICT_WORDS[grid.iat[row, column]], ha="center", va="center", fontsize=8, linespacing=0.95)
        for row in range(rows)
        for column in range(columns)
    ]
    ax.set_yticks(range(rows), [textwrap.fill(label, wrap) for label in grid.index], fontsize=8.5)
    tilted = columns > 3
    ax.set_xticks(range(columns), grid.columns, fontsize=9, rotation=35 if tilted else 0, ha="left" if tilted else "center",
                  rotation_mode="anchor")  # fmt: skip
    ax.xaxis.tick_top()
    for spine in ax.spines.values():
        spine.set_visible(False)
    beside = blended_transform_factory(ax.transAxes, ax.transData)  # x: just right of the grid, y: the row
    for row, text in enumerate(side):  # texts, not a twin axis: a twinned axes cannot keep the cells' aspect
        ax.annotate(textwrap.fill(text or "–", side_wrap), (1.0, row), xycoords=beside, xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=8, color="0.3")  # fmt: skip
    ax.annotate(side_title, (1.0, -0.5), xycoords=beside, xytext=(6, 3), textcoords="offset points", va="bottom", fontsize=8.5,
                fontweight="bold", color="0.3")  # fmt: skip
    return texts


def fit_verdict_texts(ax, texts: list) -> bool:
    """Once the figure is laid out: where a cell's words do not fit its cell, every cell gets VERDICT_SYMBOLS instead and
    the grid a legend of the symbols. True if the words stayed."""
    from matplotlib.patches import Patch

    figure = ax.figure.figure  # the whole figure, the grid's axes may sit in a subfigure
    figure.draw_without_rendering()
    rows, columns = ax.images[0].get_array().shape
    box = ax.get_window_extent()
    width, height = box.width / columns, box.height / rows
    renderer = figure.canvas.get_renderer()
    if all(t.get_window_extent(renderer).width < 0.92 * width and t.get_window_extent(renderer).height < 0.92 * height for t in texts):
        return True
    symbols = {words: VERDICT_SYMBOLS[verdict] for verdict, words in VERDICT_WORDS.items()}
    for text in texts:
        text.set_text(symbols[text.get_text()])
        text.set_fontsize(11)
    handles = [Patch(color=colour, label=f"{VERDICT_SYMBOLS[verdict]} {verdict}") for verdict, colour in VERDICT_COLOURS.items()]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=len(handles), frameon=False, fontsize=9)
    return False
