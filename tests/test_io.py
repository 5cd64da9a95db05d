"""Outputs appear whole, with the modes the user's umask gives ordinary files."""

import os

import pytest
import torch
from safetensors.torch import save_file
from systematic_outliers.io import atomic_directory, atomic_file


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o077, 0o600, 0o700)])
def test_outputs_get_the_modes_of_the_users_umask(tmp_path, umask, file_mode, folder_mode):
    before = os.umask(umask)
    try:
        with atomic_file(tmp_path / "table.csv") as scratch:
            scratch.write_text("a,b\n")
        with atomic_directory(tmp_path / "stats") as staging:
            (staging / "manifest.json").write_text("{}")
            save_file({"x": torch.zeros(2)}, staging / "model.safetensors")  # safetensors writes 0600 files
    finally:
        os.umask(before)
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "stats").stat().st_mode & 0o777 == folder_mode
    assert (tmp_path / "stats" / "manifest.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "stats" / "model.safetensors").stat().st_mode & 0o777 == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats", "table.csv"]  # no scratch left behind


def test_a_failing_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "figure.png") as scratch:
            scratch.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
