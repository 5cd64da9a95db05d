"""What the outliers do: forward passes that edit a pretrained model, on the statistics' windows.

Four experiments, each on the entries `choices.activation_targets` and `choices.sink_targets`
pick from the corpus statistics:

- activation ablation once (Sun et al.): each outlier channel's entries at the outlier tokens set
  to zero, or to their mean over the windows, at the output of the channel's own emergence layer,
  all channels in one pass; control: as many randomly drawn other channels at the same layers and
  tokens set to zero, one draw per seed;
- activation ablation held: the same entries set to zero (or held at their mean, layer by layer) at
  the output of every layer from the channel's emergence to its disappearance, so that what later
  layers write onto the channel again is removed too (an outlier built over many layers survives
  being zeroed once); control likewise;
- sink ablation: from the first attention-outlier layer on, every head's attention on the
  window's outlier keys removed and renormalised over the other keys; control: as many randomly
  drawn ordinary keys removed the same way, one draw per seed and window;
- the scaling-factor reading, on the unedited pass: per layer, head and query, the share of
  attention on the outlier keys against the norm of that head's output (before the output
  projection), and the value norms of the outlier keys against the median key's.

The edits go through `capture.replace_layer_output` and `capture.attention_edits`; the model's
own code does the rest. Every pass reports the mean next-token loss of each window. An edited
pass runs only from its first edited layer on (`capture.replay_from`), from the hidden state the
unedited pass gave that layer, where a replay without edits reproduces the unedited logits bit
for bit (checked on the first window; the record's `replay` says where each kind started).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager, nullcontext

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import capture
from .choices import ActivationTargets, ChannelTarget, SinkTargets
from .definitions import (
    ABLATIONS,
    BASELINE,
    INTERVENTIONS,
    KEYS_REMOVED,
    POINTS_PER_LAYER,
    RANDOM_KEYS_REMOVED,
)

LOSS_COLUMNS = {
    "intervention": f"one of {', '.join(INTERVENTIONS)}",
    "seed": "the control's random draw; -1 for the others",
    "window": "window index in the windows file",
    "loss": "mean next-token cross-entropy over the window's tokens (nats)",
    "edited": "entries set (activation ablations, summed over the edited layers) or keys removed (sink ablation) in this window",
}
SCALING_COLUMNS = {
    "window": "",
    "layer": "decoder layer, 0-based",
    "correlation": "Spearman rank correlation over (head, query) of the attention share on the window's outlier keys "
    "and the norm of the head's output before the output projection",
    "points": "(head, query) pairs: queries that see an outlier key and another key",
    "mean_share": "mean attention share on the outlier keys over those pairs",
    "value_norm_ratio": "median over key-value heads of the outlier keys' mean value norm / the median ordinary key's "
    "(NaN where the median ordinary key's value norm is 0 in every key-value head: undefined)",
}


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean cross-entropy of predicting ids[1:] from logits[:-1] (one window, float32). NaN when the
    logits overflowed (as zeroing massive activations can make a float16 model do): the report reads
    a non-finite loss as an infinite one."""
    return float(torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:].to(logits.device)))


def random_channels(targets: list[ChannelTarget], width: int, seed: int) -> list[ChannelTarget]:
    """The control of `targets`: each target's layers and tokens in a channel drawn from the other
    channels of the layer (as many as the targets, without repeats; one draw per seed)."""
    others = np.setdiff1d(np.arange(width), [target.channel for target in targets])
    drawn = np.random.default_rng(seed).choice(others, size=len(targets), replace=False).tolist()
    return [ChannelTarget(int(channel), target.layers, target.tokens) for target, channel in zip(targets, drawn)]


def random_keys(keys: list[int], window_length: int, seed: int, window: int) -> list[int]:
    """As many keys as `keys`, drawn from the window's other positions (one draw per seed and window);
    fewer where the window has fewer others (the record's counts show it)."""
    others = np.setdiff1d(np.arange(window_length), keys)
    return sorted(np.random.default_rng([seed, window]).choice(others, size=min(len(keys), len(others)), replace=False).tolist())


def set_entries(hidden: torch.Tensor, edits: list[tuple[list[int], int, float]]) -> torch.Tensor:
    """A copy of `hidden` [1, tokens, d_model] with hidden[0, tokens, channel] set to value for each
    (tokens, channel, value) of `edits`."""
    edited = hidden.clone()
    for tokens, channel, value in edits:
        if tokens:
            edited[0, torch.tensor(tokens, device=hidden.device), channel] = torch.as_tensor(
                value, dtype=hidden.dtype, device=hidden.device
            )
    return edited


def _rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN where it is undefined (fewer than 3 points, or a constant)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy())[0, 1])


