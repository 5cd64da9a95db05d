"""Capture on unmodified models: identical logits, the right tensors, planted outliers found exactly."""

import json
import os
import subprocess
import sys
import types

import pandas as pd
import pytest
import torch
from conftest import REPO, TINY_CONFIGS, save_with_architecture, tiny_model
from planted import (
    DOWN_COLUMN,
    GRADUAL_CHANNEL,
    GRADUAL_SINK,
    LABELS,
    MASSIVE_TOKEN,
    MLP_LAYER,
    OUTPUT_CHANNEL,
    PROMPT_IDS,
    SINK_LAYER,
    capturing,
    gradual_model,
    gradual_windows,
    planted_model,
    planted_windows,
)
from safetensors.torch import load_file
from systematic_outliers import capture, passes
from systematic_outliers.definitions import token_class
from systematic_outliers.weights import weight_statistics


@pytest.mark.parametrize("architecture", sorted(TINY_CONFIGS))
def test_hooked_and_unhooked_logits_are_identical(architecture):
    model = tiny_model(architecture)
    with torch.no_grad():
        plain = model(PROMPT_IDS).logits
    capturing(model)
    seen = {}
    sites = capture.available_sites(capture.architecture_of(model))
    with capture.hooks(model, sites, lambda site, layer, tensor: seen.setdefault((site, layer), tensor.clone())), torch.no_grad():
        hooked = model(PROMPT_IDS).logits
    assert torch.equal(plain, hooked)
    assert set(seen) == {(site, layer) for site in sites for layer in range(2)}
    with torch.no_grad():  # hooks are gone afterwards
        assert torch.equal(model(PROMPT_IDS).logits, plain)


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gpt_neox", "opt"])
def test_sites_are_the_tensors_they_name(architecture):
    model = capturing(tiny_model(architecture))
    seen = {}
    sites = capture.available_sites(capture.architecture_of(model))
    with capture.hooks(model, sites, lambda site, layer, tensor: seen.setdefault((site, layer), tensor.clone())), torch.no_grad():
        hidden = model(PROMPT_IDS, output_hidden_states=True).hidden_states
    tokens = PROMPT_IDS.shape[1]
    assert torch.equal(seen["layer_input", 0], hidden[0][0])
    assert torch.equal(seen["layer_output", 0], hidden[1][0])  # the last entry is after the final norm
    assert torch.equal(seen["layer_input", 1], seen["layer_output", 0])
    probs, logits = seen["attn_probs", 1], seen["attn_logits", 1]
    assert probs.shape == (model.config.num_attention_heads, tokens, tokens)
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:2]), atol=1e-5)
    assert torch.allclose(torch.softmax(logits, -1), probs, atol=1e-6)
    assert torch.all(probs.triu(1) == 0)  # causal
    assert seen["query", 0].shape[:2] == (tokens, model.config.num_attention_heads)
    if "gate_output" in sites:
        act = model.config.hidden_act
        assert torch.allclose(seen["down_proj_input", 0], seen["act_output", 0] * seen["up_output", 0])
        assert act == "silu" and torch.allclose(seen["act_output", 0], torch.nn.functional.silu(seen["gate_output", 0]))
    else:
        assert torch.equal(seen["down_proj_input", 0], seen["act_output", 0])


OUTPUT_PROJECTION = {"llama": "self_attn.o_proj", "gpt2": "attn.c_proj", "gpt_neox": "attention.dense", "opt": "self_attn.out_proj"}


