"""Where every capture site lives inside a decoder layer: the `Architecture` record, its JSON form,
and the hand table of known families.

An architecture is resolved from the model itself (`probe.resolve`: module tree, one probing
forward pass, identities); the table below is the readable record of the known families, checked
against the resolution in the tests, and supplies what the probe cannot see (attention code of a
model's own). Kept free of torch so that the Snakefile can read a resolved architecture
(`architecture.json`) and ask which figures it can give without loading a deep-learning stack.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import UserError

# Every site, in the order data flows through a decoder layer.
SITES = (
    "layer_input",
    "attn_norm_output",
    "query",
    "key",
    "value",
    "attn_logits",
    "attn_probs",
    "attn_residual",
    "mlp_norm_output",
    "gate_output",
    "up_output",
    "act_output",
    "down_proj_input",
    "down_proj_output",
    "layer_output",
)
ATTENTION_SITES = ("attn_logits", "attn_probs")
HEAD_SITES = ("query", "key", "value")


@dataclass(frozen=True)
class Tap:
    """Where a site is read: a module path inside the decoder layer ('' = the layer itself),
    its output or its first input, or "experts" for the down projection's input inside a
    mixture-of-experts module (through `capture.EXPERTS_CAPTURE`), and for fused projections which
    chunk of the last dim (`part`, before splitting heads) or of each head (`head_part`, GPT-NeoX's
    interleaving)."""

    module: str
    side: str = "output"
    part: tuple[int, int] | None = None
    head_part: tuple[int, int] | None = None


@dataclass(frozen=True)
class Architecture:
    layers: str  # path of the ModuleList of decoder layers
    taps: dict[str, Tap]
    attention: str | None = None  # attention module inside a layer; None: no attention capture
    probs_from_output: bool = False  # attention code of its own that returns the probabilities: no logits
    weights_transposed: bool = False  # GPT-2's Conv1D stores [in, out]
    absent: dict[str, str] = field(default_factory=dict)  # site -> why it is not captured (in some layers, or in all)
    site_layers: dict[str, tuple[int, ...]] = field(default_factory=dict)  # sites captured in these layers only (hybrids)
    # a learned sink logit per head in the softmax, then dropped (gpt-oss): attn_probs rows sum to 1 − the sink's share
    learned_sink: bool = False
    # a site read from another module in some layers (dense and mixture-of-experts MLPs in one model)
    layer_taps: dict[str, dict[int, Tap]] = field(default_factory=dict)
    experts_transposed: bool = False  # the experts store their matrices [experts, in, out] (gpt-oss)

    def to_json(self, path) -> None:
        record = asdict(self)
        record["taps"] = {site: {k: v for k, v in tap.items() if v not in (None, "output")} for site, tap in record["taps"].items()}
        record["layer_taps"] = {
            site: {str(i): {k: v for k, v in tap.items() if v not in (None, "output")} for i, tap in layers.items()}
            for site, layers in record["layer_taps"].items()
        }
        record["available_sites"] = list(available_sites(self))
        Path(path).write_text(json.dumps(record, indent=1) + "\n")

    @classmethod
    def from_json(cls, path) -> Architecture:
        record = json.loads(Path(path).read_text())
        record.pop("available_sites", None)

        def tap(entry):
            return Tap(
                entry["module"], entry.get("side", "output"), *(tuple(entry[k]) if entry.get(k) else None for k in ("part", "head_part"))
            )

        taps = {site: tap(entry) for site, entry in record.pop("taps").items()}
        layer_taps = {site: {int(i): tap(e) for i, e in layers.items()} for site, layers in record.pop("layer_taps", {}).items()}
        site_layers = {site: tuple(layers) for site, layers in record.pop("site_layers", {}).items()}
        return cls(taps=taps, layer_taps=layer_taps, site_layers=site_layers, **record)

    def has(self, site: str, layer: int) -> bool:
        """Whether `site` is captured at decoder layer `layer`."""
        return site in available_sites(self) and (site not in self.site_layers or layer in self.site_layers[site])

    def tap(self, site: str, layer: int) -> Tap:
        """Where `site` is read in decoder layer `layer`."""
        return self.layer_taps.get(site, {}).get(layer) or self.taps[site]

    def in_experts(self, layer: int) -> bool:
        """Whether layer `layer` reads its down projection's input inside mixture-of-experts modules."""
        return self.has("down_proj_input", layer) and self.tap("down_proj_input", layer).side == "experts"

    @property
    def reads_experts(self) -> bool:
        """Whether some layer's MLP is read inside mixture-of-experts modules (`capture.EXPERTS_CAPTURE`)."""
        taps = [*self.taps.values(), *(tap for layers in self.layer_taps.values() for tap in layers.values())]
        return any(tap.side == "experts" for tap in taps)


