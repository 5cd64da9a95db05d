"""The statistics pass in the dtypes a GPU runs (float16, bfloat16), on the CPU: the same outliers as
float32, thresholds in float32, an overflow stopped with one line, and the device-side pieces (radix
median, one transfer per window, candidate tokens) against plain computations."""

import pandas as pd
import pytest
import torch
from conftest import PromptTokenizer
from planted import LABELS, MASSIVE_TOKEN, MLP_LAYER, OUTPUT_CHANNEL, SINK_LAYER, planted_model, planted_windows
from safetensors.torch import save_file
from systematic_outliers import passes, statistics
from systematic_outliers.statistics import NonFiniteActivation, lower_median, packed, radix_median, to_host

HALF = (torch.float16, torch.bfloat16)
# relative agreement with float32 of one value that went through a few layers in each dtype
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 4e-2}


def tables(folder):
    return {table.stem: pd.read_parquet(table) for table in folder.glob("*.parquet")}


@pytest.mark.parametrize(
    "values",
    [
        torch.rand(1001),
        torch.rand(64, 96),  # even count: the lower of the two middle values
        torch.zeros(50),
        torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0, 7.0]),
        torch.cat([torch.zeros(10_000), torch.rand(99) * 1e4]),  # a bin holding most values
        torch.rand(4096, 7).mul(60_000).half().abs(),
        torch.randn(333, 5).bfloat16().abs(),
        torch.cat([torch.zeros(2**24 + 5), torch.rand(2**24 + 100) + 1]),  # one bin over float32's exact counts, over chunks
    ],
    ids=["uniform", "even", "zeros", "ties", "one-bin", "float16", "bfloat16", "beyond-2^24"],
)
def test_radix_median_is_the_lower_median(values):
    expected = values.float().median()
    assert radix_median(values).item() == expected.item()
    assert lower_median(values.clone()).item() == expected.item()  # the CPU paths
    assert radix_median(values).dtype == torch.float32


def test_the_reductions_reach_the_host_as_they_were():
    groups = [
        {
            "mean": torch.tensor(2.5),
            "index": torch.tensor([3, 1, 2]),
            "flag": torch.tensor([True, False]),
            "half": torch.tensor([1.5], dtype=torch.float16),
        },
        {"empty": torch.zeros(4, 0), "grid": torch.arange(6.0).reshape(2, 3)},
    ]
    assert to_host(groups) is groups  # on the host already: nothing moves
    moved = packed(groups)  # what a device's reductions go through, one transfer per kind
    for group, back in zip(groups, moved):
        assert group.keys() == back.keys()
        for name, tensor in group.items():
            assert back[name].shape == tensor.shape and torch.equal(back[name], tensor.to(back[name].dtype)), name
    assert moved[0]["index"].dtype == torch.int64 and moved[0]["half"].dtype == torch.float32


@pytest.fixture(scope="module")
def float32_statistics(tmp_path_factory):
    folder = tmp_path_factory.mktemp("float32")
    planted_windows(folder)
    passes.corpus_statistics(planted_model(), LABELS, folder, folder / "stats")
    return folder, tables(folder / "stats")


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_finds_what_float32_finds(float32_statistics, tmp_path, dtype):
    folder, expected = float32_statistics
    manifest = passes.corpus_statistics(planted_model().to(dtype), LABELS, folder, tmp_path / "stats")
    assert manifest["dtype"] == str(dtype).removeprefix("torch.")
    got = tables(tmp_path / "stats")

    def where(table):  # which tokens, channels and layers: exactly the same
        return table[["window", "layer", "site", "position", "channel", "paper_rule", "sun_rule"]].reset_index(drop=True)

    pd.testing.assert_frame_equal(where(got["activation_outliers"]), where(expected["activation_outliers"]))
    assert (
        got["activation_outliers"].massive_channels.map(list).tolist()
        == expected["activation_outliers"].massive_channels.map(list).tolist()
    )
    planted = got["activation_outliers"].query("site == 'layer_output' and layer == @MLP_LAYER")
    assert set(planted.channel) == {OUTPUT_CHANNEL}
    keys = ["window", "layer", "rank", "position"]
    pd.testing.assert_frame_equal(got["attention_keys"].query("rank == 1")[keys], expected["attention_keys"].query("rank == 1")[keys])
    assert got["attention_layers"].query(f"layer == {SINK_LAYER}").outlier_keys.tolist() == [1, 1, 1]
    # and the values agree to the dtype's precision
    tolerance = TOLERANCE[dtype]
    for name, column in (("activation_outliers", "max_abs"), ("sites", "max_abs"), ("sites", "mean_abs"), ("attention_keys", "cumulative")):
        pd.testing.assert_series_equal(
            got[name][column].reset_index(drop=True),
            expected[name][column].reset_index(drop=True),
            rtol=tolerance,
            atol=tolerance,
            obj=f"{name}.{column}",
        )


def test_a_float16_overflow_stops_with_one_line_and_writes_nothing(tmp_path):
    model = planted_model()
    with torch.no_grad():  # the planted outlier (about 3,000) past float16's 65,504
        model.model.layers[MLP_LAYER].mlp.down_proj.weight.mul_(40.0)
    planted_windows(tmp_path)
    passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "float32")  # finite in float32
    with pytest.raises(NonFiniteActivation) as error:
        passes.corpus_statistics(model.half(), LABELS, tmp_path, tmp_path / "stats", name="planted")
    assert str(error.value) == (
        f"models.planted: down_proj_output of layer {MLP_LAYER + 1} is not finite (inf or NaN) in window 0 in float16; "
        "the model overflows float16 (65,504): set its dtype to bfloat16 (or float32) and run again"
    )
    assert not (tmp_path / "stats").exists() and not list(tmp_path.glob(".stats*"))
    with pytest.raises(NonFiniteActivation, match=r"^models.planted: down_proj_output of layer 3 is not finite .* in prompt"):
        passes.dump_prompt(model, PromptTokenizer([MASSIVE_TOKEN, 5, 8]), "planted", False, tmp_path / "prompt.safetensors", name="planted")
    assert not list(tmp_path.glob("prompt*"))


def test_more_outlier_tokens_than_candidates_run_the_window_again(tmp_path, monkeypatch):
    ids = planted_windows(tmp_path)
    ids[:, 20] = ids[:, 33] = MASSIVE_TOKEN  # three outlier tokens a window
    save_file({"input_ids": ids}, tmp_path / "input_ids.safetensors")
    model = planted_model()
    passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "wide")
    runs = []
    narrow = statistics.CorpusStatistics.start_window

    def start_window(self, window, input_ids):  # one outlier token and one channel looked at first
        if window == 0 and not runs:
            self.candidate_tokens = self.candidate_channels = 1
        runs.append(window)
        narrow(self, window, input_ids)

    monkeypatch.setattr(statistics.CorpusStatistics, "start_window", start_window)
    passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "narrow")
    assert runs[:3] == [0, 0, 0] and len(runs) == 5  # 1 → 2 tokens and channels, then 4 tokens: every outlier held
    wide, narrow_tables = tables(tmp_path / "wide"), tables(tmp_path / "narrow")
    assert len(wide["activation_outliers"].query("site == 'layer_output' and layer == @MLP_LAYER")) == 9
    for name, table in wide.items():
        pd.testing.assert_frame_equal(narrow_tables[name], table, obj=name)