@pytest.mark.parametrize("architecture", sorted(OUTPUT_PROJECTION))
def test_value_and_probabilities_are_what_attention_combines(architecture):
    """probs @ value, heads merged, is the input of the attention's output projection:
    this checks the head split of (fused) value projections and the captured probabilities."""
    model = capturing(tiny_model(architecture))
    seen = {}
    projection = model.get_submodule(capture.architecture_of(model).layers)[1].get_submodule(OUTPUT_PROJECTION[architecture])
    merged = []
    handle = projection.register_forward_pre_hook(lambda module, args: merged.append(args[0][0].clone()))
    with capture.hooks(model, ("value", "attn_probs"), lambda s, layer, t: seen.setdefault((s, layer), t.clone())), torch.no_grad():
        model(PROMPT_IDS)
    handle.remove()
    probs, value = seen["attn_probs", 1], seen["value", 1].transpose(0, 1)  # [heads, tokens, head_dim]
    value = value.repeat_interleave(probs.shape[0] // value.shape[0], dim=0)
    combined = (probs @ value).transpose(0, 1).reshape(PROMPT_IDS.shape[1], -1)
    assert torch.allclose(combined, merged[0], atol=1e-6)


def test_a_model_without_decoder_layers_and_a_missing_site_say_why():
    import transformers

    # XLM maps to a causal-LM head but is an encoder: no ModuleList whose outputs are its hidden states
    xlm = transformers.AutoModelForCausalLM.from_config(
        transformers.XLMConfig(emb_dim=32, n_layers=2, n_heads=4, vocab_size=96, is_decoder=True)
    )
    with pytest.raises(capture.UnsupportedModel, match=r"^xlm: no decoder layers found: no ModuleList of 2 modules whose l-th output is"):
        capture.architecture_of(xlm)
    falcon = transformers.AutoModelForCausalLM.from_config(
        transformers.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=96)
    )
    # its own attention code returns the probabilities only under output_attentions, which would keep every layer's maps
    assert capture.architecture_of(falcon).absent["attn_probs"] == (
        "self_attention: attention code of its own that returns its probabilities only with output_attentions"
    )
    with pytest.raises(capture.UnsupportedModel, match=r"falcon has no capture site attn_probs; it has layer_input"):
        with capture.hooks(falcon, ("attn_probs",), print):
            pass


def test_planted_outliers_are_found_exactly(tmp_path):
    model = planted_model()
    planted_windows(tmp_path)
    manifest = passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "stats")
    stats = {name: pd.read_parquet(tmp_path / "stats" / f"{name}.parquet") for name in manifest["tables"]}
    expected_position = {0: 0, 1: 9, 2: 0}

    # the massive activation: from the planted layer on, at the planted token and channel
    outliers = stats["activation_outliers"].query("site == 'layer_output' and paper_rule")
    assert sorted(outliers.layer.unique()) == list(range(MLP_LAYER, 4))
    assert {(r.window, r.position, r.channel) for r in outliers.itertuples()} == {
        (w, p, OUTPUT_CHANNEL) for w, p in expected_position.items()
    }
    assert set(outliers.token_class) == {"initial", "other"}
    top = stats["topk"].query("site == 'layer_output' and layer == @MLP_LAYER and rank == 1")
    assert {(r.window, r.position, r.channel) for r in top.itertuples()} == {(w, p, OUTPUT_CHANNEL) for w, p in expected_position.items()}
    down = stats["activation_outliers"].query("site == 'down_proj_input' and paper_rule")
    assert set(down.layer) == {MLP_LAYER} and set(down.channel) == {DOWN_COLUMN}
    channel_max = stats["channel_max"].query("site == 'layer_output' and layer == @MLP_LAYER").max_abs.iloc[0]
    assert channel_max.argmax() == OUTPUT_CHANNEL and len(channel_max) == 32
    token_max = stats["token_max"].query("site == 'layer_output' and layer == @MLP_LAYER").set_index("window").max_abs
    assert [token_max[w].argmax() for w in range(3)] == [expected_position[w] for w in range(3)]

    # the attention sink: in the planted layer every head attends to the massive token
    keys = stats["attention_keys"].query(f"layer == {SINK_LAYER} and rank == 1")
    assert {(r.window, r.position) for r in keys.itertuples()} == set(expected_position.items())
    assert keys.is_outlier.all() and (keys.cumulative > 0.5 * 48).all()
    heads = stats["attention_heads"].query(f"layer == {SINK_LAYER}")
    for row in heads.itertuples():  # every query that can see the sink (causal) puts all on it
        assert row.outlier_share == pytest.approx((48 - expected_position[row.window]) / 48, abs=1e-3)
    assert set(heads.query("window == 1").outlier_keys) == {"9"}

    # the weight outlier, straight from the saved weights
    save_with_architecture(model, tmp_path / "model")
    weights = weight_statistics(tmp_path / "model", "tiny")
    largest = weights.loc[weights.max_ratio.idxmax()]
    assert (largest.layer, largest.module) == (MLP_LAYER, "mlp.down_proj")
    assert largest.top_columns[0] == DOWN_COLUMN and largest.top_column_rows[0] == OUTPUT_CHANNEL


