"""Small file helpers: outputs appear whole or not at all, with the modes of ordinary files; and
which files lie beside a prompt dump and an interventions run (the rules' outputs, the readers' inputs).
Standard library only: the Snakefile imports it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ordinary(path: Path, mode: int) -> None:
    """Give a scratch file (0600) or folder (0700) the mode the user's umask gives new ones
    (0644 and 0755 by default), so that a project group can read the results."""
    path.chmod(mode & ~_umask())


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike):
    """Yield a scratch directory that replaces `target` only if the block succeeds.

    A killed or failing job leaves at most a hidden `.tmp-*` sibling, never a
    `target` that looks complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield scratch
        # writers inside may create owner-only files too (safetensors does): normalise the tree
        for path in scratch.rglob("*"):
            _ordinary(path, 0o777 if path.is_dir() else 0o666)
        _ordinary(scratch, 0o777)
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike):
    """Yield a scratch path in the same folder that is renamed to `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".tmp-{target.name}-", suffix=target.suffix, dir=target.parent)
    os.close(handle)
    scratch = Path(scratch)
    try:
        yield scratch
        _ordinary(scratch, 0o666)
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)


def write_table(table, csv_path: str | os.PathLike, markdown_path: str | os.PathLike, markdown: str) -> None:
    """A table rule's two outputs: the DataFrame `table` as CSV and its `markdown` text, each written atomically."""
    with atomic_file(csv_path) as scratch:
        table.to_csv(scratch, index=False)
    with atomic_file(markdown_path) as scratch:
        scratch.write_text(markdown)


def write_json(path: str | os.PathLike, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def prompt_files(tensors_path: str | Path) -> dict[str, str]:
    """A prompt dump's files (rule dump_prompt's outputs): its tensors and, beside them, its record."""
    path = Path(tensors_path)
    return {"tensors": str(path), "record": str(path.with_suffix(".json"))}


def intervention_files(losses_path: str | Path) -> dict[str, str]:
    """What rule interventions writes for one model and corpus (its outputs): the losses
    ({corpus}.parquet) and beside them the scaling rows, the scatter points and the record."""
    path = Path(losses_path)
    beside = {part: str(path.with_name(f"{path.stem}.{part}.parquet")) for part in ("scaling", "points")}
    return {"losses": str(path), **beside, "record": str(path.with_suffix(".json"))}
