"""The GPU check script runs on the CPU with a small shape, in the half precisions a GPU runs, through
passes.load, and finds its planted outlier."""

import importlib.util

import pytest
from conftest import REPO


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_gpu_check_runs_on_a_small_shape(tmp_path, dtype):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    result = gpu_check.main(
        ["--shape", "small", "--windows", "2", "--length", "64", "--dtype", dtype, "--out", str(tmp_path / "check.json")]
    )
    assert result["device"] == "cpu" and result["dtype"] == dtype
    assert result["seconds"]["plain"] > 0 and result["seconds"]["statistics"] > 0  # speed lives in the benchmark
    assert {"attn_probs", "down_proj_input", "layer_output"} <= set(result["sites"])
    assert result["rows"]["attention_layers"] == 2 * 2 and result["rows"]["sites"] > 0
    # the planted outlier, in its channel at every layer; and no hook waited for the device
    assert result["outlier_tokens"]["channels"] == [gpu_check.OUTLIER_CHANNEL % 64] and result["outlier_tokens"]["layer_output rows"] > 0
    assert "nonzero" not in result["waits_per_window"]["in_pass"]
    assert (tmp_path / "check.json").exists()
