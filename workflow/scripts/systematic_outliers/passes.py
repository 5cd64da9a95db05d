"""Forward passes that capture: full prompt dumps and streaming corpus statistics.

Both run on the device the job was granted (`load`: devices.device, after the memory plan), in
the dtype of the model's config entry, and record device and dtype in what they write.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import architectures, capture, choices, memory
from .architectures import SITES, available_sites
from .config import ConfigError, model_context
from .definitions import TOP, TOP_K
from .devices import device, free_memory
from .io import atomic_directory, atomic_file, prompt_files, write_json
from .models import SourceError, load_dtype
from .statistics import COLUMNS, CorpusStatistics, NonFiniteActivation, token_label
from .weights import column_ratios


def check_fits(name: str, needed: memory.Plan, target: torch.device, spread: bool = False) -> dict:
    """Refuse, before loading, a job whose planned memory exceeds what is free on its device; with
    `spread` (device_map auto) over the job's visible cards, each keeping room for the non-weight part
    (any card may run the largest layer). Returns the max_memory that keeps accelerate on those cards."""
    if needed.host_copy and target.type == "cuda":  # the copy waits in host memory, not on the cards
        host = free_memory(torch.device("cpu"))
        if needed.host_copy > host:
            raise SourceError(
                f"models.{name}: rule quantization keeps the full-precision weights in host memory "
                f"({memory.readable(needed.host_copy)}) but {memory.readable(host)} is free there; run it where the host has more "
                f"memory, or with a smaller models.{name}.dtype"
            )
        needed = replace(needed, host_copy=0)
    cards = [torch.device("cuda", i) for i in range(torch.cuda.device_count())] if spread and target.type == "cuda" else [target]
    free = {card: free_memory(card) for card in cards}
    working = needed.total - needed.weights
    room = {card: free[card] - working for card in cards}
    where = f"{len(cards)} visible card{'s' if len(cards) > 1 else ''}" if spread and target.type == "cuda" else str(target)
    if needed.total > sum(free.values()) or min(room.values()) < 0 or needed.weights > sum(room.values()):
        raise SourceError(
            f"models.{name}: needs {needed} but {memory.readable(sum(free.values()))} is free on {where}; "
            f"ask for more GPUs (models.{name}.gpus with device_map: auto), use a shorter window_length or a smaller models.{name}.dtype"
        )
    return {card.index if card.type == "cuda" else "cpu": room[card] for card in cards}


def load(name: str, entry: dict, model_dir: Path, gpus: int = 0, tokens: int = 0, cached_windows: int = 0, host_copy: bool = False):
    """Load the fetched model unmodified, on the `gpus` cards the job was granted (on the CPU with 0;
    devices.device), always in eager attention: through the capturing attention function
    (capture.ATTENTION_CAPTURE) where the model's attention runs through transformers' interface, and
    the capturing experts function where it has experts. `tokens` (of one pass), `cached_windows`
    (layer outputs the interventions keep) and `host_copy` (the quantization's copy of the weights)
    are the work at hand, which the memory plan counts before anything is loaded (memory.plan, check_fits)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = device(gpus, f"models.{name}")
    spread = entry.get("device_map") == "auto"
    dtype = load_dtype(entry, model_dir)
    needed = memory.plan(model_dir, str(dtype).removeprefix("torch."), tokens, cached_windows, host_copy)
    max_memory = check_fits(name, needed, target, spread)
    print(f"models.{name}: planned {needed} on {target}")
    fetched = architectures.fetched(model_dir, name)
    # attention code of the model's own (MPT) shows its probabilities without help
    eager = capture.ATTENTION_CAPTURE if fetched.attention and not fetched.probs_from_output else "eager"
    capture.register_capture()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=dtype,
        attn_implementation=eager,
        **({"experts_implementation": capture.EXPERTS_CAPTURE} if fetched.reads_experts else {}),
        trust_remote_code=entry["trust_remote_code"],
        **({"device_map": "auto", "max_memory": max_memory} if spread else {}),
    )
    if spread:  # accelerate puts what does not fit the cards on the CPU or disk: never here
        elsewhere = {
            module or "the whole model": place for module, place in getattr(model, "hf_device_map", {}).items() if place not in max_memory
        }
        if elsewhere:
            raise SourceError(
                f"models.{name}: device_map auto would put {len(elsewhere)} module{'s' if len(elsewhere) > 1 else ''} "
                f"({', '.join(list(elsewhere)[:3])}{', …' if len(elsewhere) > 3 else ''}) on {', '.join(sorted(set(map(str, elsewhere.values()))))}: "
                f"it needs {needed}, and the weights may take {memory.readable(sum(max_memory.values()))} of {target}; "
                f"ask for more GPUs (models.{name}.gpus) or a smaller models.{name}.dtype"
            )
    # verified again on this device and dtype before anything is captured: the same sites, the same identities
    resolved = capture.architecture_of(model if spread else model.to(target))
    if resolved != fetched:
        changed = sorted(s for s in SITES if (s in available_sites(resolved)) != (s in available_sites(fetched)))
        raise capture.UnsupportedModel(
            f"models.{name}: on {target} the sites resolve differently from {model_dir}/architecture.json"
            + (f" ({', '.join(f'{s}: {resolved.absent.get(s) or fetched.absent.get(s)}' for s in changed)})" if changed else "")
            + f"; fetch the model again (delete {model_dir})"
        )
    for site, why in resolved.absent.items():
        print(f"models.{name}: {site} not captured: {why}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=entry["trust_remote_code"])
    return (model if spread else model.to(target)).eval(), tokenizer


def windows_shape(windows_dir: Path) -> tuple[int, int]:
    """(windows, tokens per window) of a windows folder, from the file's header alone."""
    with safe_open(Path(windows_dir) / "input_ids.safetensors", framework="pt") as handle:
        count, length = handle.get_slice("input_ids").get_shape()
    return count, length


def load_for_windows(name: str, entry: dict, model_dir, windows_dir, gpus: int = 0, host_copy: bool = False):
    """The model loaded for passes that replay every window of `windows_dir` (its memory planned for
    them: rules interventions and quantization, which `host_copy` says), and the windows' token ids."""
    count, length = windows_shape(windows_dir)
    model, _ = load(name, entry, Path(model_dir), gpus=gpus, tokens=length, cached_windows=count, host_copy=host_copy)
    return model, load_file(Path(windows_dir) / "input_ids.safetensors")["input_ids"]


def dump_channels(down_weight, down_input, tokens: list[int]) -> list[int]:
    """The intermediate channels whose W_down columns and W_gate/W_up rows the prompt dump keeps
    at one layer: the edges, the TOP columns by max/mean ratio and every channel the figures tick
    (`choices.ticked_channels` at the prompt's outlier `tokens`), each with its two neighbours.

    `down_weight` is W_down as [d_model, d_ff] and `down_input` the prompt's [tokens, d_ff], both torch.
    """
    ratio = column_ratios(down_weight)
    width = len(ratio)
    kept = {*choices.SLICE_EDGES, width - 1}
    by_ratio = ratio.topk(min(TOP, width)).indices.tolist()
    for channel in by_ratio + choices.ticked_channels(down_input.float().cpu().numpy(), tokens):
        kept |= {c for c in (channel - 1, channel, channel + 1) if 0 <= c < width}
    return sorted(kept)


def dump_prompt(
    model,
    tokenizer,
    text: str,
    add_special_tokens: bool,
    target: Path,
    sites=None,
    weights: str = "",
    record_path: Path | None = None,
    name: str = "the model",
) -> dict:
    """Every site at every layer for one short prompt, as full float32 tensors in safetensors.

    Keys are "{site}.{layer}". For the weight panels it also keeps, per layer, slices of the MLP
    matrices at the intermediate channels `dump_channels` picks ("weight_channels.{layer}"):
    "down_proj_weight.{layer}" [d_model, channels], "gate_proj_weight.{layer}" and
    "up_proj_weight.{layer}" [channels, d_model]. The JSON beside it holds the text, token ids and
    labels, and `weights`, where the weight numbers come from (`record_path`; by default
    io.prompt_files' place for it). A site that is not finite stops it (NonFiniteActivation: `name` is the
    model's config name), before anything is written.
    """
    sites = sites or capture.available_sites(capture.architecture_of(model))
    input_ids = tokenizer(text, add_special_tokens=add_special_tokens, return_tensors="pt").input_ids
    tensors = {}

    def keep(site, layer, tensor):
        tensor = tensor.dense() if isinstance(tensor, capture.ExpertInputs) else tensor  # experts side by side
        tensors[f"{site}.{layer}"] = tensor.float().cpu().clone()  # a copy: layer inputs alias outputs

    with capture.hooks(model, sites, keep), torch.no_grad():
        logits = model(input_ids.to(model.device)).logits
    for key, tensor in tensors.items():  # in the order the model ran them: the first overflow is named
        if not tensor.isfinite().all():
            site, layer = key.rsplit(".", 1)
            raise NonFiniteActivation.at(name, site, int(layer), f"prompt {text!r}", model.dtype)
    tensors["logits"] = logits[0].float().cpu()
    outlier_tokens = choices.prompt_outlier_tokens(tensors)
    for layer in range(len(capture.decoder_layers(model, capture.architecture_of(model)))):
        matrices = capture.mlp_weights(model, layer)
        if "down_proj" not in matrices or f"down_proj_input.{layer}" not in tensors:
            continue
        channels = torch.tensor(dump_channels(matrices["down_proj"], tensors[f"down_proj_input.{layer}"], outlier_tokens))
        tensors[f"weight_channels.{layer}"] = channels
        index = channels.to(matrices["down_proj"].device)
        tensors[f"down_proj_weight.{layer}"] = matrices["down_proj"][:, index].float().cpu().contiguous()
        for name in ("gate_proj", "up_proj"):
            if name in matrices:
                tensors[f"{name}_weight.{layer}"] = matrices[name][index].float().cpu().contiguous()
    architecture = capture.architecture_of(model)
    expert_layers = [layer for layer in range(len(capture.decoder_layers(model, architecture))) if architecture.in_experts(layer)]
    record = {
        "text": text,
        "add_special_tokens": add_special_tokens,
        "token_ids": input_ids[0].tolist(),
        "tokens": [token_label(tokenizer, i) for i in input_ids[0].tolist()],
        "sites": list(sites),
        "layers": len(capture.decoder_layers(model, capture.architecture_of(model))),
        **({"expert_layers": expert_layers} if expert_layers else {}),  # down_proj_input: the experts' inputs side by side
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "model_type": model.config.model_type,
        "weights": weights,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as scratch:
        save_file(tensors, scratch)
    with atomic_file(record_path or prompt_files(target)["record"]) as scratch:
        write_json(scratch, record)
    return record


def statistics_sites(model) -> tuple[str, ...]:
    """Every site of the model but the attention logits, which no statistic reads."""
    return tuple(s for s in capture.available_sites(capture.architecture_of(model)) if s != "attn_logits")


def corpus_statistics(
    model, tokenizer, windows_dir: Path, target: Path, top_k: int = TOP_K, context_length: int | None = None, name: str = "the model"
) -> dict:
    """Stream the windows through the model once; write the statistics tables to folder `target`.
    `context_length`: the config's models.<m>.context_length, which overrides the model's own;
    `name`: the model's config name, for messages."""
    input_ids = load_file(Path(windows_dir) / "input_ids.safetensors")["input_ids"]
    context = model_context(model.config.to_dict(), context_length)
    if context is not None and input_ids.shape[1] > context:
        raise ConfigError(
            f"windows in {windows_dir} have {input_ids.shape[1]} tokens, more than the {context} the model accepts; "
            "lower the window_length of the corpus or the model"
        )
    sites = statistics_sites(model)
    learned_sink = capture.architecture_of(model).learned_sink
    statistics = CorpusStatistics(tokenizer, len(input_ids), top_k, learned_sink=learned_sink and "attn_probs" in sites, model=name)
    with capture.hooks(model, sites, statistics), torch.no_grad():
        for window, ids in enumerate(tqdm(input_ids, desc="windows", unit="window")):
            statistics.run_window(window, ids, lambda ids: model(ids[None].to(model.device), use_cache=False))
    tables = statistics.tables()
    cut = Path(windows_dir) / "manifest.json"  # how the windows were cut (tests pass bare windows)
    cut = json.loads(cut.read_text()) if cut.exists() else {}
    manifest = {
        "windows": int(input_ids.shape[0]),
        "window_length": int(input_ids.shape[1]),
        "add_special_tokens": cut.get("add_special_tokens", False),
        "bos_token": cut.get("bos_token"),
        "sites": list(sites),
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "model_type": model.config.model_type,
        "top_k": top_k,
        **({"learned_sink": True} if learned_sink else {}),
        "tables": {name: COLUMNS[name] for name in tables},
    }
    with atomic_directory(target) as staging:
        for name, table in tables.items():
            table.to_parquet(staging / f"{name}.parquet", index=False)
        write_json(staging / "manifest.json", manifest)
    return manifest
