"""Every causal-LM family transformers ships, built tiny from its own default config, and the table
of what capture resolves for each (docs/architectures.md and the rows it is made from, tests/families.json,
both written by `python tests/tiny_families.py`; tests/test_families.py checks the rows against the
models and the page against the rows).

A family is shrunk by lowering the usual width, depth, head, expert and vocabulary keys of its
default config (and of its text config); one layer of each layer kind is kept for hybrids. Families
that are not decoder-only LMs (masked-LM encoders and sequence-to-sequence decoders that transformers
also maps to a causal-LM head, and image-text models, whose text model is listed on its own) and
families that do not build tiny offline are listed with the reason, not dropped.
"""

from __future__ import annotations

import json
import os
import select
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "docs" / "architectures.md"
FAMILIES_JSON = REPO / "tests" / "families.json"
WIDTH, HEADS, KV_HEADS, HEAD_DIM, LAYERS, VOCAB = 64, 4, 2, 16, 2, 128
SMALL = dict(
    hidden_size=WIDTH, d_model=WIDTH, n_embd=WIDTH, dim=WIDTH, embed_dim=WIDTH, word_embed_proj_dim=WIDTH,
    intermediate_size=128, ffn_dim=128, n_inner=128, ffn_hidden_size=128, d_ff=128, mlp_dim=128,
    num_hidden_layers=LAYERS, n_layer=LAYERS, n_layers=LAYERS, num_layers=LAYERS,
    num_attention_heads=HEADS, n_head=HEADS, n_heads=HEADS, num_heads=HEADS,
    num_key_value_heads=KV_HEADS, n_kv_heads=KV_HEADS, num_kv_heads=KV_HEADS, multi_query_group_num=KV_HEADS,
    head_dim=HEAD_DIM, kv_channels=HEAD_DIM, attention_head_dim=HEAD_DIM,
    vocab_size=VOCAB, padded_vocab_size=VOCAB,
    max_position_embeddings=256, n_positions=256, max_seq_len=256, seq_length=256, n_ctx=256,
    moe_intermediate_size=32, shared_expert_intermediate_size=32, expert_intermediate_size=32,
    num_experts=4, num_local_experts=4, n_routed_experts=4, moe_num_experts=4, num_experts_per_tok=2, moe_topk=2, top_k=2,
    n_group=1, topk_group=1, n_shared_experts=1, first_k_dense_replace=1,
    q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, qk_head_dim=16,
    rotary_dim=8, rotary_emb_dim=8, partial_rotary_dim=8,
    sliding_window=32, attention_chunk_size=32,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
    mamba_n_heads=4, mamba_d_head=16, mamba_d_state=16, mamba_n_groups=1, mamba_head_dim=16, ssm_state_size=16, state_size=16,
)  # fmt: skip
TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id", "cls_token_id")
LAYER_KIND_KEYS = ("layer_types", "layers_block_type", "block_types")


def _shrink(config):
    for key, value in SMALL.items():
        current = getattr(config, key, None)
        if isinstance(current, int) and not isinstance(current, bool) and current > value:
            try:
                setattr(config, key, value)
            except (AttributeError, TypeError, ValueError):
                pass
    for key in ("head_dim", "num_key_value_heads", "num_experts_per_tok"):  # defaults derived later from None
        if hasattr(config, key) and getattr(config, key) is None:
            setattr(config, key, SMALL[key])
    if getattr(config, "qk_rope_head_dim", None):  # multi-head latent attention: rotary head_dim, a key per head
        config.head_dim = config.qk_rope_head_dim
        config.num_key_value_heads = config.num_attention_heads
    for key in ("attn_layer_period", "attn_layer_offset", "expert_layer_period", "expert_layer_offset"):  # Jamba
        if hasattr(config, key):
            setattr(config, key, 2 if key.endswith("period") else 1)
    if getattr(config, "attn_layer_indices", None) is not None:  # Bamba: the second layer attends
        config.attn_layer_indices = [1]
    for key in TOKEN_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= VOCAB:
            setattr(config, key, VOCAB - 1)
        elif isinstance(value, list):
            setattr(config, key, [min(v, VOCAB - 1) for v in value])
    for key in LAYER_KIND_KEYS:  # one layer of each kind, each kind once more: a hybrid keeps its softmax layers
        value = getattr(config, key, None)
        if isinstance(value, list) and value and isinstance(value[0], str):
            kinds = list(dict.fromkeys(value))
            try:
                setattr(config, key, (kinds * 2)[: max(LAYERS, len(kinds))])
                config.num_hidden_layers = len(getattr(config, key))
            except (AttributeError, TypeError, ValueError):
                pass
    return config


