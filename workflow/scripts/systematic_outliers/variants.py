"""The GPT-2 attention variants by name: each one's letter, title and formula, and what the papers
say of it. How each computes is gpt2.py's (one class per key, registered in gpt2.ATTENTION); this
module imports neither torch nor the rest of the package, so the reports and figures that name the
variants need no torch (tests/test_gpt2.py checks that both list the same keys, in the same order).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    key: str  # the config's name (training.variants)
    letter: str
    title: str
    formula: str
    paper_keeps_massive: bool | None = None  # the paper's Section 5: (a)–(c) keep massive activations, (d), (e) lose them
    zoo: bool = False  # a sink-free mechanism of the literature, judged against (a) on the field's metrics
    softpick_table3: dict | None = None  # Zuhri et al.'s Table 3 (340M, 10k steps): sink_rate, kurtosis, max_abs


VARIANTS = {
    v.key: v
    for v in (
        Variant(
            "default",
            "(a)",
            "Default attention",
            "softmax(QKᵀ/√d) V",
            True,
            softpick_table3={"sink_rate": 0.349, "kurtosis": 6453, "max_abs": 179},
        ),
        Variant("fixed_bias", "(b)", "Explicit fixed bias", "softmax(QKᵀ/√d) V + v′", True),
        Variant("context_bias", "(c)", "Explicit context-aware bias", "softmax(QKᵀ/√d) V + softmax(Q[Kᵀ k′]/√d) [0; v′ᵀ]", True),
        Variant("attention_bias", "(d)", "Attention bias", "softmax(Q[Kᵀ k′]/√d) [V; v′ᵀ]", False),
        Variant(
            "context_scale",
            "(e)",
            "Explicit context-aware scaling factor",
            "S_c(x) · softmax(QKᵀ/√d) V, S_c = 2·sigmoid(W_s x + b_s)",
            False,
        ),
        Variant("sigmoid", "(f)", "Sigmoid attention", "sigmoid(QKᵀ/√d − log T) V"),
        Variant(
            "softmax_one",
            "(g)",
            "Softmax plus one",
            "e^{QKᵀ/√d} V / (1 + Σ e^{QKᵀ/√d})",
            zoo=True,
            softpick_table3={"sink_rate": 0.164, "kurtosis": 574, "max_abs": 84},
        ),
        Variant(
            "learned_sink",
            "(h)",
            "Learned attention sink",
            "e^{QKᵀ/√d} V / (e^{b_h} + Σ e^{QKᵀ/√d})",
            zoo=True,
            softpick_table3={"sink_rate": 0.088, "kurtosis": 1800, "max_abs": 107},
        ),
        Variant(
            "gated",
            "(i)",
            "Gated attention",
            "softmax(QKᵀ/√d) V ⊙ sigmoid(x W_θ)",
            zoo=True,
            softpick_table3={"sink_rate": 0.020, "kurtosis": 136, "max_abs": 23},
        ),
        Variant("clipped_softmax", "(j)", "Clipped softmax", "clip((ζ − γ)·softmax(QKᵀ/√d) + γ, 0, 1) V", zoo=True),
        Variant(
            "softpick",
            "(k)",
            "Softpick",
            "ReLU(e^{QKᵀ/√d} − 1) / (Σ|e^{QKᵀ/√d} − 1| + ε) V",
            zoo=True,
            softpick_table3={"sink_rate": 0.0, "kurtosis": 282, "max_abs": 25},
        ),
        Variant("gated_headwise", "(l)", "Gated attention, one gate per head", "softmax(QKᵀ/√d) V · sigmoid(x W_θ)", zoo=True),
    )
}