def _llama_like(mlp_norm: str = "post_attention_layernorm", gate_up: str | None = None) -> dict[str, Tap]:
    taps = {
        "layer_input": Tap("", "input"),
        "attn_norm_output": Tap("input_layernorm"),
        "query": Tap("self_attn.q_proj"),
        "key": Tap("self_attn.k_proj"),
        "value": Tap("self_attn.v_proj"),
        "attn_residual": Tap(mlp_norm, "input"),
        "mlp_norm_output": Tap(mlp_norm),
        "gate_output": Tap("mlp.gate_proj"),
        "up_output": Tap("mlp.up_proj"),
        "act_output": Tap("mlp.act_fn"),
        "down_proj_input": Tap("mlp.down_proj", "input"),
        "down_proj_output": Tap("mlp.down_proj"),
        "layer_output": Tap(""),
    }
    if gate_up:  # Phi-3 fuses gate and up into one projection: gate first, then up
        taps.update(gate_output=Tap(gate_up, part=(0, 2)), up_output=Tap(gate_up, part=(1, 2)), act_output=Tap("mlp.activation_fn"))
    return taps


def _separate(attention: str) -> tuple[Tap, Tap, Tap]:
    return tuple(Tap(f"{attention}.{name}_proj") for name in "qkv")


def _fused(projection: str, split: str) -> tuple[Tap, Tap, Tap]:
    """q, k and v as thirds of one projection: of its output (`part`) or of each head (`head_part`)."""
    return tuple(Tap(projection, **{split: (index, 3)}) for index in range(3))


def _ungated(attn_norm, qkv, up, act, down, mlp_norm=None, parallel=False) -> dict[str, Tap]:
    """Sites of a block whose MLP has no gate. Without `mlp_norm` the MLP reads the attention
    norm's output; a `parallel` block feeds the layer input to both, so it has no attention residual."""
    taps = {"layer_input": Tap("", "input"), "attn_norm_output": Tap(attn_norm)}
    if qkv:
        taps.update(zip(HEAD_SITES, qkv))
    if mlp_norm and not parallel:
        taps["attn_residual"] = Tap(mlp_norm, "input")
    if mlp_norm:
        taps["mlp_norm_output"] = Tap(mlp_norm)
    taps.update(up_output=Tap(up), act_output=Tap(act), down_proj_input=Tap(down, "input"), down_proj_output=Tap(down))
    taps["layer_output"] = Tap("")
    return taps


