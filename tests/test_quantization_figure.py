"""The quantization figure (notebooks/quantization.ipynb) runs standalone on the quantization passes of a tiny model and
its caption says what quantization_report judged and what the record kept: the planted model's massive token and
W_down column, and the random model, which has no outlier to keep."""

import json

import numpy as np
import pandas as pd
from conftest import caption_of, run_notebook, tiny_model
from planted import DOWN_COLUMN, MLP_LAYER, capturing, planted_model
from safetensors.torch import load_file
from systematic_outliers import quantization, quantization_report, readers
from systematic_outliers.definitions import A8_RANDOM, FULL
from systematic_outliers.verdict_engine import DOES_NOT_HOLD, HOLDS, NOT_MEASURED


def quantization_files(captured, model, folder) -> dict:
    """Rule quantization's losses and record for `model` on its captured statistics and windows."""
    evidence = readers.Evidence.load("captured", captured["stats_dir"], captured["weights_path"])
    windows = load_file(captured["stats_dir"].parent / "input_ids.safetensors")["input_ids"]
    files = {"losses": folder / "quantization.parquet", "record": folder / "quantization.json"}
    quantization.quantize("captured", model, evidence, windows, [0, 1, 2], files)
    return files


def drawn(files, tmp_path, model) -> str:
    """Run the notebook on `files`; the caption it wrote, once the figure is there."""
    stem = tmp_path / "quantization"
    run_notebook("quantization", tmp_path, quantization_path=files["losses"], record_path=files["record"], model=model, output_stem=stem)
    assert stem.with_suffix(".png").stat().st_size > 10_000 and stem.with_suffix(".pdf").stat().st_size > 0
    return caption_of(tmp_path, "quantization")


def test_the_figure_gives_the_planted_models_verdicts_and_what_it_kept(planted_capture, tmp_path):
    files = quantization_files(planted_capture, planted_model(), tmp_path)
    caption = drawn(files, tmp_path, "planted")
    judged = quantization_report.judged(pd.read_parquet(files["losses"]))
    assert judged[0][1].verdict == HOLDS  # keeping the planted massive token restores per-tensor quantization
    for claim, finding in judged:
        assert f"{claim.text}: {finding.verdict} ({finding.measured})." in caption
    assert f"at the linear inputs of layers {MLP_LAYER + 1}–" in caption and "in 3 of 3 windows" in caption
    assert f"model.layers.{MLP_LAYER}.mlp.down_proj column {DOWN_COLUMN};" in caption
    assert "Sun et al. (2024, Massive Activations) and PrefixQuant (Chen et al. 2024)" in caption  # who defines a8 per tensor


def test_a_model_without_outliers_gets_the_figure_saying_nothing_was_kept(random_capture, tmp_path):
    files = quantization_files(random_capture, capturing(tiny_model("llama", seed=1, num_hidden_layers=4)), tmp_path)
    caption = drawn(files, tmp_path, "random")
    assert "the statistics flag no outlier token (Sun et al.'s rule), so the kept pass keeps nothing" in caption
    assert "no W_down column stands out (choices.weight_outlier_columns), so the kept pass keeps nothing" in caption
    for claim, finding in quantization_report.judged(pd.read_parquet(files["losses"])):
        assert finding.verdict in (DOES_NOT_HOLD, NOT_MEASURED)
        assert f"{claim.text}: {finding.verdict} ({finding.measured})." in caption
    record = json.loads(files["record"].read_text())
    assert f"{readers.windows_text(record)}; {record['dtype']} on {record['device']}; controls over seeds 0, 1, 2" in caption


def test_what_was_kept_is_read_from_the_record():
    record = {
        "outlier_tokens": {"0": {"2": [0], "3": [0, 5]}, "1": {"10": [7]}},
        "outlier_columns": {"model.layers.10.mlp.down_proj": [3], "model.layers.2.mlp.down_proj": [1, 4]},
    }
    assert quantization_report.kept_tokens(record) == quantization_report.KeptTokens(
        windows=2, fewest=1, most=2, first_layer=2, last_layer=10
    )
    # in layer order, not in the order of the names' characters
    assert quantization_report.kept_columns(record) == [("model.layers.2.mlp.down_proj", [1, 4]), ("model.layers.10.mlp.down_proj", [3])]
    assert quantization_report.kept_tokens({"outlier_tokens": {}}) is None


def test_a_seeds_mean_leaves_out_a_window_that_overflowed():
    losses = pd.DataFrame(
        {
            "quantization": [FULL, FULL, A8_RANDOM, A8_RANDOM, A8_RANDOM, A8_RANDOM],
            "seed": [-1, -1, 0, 0, 1, 1],
            "window": [0, 1, 0, 1, 0, 1],
            "loss": [3.0, 5.0, 4.0, np.inf, 6.0, 8.0],
            "edited": 0,
        }
    )
    np.testing.assert_array_equal(quantization_report.seed_losses(losses, FULL), [4.0])
    np.testing.assert_array_equal(quantization_report.seed_losses(losses, A8_RANDOM), [4.0, 7.0])
