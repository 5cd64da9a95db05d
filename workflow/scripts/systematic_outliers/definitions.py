"""The definitions that measurement and judgement share, each written once: what an outlier is,
the token classes, and the names of the interventions and compression methods.

Measurement (statistics, interventions, variant_analysis) applies them to tensors; judgement and
drawing (choices, verdicts, the reports, the notebooks) read the same names and thresholds back.
Imports neither torch nor the rest of the package, so the figure and claims environments need
neither torch nor transformers (tests/test_layering.py checks it).

- activation-outlier token, the paper's rule (its official code): max_c |x[t, c]| > PAPER_RATIO ×
  the mean |x| of the window;
- massive activation (Sun et al. 2024): |x| > SUN_FLOOR and > SUN_RATIO × the median |x| of its
  layer (or window);
- attention-outlier key: cumulative head-averaged attention received ≥ ATTENTION_SHARE × the
  window length;
- token class: initial (position 0), strong delimiter, weak semantic, other, from the token decoded
  alone and stripped, as the official code does.
"""

from __future__ import annotations

import numpy as np

PAPER_RATIO = 1000.0  # × mean |x|
SUN_RATIO, SUN_FLOOR = 1000.0, 100.0  # × median |x|, and an absolute floor
ATTENTION_SHARE = 0.1  # × window length


def is_massive(magnitude, median):
    """Sun et al.'s criterion, element-wise: |x| > SUN_FLOOR and > SUN_RATIO × the median |x|. Works on
    numpy arrays, torch tensors, pandas Series and scalars alike (broadcasting); a list is read as an array."""
    if isinstance(magnitude, (list, tuple)):
        magnitude = np.asarray(magnitude)
    return (magnitude > SUN_FLOOR) & (magnitude > SUN_RATIO * median)


def is_paper_outlier(magnitude, mean):
    """The paper's rule for an activation-outlier token, element-wise: max |x| > PAPER_RATIO × the window's mean |x|."""
    return magnitude > PAPER_RATIO * mean


STRONG_DELIMITERS = set(". <0x0A> , ; : ! ? - -- --- ' \" ( ) [ ] { } / \\ | * & ^ % $ # @ ~ `".split())
WEAK_SEMANTIC = set(
    "and from of 1 2 3 4 5 6 7 8 9 the a an in on at for with is was are were to by as that this it but or if not".split()
) | {""}
TOKEN_CLASSES = ("initial", "strong_delimiter", "weak_semantic", "other")


def token_class(position: int, text: str) -> str:
    """The class of a token from its position and its text decoded alone (a newline written as \\n)."""
    if position == 0:
        return "initial"
    stripped = text.replace("\\n", "\n").strip()
    if stripped in STRONG_DELIMITERS:
        return "strong_delimiter"
    if stripped.lower() in WEAK_SEMANTIC:
        return "weak_semantic"
    return "other"


# The corpus statistics keep the TOP_K largest |x|, with their positions, per window, layer and site
# (config statistics.top_k, whose schema default is this).
TOP_K = 8

# The weight table: each matrix's TOP columns by max/mean ratio, and the rows a column writes (|W| ≥
# WRITE_SHARE × its largest).
TOP = 3
WRITE_SHARE = 0.5

# The interventions on pretrained models (interventions.py runs them, intervention_report judges them).
BASELINE = "baseline"
ZEROED, MEAN, RANDOM_ZEROED = "outliers zeroed", "outliers set to their mean", "random channels zeroed"
HELD_ZEROED, HELD_MEAN, RANDOM_HELD = "outliers held at zero", "outliers held at their mean", "random channels held at zero"
KEYS_REMOVED, RANDOM_KEYS_REMOVED = "outlier keys removed", "random keys removed"
INTERVENTIONS = (BASELINE, ZEROED, MEAN, RANDOM_ZEROED, HELD_ZEROED, HELD_MEAN, RANDOM_HELD, KEYS_REMOVED, RANDOM_KEYS_REMOVED)
CONTROLS = {ZEROED: RANDOM_ZEROED, HELD_ZEROED: RANDOM_HELD, KEYS_REMOVED: RANDOM_KEYS_REMOVED}
# the two activation ablations, by their field of choices.ActivationTargets: (zeroed, set to the mean, random control)
ABLATIONS = {"once": (ZEROED, MEAN, RANDOM_ZEROED), "held": (HELD_ZEROED, HELD_MEAN, RANDOM_HELD)}
POINTS_PER_LAYER = 2000  # (head, query) points per layer kept for the scatter plots; the correlations use all

# The compression of the trained GPT-2 variants (variant_analysis measures, variant_report judges).
METHODS = ("full", "w8", "w8a8", "prune50")

LOSS_FLOOR = 1e-3  # nats: a loss difference or spread below this is not a finding (taken as this)

# What the outliers cost a quantizer on the pretrained models (quantization.py measures,
# quantization_report judges): the passes, and the controls of the two passes that keep outliers.
FULL = "full precision"
W8 = "w8 per channel"
A8_TENSOR, A8_TOKEN = "a8 per tensor", "a8 per token"
A8_KEPT, A8_RANDOM = "a8 per tensor, outlier tokens kept", "a8 per tensor, random tokens kept"
W8_KEPT, W8_RANDOM = "w8 per channel, outlier columns kept", "w8 per channel, random columns kept"
QUANTIZATIONS = (FULL, W8, A8_TENSOR, A8_TOKEN, A8_KEPT, A8_RANDOM, W8_KEPT, W8_RANDOM)
QUANTIZATION_CONTROLS = {A8_KEPT: A8_RANDOM, W8_KEPT: W8_RANDOM}