def test_channel_extremes_are_each_windows_signed_extreme_per_channel(tmp_path):
    """Against an independent computation from the full tensors: per window, layer and channel, x at
    the token where |x| is largest, for the residual stream and what the layer adds after attention;
    and the channels massive at each outlier token; and the field's metrics, the kurtosis of each
    layer's output and Gu et al.'s α per head."""
    model = gradual_model()
    ids = gradual_windows(tmp_path)
    passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "stats")
    table = pd.read_parquet(tmp_path / "stats" / "channel_extremes.parquet").set_index(["window", "layer", "site"]).value
    assert set(table.index.get_level_values("site")) == {"layer_output", "mlp_write"}
    outliers = pd.read_parquet(tmp_path / "stats" / "activation_outliers.parquet").query("site == 'layer_output'")
    sites = pd.read_parquet(tmp_path / "stats" / "sites.parquet").query("site == 'layer_output'").set_index(["window", "layer"])
    alpha = pd.read_parquet(tmp_path / "stats" / "attention_first_key.parquet").set_index(["window", "layer", "head"]).first_key
    full = {}
    with capture.hooks(model, ("attn_residual", "layer_output", "attn_probs"), lambda s, layer, t: full.__setitem__((s, layer), t.clone())):
        for window in range(len(ids)):
            with torch.no_grad():
                model(ids[window : window + 1])
            for layer in range(model.config.num_hidden_layers):
                h = full["layer_output", layer]
                for site, x in (("layer_output", h), ("mlp_write", h - full["attn_residual", layer])):
                    expected = x.gather(0, x.abs().argmax(dim=0, keepdim=True))[0]
                    assert torch.equal(torch.tensor(table[window, layer, site]), expected), (window, layer, site)
                centered = h.double() - h.double().mean()
                kurtosis = (centered**4).mean() / (centered**2).mean() ** 2
                assert sites["kurtosis"][window, layer] == pytest.approx(kurtosis.item(), rel=1e-4)
                probabilities = full["attn_probs", layer]  # [heads, queries, keys]; the window is 48 < 64 queries
                for head in range(probabilities.shape[0]):
                    assert alpha[window, layer, head] == pytest.approx(probabilities[head, :, 0].mean().item(), abs=1e-6)
                median = h.abs().flatten().median()
                for row in outliers.query("window == @window and layer == @layer").itertuples():
                    at = h[row.position].abs()
                    assert list(row.massive_channels) == ((at > 100) & (at > 1000 * median)).nonzero().flatten().tolist()
    assert table[0, 4, "mlp_write"][GRADUAL_CHANNEL] > 1000  # the last MLP that builds the outlier
    # one massive entry among 48 × 32: the kurtosis nears its largest possible value, the entry count
    assert sites["kurtosis"].xs(4, level="layer").between(0.9 * 48 * 32, 48 * 32).all()
    assert alpha.xs(GRADUAL_SINK, level="layer").min() > 0.9  # the planted no-op head parks on the first token
    assert outliers.query("layer == 1").massive_channels.map(list).tolist() == [[GRADUAL_CHANNEL]] * 3  # at the massive token


