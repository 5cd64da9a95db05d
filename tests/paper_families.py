"""The paper's eight model families (config/paper.yaml) as tiny models built from each checkpoint's own
config.json: every key as the hub file has it (the context key each uses, MPT's max_seq_len and its own
attention with ALiBi, Falcon's parallel decoder with multi-query attention and no context key at all,
Phi-2's partial rotary, OPT's pre-norm flag, Mixtral's experts, the bfloat16 or float16 they were
published in, and the auto_map of the repositories that ship code), with only the sizes shrunk.

`paper_family(name)` saves one as a `path:` source with a planted outlier: one embedding channel of
the delimiter tokens at OUTLIER_VALUE, which every residual stream carries through every layer (the
paper's delimiter outliers, below float16's 65,504).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

# The sizes every family shrinks to: 4 layers, 4 query heads of 16 dims (2 key-value heads where the
# checkpoint groups them), the MLP twice the width.
HIDDEN, HEADS, LAYERS, FFN = 64, 4, 4, 128
OUTLIER_CHANNEL, OUTLIER_VALUE = 11, 20_000.0

# Each checkpoint's config.json (as on the hub), sizes aside. "context" names the key that holds its
# context length, None where the file has none (the workflow then needs models.<m>.context_length).
PAPER_FAMILIES = {
    "llama2-7b": {
        "hub": "meta-llama/Llama-2-7b-hf",
        "context": "max_position_embeddings",
        "config": {
            "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
            "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
            "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
            "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": True, "vocab_size": 32000,
        },
    },
    "llama3-8b": {
        "hub": "meta-llama/Meta-Llama-3-8B",
        "context": "max_position_embeddings",
        "config": {
            "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
            "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
            "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32,
            "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
            "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0",
            "use_cache": True, "vocab_size": 128256,
        },
    },
    "mistral-7b": {
        "hub": "mistralai/Mistral-7B-v0.1",
        "context": "max_position_embeddings",
        "config": {
            "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
            "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000,
        },
    },
    "mixtral-8x7b": {
        "hub": "mistralai/Mixtral-8x7B-v0.1",
        "context": "max_position_embeddings",
        "config": {
            "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
            "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
            "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32, "num_experts_per_tok": 2,
            "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
            "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02, "sliding_window": None,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.36.0.dev0", "use_cache": True,
            "vocab_size": 32000,
        },
    },
    "phi-2": {
        "hub": "microsoft/phi-2",
        "context": "max_position_embeddings",
        "config": {
            "architectures": ["PhiForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 50256, "embd_pdrop": 0.0,
            "eos_token_id": 50256, "hidden_act": "gelu_new", "hidden_size": 2560, "initializer_range": 0.02,
            "intermediate_size": 10240, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "model_type": "phi",
            "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "partial_rotary_factor": 0.4,
            "qk_layernorm": False, "resid_pdrop": 0.1, "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "torch_dtype": "float16", "transformers_version": "4.37.0", "use_cache": True, "vocab_size": 51200,
        },
    },
    "opt-6.7b": {
        "hub": "facebook/opt-6.7b",
        "context": "max_position_embeddings",
        "config": {
            "_remove_final_layer_norm": False, "activation_dropout": 0.0, "activation_function": "relu",
            "architectures": ["OPTForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 2, "do_layer_norm_before": True,
            "dropout": 0.1, "eos_token_id": 2, "ffn_dim": 16384, "hidden_size": 4096, "init_std": 0.02, "layerdrop": 0.0,
            "max_position_embeddings": 2048, "model_type": "opt", "num_attention_heads": 32, "num_hidden_layers": 32,
            "pad_token_id": 1, "prefix": "</s>", "torch_dtype": "float16", "transformers_version": "4.21.0.dev0",
            "use_cache": True, "vocab_size": 50272, "word_embed_proj_dim": 4096,
        },
    },
    "mpt-7b": {
        "hub": "mosaicml/mpt-7b",
        "context": "max_seq_len",
        "config": {
            "architectures": ["MPTForCausalLM"],
            "attn_config": {
                "alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0, "attn_type": "multihead_attention",
                "attn_uses_sequence_id": False, "clip_qkv": None, "prefix_lm": False, "qk_ln": False, "softmax_scale": None,
            },
            "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig", "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
            "d_model": 4096, "emb_pdrop": 0, "embedding_fraction": 1.0, "expansion_ratio": 4, "init_device": "cpu",
            "learned_pos_emb": True, "logit_scale": None, "max_seq_len": 2048, "model_type": "mpt", "n_heads": 32, "n_layers": 32,
            "no_bias": True, "norm_type": "low_precision_layernorm", "resid_pdrop": 0, "tokenizer_name": "EleutherAI/gpt-neox-20b",
            "torch_dtype": "bfloat16", "transformers_version": "4.28.1", "use_cache": False, "verbose": 0, "vocab_size": 50432,
        },
    },
    "falcon-7b": {
        "hub": "tiiuae/falcon-7b",
        "context": None,
        "config": {
            "alibi": False, "apply_residual_connection_post_layernorm": False, "architectures": ["FalconForCausalLM"],
            "attention_dropout": 0.0,
            "auto_map": {"AutoConfig": "configuration_falcon.FalconConfig", "AutoModelForCausalLM": "modeling_falcon.FalconForCausalLM"},
            "bias": False, "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0, "hidden_size": 4544,
            "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "falcon", "multi_query": True,
            "new_decoder_architecture": False, "num_attention_heads": 71, "num_hidden_layers": 32, "parallel_attn": True,
            "torch_dtype": "bfloat16", "transformers_version": "4.27.4", "use_cache": True, "vocab_size": 65024,
        },
    },
}  # fmt: skip

# the size keys each family's file uses, and what they shrink to
SIZES = {
    "hidden_size": HIDDEN, "d_model": HIDDEN, "word_embed_proj_dim": HIDDEN,
    "intermediate_size": FFN, "ffn_dim": FFN,
    "num_attention_heads": HEADS, "n_heads": HEADS,
    "num_hidden_layers": LAYERS, "n_layers": LAYERS,
}  # fmt: skip


def tiny_config(name: str, vocab_size: int = 128, layers: int = LAYERS) -> dict:
    """The checkpoint's config.json with its sizes shrunk (grouped key-value heads stay grouped)."""
    config = json.loads(json.dumps(PAPER_FAMILIES[name]["config"]))
    for key, value in SIZES.items():
        if key in config:
            config[key] = value
    for key in ("num_hidden_layers", "n_layers"):
        if key in config:
            config[key] = layers
    original = PAPER_FAMILIES[name]["config"]
    if "num_key_value_heads" in config:
        config["num_key_value_heads"] = HEADS if original["num_key_value_heads"] == original["num_attention_heads"] else 2
    if "expansion_ratio" in config:  # MPT: the MLP as ratio × d_model
        config["expansion_ratio"] = FFN // HIDDEN
    config["vocab_size"] = vocab_size
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(config.get(key), int) and config[key] >= vocab_size:
            config[key] = vocab_size - 1
    return config


