"""Sites resolved from the model itself: the hand table as a checked record, post-norm and
sandwich-norm blocks, hybrids, identities that fail, unchanged statistics, and every family of
transformers' causal-LM mapping as tests/families.json lists it, and docs/architectures.md as the
page those rows make."""

import difflib
import json

import pytest
import torch
from conftest import tiny_model
from planted import LABELS, capturing, planted_model, planted_windows
from systematic_outliers import capture, passes, probe
from systematic_outliers.architectures import ARCHITECTURES, Architecture, available_sites
from tiny_families import FAMILIES_JSON, TABLE, complete, not_decoder_only, softmax_attention, tiny_family, write_table

FAMILIES = json.loads(FAMILIES_JSON.read_text(encoding="utf-8"))
CAPTURED = [row for row in FAMILIES if row["status"] == "captured"]


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_the_hand_table_is_what_the_probe_resolves(model_type):
    """The table is a readable record of the known families: the probe must find the same modules."""
    resolved, table = capture.architecture_of(tiny_family(model_type)), ARCHITECTURES[model_type]
    assert resolved.layers == table.layers and resolved.attention == table.attention
    assert resolved.taps == table.taps
    assert resolved.weights_transposed == table.weights_transposed
    assert set(available_sites(resolved)) == set(available_sites(table))


def test_post_norm_and_sandwich_norm_blocks_name_the_residual_stream():
    # OLMo 2 norms each branch's output before the add: the MLP reads the residual stream itself
    olmo2 = capture.architecture_of(tiny_family("olmo2"))
    assert olmo2.taps["attn_residual"].module == "mlp" and olmo2.taps["attn_residual"].side == "input"
    assert olmo2.absent["attn_norm_output"] == "no pre-norm: the attention reads the residual stream itself"
    assert olmo2.absent["mlp_norm_output"] == "no pre-norm: the MLP reads the residual stream itself"
    # Gemma 2 norms before and after each branch: the residual is the pre-feed-forward norm's input
    gemma2 = capture.architecture_of(tiny_family("gemma2"))
    assert gemma2.taps["attn_residual"].module == "pre_feedforward_layernorm"
    for model_type, branch_norm in (("olmo2", "post_feedforward_layernorm"), ("gemma2", "post_feedforward_layernorm")):
        model = capturing(tiny_family(model_type))
        seen = {}
        with capture.hooks(model, ("attn_residual", "layer_output"), lambda s, layer, t, seen=seen: seen.setdefault((s, layer), t.clone())):
            layer = capture.decoder_layers(model, capture.architecture_of(model))[0]
            branch = []
            handle = layer.get_submodule(branch_norm).register_forward_hook(lambda m, a, out, branch=branch: branch.append(out[0].clone()))
            with torch.no_grad():
                model(torch.arange(3, 12)[None])
            handle.remove()
        # the residual stream plus the normalised MLP branch is the layer output
        assert torch.allclose(seen["attn_residual", 0] + branch[0], seen["layer_output", 0], atol=1e-5)


def test_a_hybrid_captures_attention_in_its_softmax_layers_only():
    model = tiny_family("olmo_hybrid")
    architecture = capture.architecture_of(model)
    softmax = architecture.site_layers["attn_probs"]
    layers = len(capture.decoder_layers(model, architecture))
    assert 0 < len(softmax) < layers
    assert architecture.absent["attn_probs"].startswith(
        f"layers {', '.join(str(i + 1) for i in range(layers) if i not in softmax)}: its token mixer"
    )
    seen = set()
    with capture.hooks(capturing(model), available_sites(architecture), lambda s, layer, t: seen.add((s, layer))), torch.no_grad():
        model(torch.arange(3, 12)[None])
    assert {layer for site, layer in seen if site == "attn_probs"} == set(softmax)
    assert {layer for site, layer in seen if site == "layer_output"} == set(range(layers))


