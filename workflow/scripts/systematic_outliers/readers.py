"""Reading what the capture stage wrote, refusing a missing or broken file by name.

The judgement side (choices, verdicts) and the notebooks read only through here. A table that
may be empty for a model without outliers (`activation_outliers`) is read as empty; every other
empty table is an error, since the capture always writes rows to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import UserError
from .io import intervention_files, prompt_files

# Tables whose emptiness is a finding (no outlier token anywhere), not a broken capture.
MAY_BE_EMPTY = ("activation_outliers",)


class FigureDataError(UserError, ValueError):
    """A statistics file is missing, empty or lacks what a figure or claim needs; the text names it."""


def read_table(folder: str | Path, name: str, needed: tuple[str, ...] = ()) -> pd.DataFrame:
    """One table `folder/name.parquet`, refusing a missing, unreadable or (unless it may be) empty file."""
    path = Path(folder) / f"{name}.parquet"
    try:
        table = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several kinds for a broken file
        raise FigureDataError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise FigureDataError(f"{path}: has no column {', '.join(missing)}")
    if table.empty and name not in MAY_BE_EMPTY:
        raise FigureDataError(f"{path}: is empty; rerun the capture rule that writes it")
    return table


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FigureDataError(f"{path}: missing; rerun the rule that writes it")
    return json.loads(path.read_text())


def windows_text(manifest: dict) -> str:
    """How many windows of how many tokens, and whether each starts with the model's BOS: for captions and claims."""
    text = f"{manifest['windows']} windows of {manifest['window_length']} tokens"
    if manifest.get("add_special_tokens"):
        text += f", each the model's BOS {manifest.get('bos_token')!r} and {manifest['window_length'] - 1} corpus tokens"
    return text


def read_prompt_record(path: str | Path) -> dict:
    """The JSON beside a prompt dump: text, tokens, dtype, device and where the weights come from."""
    path = Path(prompt_files(path)["record"])
    try:
        return json.loads(path.read_text())
    except Exception as error:
        raise FigureDataError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None


def read_prompt(path: str | Path, sites: tuple[str, ...]) -> tuple[dict, list[str]]:
    """A prompt dump as ({"site.layer": numpy array}, token labels), refusing one without `sites` in
    any layer (a hybrid has its attention sites in its softmax layers only)."""
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        tensors, record = load_file(path), json.loads(Path(prompt_files(path)["record"]).read_text())
    except Exception as error:
        raise FigureDataError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None
    missing = [site for site in sites if not any(key.rpartition(".")[0] == site for key in tensors)]
    if missing:
        raise FigureDataError(f"{path}: has no {', '.join(missing)}")
    return tensors, record["tokens"]


def weight_slice(prompt: dict, layer: int, name: str, focus: list[int] | None = None):
    """The kept columns of one MLP matrix at `layer` of a prompt dump as (channels, [channels, d_model]);
    with `focus`, only the edges and the focus channels with their neighbours, as the paper shows."""
    import numpy as np

    key = f"{name}_weight.{layer}"
    if key not in prompt:
        raise FigureDataError(f"the prompt dump has no {key}; rerun rule dump_prompt")
    channels = prompt[f"weight_channels.{layer}"]
    matrix = prompt[key].T if name == "down_proj" else prompt[key]  # down: [d_model, channels]
    if focus is not None:
        missing = sorted(set(focus) - set(channels.tolist()))
        if missing:
            raise FigureDataError(
                f"the prompt dump keeps no {name} weights of layer {layer + 1} at channels "
                f"{', '.join(map(str, missing))}; rerun rule dump_prompt"
            )
        wanted = {0, 1, 2, int(channels[-1])} | {c + d for c in focus for d in (-1, 0, 1)}
        keep = np.isin(channels, sorted(wanted))
        channels, matrix = channels[keep], matrix[keep]
    return [int(c) for c in channels], matrix


