"""Figure notebooks run standalone on planted statistics, choose from the data, and refuse broken input."""

import papermill
import pytest
from conftest import caption_of, measured, run_notebook
from planted import DOWN_COLUMN, EMBED_CHANNEL, MLP_LAYER, OUTPUT_CHANNEL, SINK_LAYER
from systematic_outliers import choices, readers
from systematic_outliers.readers import FigureDataError


def test_emergence_layer_is_the_planted_layer(planted_capture):
    evidence = readers.Evidence.load("planted", planted_capture["stats_dir"], planted_capture["weights_path"])
    chosen = choices.for_model(evidence)
    assert chosen.emergence == choices.Choice(MLP_LAYER, f"layer {MLP_LAYER + 1} is the first where 3 of 3 windows have an outlier token")
    assert chosen.attention.value == SINK_LAYER and chosen.attention.found
    assert not chosen.disappearance.found and chosen.disappearance.value == 3  # never cancelled: the last layer is shown
    override = choices.for_model(evidence, {"emergence_layer": 1})
    assert override.emergence == choices.Choice(1, "layer 2 was set in the config (figures.overrides)")


def test_fig03_runs_standalone_and_says_what_it_chose(planted_capture, tmp_path):
    stem = tmp_path / "fig03"
    run_notebook(
        "fig03_activation_positions",
        tmp_path,
        stats_dir=planted_capture["stats_dir"],
        weights_path=planted_capture["weights_path"],
        model="planted",
        output_stem=str(stem),
    )
    assert stem.with_suffix(".png").stat().st_size > 10_000 and stem.with_suffix(".pdf").exists()
    caption = caption_of(tmp_path, "fig03")
    assert f"at layer {MLP_LAYER + 1} (layer {MLP_LAYER + 1} is the first where 3 of 3 windows" in caption
    assert f"channel {OUTPUT_CHANNEL}, the top one at layer {MLP_LAYER + 1}, is the top one in 2 of 4 layers" in caption