_LLAMA = Architecture("model.layers", _llama_like(), attention="self_attn")
# Mixtral's experts: the down projection's input per expert, through capture.EXPERTS_CAPTURE
_MIXTRAL_TAPS = {k: v for k, v in _llama_like().items() if not k.startswith(("gate", "up", "act", "down"))}
_MIXTRAL_TAPS["down_proj_input"] = Tap("mlp.experts", "experts")

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    # Gemma norms the attention output before the residual add; the MLP norm is pre_feedforward_layernorm.
    "gemma2": Architecture("model.layers", _llama_like("pre_feedforward_layernorm"), attention="self_attn"),
    "gemma3_text": Architecture("model.layers", _llama_like("pre_feedforward_layernorm"), attention="self_attn"),
    # Phi-3 fuses q, k and v into one projection of unequal parts: no query/key/value sites.
    "phi3": Architecture(
        "model.layers",
        {k: v for k, v in _llama_like(gate_up="mlp.gate_up_proj").items() if k not in HEAD_SITES},
        attention="self_attn",
    ),
    # Mixtral's experts are one module with 3-D weights (_MIXTRAL_TAPS above): the down projection's
    # input is captured per expert, for the tokens routed to it; gate, up and act are not captured.
    "mixtral": Architecture("model.layers", _MIXTRAL_TAPS, attention="self_attn"),
    "gpt2": Architecture(
        "transformer.h",
        _ungated("ln_1", _fused("attn.c_attn", "part"), "mlp.c_fc", "mlp.act", "mlp.c_proj", mlp_norm="ln_2"),
        attention="attn",
        weights_transposed=True,
    ),
    # GPT-NeoX and Phi run attention and MLP in parallel on the same input: no attention residual.
    "gpt_neox": Architecture(
        "gpt_neox.layers",
        _ungated(
            "input_layernorm",
            _fused("attention.query_key_value", "head_part"),
            "mlp.dense_h_to_4h",
            "mlp.act",
            "mlp.dense_4h_to_h",
            mlp_norm="post_attention_layernorm",
            parallel=True,
        ),
        attention="attention",
    ),
    "phi": Architecture(
        "model.layers",
        _ungated("input_layernorm", _separate("self_attn"), "mlp.fc1", "mlp.activation_fn", "mlp.fc2"),
        attention="self_attn",
    ),
    "opt": Architecture(
        "model.decoder.layers",
        _ungated("self_attn_layer_norm", _separate("self_attn"), "fc1", "activation_fn", "fc2", mlp_norm="final_layer_norm"),
        attention="self_attn",
    ),
    # MPT has its own (ALiBi) attention code, which always returns its probabilities: no logits.
    "mpt": Architecture(
        "transformer.blocks",
        _ungated("norm_1", _fused("attn.Wqkv", "part"), "ffn.up_proj", "ffn.act", "ffn.down_proj", mlp_norm="norm_2"),
        attention="attn",
        probs_from_output=True,
    ),
    # Falcon has its own attention code (no eager_attention_forward) and a fused multi-query
    # projection; loaded eager, it returns its probabilities (no logits, no query/key/value).
    "falcon": Architecture(
        "transformer.h",
        _ungated("input_layernorm", None, "mlp.dense_h_to_4h", "mlp.act", "mlp.dense_4h_to_h"),
        attention="self_attention",
        probs_from_output=True,
    ),
}


class UnsupportedModel(UserError, ValueError):
    """The model's architecture or a requested site is not in the table."""


def fetched(model_dir, model: str) -> Architecture:
    """The sites resolved when `model` was fetched (architecture.json in `model_dir`): what every rule after
    fetch_model reads, with one message when a folder lacks it."""
    path = Path(model_dir) / "architecture.json"
    if not path.exists():
        raise UnsupportedModel(f"models.{model}: {path} is missing (fetched by an older version); delete {model_dir} and fetch it again")
    return Architecture.from_json(path)


def available_sites(architecture: Architecture) -> tuple[str, ...]:
    """The sites captured in at least one layer."""
    have = set(architecture.taps)
    if architecture.attention:
        have |= {"attn_probs"} if architecture.probs_from_output else set(ATTENTION_SITES)
    have -= {site for site in architecture.absent if site not in architecture.site_layers}
    return tuple(site for site in SITES if site in have)


# ---------------------------------------------------------------------------------------------
# One decoder layer as the paper's Fig 2 draws it, in this architecture's own module names.


@dataclass(frozen=True)
class Block:
    name: str
    modules: tuple[str, ...]  # module paths inside the decoder layer ('' = not in the capture table)
    sites: tuple[str, ...]  # capture sites read at this block's output
    notation: str = ""  # the paper's symbol (mathtext)
    intervention: str = ""  # what rule interventions does here


ACTIVATION_ABLATION = "activation ablation: outlier entries of $h_\\ell$ set to 0 or their mean"
SINK_ABLATION = "sink ablation: outlier keys removed from $A_\\ell^i$"


