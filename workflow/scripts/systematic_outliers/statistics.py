"""Outlier statistics, reduced on the device inside the capture hooks.

`CorpusStatistics` is the callback of `capture.hooks`: for each window it keeps only
reductions (top-k with positions, mean, median, per-token and per-channel maxima, the
attention each key receives per head) and moves them to the host once per window, so
memory is bounded by one window whatever the number of windows.

Nothing inside a hook waits for the device: no `.item()`, `nonzero` or boolean indexing, and on
CUDA a median by radix select instead of a sort. The outlier tokens are read among the
`candidate_tokens` tokens with the largest maxima; a window with more runs again with more.
Every threshold and comparison is in float32 whatever the model's dtype, and a window whose
activations are not finite (a float16 overflow) stops the pass with `NonFiniteActivation`.

What counts as an outlier, and the token classes, are definitions.py's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from . import field_metrics
from .capture import ATTENTION_SITES, ExpertInputs
from .config import UserError
from .definitions import ATTENTION_SHARE, PAPER_RATIO, SUN_FLOOR, SUN_RATIO, TOKEN_CLASSES, TOP_K, is_massive, is_paper_outlier, token_class

# Sites that also get the median, per-token maxima and outlier tokens (they need |x| in full).
TOKEN_SITES = ("attn_residual", "down_proj_input", "layer_output")
# What follows each outlier channel through the layers, as per-window signed channel extremes: the
# residual stream, and what a layer adds to it after its attention (its MLP's write, through any
# post-norm or scale, as the stream receives it: layer_output − attn_residual).
EXTREME_SITES = ("layer_output", "mlp_write")

# Every table and column this module writes, for the manifest and the README.
COLUMNS = {
    "sites": {
        "window": "window index in the windows file",
        "layer": "decoder layer, 0-based",
        "site": "capture site (capture.SITES)",
        "mean_abs": "mean |x| over the window's tokens × channels (inside experts: over the routed tokens × experts × channels)",
        "median_abs": f"median |x| (lower median) over tokens × channels, routed entries only inside experts; only for {', '.join(TOKEN_SITES)}",
        "max_abs": "max |x|",
        "kurtosis": "E[(x − μ)⁴] / σ⁴ over tokens × channels (3 for a Gaussian; field_metrics.kurtosis); only for layer_output",
    },
    "topk": {
        "window": "",
        "layer": "",
        "site": "",
        "rank": "1 = largest |x| of this window, layer and site",
        "value": "|x|",
        "position": "token position in the window",
        "channel": "channel (for query/key/value: head × head_dim + dim; inside experts: expert × intermediate + channel)",
        "token_id": "token id at that position",
    },
    "channel_max": {
        "layer": "",
        "site": "",
        "max_abs": "list: max_abs[channel] is the max |x| of that channel over every token of every window "
        "(inside experts: channel expert × intermediate + c, over the tokens routed to that expert)",
    },
    "channel_extremes": {
        "window": "",
        "layer": "",
        "site": f"one of {', '.join(EXTREME_SITES)} (layer_output − attn_residual: what the layer adds after its attention)",
        "value": "list: value[channel] is x (signed) at the token where |x| of that channel is largest in this window",
    },
    "token_max": {
        "window": "",
        "layer": "",
        "site": f"one of {', '.join(TOKEN_SITES)}",
        "max_abs": "list: max_abs[position] is the max |x| over channels at that token",
    },
    "activation_outliers": {
        "window": "",
        "layer": "",
        "site": "",
        "position": "",
        "token_id": "",
        "token": "the token decoded alone",
        "token_class": f"one of {', '.join(TOKEN_CLASSES)}",
        "max_abs": "max |x| over channels at this token",
        "channel": "channel of that maximum",
        "massive_channels": "list: the channels massive at this token by Sun et al.'s rule against the window's median (empty inside experts)",
        "ratio_to_mean": "max_abs / mean |x| of the window",
        "ratio_to_median": "max_abs / median |x| of the window",
        "paper_rule": f"ratio_to_mean > {PAPER_RATIO:g} (the official code)",
        "sun_rule": f"max_abs > {SUN_FLOOR:g} and ratio_to_median > {SUN_RATIO:g} (Sun et al.)",
    },
    "attention_layers": {
        "window": "",
        "layer": "",
        "top1": "largest cumulative head-averaged attention received by a key",
        "top2": "second largest",
        "median": "median over keys",
        "threshold": f"{ATTENTION_SHARE:g} × window length",
        "outlier_keys": "number of keys at or above the threshold in this layer",
    },
    "attention_keys": {
        "window": "",
        "layer": "",
        "rank": "1 = the key that receives the most attention",
        "position": "",
        "token_id": "",
        "token": "",
        "token_class": "",
        "cumulative": "sum over queries of the head-averaged attention probability on this key",
        "is_outlier": "cumulative >= threshold in this layer",
    },
    "attention_heads": {
        "window": "",
        "layer": "",
        "head": "",
        "outlier_share": "share of this head's attention that goes to the window's outlier keys",
        "outlier_keys": "the window's outlier keys: positions over the threshold in any layer",
    },
    "attention_first_key": {
        "window": "",
        "layer": "",
        "head": "",
        "first_key": f"mean weight on the first key over the first {field_metrics.SINK_WINDOW} queries, the first included "
        "(Gu et al.'s α; field_metrics.first_key_weight)",
    },
    "attention_sink": {  # only for models with a learned sink (gpt-oss)
        "window": "",
        "layer": "",
        "head": "",
        "cumulative": "sum over queries of the probability this head puts on its learned sink (1 − the row's sum over keys): "
        "the sink as a pseudo-key, on the scale of attention_keys.cumulative",
    },
}


def lower_median(values: torch.Tensor) -> torch.Tensor:
    """The lower median of all values, in float32 (torch.median's). On the CPU through numpy's in-place
    introselect, several times faster than torch's there: it reorders `values`. On CUDA by radix
    select (`radix_median`): torch.median sorts the whole tensor there."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        flat = values.numpy().reshape(-1)
        index = (flat.size - 1) // 2
        flat.partition(index)
        return torch.tensor(flat[index], dtype=torch.float32)
    if values.device.type == "cpu":
        return values.median().float()
    return radix_median(values)


def radix_median(values: torch.Tensor) -> torch.Tensor:
    """The lower median of non-negative `values` (|x|), exact, without sorting and without waiting for the
    device: the float32 bit patterns of non-negative numbers order as integers, so two histograms of 2^16
    bins (the high halves, then the low halves within the chosen high bin) find the k-th smallest. The
    histograms run over chunks of 2^24 values: float32 counts stay exact, and temporaries stay small."""
    flat = values.reshape(-1)
    rank = torch.tensor((flat.numel() - 1) // 2, device=flat.device)  # 0-based rank of the lower median

    def histogram(key_of):  # counts of key_of(bits) over 0…65535; keys outside (-1) are not counted
        counts = torch.zeros(65536, dtype=torch.long, device=flat.device)
        for chunk in flat.split(2**24):
            counts += torch.histc(key_of(chunk.float().view(torch.int32)).float(), bins=65536, min=0, max=65536).long()
        return counts

    def select(counts, rank):  # (the bin holding the rank-th smallest key, its rank within that bin)
        before = counts.cumsum(0)
        chosen = torch.searchsorted(before, rank, right=True)
        return chosen, rank - (before[chosen] - counts[chosen])

    high_bin, rank = select(histogram(lambda bits: bits >> 16), rank)
    low_bin, _ = select(histogram(lambda bits: torch.where(bits >> 16 == high_bin, bits & 0xFFFF, -1)), rank)
    return ((high_bin << 16) | low_bin).to(torch.int32).view(torch.float32)


def signed_extremes(x: torch.Tensor) -> torch.Tensor:
    """Per channel of x [tokens, channels], x at the token where |x| is largest (signed)."""
    high, low = x.amax(dim=0), x.amin(dim=0)
    return torch.where(high >= -low, high, low)


def to_host(groups: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The tensors of `groups` on the host: as they are when they already are (the CPU), else `packed`."""
    if all(tensor.device.type == "cpu" for group in groups for tensor in group.values()):
        return groups
    return packed(groups)


def packed(groups: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The tensors of `groups` moved to the host in one transfer per dtype kind (floating point as
    float32, integers and booleans as int64) instead of one per tensor; shapes are known without the device."""
    flat = [(g, name, tensor) for g, group in enumerate(groups) for name, tensor in group.items()]
    moved = [{} for _ in groups]
    for floating in (True, False):
        part = [(g, name, tensor) for g, name, tensor in flat if tensor.is_floating_point() == floating]
        if not part:
            continue
        kind = torch.float32 if floating else torch.int64
        together = torch.cat([tensor.reshape(-1).to(kind) for _, _, tensor in part]).cpu()
        for (g, name, tensor), piece in zip(part, together.split([tensor.numel() for _, _, tensor in part])):
            moved[g][name] = piece.reshape(tensor.shape)
    return moved


def token_label(tokenizer, token_id: int) -> str:
    """The token decoded alone, with a newline shown as \\n (for tables and axis labels)."""
    return tokenizer.decode([int(token_id)]).replace("\n", "\\n")


# what to do when activations overflow: run the model in a dtype with a wider range
WIDER_DTYPE = {
    torch.float16: "the model overflows float16 (65,504): set its dtype to bfloat16 (or float32) and run again",
    torch.bfloat16: "set its dtype to float32 and run again",
}


class NonFiniteActivation(UserError):
    """A captured activation is inf or NaN (the model overflowed its dtype); the text says where and what to do."""

    @classmethod
    def at(cls, model: str, site: str, layer: int, where: str, dtype: torch.dtype) -> NonFiniteActivation:
        return cls(
            f"models.{model}: {site} of layer {layer + 1} is not finite (inf or NaN) in {where} in "
            f"{str(dtype).removeprefix('torch.')}; {WIDER_DTYPE.get(dtype, 'check the weights for NaN')}"
        )


class CorpusStatistics:
    """Callback of `capture.hooks` that keeps per-window reductions of every site.

    Every site gets mean, max, top-k (found among the k tokens with the largest maxima,
    where the k largest entries must lie) and per-channel maxima, from cheap signed
    reductions. The residual-stream and down-projection sites (TOKEN_SITES) also get the
    median, per-token maxima and outlier tokens, which need |x| in full. Run each window
    through `run_window`, inside `capture.hooks(model, sites, statistics)`.
    """

    def __init__(self, tokenizer, windows: int, top_k: int = TOP_K, learned_sink: bool = False, model: str = "the model"):
        self.tokenizer, self.windows, self.top_k, self.model = tokenizer, windows, top_k, model
        skipped = ("channel_max", "token_max", "channel_extremes") + (() if learned_sink else ("attention_sink",))
        self.rows = {name: [] for name in COLUMNS if name not in skipped}
        self.learned_sink = learned_sink
        # where the outlier tokens are looked for: the tokens with the largest maxima, and at each the
        # channels with the largest |x| (massive_channels); doubled for a window that has more
        self.candidate_tokens, self.candidate_channels = 16, 8
        self.channel_max: dict[tuple[int, str], torch.Tensor] = {}
        # [windows, tokens] per (layer, site), allocated in the first window: small arrays kept
        # across windows would otherwise pin the C heap between large transient ones, and the
        # process would grow with every window
        self.token_max: dict[tuple[int, str], np.ndarray] = {}
        self.channel_extremes: dict[tuple[int, str], np.ndarray] = {}  # [windows, channels] per (layer, site), likewise
        self.labels: dict[int, str] = {}
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.attn_residual: dict[int, torch.Tensor] = {}  # until the layer's output: what the layer adds after attention

    def run_window(self, window: int, input_ids: torch.Tensor, forward) -> None:
        """One window: `forward(input_ids)` runs the hooked model, then the reductions reach the host
        (once) and become rows. A window with more outlier tokens (or massive channels at one)
        than were looked at runs again with twice as many: the tables are exact either way."""
        while True:
            self.start_window(window, input_ids)
            forward(input_ids)
            if self.finish_window():
                return

    # -- per window, inside the hooks ------------------------------------------------------
    def start_window(self, window: int, input_ids: torch.Tensor) -> None:
        self.window, self.input_ids = window, input_ids.flatten()
        self.pending = []  # (layer, site, {name: reduction on the device})
        self.received = {}  # layer -> [heads, keys] attention received
        self.first_key = {}  # layer -> [heads] Gu et al.'s α
        self.sink_received = {}  # layer -> [heads] attention the learned sink receives

    def __call__(self, site: str, layer: int, tensor: torch.Tensor) -> None:
        if site == "attn_probs":  # [heads, queries, keys] -> attention each key receives, per head
            self.received[layer] = tensor.sum(dim=1, dtype=torch.float32)
            self.first_key[layer] = field_metrics.first_key_weight(tensor[..., :1].float())  # only the first key
            if self.learned_sink:  # what each query's row lacks of 1 went to the sink
                self.sink_received[layer] = (1 - tensor.sum(dim=-1, dtype=torch.float32)).clamp_min(0).sum(dim=-1)
            return
        if site in ATTENTION_SITES:
            return
        # inside mixture-of-experts MLPs: the routed entries only, [tokens, top_k × intermediate]; their
        # channels are named as in ExpertInputs.dense (expert × intermediate + channel)
        routed = tensor if isinstance(tensor, ExpertInputs) else None
        x = routed.values.flatten(1) if routed else tensor.reshape(tensor.shape[0], -1)
        tokens, width = x.shape
        self.dtype = x.dtype  # for the message when it overflows
        if site in TOKEN_SITES:
            magnitude = torch.abs(x, out=self._buffer(x))  # a reused buffer: allocating |x| costs more than the maths
            token_max, channel_max, mean = magnitude.amax(dim=1), magnitude.amax(dim=0), magnitude.mean(dtype=torch.float32)
            if routed:  # per expert's channel, over the tokens routed to it
                per_expert = magnitude.new_zeros(routed.num_experts, routed.intermediate)
                index = routed.experts.long().reshape(-1, 1).expand(-1, routed.intermediate)
                per_expert.scatter_reduce_(0, index, magnitude.reshape(-1, routed.intermediate), "amax")
                channel_max = per_expert.flatten()
        else:  # signed reductions need no |x| at all
            token_max = torch.maximum(x.amax(dim=1), -x.amin(dim=1))
            channel_max = torch.maximum(x.amax(dim=0), -x.amin(dim=0))
            mean = torch.linalg.vector_norm(x, ord=1, dtype=torch.float32) / x.numel()
        token_max = token_max.float()  # thresholds in float32: 1000 × mean overflows float16
        # the k largest entries lie among the k tokens with the largest maxima; the outlier tokens
        # (TOKEN_SITES) among the candidate_tokens largest: one ranking and one gather for both
        ranked = token_max.topk(min(max(self.top_k, self.candidate_tokens if site in TOKEN_SITES else 0), tokens)).indices
        at_ranked = x[ranked].abs()  # [ranked, width]
        rows = ranked[: self.top_k]
        top_values, top_flat = at_ranked[: self.top_k].flatten().topk(min(self.top_k, rows.numel() * width))
        reduced = {
            "mean": mean,
            "max": token_max.max(),
            "top_values": top_values.float(),
            "top_position": rows[top_flat // width],
            "top_channel": routed.channels(rows[top_flat // width], top_flat % width) if routed else top_flat % width,
        }
        if site in TOKEN_SITES:
            median = lower_median(magnitude)  # last: on the CPU it reorders the buffer in place
            # the outlier tokens are those with the largest maxima: look among the first candidates, and
            # count them all, so that finish_window knows whether the candidates held every one
            outlier = is_paper_outlier(token_max, mean) | is_massive(token_max, median)
            candidates = ranked[: self.candidate_tokens]
            at_candidates = at_ranked[: self.candidate_tokens].float()  # [candidates, width]
            top_channels = at_candidates.topk(min(self.candidate_channels, width), dim=1)  # massive channels lie among these
            reduced.update(
                median=median,
                token_max=token_max,
                outliers=outlier.sum(),
                candidates=candidates,
                candidate_outlier=outlier[candidates],
                candidate_channel=routed.channels(candidates, top_channels.indices[:, 0]) if routed else top_channels.indices[:, 0],
                # inside experts the channels are routed slots: no massive channels there
                candidate_massive=top_channels.indices[:, :0] if routed else top_channels.indices,
                candidate_massive_values=top_channels.values[:, :0] if routed else top_channels.values,
            )
        if site == "layer_output":
            reduced["kurtosis"] = field_metrics.kurtosis(x.float())
        if site == "attn_residual":  # a copy: the model may reuse the residual's memory
            self.attn_residual[layer] = x.clone()
        if site == "layer_output":  # signed extremes: an outlier's growth and its cancellation differ in sign
            reduced["extreme.layer_output"] = signed_extremes(x).float()
            before = self.attn_residual.pop(layer, None)
            if before is not None:
                reduced["extreme.mlp_write"] = signed_extremes(x.float() - before.float())  # half precision would round it away
        key = (layer, site)
        if key in self.channel_max:  # in place: nothing long-lived is reallocated per window
            torch.maximum(self.channel_max[key], channel_max.float(), out=self.channel_max[key])
        else:
            self.channel_max[key] = channel_max.float()
        self.pending.append((layer, site, reduced))

    def _buffer(self, like: torch.Tensor) -> torch.Tensor:
        key = (tuple(like.shape), like.dtype, like.device)
        if key not in self.buffers:
            self.buffers[key] = torch.empty_like(like)
        return self.buffers[key]

    # -- per window, after the forward pass ------------------------------------------------
    def finish_window(self) -> bool:
        """Move this window's reductions to the host at once and turn them into rows; False (and no
        rows) when the window must run again with more candidates. Raises NonFiniteActivation at the
        first site whose activations are not finite."""
        attention = [("received", layer, value) for layer, value in self.received.items()]
        attention += [("first_key", layer, value) for layer, value in self.first_key.items()]
        attention += [("sink", layer, value) for layer, value in self.sink_received.items()]
        reductions = [reduced for _, _, reduced in self.pending]
        host = to_host([*reductions, {str(i): value for i, (_, _, value) in enumerate(attention)}])
        reductions, attention_host = host[:-1], host[-1]
        for (layer, site, _), reduced in zip(self.pending, reductions):
            if not np.isfinite(reduced["max"].item()):
                raise NonFiniteActivation.at(self.model, site, layer, f"window {self.window}", self.dtype)
        if not self._candidates_held(reductions):
            return False
        ids = self.input_ids.tolist()
        for (layer, site, _), reduced in zip(self.pending, reductions):
            self._site_rows(layer, site, reduced, ids)
        per_kind = {"received": {}, "first_key": {}, "sink": {}}
        for i, (kind, layer, _) in enumerate(attention):
            per_kind[kind][layer] = attention_host[str(i)]
        self._attention_rows(per_kind["received"], ids)
        for name, per_layer in (("attention_first_key", per_kind["first_key"]), ("attention_sink", per_kind["sink"])):
            for layer, per_head in sorted(per_layer.items()):
                for head, value in enumerate(per_head.tolist()):
                    self.rows[name].append((self.window, layer, head, value))
        self.pending, self.received, self.first_key, self.sink_received = [], {}, {}, {}
        return True

    def _candidates_held(self, reductions) -> bool:
        """Whether every outlier token was among the candidate tokens, and every massive channel at one
        among its candidate channels; if not, doubles the candidates for the next try."""
        held = True
        for reduced in reductions:
            if "outliers" not in reduced:
                continue
            if int(reduced["outliers"]) > len(reduced["candidates"]) and len(reduced["candidates"]) == self.candidate_tokens:
                self.candidate_tokens, held = 2 * self.candidate_tokens, False
            values = reduced["candidate_massive_values"]
            if values.shape[1] == self.candidate_channels and bool(is_massive(values[:, -1], reduced["median"]).any()):
                self.candidate_channels, held = 2 * self.candidate_channels, False
        return held

    def label(self, token_id: int) -> str:
        if token_id not in self.labels:
            self.labels[token_id] = token_label(self.tokenizer, token_id)
        return self.labels[token_id]

    def _site_rows(self, layer, site, reduced, ids):
        window, mean = self.window, reduced["mean"].item()
        median = reduced["median"].item() if "median" in reduced else float("nan")
        kurtosis = reduced["kurtosis"].item() if "kurtosis" in reduced else float("nan")
        self.rows["sites"].append((window, layer, site, mean, median, reduced["max"].item(), kurtosis))
        top = zip(reduced["top_values"].tolist(), reduced["top_position"].tolist(), reduced["top_channel"].tolist())
        for rank, (value, position, channel) in enumerate(top, start=1):
            self.rows["topk"].append((window, layer, site, rank, float(value), position, channel, ids[position]))
        for name in [name for name in reduced if name.startswith("extreme.")]:
            key = (layer, name.removeprefix("extreme."))
            if key not in self.channel_extremes:
                self.channel_extremes[key] = np.full((self.windows, len(reduced[name])), np.nan, dtype=np.float32)
            self.channel_extremes[key][window] = reduced[name].numpy()
        if site not in TOKEN_SITES:
            return
        token_max = reduced["token_max"]
        if (layer, site) not in self.token_max:
            self.token_max[layer, site] = np.full((self.windows, len(token_max)), np.nan, dtype=np.float32)
        self.token_max[layer, site][window] = token_max.numpy()
        # the outlier tokens in position order, each with the channels massive at it (among its candidates)
        outliers = sorted(
            (position, row)
            for row, (position, flagged) in enumerate(zip(reduced["candidates"].tolist(), reduced["candidate_outlier"].tolist()))
            if flagged
        )
        for position, row in outliers:
            text, value = self.label(ids[position]), token_max[position].item()
            channels, values = reduced["candidate_massive"][row], reduced["candidate_massive_values"][row]
            massive = sorted(channels[is_massive(values, reduced["median"])].tolist())
            self.rows["activation_outliers"].append(
                (
                    window,
                    layer,
                    site,
                    position,
                    ids[position],
                    text,
                    token_class(position, text),
                    value,
                    int(reduced["candidate_channel"][row]),
                    massive,
                    value / mean if mean else float("inf"),
                    value / median if median else float("inf"),
                    bool(is_paper_outlier(value, mean)),
                    bool(is_massive(value, median)),
                )
            )

    def _attention_rows(self, received: dict[int, torch.Tensor], ids) -> None:
        if not received:
            return
        window, threshold = self.window, ATTENTION_SHARE * len(ids)
        outlier_keys = set()
        for layer, per_head in sorted(received.items()):
            cumulative = per_head.mean(dim=0)
            ranked = cumulative.argsort(descending=True, stable=True)
            over = int((cumulative >= threshold).sum())
            outlier_keys.update(ranked[:over].tolist())
            top = cumulative[ranked[:2]].tolist() + [float("nan")]
            self.rows["attention_layers"].append((window, layer, top[0], top[1], cumulative.median().item(), threshold, over))
            shown = ranked[: max(self.top_k, over)].tolist()
            for rank, (position, value) in enumerate(zip(shown, cumulative[shown].tolist()), start=1):
                text = self.label(ids[position])
                self.rows["attention_keys"].append(
                    (window, layer, rank, position, ids[position], text, token_class(position, text), value, rank <= over)
                )
        keys = sorted(outlier_keys)
        label = " ".join(map(str, keys))
        for layer, per_head in sorted(received.items()):
            share = per_head[:, keys].sum(dim=1) / per_head.sum(dim=1)
            for head, value in enumerate(share.tolist()):
                self.rows["attention_heads"].append((window, layer, head, value, label))

    # -- results ---------------------------------------------------------------------------
    def _per_window(self, name: str, arrays: dict[tuple[int, str], np.ndarray]) -> pd.DataFrame:
        """Table `name` from [windows, …] arrays per (layer, site): one row, holding a list, per window, layer and site."""
        rows = [(window, layer, site, values[window]) for (layer, site), values in sorted(arrays.items()) for window in range(self.windows)]
        table = pd.DataFrame(rows, columns=list(COLUMNS[name]))
        return table.sort_values(["window", "layer", "site"], kind="stable", ignore_index=True)

    def tables(self) -> dict[str, pd.DataFrame]:
        tables = {}
        for name, rows in self.rows.items():
            tables[name] = pd.DataFrame(rows, columns=list(COLUMNS[name]))
        # one list per row keeps these tables small (the paper's setup has ~40M token maxima)
        tables["token_max"] = self._per_window("token_max", self.token_max)
        tables["channel_extremes"] = self._per_window("channel_extremes", self.channel_extremes)
        tables["channel_max"] = pd.DataFrame(
            [(layer, site, maxima.cpu().numpy()) for (layer, site), maxima in sorted(self.channel_max.items())],
            columns=list(COLUMNS["channel_max"]),
        )
        return tables