def tiny_config(model_type: str):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    for sub in ("text_config", "attn_config", "ffn_config"):
        if getattr(config, sub, None) is not None and not isinstance(getattr(config, sub), dict):
            _shrink(getattr(config, sub))
    return _shrink(config)


def tiny_family(model_type: str, seed: int = 0):
    """A tiny random model of `model_type`, from transformers' own default config, shrunk; loaded with
    eager attention, as fetch_model and the capture rules load a model."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type), attn_implementation="eager").eval()


def not_decoder_only() -> dict[str, str]:
    """Families mapped to a causal-LM head that are not decoder-only LMs, with the reason."""
    from transformers.models.auto import modeling_auto as auto

    reasons = {}
    for model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        if model_type in auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            reasons[model_type] = "image-text model: its text model is listed on its own where transformers has one"
        elif model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            reasons[model_type] = "the decoder of a sequence-to-sequence model"
        elif model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            reasons[model_type] = "a masked-LM encoder with a causal-LM head"
    return reasons


def survey(model_type: str) -> dict:
    """Build the family tiny, resolve its sites and capture all of them: what the table says of it."""
    from systematic_outliers import capture
    from systematic_outliers.architectures import available_sites

    try:
        model = tiny_family(model_type)
        ids = torch.arange(3, 12)[None]
        with torch.no_grad():
            model(ids)
    except Exception as error:  # noqa: BLE001  (any failure to build is the reason listed)
        return {
            "model_type": model_type,
            "status": "does not build tiny",
            "reason": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}",
        }
    try:
        architecture = capture.architecture_of(model)
    except capture.UnsupportedModel as error:
        return {"model_type": model_type, "status": "refused", "reason": str(error)}
    except Exception as error:  # noqa: BLE001  (the probe itself failing is listed, not hidden)
        return {"model_type": model_type, "status": "probe fails", "reason": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    sites = available_sites(architecture)
    return {
        "model_type": model_type,
        "class": type(model).__name__,
        "status": "captured",
        "sites": list(sites),
        "absent": architecture.absent,
        "site_layers": {site: list(layers) for site, layers in architecture.site_layers.items()},
        "learned_sink": architecture.learned_sink,
        "expert_layers": [i for i in range(len(capture.decoder_layers(model, architecture))) if architecture.in_experts(i)],
    }


def _isolated(model_type: str, timeout: float = 30) -> dict:
    """survey() in a forked child: a family that hangs or crashes the interpreter is listed as such."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        torch.set_num_threads(1)
        os.write(write, json.dumps(survey(model_type)).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while select.select([read], [], [], timeout)[0]:
        chunk = os.read(read, 1 << 16)
        if not chunk:
            break
        data += chunk
    else:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    return (
        json.loads(data)
        if data
        else {"model_type": model_type, "status": "does not build tiny", "reason": f"hangs or crashes (> {timeout:g} s)"}
    )


FULL = ("layer_input", "attn_residual", "layer_output", "down_proj_input", "attn_probs")


def complete(row: dict) -> bool:
    """Every residual, MLP and attention site the figures need (FULL) where the block has one: a
    parallel block has no attention residual, and a hybrid attends in its softmax layers only."""
    for site in FULL:
        if site not in row["sites"] and not (site == "attn_residual" and row["absent"][site].startswith("parallel block")):
            return False
    return not any(site in row["site_layers"] for site in FULL if site != "attn_probs")


def softmax_attention(model_type: str) -> bool:
    """Whether the family's config names attention heads: a state-space model (Mamba) has none, and is
    no softmax-attention family for the coverage count."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    return any(getattr(config, key, None) for key in ("num_attention_heads", "n_head", "num_heads", "n_heads"))


def write_table(rows: list[dict], skipped: dict[str, str]) -> str:
    import transformers
    from systematic_outliers.architectures import SITES

    captured = [r for r in rows if r["status"] == "captured"]
    full = [r for r in captured if complete(r)]
    built = [r for r in rows if r["status"] != "does not build tiny" and softmax_attention(r["model_type"])]
    moe = sum(bool(r["expert_layers"]) for r in captured)
    sinks = sum(r["learned_sink"] for r in captured)
    lines = [
        "# Architectures: what capture resolves for each causal-LM family of transformers",
        "",
        f"Summary: of the {len(rows)} decoder-only model types, {len(captured)} build tiny offline and are captured;"
        f" {len(full)} of the {len(built)} softmax-attention families that build tiny ({len(full) / len(built):.0%}) get every"
        f" residual, MLP and attention site the figures need; {moe} have mixture-of-experts MLPs captured per expert;"
        f" {sinks} have a learned attention sink.",
        "",
        f"Generated by `python tests/tiny_families.py` with transformers {transformers.__version__}: every model type in its",
        "causal-LM mapping, built tiny from its own default config (tests/tiny_families.py), its sites resolved",
        "by `probe.resolve` and checked by their identities, then captured (hooked logits equal unhooked:",
        "tests/test_families.py). Sites that a family lacks are listed with the reason the probe gives.",
        "",
        f"- {len(rows) + len(skipped)} causal-LM model types; {len(skipped)} are not decoder-only LMs; of the {len(rows)} others",
        f"  {len(captured)} build tiny offline and are captured, {sum(r['status'] == 'refused' for r in rows)} are refused,",
        f"  {sum(r['status'] == 'does not build tiny' for r in rows)} do not build tiny"
        + (
            f", the probe fails on {sum(r['status'] == 'probe fails' for r in rows)}."
            if any(r["status"] == "probe fails" for r in rows)
            else "."
        ),
        f"- {len(full)} of the {len(built)} softmax-attention families that build tiny ({len(full) / len(built):.0%}) are captured with every",
        f"  residual, MLP and attention site the figures need ({', '.join(FULL)})",
        "  where their block has one (a parallel block has no attention residual; a hybrid attends in its softmax",
        "  layers only), identities holding.",
        f"- {moe} captured families have mixture-of-experts MLPs whose down-projection",
        "  input is captured per expert (through transformers' experts interface), in the layers listed;",
        f"  {sum('without transformers' in ' '.join(r['absent'].values()) for r in captured)} have experts of their own code, not captured per token.",
        f"- {sinks} captured families have a learned attention sink (a per-head logit in the",
        "  softmax, then dropped, as gpt-oss): the share each query gives it (1 − its row's sum) is captured as a",
        "  pseudo-key (`attention_sink.parquet`).",
        "",
        "| family | class | sites captured | experts per token | learned sink | not captured, and why |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] == "captured":
            absent = "; ".join(f"`{s}`: {why}" for s, why in r["absent"].items()) or "–"
            sink = "yes" if r["learned_sink"] else ""
            experts = f"layers {', '.join(str(i + 1) for i in r['expert_layers'])}" if r["expert_layers"] else ""  # 1-based
            lines.append(f"| {r['model_type']} | {r['class']} | {len(r['sites'])} of {len(SITES)} | {experts} | {sink} | {absent} |")
        else:
            lines.append(f"| {r['model_type']} | – | {r['status']} | | | {r['reason'].replace('|', '/')} |")
    lines += ["", "Not decoder-only LMs:", "", "| family | why |", "|---|---|"]
    lines += [f"| {model_type} | {why} |" for model_type, why in sorted(skipped.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Survey every family and write tests/families.json and the page; with --page, only write the
    page anew from tests/families.json (no model is built)."""
    if sys.argv[1:] not in ([], ["--page"]):
        sys.exit("usage: python tests/tiny_families.py [--page]")
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO / "workflow" / "scripts"))
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    transformers.logging.set_verbosity_error()
    skipped = not_decoder_only()
    if sys.argv[1:] == ["--page"]:
        TABLE.write_text(write_table(json.loads(FAMILIES_JSON.read_text(encoding="utf-8")), skipped), encoding="utf-8")
        return
    rows = []
    for model_type in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        if model_type not in skipped:
            rows.append(_isolated(model_type))
            print(rows[-1]["model_type"], rows[-1]["status"], file=sys.stderr, flush=True)
    TABLE.write_text(write_table(rows, skipped), encoding="utf-8")
    FAMILIES_JSON.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
