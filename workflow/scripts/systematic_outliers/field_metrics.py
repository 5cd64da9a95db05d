"""The field's standard attention-sink and outlier metrics, defined once for the LLMs and the GPT-2 variants.

- Sink_1^ε (Gu et al., ICLR 2025, "When Attention Sink Emerges in Language Models"): per layer l and
  head h, α^{l,h} = the mean over the first SINK_WINDOW queries (the first query included) of the
  weight on the first key; Sink_1^ε = the share of (layer, head) pairs with α^{l,h} > ε. Gu et al.
  use 64 tokens; the Softpick paper reports ε = 0.3. Here α is averaged over windows (or validation
  batches) before the threshold, and a window shorter than 64 uses all its queries.
- kurtosis of the residual stream (Bondarenko et al., NeurIPS 2023): E[(x − μ)⁴] / σ⁴ over the
  tokens × channels of one layer's output (3 for a Gaussian), per window, averaged over windows; a
  model's value is its mean over layers, with the largest layer beside it.
- max |h| and its ratio to the median: the peak layer's mean top-1 |h| and that over the same
  layer's median |h| (the peak as everywhere: the layer with the largest ratio).

Works on numpy arrays and torch tensors alike; imports neither torch nor the rest of the package.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SINK_WINDOW = 64  # queries, as Gu et al.
SINK_EPSILONS = (0.3, 0.2)


def first_key_weight(weights):
    """α: the mean weight on the first key over the first SINK_WINDOW queries; weights [..., queries, keys] -> [...]."""
    return weights[..., :SINK_WINDOW, 0].mean(-1)


def sink_rate(alpha, epsilon: float) -> float:
    """Sink_1^ε: the share of (layer, head) pairs whose α exceeds ε."""
    return float((np.asarray(alpha, dtype=float) > epsilon).mean())


def kurtosis(x):
    """E[(x − μ)⁴] / σ⁴ over every entry of x (float32 or wider). One temporary of x's size, squared in
    place twice: the statistics pass calls it inside a capture hook on every layer of every window."""
    powers = x - x.mean()
    powers *= powers
    variance = powers.mean()
    powers *= powers
    return powers.mean() / variance**2


def sink_label(epsilon: float) -> str:
    return f"sink_rate_{epsilon:g}"


def of_model(sites: pd.DataFrame, first_key: pd.DataFrame | None) -> dict:
    """An LLM's metrics from its statistics tables: the kurtosis of each layer's output (mean over
    windows), its mean and largest over layers, and Sink_1^ε per ε (None without attention capture)."""
    per_layer = sites[sites.site == "layer_output"].groupby("layer")["kurtosis"].mean()
    alpha = first_key.groupby(["layer", "head"]).first_key.mean() if first_key is not None else None
    return {
        "kurtosis": float(per_layer.mean()),
        "kurtosis_max": float(per_layer.max()),
        "kurtosis_max_layer": int(per_layer.idxmax()),
        **{sink_label(epsilon): sink_rate(alpha, epsilon) if alpha is not None else None for epsilon in SINK_EPSILONS},
    }
