"""Outlier statistics, reduced on the device inside the capture hooks.

`CorpusStatistics` is the sink for `capture.hooks`: for each window it keeps only
reductions (top-k with positions, mean, median, per-token and per-channel maxima, the
attention each key receives per head) and moves them to the host once per window, so
memory is bounded by one window whatever the number of windows.

Definitions (paper/FIGURES.md §2.1):
- activation outlier token, the paper's rule: max_c |x[t, c]| > 1000 × mean |x| of the window;
  Sun et al.'s rule: max_c |x[t, c]| > 100 and > 1000 × median |x| of the window;
- attention outlier key: cumulative head-averaged attention received >= 0.1 × window length;
- token class: initial (position 0), strong delimiter, weak semantic, other, from the
  token decoded alone and stripped, as the official code does.
"""

from __future__ import annotations

import pandas as pd
import torch

from .capture import ATTENTION_SITES

PAPER_RATIO = 1000.0  # × mean |x|
SUN_RATIO, SUN_FLOOR = 1000.0, 100.0  # × median |x|, and an absolute floor
ATTENTION_SHARE = 0.1  # × window length
TOKEN_MAX_SITES = ("layer_output", "down_proj_input")

STRONG_DELIMITERS = set(". <0x0A> , ; : ! ? - -- --- ' \" ( ) [ ] { } / \\ | * & ^ % $ # @ ~ `".split())
WEAK_SEMANTIC = set("and from of 1 2 3 4 5 6 7 8 9 the a an in on at for with is was are were to by as that this it but or if not".split()) | {""}

TOKEN_CLASSES = ("initial", "strong_delimiter", "weak_semantic", "other")

# Every table and column this module writes, for the manifest and the README.
COLUMNS = {
    "sites": {
        "window": "window index in the windows file",
        "layer": "decoder layer, 0-based",
        "site": "capture site (capture.SITES)",
        "mean_abs": "mean |x| over the window's tokens × channels",
        "median_abs": "median |x| (lower median) over tokens × channels",
        "max_abs": "max |x|",
    },
    "topk": {
        "window": "", "layer": "", "site": "",
        "rank": "1 = largest |x| of this window, layer and site",
        "value": "|x|",
        "position": "token position in the window",
        "channel": "channel (for query/key/value: head × head_dim + dim)",
        "token_id": "token id at that position",
    },
    "channel_max": {
        "layer": "", "site": "", "channel": "",
        "max_abs": "max |x| of this channel over every token of every window",
    },
    "token_max": {
        "window": "", "layer": "", "site": f"one of {', '.join(TOKEN_MAX_SITES)}",
        "position": "", "token_id": "",
        "max_abs": "max |x| over channels at this token",
        "channel": "channel of that maximum",
    },
    "activation_outliers": {
        "window": "", "layer": "", "site": "", "position": "", "token_id": "",
        "token": "the token decoded alone",
        "token_class": f"one of {', '.join(TOKEN_CLASSES)}",
        "max_abs": "max |x| over channels at this token",
        "channel": "channel of that maximum",
        "ratio_to_mean": "max_abs / mean |x| of the window",
        "ratio_to_median": "max_abs / median |x| of the window",
        "paper_rule": f"ratio_to_mean > {PAPER_RATIO:g} (the official code)",
        "sun_rule": f"max_abs > {SUN_FLOOR:g} and ratio_to_median > {SUN_RATIO:g} (Sun et al.)",
    },
    "attention_layers": {
        "window": "", "layer": "",
        "top1": "largest cumulative head-averaged attention received by a key",
        "top2": "second largest",
        "median": "median over keys",
        "threshold": f"{ATTENTION_SHARE:g} × window length",
        "outlier_keys": "number of keys at or above the threshold in this layer",
    },
    "attention_keys": {
        "window": "", "layer": "",
        "rank": "1 = the key that receives the most attention",
        "position": "", "token_id": "", "token": "", "token_class": "",
        "cumulative": "sum over queries of the head-averaged attention probability on this key",
        "is_outlier": "cumulative >= threshold in this layer",
    },
    "attention_heads": {
        "window": "", "layer": "", "head": "",
        "outlier_share": "share of this head's attention that goes to the window's outlier keys",
        "outlier_keys": "the window's outlier keys: positions over the threshold in any layer",
    },
}


def token_label(tokenizer, token_id: int) -> str:
    """The token decoded alone, with a newline shown as \\n (for tables and axis labels)."""
    return tokenizer.decode([int(token_id)]).replace("\n", "\\n")


def token_class(position: int, text: str) -> str:
    if position == 0:
        return "initial"
    stripped = text.replace("\\n", "\n").strip()
    if stripped in STRONG_DELIMITERS:
        return "strong_delimiter"
    if stripped.lower() in WEAK_SEMANTIC:
        return "weak_semantic"
    return "other"


