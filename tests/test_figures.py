"""Figure notebooks run standalone on real statistics, choose from the data, and refuse broken input."""

import os

import papermill
import pytest

from conftest import REPO
from systematic_outliers import figures, findings, passes
from systematic_outliers.figures import FigureDataError, emergence_layer, read_table
from systematic_outliers.weights import weight_statistics
from test_capture import (
    EMBED_CHANNEL,
    DOWN_COLUMN,
    LABELS,
    MASSIVE_TOKEN,
    MLP_LAYER,
    OUTPUT_CHANNEL,
    SINK_LAYER,
    planted_model,
    planted_windows,
)

NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(scope="module")
def planted_stats(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    planted_windows(folder)
    passes.corpus_statistics(planted_model(), LABELS, folder, folder / "stats")
    return folder / "stats"


class PlantedTokenizer:
    decode = staticmethod(LABELS.decode)

    def __call__(self, text, add_special_tokens, return_tensors):
        import torch

        return type("Encoded", (), {"input_ids": torch.tensor([[MASSIVE_TOKEN, 5, 8, 30, 2, 17]])})


@pytest.fixture(scope="module")
def planted_prompt(tmp_path_factory):
    prompt = tmp_path_factory.mktemp("prompt") / "prompt.safetensors"
    passes.dump_prompt(planted_model(), PlantedTokenizer(), "planted", False, prompt, weights="planted weights")
    return prompt


@pytest.fixture(scope="module")
def planted_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    planted_model().save_pretrained(folder / "model")
    path = folder / "weights.parquet"
    weight_statistics(folder / "model").to_parquet(path)
    return path


def run_notebook(name, tmp_path, **parameters):
    os.environ["PYTHONPATH"] = str(REPO / "workflow" / "scripts")  # the kernel is a new process
    return papermill.execute_notebook(NOTEBOOKS / f"{name}.ipynb", tmp_path / f"{name}.ipynb", parameters=parameters, progress_bar=False)


def test_emergence_layer_is_the_planted_layer(planted_stats):
    outliers = read_table(planted_stats, "activation_outliers")
    layer, why = emergence_layer(outliers, windows=3)
    assert layer == MLP_LAYER and why == f"layer {MLP_LAYER + 1} is the first where 3 of 3 windows have an outlier token"


def test_fig03_runs_standalone_and_says_what_it_chose(planted_stats, tmp_path):
    stem = tmp_path / "fig03"
    run_notebook("fig03_activation_positions", tmp_path, stats_dir=str(planted_stats), model="planted", output_stem=str(stem))
    assert stem.with_suffix(".png").stat().st_size > 10_000 and stem.with_suffix(".pdf").exists()
    caption = (tmp_path / "fig03.caption.txt").read_text()
    assert f"at layer {MLP_LAYER + 1} (layer {MLP_LAYER + 1} is the first where 3 of 3 windows" in caption
    assert f"channel {OUTPUT_CHANNEL}, the top one at layer {MLP_LAYER + 1}, is the top one in 2 of 4 layers" in caption


def test_a_figure_from_empty_statistics_fails_naming_the_file(planted_stats, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for table in planted_stats.iterdir():
        (broken / table.name).write_bytes(table.read_bytes())
    (broken / "topk.parquet").write_bytes(b"not parquet")
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        run_notebook("fig03_activation_positions", tmp_path, stats_dir=str(broken), model="x", output_stem=str(tmp_path / "fig"))
    assert caught.value.ename == FigureDataError.__name__ and f"{broken}/topk.parquet: cannot be read" in caught.value.evalue
    assert not (tmp_path / "fig.png").exists()


def test_fig06_runs_standalone_and_finds_the_planted_sink(planted_stats, tmp_path):
    stem = tmp_path / "fig06"
    run_notebook("fig06_attention_positions", tmp_path, stats_dir=str(planted_stats), model="planted", output_stem=str(stem))
    assert stem.with_suffix(".png").stat().st_size > 10_000
    caption = (tmp_path / "fig06.caption.txt").read_text()
    assert f"at layer {SINK_LAYER + 1} (layer {SINK_LAYER + 1} is the first where 3 of 3 windows have outlier keys)" in caption


def test_fig04_shows_the_planted_down_projection_column(planted_stats, planted_prompt, tmp_path):
    prompt = planted_prompt
    stem = tmp_path / "fig04"
    run_notebook(
        "fig04_down_proj_positions", tmp_path, stats_dir=str(planted_stats), prompt_path=str(prompt), model="planted",
        output_stem=str(stem), disappearance_layer=3,  # the planted model never cancels its outlier: say where to look
    )
    caption = (tmp_path / "fig04.caption.txt").read_text()
    assert f"(b) |x_down| on the prompt at layer {MLP_LAYER + 1} (layer {MLP_LAYER + 1} is the first where" in caption
    assert f"ticked channels {DOWN_COLUMN}." in caption and "(c) the same at layer 4 (layer 4 was set in the config (figures.overrides))" in caption
    assert "outlier tokens ('w61')" in caption


def test_prompt_dump_keeps_the_planted_weight_column_with_its_neighbours(planted_prompt):
    prompt, _ = figures.read_prompt(planted_prompt, ("down_proj_input",))
    channels, down = figures.weight_slice(prompt, MLP_LAYER, "down_proj", focus=[DOWN_COLUMN])
    assert channels == [0, 1, 2, DOWN_COLUMN - 1, DOWN_COLUMN, DOWN_COLUMN + 1, 63]
    assert figures.written_rows(down[channels.index(DOWN_COLUMN)]) == [OUTPUT_CHANNEL]
    gate_channels, gate = figures.weight_slice(prompt, MLP_LAYER, "gate_proj", focus=[DOWN_COLUMN])
    assert gate_channels == channels and gate[channels.index(DOWN_COLUMN), EMBED_CHANNEL] == 3.0


def test_fig01_marks_the_planted_column_rows_and_channel(planted_stats, planted_prompt, tmp_path):
    stem = tmp_path / "fig01"
    run_notebook("fig01_existence", tmp_path, stats_dir=str(planted_stats), prompt_path=str(planted_prompt), model="planted",
                 output_stem=str(stem))
    caption = (tmp_path / "fig01.caption.txt").read_text()
    assert f"at layer {MLP_LAYER + 1} (layer {MLP_LAYER + 1} is the first where 3 of 3 windows" in caption
    assert f"(a) |x_down| with channels {DOWN_COLUMN} ticked" in caption and f"ticked rows {OUTPUT_CHANNEL} are those" in caption
    assert f"(c) |h| with channels {OUTPUT_CHANNEL} ticked" in caption and "planted weights" in caption
    assert f"at the next layer, {MLP_LAYER + 2}" in caption and "Magenta tokens: 'w61'" in caption
    assert stem.with_suffix(".png").stat().st_size > 10_000


def test_fig05_shows_the_planted_weight_outlier(planted_prompt, planted_weights, tmp_path):
    stem = tmp_path / "fig05"
    run_notebook("fig05_weight_positions", tmp_path, weights_path=str(planted_weights), prompt_path=str(planted_prompt),
                 model="planted", output_stem=str(stem))
    caption = (tmp_path / "fig05.caption.txt").read_text()
    assert f"stand out in layers {MLP_LAYER + 1} (" in caption
    assert f"|W_down| of layer {MLP_LAYER + 1}, one of the two largest column ratios" in caption
    assert f"column {DOWN_COLUMN} magenta, writing rows {OUTPUT_CHANNEL} " in caption


def test_lifecycle_follows_the_planted_channel_through_the_mlp(planted_stats, planted_prompt, tmp_path):
    stem = tmp_path / "fig07"
    run_notebook("lifecycle_mlp", tmp_path, stats_dir=str(planted_stats), prompt_path=str(planted_prompt), model="planted",
                 output_stem=str(stem), stage="emergence")
    caption = (tmp_path / "fig07.caption.txt").read_text()
    assert f"The emergence of activation outliers in planted: layer {MLP_LAYER + 1}" in caption
    assert f"Intermediate channels {DOWN_COLUMN} (" in caption and f"residual channels {OUTPUT_CHANNEL} ticked" in caption
    prompt, _ = figures.read_prompt(planted_prompt, ("down_proj_output",))
    written = prompt[f"down_proj_output.{MLP_LAYER}"][0, OUTPUT_CHANNEL]
    assert f"down_out {written:+,.0f}" in caption and written > 100
    with pytest.raises(papermill.PapermillExecutionError) as caught:  # the planted model never cancels its outlier
        run_notebook("lifecycle_mlp", tmp_path, stats_dir=str(planted_stats), prompt_path=str(planted_prompt), model="planted",
                     output_stem=str(tmp_path / "fig09"), stage="disappearance")
    assert caught.value.ename == FigureDataError.__name__ and "never falls" in caught.value.evalue
    assert not (tmp_path / "fig09.png").exists()


def test_spread_marks_the_planted_sink_dim(planted_stats, planted_prompt, tmp_path):
    stem = tmp_path / "fig08"
    run_notebook("fig08_spread", tmp_path, stats_dir=str(planted_stats), prompt_path=str(planted_prompt), model="planted",
                 output_stem=str(stem), spread_layer=SINK_LAYER, spread_head=0)
    caption = (tmp_path / "fig08.caption.txt").read_text()
    low_frequency = 32 // 4 // 2 - 1  # the dim the planted query bias and key weight use
    assert f"layer {SINK_LAYER + 1}, head 1 (layer {SINK_LAYER + 1}, head 1 were set in the config" in caption
    assert f"gold stars mark head dims {low_frequency}, " in caption


def test_claims_and_table1_state_the_planted_alignment(planted_stats, planted_prompt, planted_weights):
    evidence = findings.Evidence.load("planted", planted_stats, planted_weights)
    row = findings.alignment(evidence)
    assert row["rows_on_residual_outlier_channels"] == row["rows_written"] == 1 and row["residual_outlier_channels"] == str(OUTPUT_CHANNEL)
    assert row["tokens_that_are_outlier_keys"] == 1.0 and row["activation_outlier_tokens"] == 3
    prompt, tokens = figures.read_prompt(planted_prompt, ("layer_output",))
    text = findings.claims(evidence, prompt, tokens, figures.read_prompt_record(planted_prompt))
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert f"column {DOWN_COLUMN} of layer {MLP_LAYER + 1}" in lines["Weight outliers exist: single down-projection columns with a large max/mean ratio"]
    assert lines["Late layers cancel them"].endswith("| does not hold |")  # the planted outlier lasts to the output
    assert lines["The attention-outlier keys are the activation-outlier tokens"].endswith("| holds |")
    # window 1's trigger sits at position 9 among random tokens: neither first nor a delimiter
    assert "initial 67%, other 33%; no delimiter among them | does not hold |" in lines["They sit at the first token and at delimiters"]