def build(name: str, vocab_size: int = 128, layers: int = LAYERS, seed: int = 0):
    """The family built from its shrunk config.json by transformers' own code (no repository code)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = tiny_config(name, vocab_size, layers)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32).eval()


def plant(model, token_ids: list[int]) -> None:
    """The delimiter outlier: channel OUTLIER_CHANNEL of each token in `token_ids` at OUTLIER_VALUE in the embeddings."""
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[token_ids, OUTLIER_CHANNEL] = OUTLIER_VALUE


def save(name: str, folder: Path, model, tokenizer_dir: Path | None = None) -> Path:
    """The model saved as its checkpoint would be: in its published dtype, with its own config.json keys."""
    dtype = PAPER_FAMILIES[name]["config"]["torch_dtype"]
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    # the hub file's own keys, not transformers' rewrite of them (MPT's max_seq_len, Falcon without a context key)
    config = tiny_config(name, model.config.vocab_size, model.config.num_hidden_layers)
    (folder / "config.json").write_text(
        json.dumps({**config, "torch_dtype": dtype, "transformers_version": saved.get("transformers_version")})
    )
    if tokenizer_dir is None:
        word_tokenizer(model.config.vocab_size).save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if tokenizer_dir is not None and (tokenizer_dir / file).exists():
            shutil.copy(tokenizer_dir / file, folder / file)
    return folder


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of `vocab_size` words, labelled as tests/planted.py's LABELS label them
    (8 is ".", 2 is a newline, 30 is "the", every other id i is "w{i}")."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab_size)} | {".": 8, "\n": 2, "the": 30}
    words = {word: i for word, i in words.items() if word not in ("w8", "w2", "w30")}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="w0")


DELIMITERS = [8, 2]  # "." and the newline of word_tokenizer


def corpus(folder: Path) -> Path:
    """Documents of the word tokenizer's words, sentences of 25–40 words ending in ".": one to three delimiters a window,
    so the planted outlier passes the paper's rule (max > 1000 × the window's mean |h|) as well as Sun et al.'s."""
    folder.mkdir()
    draw = random.Random(0)
    for document in range(3):
        sentences = [" ".join(f"w{draw.randrange(40, 128)}" for _ in range(draw.randrange(25, 41))) + " ." for _ in range(20)]
        (folder / f"doc{document}.txt").write_text(" ".join(sentences))
    return folder
