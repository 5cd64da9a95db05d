"""The GPU check script runs on the CPU with a small shape, with the statistics every figure needs."""

import importlib.util

from conftest import REPO


def test_gpu_check_runs_on_a_small_shape(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    result = gpu_check.main(["--shape", "small", "--windows", "2", "--length", "64", "--out", str(tmp_path / "check.json")])
    assert (
        result["device"] == "cpu" and result["seconds"]["plain"] > 0 and result["seconds"]["statistics"] > 0
    )  # speed lives in the benchmark
    assert {"attn_probs", "down_proj_input", "layer_output"} <= set(result["sites"])
    assert result["rows"]["attention_layers"] == 2 * 2 and result["rows"]["sites"] > 0
    assert (tmp_path / "check.json").exists()