def test_a_site_that_fails_its_identity_is_left_out_with_the_identity_named():
    model = tiny_model("llama")
    for layer in model.model.layers:  # a down projection whose output is not its input times W_down
        layer.mlp.down_proj.register_forward_hook(lambda module, args, output: output * 2)
    architecture = capture.architecture_of(model)
    assert "down_proj_input" not in available_sites(architecture) and "down_proj_output" not in available_sites(architecture)
    assert architecture.absent["down_proj_input"] == "mlp.down_proj: down_proj_output ≠ down_proj_input × W_down (+ bias)"
    assert {"attn_residual", "layer_output", "attn_probs"} <= set(available_sites(architecture))


def test_the_architecture_round_trips_through_its_json(tmp_path):
    for model in (tiny_model("gpt2"), tiny_family("olmo_hybrid"), tiny_family("mixtral")):
        architecture = capture.architecture_of(model)
        architecture.to_json(tmp_path / "architecture.json")
        assert Architecture.from_json(tmp_path / "architecture.json") == architecture


def test_statistics_from_the_resolved_sites_are_byte_identical_to_the_tables(tmp_path, monkeypatch):
    """The default model's statistics must not change with the resolution: the table's record and the
    probe's give the same Parquet files, byte for byte."""
    model = planted_model()
    planted_windows(tmp_path)
    passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "resolved")
    monkeypatch.setitem(probe._RESOLVED, model, ARCHITECTURES["llama"])
    passes.corpus_statistics(model, LABELS, tmp_path, tmp_path / "table")
    tables = sorted(p.name for p in (tmp_path / "table").glob("*.parquet"))
    assert len(tables) == 10
    for name in tables:
        assert (tmp_path / "resolved" / name).read_bytes() == (tmp_path / "table" / name).read_bytes(), name


def test_the_committed_page_is_the_table_of_the_listed_families():
    """docs/architectures.md, byte for byte, as tiny_families.write_table makes it from tests/families.json
    (and the installed transformers' causal-LM mapping); no model is built."""
    generated = write_table(FAMILIES, not_decoder_only())
    committed = TABLE.read_bytes()
    if committed != generated.encode("utf-8"):
        diff = difflib.unified_diff(
            committed.decode("utf-8", "replace").splitlines(keepends=True),
            generated.splitlines(keepends=True),
            "docs/architectures.md (committed)",
            "docs/architectures.md (from tests/families.json)",
        )
        pytest.fail(
            "docs/architectures.md is stale: run `python tests/tiny_families.py` (surveys every family anew and writes "
            "both files; `--page` only rewrites the page from tests/families.json) and commit the result\n" + "".join(list(diff)[:40]),
            pytrace=False,
        )


def test_nine_in_ten_softmax_attention_families_that_build_tiny_are_captured_completely():
    built = [row for row in FAMILIES if row["status"] != "does not build tiny" and softmax_attention(row["model_type"])]
    assert len([row for row in CAPTURED if complete(row)]) >= 0.9 * len(built)


@pytest.mark.parametrize("row", CAPTURED, ids=[row["model_type"] for row in CAPTURED])
def test_every_listed_family_resolves_and_captures_as_the_table_says(row):
    model = tiny_family(row["model_type"])
    architecture = capture.architecture_of(model)
    sites = available_sites(architecture)
    assert list(sites) == row["sites"] and architecture.absent == row["absent"]
    assert architecture.learned_sink == row["learned_sink"]
    capturing(model)  # the capturing attention (a no-op, with a warning, for attention code of its own) and experts
    ids = torch.arange(3, 12)[None]
    with torch.no_grad():
        plain = model(ids).logits
    seen = set()
    with capture.hooks(model, sites, lambda s, layer, t: seen.add((s, layer))), torch.no_grad():
        hooked = model(ids).logits
    assert torch.equal(plain, hooked)
    layers = len(capture.decoder_layers(model, architecture))
    assert seen == {(s, layer) for s in sites for layer in range(layers) if architecture.has(s, layer)}
