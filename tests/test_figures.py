"""Figure notebooks run standalone on real statistics, choose from the data, and refuse broken input."""

import os

import papermill
import pytest

from conftest import REPO
from systematic_outliers import passes
from systematic_outliers.figures import FigureDataError, emergence_layer, read_table
from test_capture import (
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


class PlantedTokenizer:
    decode = staticmethod(LABELS.decode)

    def __call__(self, text, add_special_tokens, return_tensors):
        import torch

        return type("Encoded", (), {"input_ids": torch.tensor([[MASSIVE_TOKEN, 5, 8, 30, 2, 17]])})


def test_fig04_shows_the_planted_down_projection_column(planted_stats, tmp_path):
    prompt = tmp_path / "prompt.safetensors"
    passes.dump_prompt(planted_model(), PlantedTokenizer(), "planted", False, prompt)
    stem = tmp_path / "fig04"
    run_notebook(
        "fig04_down_proj_positions", tmp_path, stats_dir=str(planted_stats), prompt_path=str(prompt), model="planted",
        output_stem=str(stem), disappearance_layer=3,  # the planted model never cancels its outlier: say where to look
    )
    caption = (tmp_path / "fig04.caption.txt").read_text()
    assert f"(b) |x_down| on the prompt at layer {MLP_LAYER + 1} (layer {MLP_LAYER + 1} is the first where" in caption
    assert f"ticked channels {DOWN_COLUMN}." in caption and "(c) the same at layer 4 (layer 4 was set in the config (figures.overrides))" in caption
    assert "outlier tokens ('w61')" in caption