@dataclass
class Evidence:
    """Everything the claims, Table 1 and the figures read for one model, loaded once."""

    model: str
    stats_dir: Path
    manifest: dict
    sites: pd.DataFrame
    topk: pd.DataFrame
    outliers: pd.DataFrame  # may be empty: no activation-outlier token in any window
    channel_max: pd.DataFrame
    channel_extremes: pd.DataFrame  # per window, layer and residual-width site: each channel's signed extreme
    attention_layers: pd.DataFrame | None  # None: the architecture has no attention capture (Falcon)
    attention_keys: pd.DataFrame | None
    attention_heads: pd.DataFrame | None
    weights: pd.DataFrame
    attention_sink: pd.DataFrame | None = None  # None: no learned sink (only gpt-oss-like models have one)
    attention_first_key: pd.DataFrame | None = None  # Gu et al.'s α per window, layer and head; None without attention capture

    @property
    def windows(self) -> int:
        return self.manifest["windows"]

    @property
    def has_attention(self) -> bool:
        return self.attention_layers is not None

    @classmethod
    def load(cls, model: str, stats_dir, weights_path) -> Evidence:
        weights_path = Path(weights_path)
        manifest = read_manifest(stats_dir)
        attention = "attn_probs" in manifest["sites"]

        def attention_table(name, needed):
            return read_table(stats_dir, name, needed) if attention else None

        return cls(
            model=model,
            stats_dir=Path(stats_dir),
            manifest=manifest,
            sites=read_table(stats_dir, "sites", ("window", "layer", "site", "mean_abs", "median_abs", "kurtosis")),
            topk=read_table(stats_dir, "topk", ("window", "layer", "site", "rank", "value", "channel")),
            outliers=read_table(
                stats_dir,
                "activation_outliers",
                ("window", "layer", "site", "position", "channel", "massive_channels", "token_class", "paper_rule", "sun_rule", "max_abs"),
            ),
            channel_max=read_table(stats_dir, "channel_max", ("layer", "site", "max_abs")),
            channel_extremes=read_table(stats_dir, "channel_extremes", ("window", "layer", "site", "value")),
            attention_layers=attention_table(
                "attention_layers", ("window", "layer", "top1", "top2", "median", "threshold", "outlier_keys")
            ),
            attention_keys=attention_table("attention_keys", ("window", "layer", "rank", "position", "token_class", "is_outlier")),
            attention_heads=attention_table("attention_heads", ("window", "layer", "head", "outlier_share")),
            weights=read_table(
                weights_path.parent,
                weights_path.stem,
                ("layer", "module", "columns", "max_ratio", "column_ratio", "top_columns", "top_column_rows", "mlp_down"),
            ),
            attention_first_key=attention_table("attention_first_key", ("window", "layer", "head", "first_key")),
            attention_sink=(
                read_table(stats_dir, "attention_sink", ("window", "layer", "head", "cumulative"))
                if attention and manifest.get("learned_sink")
                else None
            ),
        )


@dataclass
class InterventionResults:
    """What rule interventions wrote for one model and corpus (interventions.py)."""

    losses: pd.DataFrame
    scaling: pd.DataFrame  # empty: no attention to read (record["sink_not_measured"] says why)
    points: pd.DataFrame
    record: dict

    @classmethod
    def load(cls, losses_path) -> InterventionResults:
        """From results/interventions/{model}/{corpus}.parquet and the files beside it."""
        path = Path(losses_path)
        files = intervention_files(path)
        record_path = Path(files["record"])
        try:
            record = json.loads(record_path.read_text())
        except Exception as error:
            raise FigureDataError(f"{record_path}: cannot be read ({type(error).__name__}: {error}); rerun rule interventions") from None
        if not all(kind in record.get("activation", {}) for kind in ("once", "held")):
            raise FigureDataError(f"{record_path}: written by an older version (no once and held ablations); rerun rule interventions")
        # JSON keys are strings: windows back to ints
        for target in [t for kind in ("once", "held") for t in record.get("activation", {}).get(kind, [])]:
            target["tokens"] = {int(window): positions for window, positions in target["tokens"].items()}
        if record.get("sink"):
            record["sink"]["keys"] = {int(window): positions for window, positions in record["sink"]["keys"].items()}

        def beside(part):  # empty where the attention cannot be read
            part_path = files[part]
            try:
                return pd.read_parquet(part_path)
            except Exception as error:
                raise FigureDataError(f"{part_path}: cannot be read ({type(error).__name__}: {error}); rerun rule interventions") from None

        return cls(
            losses=read_table(path.parent, path.stem, ("intervention", "seed", "window", "loss")),
            scaling=beside("scaling"),
            points=beside("points"),
            record=record,
        )
