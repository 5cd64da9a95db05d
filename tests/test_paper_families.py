"""The paper's eight families (tests/paper_families.py), each from its checkpoint's own config.json keys,
saved in the dtype it was published in: fetched with the weights left on disk, their context read
from the key they use, and their statistics in float16 and bfloat16 against float32 on the same weights."""

import json

import pandas as pd
import pytest
import torch
from paper_families import OUTLIER_CHANNEL, OUTLIER_VALUE, PAPER_FAMILIES, build, plant, save
from planted import LABELS
from safetensors.torch import save_file
from systematic_outliers import config, models, passes, probe
from systematic_outliers.models import SourceError, fetch_model

DELIMITERS = [8, 2]  # "." and "\n" to LABELS
TOLERANCE = {"float16": 5e-3, "bfloat16": 4e-2, "float32": 0.0}


def entry(source, dtype="auto"):
    return {"source": source, "dtype": dtype, "trust_remote_code": False}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each family saved as its checkpoint would be, with the delimiter outlier planted."""
    folder = tmp_path_factory.mktemp("checkpoints")
    saved = {}
    for name in PAPER_FAMILIES:
        model = build(name)
        plant(model, DELIMITERS)
        saved[name] = save(name, folder / name, model)
    return saved


@pytest.mark.parametrize("name", PAPER_FAMILIES)
def test_the_fetch_probes_with_the_weights_on_disk_and_resolves_what_memory_resolves(checkpoints, tmp_path, monkeypatch, name):
    fetch_model(name, entry(f"path:{checkpoints[name]}"), tmp_path / "in-memory")
    placed = []
    resolve = probe.resolve
    monkeypatch.setattr(probe, "resolve", lambda model: placed.append(set(model.hf_device_map.values())) or resolve(model))
    monkeypatch.setattr(models, "PROBE_HOST_MEMORY", 1)  # nothing fits: every module streams from disk
    manifest = fetch_model(name, entry(f"path:{checkpoints[name]}"), tmp_path / "on-disk")
    assert placed == [{"disk"}]
    assert (tmp_path / "on-disk" / "architecture.json").read_text() == (tmp_path / "in-memory" / "architecture.json").read_text()
    # dtype auto: the checkpoint's own
    published = PAPER_FAMILIES[name]["config"]["torch_dtype"]
    assert manifest["dtype"] == published and json.loads((tmp_path / "on-disk" / "config.json").read_text())["dtype"] == published
    assert not list(tmp_path.glob(".fetch-*"))  # the scratch (offload folder, download) is gone


@pytest.mark.parametrize("name", PAPER_FAMILIES)
def test_the_context_is_read_from_the_key_the_checkpoint_uses(checkpoints, name):
    model_config = json.loads((checkpoints[name] / "config.json").read_text())
    key = PAPER_FAMILIES[name]["context"]
    if key is None:  # Falcon's config.json names none: the config check asks for it, in one line
        assert config.model_context(model_config) is None
        paper = config.validate_config(config.yaml.safe_load((config.SCHEMA_PATH.parents[2] / "config" / "paper.yaml").read_text()))
        assert paper["models"][name]["context_length"] == 2048  # config/paper.yaml gives it
    else:
        assert config.model_context(model_config) == model_config[key]


def test_dtype_auto_needs_a_checkpoint_that_records_one(tmp_path, checkpoints):
    with pytest.raises(SourceError, match=r"^models.x.dtype: auto takes the checkpoint's torch_dtype, and a GGUF file has none"):
        fetch_model("x", entry("gguf:/nowhere/model.gguf"), tmp_path / "out")
    unrecorded = tmp_path / "unrecorded"
    unrecorded.mkdir()
    for file in checkpoints["llama2-7b"].iterdir():
        (unrecorded / file.name).write_bytes(file.read_bytes())
    model_config = json.loads((unrecorded / "config.json").read_text())
    del model_config["torch_dtype"]
    (unrecorded / "config.json").write_text(json.dumps(model_config))
    with pytest.raises(SourceError, match=r"^models.x.dtype: auto takes the checkpoint's own dtype, and its config.json records None"):
        fetch_model("x", entry(f"path:{unrecorded}"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def windows(folder):
    ids = torch.randint(12, 96, (3, 64), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 5
    ids[:, [9, 30]] = DELIMITERS[0]
    ids[1, 47] = DELIMITERS[1]
    save_file({"input_ids": ids}, folder / "input_ids.safetensors")


@pytest.mark.parametrize("name", PAPER_FAMILIES)
def test_half_precision_statistics_of_every_family_agree_with_float32(checkpoints, tmp_path, name):
    """The checkpoint's weights run in float16, bfloat16 and float32 (its half weights upcast): the same
    outlier tokens, channels and layers, and values within the dtype's precision."""
    windows(tmp_path)
    results = {}
    for dtype in ("float32", "float16", "bfloat16"):
        fetch_model(name, entry(f"path:{checkpoints[name]}", dtype), tmp_path / dtype)
        model, _ = passes.load(name, entry("", dtype), tmp_path / dtype)
        passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / f"stats-{dtype}", name=name)
        results[dtype] = {
            table: pd.read_parquet(tmp_path / f"stats-{dtype}" / f"{table}.parquet") for table in ("activation_outliers", "sites")
        }
    outliers = results["float32"]["activation_outliers"].query("site == 'layer_output'")
    # the planted outlier in every layer, at every delimiter, in its channel
    assert sorted(outliers.layer.unique()) == list(range(len(outliers.layer.unique()))) and len(outliers.layer.unique()) == 4
    assert set(zip(outliers.window, outliers.position)) == {(w, p) for w in range(3) for p in (9, 30)} | {(1, 47)}
    assert set(outliers.channel) == {OUTLIER_CHANNEL} and outliers.max_abs.between(0.5 * OUTLIER_VALUE, 2 * OUTLIER_VALUE).all()
    where = ["window", "layer", "site", "position", "channel", "paper_rule", "sun_rule"]
    for dtype in ("float16", "bfloat16"):
        got, expected = results[dtype], results["float32"]
        pd.testing.assert_frame_equal(got["activation_outliers"][where], expected["activation_outliers"][where], obj=dtype)
        # the outliers' own values to the dtype's precision (smaller ones ride on a different rounding of the stream)
        pd.testing.assert_series_equal(
            got["activation_outliers"].max_abs, expected["activation_outliers"].max_abs, rtol=TOLERANCE[dtype], atol=0, obj=dtype
        )