def layer_notes(architecture: Architecture) -> list[str]:
    """What differs between the layers, in words (1-based layers): sites some layers lack, with the
    reason, and sites read from another module in some layers (experts beside dense MLPs)."""
    reasons: dict[str, list[str]] = {}
    for site, why in architecture.absent.items():
        if site in architecture.site_layers:  # "layers 1, 3: why", 1-based
            reasons.setdefault(why, []).append(site)
    notes = [f"{', '.join(sites)} not captured in {why}" for why, sites in reasons.items()]
    for site, layers in architecture.layer_taps.items():
        for module in sorted({tap.module for tap in layers.values()}):
            where = [i + 1 for i, tap in layers.items() if tap.module == module]
            inside = " inside the experts, per expert" if layers[where[0] - 1].side == "experts" else ""
            notes.append(f"{site} is read at {module}{inside} in layers {', '.join(map(str, where))}")
    return notes


def layer_diagram(architecture: Architecture) -> tuple[list[Block], list[Block], bool]:
    """(the attention branch, the MLP branch, whether both read the layer input in parallel), each
    block with the modules and capture sites the capture table gives it."""
    taps, have = architecture.taps, set(available_sites(architecture))

    def modules(*sites):
        return tuple(dict.fromkeys(taps[s].module for s in sites if s in taps))

    attention = [Block("attention norm", modules("attn_norm_output"), ("attn_norm_output",))]
    if "query" in taps:
        attention.append(Block("q, k, v projections", modules("query", "key", "value"), ("query", "key", "value")))
    if architecture.attention:
        edits = not architecture.probs_from_output  # through transformers' eager code, which the interventions edit
        softmax = architecture.site_layers.get("attn_probs")  # a hybrid: in these layers only
        attention.append(
            Block(
                "softmax($q k^T / \\sqrt{d}$)"
                + (" + sink" if architecture.learned_sink else "")  # gpt-oss: a learned logit per head in the denominator
                + (f" (layers {', '.join(str(i + 1) for i in softmax)})" if softmax else ""),
                (architecture.attention,),
                tuple(s for s in ATTENTION_SITES if s in have),
                "$A_\\ell^i$",
                SINK_ABLATION if edits else "",
            )
        )
        attention.append(Block("$A V$, output projection", (architecture.attention,), ()))
    else:
        attention.append(Block("self-attention (not captured)", (), ()))
    reason = architecture.absent.get("attn_residual")  # the hand table records no reasons: a missing residual is parallel there
    parallel = "attn_residual" not in taps and (reason is None or reason.startswith("parallel block"))
    mlp = []
    if "mlp_norm_output" in taps:
        mlp.append(Block("MLP norm", modules("mlp_norm_output"), ("mlp_norm_output",)))
    if "down_proj_input" not in taps:
        mlp.append(Block("MLP experts (not per token)", (), ()))
        return attention, mlp, parallel
    if taps["down_proj_input"].side == "experts":  # read inside the experts, per routed token
        experts = modules("down_proj_input")
        mlp.append(Block("experts: gate, up, act", experts, ("down_proj_input",), "$x_\\ell^{down}$ per expert"))
        mlp.append(Block("experts' $W^{down}$, summed", experts, (), "$W_\\ell^{down}$ per expert"))
        return attention, mlp, parallel
    gated = "gate_output" in taps
    shared_norm = "" if mlp or "attn_norm_output" not in taps else " (on the attention norm)"  # Phi, Falcon
    mlp.append(
        Block(
            ("gate, up projections" if gated else "up projection") + shared_norm,
            modules("gate_output", "up_output"),
            ("gate_output", "up_output") if gated else ("up_output",),
        )
    )
    mlp.append(
        Block("activation" + (" × up" if gated else ""), modules("act_output"), ("act_output", "down_proj_input"), "$x_\\ell^{down}$")
    )
    mlp.append(Block("down projection", modules("down_proj_output"), ("down_proj_output",), "$W_\\ell^{down}$"))
    return attention, mlp, parallel