def test_a_figure_from_broken_statistics_fails_naming_the_file(planted_capture, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for table in planted_capture["stats_dir"].iterdir():
        (broken / table.name).write_bytes(table.read_bytes())
    (broken / "topk.parquet").write_bytes(b"not parquet")
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        run_notebook(
            "fig03_activation_positions",
            tmp_path,
            stats_dir=broken,
            weights_path=planted_capture["weights_path"],
            model="x",
            output_stem=str(tmp_path / "fig"),
        )
    assert caught.value.ename == FigureDataError.__name__ and f"{broken}/topk.parquet: cannot be read" in caught.value.evalue
    assert not (tmp_path / "fig.png").exists()


def test_fig06_runs_standalone_and_finds_the_planted_sink(planted_capture, tmp_path):
    stem = tmp_path / "fig06"
    run_notebook(
        "fig06_attention_positions",
        tmp_path,
        stats_dir=planted_capture["stats_dir"],
        weights_path=planted_capture["weights_path"],
        model="planted",
        output_stem=str(stem),
    )
    assert stem.with_suffix(".png").stat().st_size > 10_000
    assert f"at layer {SINK_LAYER + 1} (layer {SINK_LAYER + 1} is the first where 3 of 3 windows have outlier keys)" in caption_of(
        tmp_path, "fig06"
    )


def test_fig04_shows_the_planted_down_projection_column(planted_capture, tmp_path):
    run_notebook("fig04_down_proj_positions", tmp_path, **planted_capture, model="planted", output_stem=str(tmp_path / "fig04"))
    caption = caption_of(tmp_path, "fig04")
    assert f"(b) |x_down| on the prompt at layer {MLP_LAYER + 1} (the MLP of layer {MLP_LAYER + 1} writes the most onto channel" in caption
    assert f"Dotted in (a): each residual outlier channel's emergence; channel {OUTPUT_CHANNEL} appears at layer {MLP_LAYER + 1}" in caption
    assert f"ticked channels {DOWN_COLUMN}." in caption and "outlier tokens ('w61')" in caption
    assert "(c) the same at layer 4 (the mean top-1 |h| never falls after layer 3; shown: the last layer, 4)" in caption


def test_prompt_dump_keeps_the_planted_weight_column_with_its_neighbours(planted_capture):
    prompt, _ = readers.read_prompt(planted_capture["prompt_path"], ("down_proj_input",))
    channels, down = readers.weight_slice(prompt, MLP_LAYER, "down_proj", focus=[DOWN_COLUMN])
    assert channels == [0, 1, 2, DOWN_COLUMN - 1, DOWN_COLUMN, DOWN_COLUMN + 1, 63]
    assert choices.written_rows(down[channels.index(DOWN_COLUMN)]) == [OUTPUT_CHANNEL]
    gate_channels, gate = readers.weight_slice(prompt, MLP_LAYER, "gate_proj", focus=[DOWN_COLUMN])
    assert gate_channels == channels and gate[channels.index(DOWN_COLUMN), EMBED_CHANNEL] == 3.0
    with pytest.raises(FigureDataError, match=r"keeps no down_proj weights of layer 3 at channels 20; rerun rule dump_prompt"):
        readers.weight_slice(prompt, MLP_LAYER, "down_proj", focus=[20])


def test_fig01_marks_the_planted_column_rows_and_channel(planted_capture, tmp_path):
    stem = tmp_path / "fig01"
    run_notebook("fig01_existence", tmp_path, **planted_capture, model="planted", output_stem=str(stem))
    caption = caption_of(tmp_path, "fig01")
    assert f"at layer {MLP_LAYER + 1} (layer {MLP_LAYER + 1} is the first where 3 of 3 windows" in caption
    assert f"(a) |x_down| with channels {DOWN_COLUMN} ticked" in caption and f"ticked rows {OUTPUT_CHANNEL} are those" in caption
    assert f"(c) |h| with channels {OUTPUT_CHANNEL} ticked" in caption and "test weights" in caption
    assert f"at the next layer, {MLP_LAYER + 2}" in caption and "Magenta tokens: 'w61'" in caption
    assert "No activation outlier" not in caption
    assert stem.with_suffix(".png").stat().st_size > 10_000


def test_fig05_shows_the_planted_weight_outlier(planted_capture, tmp_path):
    run_notebook(
        "fig05_weight_positions",
        tmp_path,
        weights_path=planted_capture["weights_path"],
        prompt_path=planted_capture["prompt_path"],
        model="planted",
        output_stem=str(tmp_path / "fig05"),
    )
    caption = caption_of(tmp_path, "fig05")
    assert f"stand out in layers {MLP_LAYER + 1} (" in caption
    assert f"|W_down| of layer {MLP_LAYER + 1}, one of the two largest column ratios" in caption
    assert f"column {DOWN_COLUMN} magenta, writing rows {OUTPUT_CHANNEL} " in caption


def test_lifecycle_follows_the_planted_channel_and_draws_a_cancellation_that_never_comes(planted_capture, tmp_path):
    run_notebook("lifecycle_mlp", tmp_path, **planted_capture, model="planted", output_stem=str(tmp_path / "fig07"), stage="emergence")
    caption = caption_of(tmp_path, "fig07")
    assert f"The emergence of activation outliers in planted: layer {MLP_LAYER + 1}" in caption
    assert f"Intermediate channels {DOWN_COLUMN} (" in caption and f"residual channels {OUTPUT_CHANNEL} ticked" in caption
    prompt, _ = readers.read_prompt(planted_capture["prompt_path"], ("down_proj_output",))
    written = prompt[f"down_proj_output.{MLP_LAYER}"][0, OUTPUT_CHANNEL]
    assert f"down_out {written:+,.0f}" in caption and written > 100
    # the planted model never cancels its outlier: Fig 9 says so at the last layer instead of failing
    run_notebook("lifecycle_mlp", tmp_path, **planted_capture, model="planted", output_stem=str(tmp_path / "fig09"), stage="disappearance")
    assert "layer 4 (the mean top-1 |h| never falls after layer 3; shown: the last layer, 4)" in caption_of(tmp_path, "fig09")
    assert (tmp_path / "fig09.png").stat().st_size > 10_000


def test_figures_follow_an_outlier_built_over_layers(gradual_capture, tmp_path):
    """Fig 7 draws the MLP that writes the most onto the outlier, not the layer where it first crosses the
    threshold; Figs 3 and 4 and the interventions figure say that it is built over layers."""
    from planted import GRADUAL_CHANNEL

    built = f"channel {GRADUAL_CHANNEL} is built over layers 2–5"
    run_notebook("lifecycle_mlp", tmp_path, **gradual_capture, model="gradual", output_stem=str(tmp_path / "fig07"), stage="emergence")
    caption = caption_of(tmp_path, "fig07")
    assert f"layer 5 (the MLP of layer 5 writes the most onto channel {GRADUAL_CHANNEL}, the largest outlier" in caption
    assert "it is built over layers 2–5" in caption
    for notebook in ("fig03_activation_positions", "fig04_down_proj_positions"):
        run_notebook(notebook, tmp_path, **gradual_capture, model="gradual", output_stem=str(tmp_path / notebook))
        assert built in caption_of(tmp_path, notebook) and (tmp_path / f"{notebook}.png").stat().st_size > 10_000
    run_notebook("interventions", tmp_path, **gradual_capture, model="gradual", output_stem=str(tmp_path / "interventions"))
    caption = caption_of(tmp_path, "interventions")
    assert "(b) held at zero from each channel's emergence to its disappearance: channel 20 at layers 2–6;" in caption
    assert caption.count("breaks the model") == 1 and built in caption


def test_spread_marks_the_planted_sink_dim(planted_capture, tmp_path):
    run_notebook(
        "fig08_spread",
        tmp_path,
        **planted_capture,
        model="planted",
        output_stem=str(tmp_path / "fig08"),
        spread_layer=SINK_LAYER,
        spread_head=0,
    )
    caption = caption_of(tmp_path, "fig08")
    low_frequency = 32 // 4 // 2 - 1  # the dim the planted query bias and key weight use
    assert f"layer {SINK_LAYER + 1}, head 1 (layer {SINK_LAYER + 1}, head 1 were set in the config" in caption
    assert f"gold stars mark head dims {low_frequency}, " in caption


@pytest.mark.parametrize("fixture", ["planted_capture", "random_capture"])
def test_fig02_names_where_the_interventions_edit_the_model(fixture, request, tmp_path):
    captured = request.getfixturevalue(fixture)
    run_notebook(
        "fig02_layer",
        tmp_path,
        stats_dir=captured["stats_dir"],
        weights_path=captured["weights_path"],
        architecture_path=captured["architecture_path"],
        model=fixture,
        output_stem=str(tmp_path / "fig02"),
    )
    caption = caption_of(tmp_path, "fig02")
    assert "gray labels on the arrows are the capture sites read there (15 of 15)" in caption
    if fixture == "planted_capture":
        assert f"the activation ablations edit: channel {OUTPUT_CHANNEL} appears at layer {MLP_LAYER + 1} " in caption
        assert f"the sink ablation removes, from layer {SINK_LAYER + 1}, the first with outlier keys in most windows, on" in caption
    else:  # the negative control: nothing to find, and the caption says what is edited instead
        assert "the activation ablations edit: no activation outlier" in caption
        assert "the sink ablation removes, no layer has outlier keys in most windows" in caption


def test_the_scaling_figure_reads_the_planted_sink_layers(planted_capture, tmp_path):
    run_notebook(
        "scaling_factor",
        tmp_path,
        interventions_path=planted_capture["interventions_path"],
        stats_dir=planted_capture["stats_dir"],
        model="planted",
        output_stem=str(tmp_path / "scaling"),
    )
    caption = caption_of(tmp_path, "scaling")
    assert f"Outlier keys: from layer {SINK_LAYER + 1}, the first with outlier keys in most windows, on" in caption
    assert (tmp_path / "scaling.png").stat().st_size > 10_000


RANDOM_FAMILIES = ("qwen2", "gpt_neox", "phi3", "gemma2")  # tiny random models of more families: no outliers of any kind


@pytest.fixture(scope="module")
def random_family_captures(tmp_path_factory):
    """capture_everything of a tiny random model of each of RANDOM_FAMILIES, by model name (random-qwen2, …)."""
    import torch
    from conftest import capture_everything
    from planted import capturing
    from tiny_families import tiny_family

    captures = {}
    for family in RANDOM_FAMILIES:
        name = f"random-{family.replace('_', '-')}"
        windows = torch.randint(0, 96, (3, 96), generator=torch.Generator().manual_seed(1))  # 96 tokens, as random_capture's
        captures[name] = capture_everything(capturing(tiny_family(family)), windows, [61, 5, 8, 30, 2, 17], tmp_path_factory.mktemp(name))
    return captures


SEVERAL = ["planted_capture", "random_capture", "gradual_capture", "sink_capture", "cancelled_capture"]
TWELVE = [*SEVERAL, "kept_capture", "large_sink_value_capture", "unread_sink_capture"] + [
    f"random-{family.replace('_', '-')}" for family in RANDOM_FAMILIES
]  # the paper's model count


@pytest.mark.parametrize("fixtures", [["planted_capture"], SEVERAL, TWELVE], ids=["one", "five", "twelve"])
def test_the_atlas_reads_with_one_model_and_with_several(fixtures, request, tmp_path):
    """The atlas (every model side by side) from the same verdicts as the claims: each model named, its verdicts counted,
    the random controls without outlier tokens beside the planted models, up to the paper's twelve models."""
    from systematic_outliers import verdicts

    def capture(name):
        return request.getfixturevalue(name) if name.endswith("_capture") else request.getfixturevalue("random_family_captures")[name]

    captured = [capture(name) for name in fixtures]
    models = [name.removesuffix("_capture").replace("_", "-") for name in fixtures]
    run_notebook(
        "atlas",
        tmp_path,
        models=models,
        stats_dirs=[str(c["stats_dir"]) for c in captured],
        weights_paths=[str(c["weights_path"]) for c in captured],
        prompt_paths=[str(c["prompt_path"]) for c in captured],
        interventions_paths=[str(c["interventions_path"]) for c in captured],
        quantization_paths=[str(c["quantization_path"]) for c in captured],
        output_stem=str(tmp_path / "atlas"),
    )
    caption = caption_of(tmp_path, "atlas")
    assert caption.startswith(f"The atlas of {len(models)} model{'s' if len(models) > 1 else ''} ({', '.join(models)}).")
    for model, c in zip(models, captured):
        m = measured(c, model)
        holds = sum(finding.verdict == "holds" for _, finding in verdicts.judge(m))
        assert f"{model} {holds} of {len(verdicts.all_claims())}" in caption
    atlas = verdicts.atlas_data([measured(c, n) for n, c in zip(models, captured)])
    assert atlas.marks.set_index("model").emergence["planted"] == (MLP_LAYER + 1) / 4  # the planted emergence, relative
    assert atlas.classes.loc["planted"].sum() == pytest.approx(1.0)
    for model in (model for model in models if model.startswith("random")):
        assert atlas.classes.loc[model].sum() == 0.0 and atlas.metrics.massive_channels[model] == 0
    assert (tmp_path / "atlas.png").stat().st_size > 50_000 * (1 + len(models) // 6)  # the figure grows with the models