class CorpusStatistics:
    """Sink for `capture.hooks` that keeps per-window reductions of every site."""

    def __init__(self, tokenizer, top_k: int = 8):
        self.tokenizer, self.top_k = tokenizer, top_k
        self.rows = {name: [] for name in COLUMNS if name != "channel_max"}
        self.channel_max: dict[tuple[int, str], torch.Tensor] = {}
        self.window = None

    # -- per window ------------------------------------------------------------------------
    def start_window(self, window: int, input_ids: torch.Tensor) -> None:
        self.window, self.input_ids = window, input_ids.flatten().tolist()
        self.pending = []  # (layer, site, reductions on the device)
        self.received = {}  # layer -> [heads, keys] attention received

    def __call__(self, site: str, layer: int, tensor: torch.Tensor) -> None:
        if site == "attn_probs":  # [heads, queries, keys] -> attention each key receives per head
            self.received[layer] = tensor.float().sum(dim=1)
            return
        if site in ATTENTION_SITES:
            return
        magnitude = tensor.reshape(tensor.shape[0], -1).abs().float()
        flat = magnitude.flatten()
        token_max, token_channel = magnitude.max(dim=1)
        top_values, top_index = flat.topk(min(self.top_k, flat.numel()))
        channel_max = magnitude.amax(dim=0)
        key = (layer, site)
        self.channel_max[key] = channel_max if key not in self.channel_max else torch.maximum(self.channel_max[key], channel_max)
        scalars = torch.stack([flat.mean(), flat.median(), top_values[0]])
        self.pending.append((layer, site, magnitude.shape[1], scalars, token_max, token_channel, top_values, top_index))

    def finish_window(self) -> None:
        """Move this window's reductions to the host (one transfer) and turn them into rows."""
        pending = [(layer, site, width, *(t.cpu() for t in tensors)) for layer, site, width, *tensors in self.pending]
        for layer, site, width, scalars, token_max, token_channel, top_values, top_index in pending:
            self._site_rows(layer, site, width, scalars.tolist(), token_max, token_channel, top_values, top_index)
        self._attention_rows({layer: received.cpu() for layer, received in self.received.items()})
        self.pending, self.received = [], {}

    def _site_rows(self, layer, site, width, scalars, token_max, token_channel, top_values, top_index):
        window, ids = self.window, self.input_ids
        mean, median, largest = scalars
        self.rows["sites"].append((window, layer, site, mean, median, largest))
        for rank, (value, index) in enumerate(zip(top_values.tolist(), top_index.tolist()), start=1):
            position = index // width
            self.rows["topk"].append((window, layer, site, rank, value, position, index % width, ids[position]))
        if site in TOKEN_MAX_SITES:
            for position, (value, channel) in enumerate(zip(token_max.tolist(), token_channel.tolist())):
                self.rows["token_max"].append((window, layer, site, position, ids[position], value, channel))
        paper = token_max > PAPER_RATIO * mean
        sun = (token_max > SUN_FLOOR) & (token_max > SUN_RATIO * median)
        for position in torch.nonzero(paper | sun).flatten().tolist():
            text = token_label(self.tokenizer, ids[position])
            value = token_max[position].item()
            self.rows["activation_outliers"].append(
                (window, layer, site, position, ids[position], text, token_class(position, text), value,
                 token_channel[position].item(), value / mean if mean else float("inf"),
                 value / median if median else float("inf"), bool(paper[position]), bool(sun[position]))
            )

    def _attention_rows(self, received: dict[int, torch.Tensor]) -> None:
        if not received:
            return
        window, ids = self.window, self.input_ids
        length = len(ids)
        threshold = ATTENTION_SHARE * length
        outlier_keys = set()
        for layer, per_head in sorted(received.items()):
            cumulative = per_head.mean(dim=0)
            ranked = cumulative.argsort(descending=True, stable=True).tolist()
            over = [p for p in ranked if cumulative[p] >= threshold]
            outlier_keys.update(over)
            top = cumulative[ranked[:2]].tolist() + [float("nan")]
            self.rows["attention_layers"].append((window, layer, top[0], top[1], cumulative.median().item(), threshold, len(over)))
            for rank, position in enumerate(ranked[: max(self.top_k, len(over))], start=1):
                text = token_label(self.tokenizer, ids[position])
                self.rows["attention_keys"].append(
                    (window, layer, rank, position, ids[position], text, token_class(position, text),
                     cumulative[position].item(), position in over)
                )
        keys = sorted(outlier_keys)
        label = " ".join(map(str, keys))
        for layer, per_head in sorted(received.items()):
            share = per_head[:, keys].sum(dim=1) / per_head.sum(dim=1)
            for head, value in enumerate(share.tolist()):
                self.rows["attention_heads"].append((window, layer, head, value, label))

    # -- results ---------------------------------------------------------------------------
    def tables(self) -> dict[str, pd.DataFrame]:
        tables = {name: pd.DataFrame(rows, columns=list(COLUMNS[name])) for name, rows in self.rows.items()}
        channel_rows = [
            (layer, site, channel, value)
            for (layer, site), maxima in sorted(self.channel_max.items())
            for channel, value in enumerate(maxima.cpu().tolist())
        ]
        tables["channel_max"] = pd.DataFrame(channel_rows, columns=list(COLUMNS["channel_max"]))
        return tables