def test_too_long_windows_and_too_large_models_fail_before_any_work(tmp_path, tiny_model_dir, monkeypatch):
    from systematic_outliers.config import ConfigError
    from systematic_outliers.models import SourceError

    model = planted_model()  # accepts 128 tokens
    planted_windows(tmp_path, count=2, length=200)
    with pytest.raises(ConfigError, match=r"have 200 tokens, more than the 128 the model accepts"):
        passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "stats")
    assert not (tmp_path / "stats").exists()
    _, folder = tiny_model_dir("llama")
    monkeypatch.setattr(passes, "free_memory", lambda device: 1024)
    with pytest.raises(SourceError, match=r"^models.tiny: needs 0.\d MiB \(weights 0.\d MiB\) but 0.0 MiB is free on cpu"):
        passes.load("tiny", {"dtype": "float32", "trust_remote_code": False}, folder)


def test_statistics_are_deterministic(tmp_path):
    model = planted_model()
    planted_windows(tmp_path)
    passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "first")
    passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "second")
    for table in (tmp_path / "first").iterdir():
        assert table.read_bytes() == (tmp_path / "second" / table.name).read_bytes(), table.name


def test_weight_statistics_read_gpt2_conv1d_as_input_columns(tiny_model_dir):
    model, folder = tiny_model_dir("gpt2")
    weights = weight_statistics(folder, "tiny")
    down = weights.query("layer == 0 and module == 'mlp.c_proj'").iloc[0]
    assert (down.rows, down.columns) == (32, 128)  # [d_model out, intermediate in], like nn.Linear
    assert len(weights.query("layer == 0")) == 4  # c_attn, c_proj (attention), c_fc, c_proj (MLP)


def test_token_classes_follow_the_official_lists():
    assert token_class(0, "Summer") == "initial"
    assert token_class(3, ".") == "strong_delimiter"
    assert token_class(8, "\\n") == "weak_semantic"  # decodes to "\n", stripped to "" as in the official code
    assert token_class(4, " the") == "weak_semantic"
    assert token_class(2, " warm") == "other"


def test_prompt_dump_holds_every_site_in_full(tmp_path):
    model = planted_model()

    class Tokenizer:
        decode = staticmethod(LABELS.decode)

        def __call__(self, text, add_special_tokens, return_tensors):
            return types.SimpleNamespace(input_ids=torch.tensor([[MASSIVE_TOKEN, 5, 8, 30, 2]]))

    record = passes.dump_prompt(model, Tokenizer(), "planted", False, tmp_path / "prompt.safetensors")
    tensors = load_file(tmp_path / "prompt.safetensors")
    assert json.loads((tmp_path / "prompt.json").read_text()) == record
    assert record["tokens"] == ["w61", "w5", ".", "the", "\\n"] and record["layers"] == 4
    weight_slices = {
        f"{name}.{layer}" for name in ("weight_channels", "gate_proj_weight", "up_proj_weight", "down_proj_weight") for layer in range(4)
    }
    assert set(tensors) == {f"{s}.{layer}" for s in record["sites"] for layer in range(4)} | {"logits"} | weight_slices
    assert tensors["layer_output.1"].shape == (5, 32) and tensors["attn_probs.2"].shape == (4, 5, 5)
    h = tensors[f"layer_output.{MLP_LAYER}"].abs()
    assert divmod(int(h.argmax()), h.shape[1]) == (0, OUTPUT_CHANNEL)