class ScalingReading:
    """Observer for `capture.attention_edits` on the unedited pass: one row per window and layer,
    and a fixed-size sample of (head, query) points per layer for the scatter plots."""

    def __init__(self, keys: dict[int, list[int]], windows: int, points_per_layer: int = POINTS_PER_LAYER):
        self.keys, self.per_window = keys, max(1, points_per_layer // max(windows, 1))
        self.window, self.rows, self.points = 0, [], []

    def __call__(self, layer, probs, output, value, visible):
        keys = self.keys.get(self.window, [])
        if not keys:
            return
        index = torch.tensor(keys, device=probs.device)
        share = probs[:, :, index].float().sum(-1)  # [heads, queries]
        norm = output.float().norm(dim=-1).T  # [heads, queries]
        # queries that see an outlier key and another key: otherwise the share is 0 or 1 by construction
        on_outlier = torch.zeros(visible.shape[-1], dtype=torch.bool, device=visible.device)
        on_outlier[index.to(visible.device)] = True
        valid = ((visible & on_outlier).any(-1) & (visible & ~on_outlier).any(-1)).cpu().numpy()
        heads, queries_valid = np.nonzero(np.broadcast_to(valid, share.shape))
        share_valid, norm_valid = share.cpu().numpy()[heads, queries_valid], norm.cpu().numpy()[heads, queries_valid]
        values = value.float().norm(dim=-1)  # [kv heads, keys]
        ordinary = torch.tensor(np.setdiff1d(np.arange(values.shape[1]), keys), device=values.device)
        # medians as numpy's: of an even count the mean of the middle two (torch.median takes the lower one, so over two
        # key-value heads it took the smaller ratio)
        median = values[:, ordinary].quantile(0.5, dim=-1)
        ratio = torch.where(median > 0, values[:, index].mean(-1) / median, torch.nan)  # a zero denominator: undefined
        self.rows.append(
            {
                "window": self.window,
                "layer": layer,
                "correlation": _rank_correlation(share_valid, norm_valid),
                "points": int(share_valid.size),
                "mean_share": float(share_valid.mean()) if share_valid.size else float("nan"),
                "value_norm_ratio": float(ratio.nanquantile(0.5)),  # NaN when no head has one
            }
        )
        pick = np.random.default_rng([self.window, layer]).permutation(len(heads))[: self.per_window]
        self.points += [
            (self.window, layer, int(heads[i]), int(queries_valid[i]), float(share_valid[i]), float(norm_valid[i])) for i in pick
        ]


class Passes:
    """The forward passes of one `run` over the windows and what they share: the window a pass is
    on, the entries its edits have set (or keys removed) there, each pass's losses and seconds.

    An edit changes nothing before its first edited layer: an edited pass starts there (`start`),
    from what the layer before it returned on the reference pass (`entering`: per start, one per
    window; the reference is the unedited pass here, a quantized one in quantization.py), where a
    replay from that start gives the reference logits bit for bit (`exact`, checked on the first window)."""

    def __init__(self, model, input_ids: torch.Tensor, starts, reference: str = BASELINE):
        self.model, self.input_ids = model, input_ids
        self.reference = reference  # the pass the replays start from (quantization: a quantized one)
        self.window = 0  # the window the running pass is on
        self.edited = 0  # entries set or keys removed in that window so far
        self.losses, self.seconds = [], {}
        self.entering = {start: [] for start in set(starts) if start > 0}
        self.exact = {}  # start -> whether a replay from it without edits gives the reference logits bit for bit
        self.reference_logits = None  # window 0's logits on the reference pass, until the replays are checked

    def replaying(self, start: int):
        if not self.exact.get(start):
            return nullcontext()  # from the first layer: no replay, or one that would not be exact
        return capture.replay_from(self.model, start, lambda: self.entering[start][self.window])

    def run(self, name: str, seed: int, edits, start: int = 0) -> None:
        """One pass over the windows under `edits()` (a context manager), from layer `start` where it replays exactly."""
        label = f"{name}{f' seed {seed}' if seed >= 0 else ''}"
        started = time.perf_counter()
        with edits(), self.replaying(start), torch.no_grad():
            for window, ids in enumerate(tqdm(self.input_ids, desc=label, unit="window")):
                self.window = window
                logits = self.model(ids[None].to(self.model.device), use_cache=False).logits[0]
                if name == self.reference and window == 0:
                    self.reference_logits = logits
                self.losses.append(
                    {"intervention": name, "seed": seed, "window": window, "loss": next_token_loss(logits, ids), "edited": self.edited}
                )
                self.edited = 0
        self.seconds[label] = round(time.perf_counter() - started, 2)

    def keep_entering(self) -> ExitStack:
        """For the reference pass: what the layer before each start returns, kept per window."""
        layer_modules = capture.decoder_layers(self.model, capture.architecture_of(self.model))
        stack = ExitStack()
        for start in self.entering:
            stack.callback(layer_modules[start - 1].register_forward_hook(_keep_output(self.entering[start])).remove)
        return stack

    def check_replays(self, edits=nullcontext) -> None:
        """After the reference pass: window 0 replayed under its `edits` from each start; a start whose
        replay differs from the reference logits is not used (its passes run from the first layer)."""
        with edits(), torch.no_grad():
            for start in self.entering:
                with capture.replay_from(self.model, start, lambda start=start: self.entering[start][0]):
                    replayed = self.model(self.input_ids[0][None].to(self.model.device), use_cache=False).logits[0]
                self.exact[start] = bool(torch.equal(replayed, self.reference_logits))
                if not self.exact[start]:  # said in the rule log and in the record: these passes run in full
                    print(
                        f"a replay from layer {start} does not give the logits of the {self.reference} pass; its passes run from the first layer"
                    )
        self.reference_logits = None


class _EntryValues:
    """Callback of `capture.hooks` at the layer outputs on the unedited pass: the values at the entries
    the mean ablations set, per (channel, layer), for their means over the windows."""

    def __init__(self, activation: ActivationTargets, passes: Passes):
        self.passes = passes
        # (channel, layer) -> the tokens whose values there the mean ablations set (both ablations edit the same entries)
        self.watched = {(t.channel, layer): t.tokens for kind in ABLATIONS for t in getattr(activation, kind) for layer in t.layers}
        self.seen = {key: [] for key in self.watched}

    def __call__(self, site, layer, tensor):
        window = self.passes.window
        for (channel, at), tokens in self.watched.items():
            if at == layer and tokens.get(window):
                self.seen[channel, at].append(tensor[tokens[window], channel].float().cpu())

    def means(self) -> dict[tuple[int, int], float]:
        return {key: float(torch.cat(values).mean()) if values else 0.0 for key, values in self.seen.items()}


@contextmanager
def _unedited(passes: Passes, values: _EntryValues, reading: ScalingReading | None):
    """What the unedited pass watches: the entries' values, the scaling reading (without `reading`,
    none: attention that cannot be edited cannot be read either) and what each replay start receives."""
    model = passes.model
    layer_modules = capture.decoder_layers(model, capture.architecture_of(model))
    with ExitStack() as stack:
        stack.enter_context(capture.hooks(model, ["layer_output"], values))
        if reading is not None:
            stack.enter_context(capture.attention_edits(model, range(len(layer_modules)), observe=_follow(reading, passes)))
        stack.enter_context(passes.keep_entering())
        yield


def _setting(passes: Passes, targets: list[ChannelTarget], values: dict | None = None):
    """The edits (for `Passes.run`) that set each target's entries to 0, or with `values` to its mean at that layer."""
    by_layer = {}
    for target in targets:
        for layer in target.layers:
            by_layer.setdefault(layer, []).append(target)

    def replace(layer, hidden):
        edits = [
            (target.tokens.get(passes.window, []), target.channel, values[target.channel, layer] if values else 0.0)
            for target in by_layer[layer]
        ]
        passes.edited += sum(len(tokens) for tokens, _, _ in edits)
        return set_entries(hidden, edits)

    @contextmanager
    def edits():
        with ExitStack() as stack:
            for layer in by_layer:
                stack.enter_context(capture.replace_layer_output(passes.model, layer, lambda hidden, layer=layer: replace(layer, hidden)))
            yield

    return edits


def _removing(passes: Passes, layers: range, choose):
    """The edits (for `Passes.run`) that remove the keys `choose(window)` from the softmax at `layers`."""

    def remove_keys():
        keys = choose(passes.window)
        passes.edited = len(keys)
        return keys

    return lambda: capture.attention_edits(passes.model, layers, remove_keys=remove_keys)


def run(
    model, input_ids: torch.Tensor, activation: ActivationTargets, sink: SinkTargets | None, seeds: list[int], sink_reason: str = ""
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Every pass over the windows `input_ids` [windows, tokens]: (losses, scaling rows, scatter
    points, a record of the mean values used and the seconds each pass took).

    Without `sink` (the architecture's attention cannot be edited; `sink_reason` says why) the
    sink ablation and the scaling reading are skipped."""
    layers = len(capture.decoder_layers(model, capture.architecture_of(model)))
    width = model.config.hidden_size
    # the layer each kind of edited pass starts at: its first edited layer
    starts = {kind: min((layer for t in getattr(activation, kind) for layer in t.layers), default=0) for kind in ABLATIONS}
    if sink is not None:
        starts["sink"] = sink.first_layer
    passes = Passes(model, input_ids, starts.values())

    # 1. the unedited model: losses, the scaling reading and the values the mean ablations set
    reading = ScalingReading(sink.keys if sink else {}, len(input_ids))
    values = _EntryValues(activation, passes)
    passes.run(BASELINE, -1, lambda: _unedited(passes, values, reading if sink is not None else None))
    passes.check_replays()
    mean_values = values.means()

    # 2. the activation ablations, once and held, and their random controls
    for kind, (zeroed, mean, random) in ABLATIONS.items():
        targets = getattr(activation, kind)
        passes.run(zeroed, -1, _setting(passes, targets), starts[kind])
        passes.run(mean, -1, _setting(passes, targets, mean_values), starts[kind])
        for seed in seeds:
            passes.run(random, seed, _setting(passes, random_channels(targets, width, seed)), starts[kind])

    # 3. sink ablation and its random controls
    if sink is not None:
        edited, window_length = range(sink.first_layer, layers), input_ids.shape[1]
        passes.run(KEYS_REMOVED, -1, _removing(passes, edited, lambda window: sink.keys.get(window, [])), sink.first_layer)
        for seed in seeds:
            passes.run(
                RANDOM_KEYS_REMOVED,
                seed,
                _removing(passes, edited, lambda window, seed=seed: random_keys(sink.keys.get(window, []), window_length, seed, window)),
                sink.first_layer,
            )

    points = pd.DataFrame(reading.points, columns=["window", "layer", "head", "query", "outlier_share", "output_norm"])
    record = {
        "mean_values": [{"channel": c, "layer": layer, "value": v} for (c, layer), v in sorted(mean_values.items())],
        "seconds": passes.seconds,
        # per pass kind, the layer it starts at and whether it starts there (the replay was exact)
        "replay": {kind: {"layer": start, "replayed": passes.exact.get(start, False)} for kind, start in starts.items()},
        "sink_not_measured": sink_reason,
    }
    return pd.DataFrame(passes.losses), pd.DataFrame(reading.rows, columns=list(SCALING_COLUMNS)), points, record


def _keep_output(kept: list):
    """Forward hook appending a copy of what a decoder layer returned (a tensor or a tuple) to `kept`."""

    def copy(output):
        if isinstance(output, torch.Tensor):
            return output.clone()
        return tuple(map(copy, output)) if isinstance(output, tuple) else output

    return lambda module, args, output: kept.append(copy(output))


def _follow(reading: ScalingReading, passes: Passes):
    """The observer, told which window the pass is on."""

    def observe(layer, probs, output, value, visible):
        reading.window = passes.window
        reading(layer, probs, output, value, visible)

    return observe


def intervene(name: str, model, evidence, input_ids: torch.Tensor, seeds: list[int], files: dict) -> dict:
    """Every intervention on `model` at the targets its statistics (`readers.Evidence`) locate, over
    the windows `input_ids`; writes `files` (io.intervention_files: losses, scaling, points, record)."""
    from . import choices
    from .io import atomic_file, write_json

    activation = choices.activation_targets(evidence, choices.for_model(evidence))
    sink = choices.sink_targets(evidence)
    if sink is None:
        reason = f"{evidence.manifest['model_type']} has no attention capture (its architecture.json says why)"
    elif not capture.edits_attention(model):
        sink, reason = None, f"{model.config.model_type} runs attention code of its own: keys cannot be removed or head outputs read"
    else:
        reason = ""
    losses, scaling, points, record = run(model, input_ids, activation.value, sink and sink.value, seeds, reason)
    record.update(
        {
            "model": name,
            "windows": int(input_ids.shape[0]),
            "window_length": int(input_ids.shape[1]),
            "add_special_tokens": evidence.manifest.get("add_special_tokens", False),
            "bos_token": evidence.manifest.get("bos_token"),
            "dtype": str(model.dtype).removeprefix("torch."),
            "device": str(model.device),
            "model_type": model.config.model_type,
            "seeds": list(seeds),
            "activation": {
                "channels": activation.value.channels,
                **{
                    kind: [{"channel": t.channel, "layers": list(t.layers), "tokens": t.tokens} for t in getattr(activation.value, kind)]
                    for kind in ABLATIONS
                },
                "why": activation.why,
                "found": activation.found,
            },
            "sink": sink and {"first_layer": sink.value.first_layer, "keys": sink.value.keys, "why": sink.why, "found": sink.found},
            "columns": {"losses": LOSS_COLUMNS, "scaling": SCALING_COLUMNS},
        }
    )
    for part, table in (("losses", losses), ("scaling", scaling), ("points", points)):
        with atomic_file(files[part]) as scratch:
            table.to_parquet(scratch, index=False)
    with atomic_file(files["record"]) as scratch:
        write_json(scratch, record)
    return record