MEMORY_SCRIPT = """
import resource, sys, types
sys.path[:0] = [{scripts!r}, {tests!r}]
import torch
from safetensors.torch import save_file
from conftest import tiny_model
from systematic_outliers import capture, passes
from pathlib import Path
model = tiny_model("llama", num_hidden_layers=4, hidden_size=128, intermediate_size=512, max_position_embeddings=1024)
capture.register_capture()
model.set_attn_implementation(capture.ATTENTION_CAPTURE)
labels = types.SimpleNamespace(decode=lambda ids: str(ids[0]))
windows, folder = int(sys.argv[1]), Path(sys.argv[2])
ids = torch.randint(0, 96, (windows, 1024), generator=torch.Generator().manual_seed(0))
save_file({{"input_ids": ids}}, folder / "input_ids.safetensors")
passes.corpus_statistics(model, labels, folder, folder / "stats")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_memory_is_bounded_by_one_window(tmp_path):
    """Peak RSS of a pass over 40 windows stays within 10% of that of a pass over 4:
    nothing grows with the window count but the small statistics tables (keeping every window's
    activations would add about 12 MB a window)."""
    script = MEMORY_SCRIPT.format(scripts=str(REPO / "workflow" / "scripts"), tests=str(REPO / "tests"))
    # A fixed mmap threshold turns off glibc's adaptive one, whose choices move the peak by ±10%
    # from run to run; memory our code keeps referenced stays mapped and is still counted.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    peak = {}
    for windows in (4, 40):
        folder = tmp_path / str(windows)
        folder.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", script, str(windows), str(folder)], capture_output=True, text=True, check=True, env=env
        )
        peak[windows] = int(done.stdout.split()[-1])
    assert peak[40] <= 1.10 * peak[4], peak


@pytest.mark.slow
def test_real_default_model_shows_the_papers_outliers(smollm2_dir, tmp_path):
    """SmolLM2 on the paper's prompt: the numbers measured when it was chosen as the default model."""
    folder, _ = smollm2_dir
    model, tokenizer = passes.load("smollm2-135m", {"dtype": "float32", "trust_remote_code": False}, folder)
    record = passes.dump_prompt(model, tokenizer, "Summer is warm. Winter is cold.\n", False, tmp_path / "summer.safetensors")
    assert record["tokens"][0] == "Summer" and record["tokens"][-1] == "\\n" and len(record["tokens"]) == 9
    tensors = load_file(tmp_path / "summer.safetensors")
    for layer in range(11, 28):  # layers 12 to 28, 1-based
        h = tensors[f"layer_output.{layer}"].abs()
        position, channel = divmod(int(h.argmax()), h.shape[1])
        assert (position, channel) == (0, 507) and 20_000 < h.max() < 26_000
        assert h.max() > 1_000 * h.median()
    h12 = tensors["layer_output.11"].abs()
    assert h12.max() > 10_000 * h12.median()  # where it emerges; later the median grows
    h3 = tensors["layer_output.2"].abs()
    assert divmod(int(h3.argmax()), h3.shape[1]) == (0, 507) and 600 < h3.max() < 800
    on_first = [tensors[f"attn_probs.{layer}"].mean(0)[1:, 0].mean().item() for layer in range(3, 30)]
    assert sum(share > 0.5 for share in on_first) > len(on_first) / 2


def test_a_model_spread_with_device_map_auto_gives_the_same_statistics(tmp_path, tiny_model_dir, monkeypatch):
    """On this CPU-only machine transformers places every layer on the CPU, so this checks the
    loading path a multi-GPU run takes (device_map, no .to()), not the spreading itself."""
    _, folder = tiny_model_dir("llama")
    planted_windows(tmp_path, count=2, length=32)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *args, **kwargs: LABELS)  # the folder has none
    entry = {"dtype": "float32", "trust_remote_code": False}
    for name, settings in (("plain", entry), ("spread", {**entry, "device_map": "auto"})):
        model, _ = passes.load("tiny", settings, folder)
        passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / name)
    for table in sorted((tmp_path / "plain").glob("*.parquet")):
        assert table.read_bytes() == (tmp_path / "spread" / table.name).read_bytes(), table.name


def test_the_statistics_pass_reads_the_context_as_the_config_check_does(tmp_path):
    """One context lookup (config.model_context) for the config check and the statistics pass: a
    multimodal config's text_config counts, and models.<m>.context_length overrides the model's own."""
    from systematic_outliers.config import ConfigError, model_context

    assert model_context({"text_config": {"max_position_embeddings": 64}}) == 64
    assert model_context({"n_positions": 64}, 32) == 32
    assert model_context({"hidden_size": 8}) is None
    model = planted_model()  # accepts 128 tokens
    planted_windows(tmp_path, count=2, length=100)
    with pytest.raises(ConfigError, match=r"have 100 tokens, more than the 64 the model accepts"):
        passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "stats", context_length=64)
    assert not (tmp_path / "stats").exists()
