"""The verdict engine: verdicts, findings, claims, comparisons over seeds and their Markdown.

A claim is a row of a table in code: what a paper says, the criterion with its numbers, the
paper's own value where it states one, and a judge that turns the measured numbers into a
`Finding` (a sentence with the numbers and one of VERDICTS). Every report (verdicts for the LLMs,
intervention_report, variant_report) builds on this module, which imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

HOLDS, PARTLY, DOES_NOT_HOLD, NOT_SHOWN, NOT_MEASURED = "holds", "partly", "does not hold", "not shown at this scale", "not measured"
VERDICTS = (HOLDS, PARTLY, DOES_NOT_HOLD, NOT_SHOWN, NOT_MEASURED)


@dataclass(frozen=True)
class Finding:
    measured: str  # the numbers, as a sentence
    verdict: str
    value: str = ""  # the short measured value of the scorecard

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}: use one of {', '.join(VERDICTS)}")


@dataclass(frozen=True)
class Claim:
    key: str
    text: str  # what the paper says
    criterion: str  # how we judge it, with the numbers
    paper: str  # the paper's value for LLaMA-2-7B ("" where it states none; "≈" read off a plot)
    judge: Callable[..., Finding]


def graded(value: float | None, holds_at: float, partly_at: float) -> str:
    """holds at or above `holds_at`, partly at or above `partly_at`, else does not hold; not measured without a value."""
    if value is None or pd.isna(value):
        return NOT_MEASURED
    return HOLDS if value >= holds_at else PARTLY if value >= partly_at else DOES_NOT_HOLD


@dataclass(frozen=True)
class Comparison:
    verdict: str
    text: str


def compare_over_seeds(
    claimed: list[float], other: list[float], lower_is_better: bool, margin: float, floor: float = 0.0, unit: str = "", digits: int = 4
) -> Comparison:
    """Is `claimed` better than `other` (per-seed values)? Only a difference of the means larger
    than the noise counts: the larger range over seeds of the two (at least `floor`, the
    measurement's resolution). With one seed in either, the noise is the stated `margin` and the
    strongest verdict is partly. Within the noise: not shown at this scale."""
    claimed, other = np.asarray(claimed, dtype=float), np.asarray(other, dtype=float)
    if not len(claimed) or not len(other) or np.isnan(claimed).any() or np.isnan(other).any():
        return Comparison(NOT_MEASURED, "a value is missing for some seed")
    gain = (other.mean() - claimed.mean()) * (1 if lower_is_better else -1)
    single = min(len(claimed), len(other)) < 2
    spread = margin if single else max(np.ptp(claimed), np.ptp(other))
    noise = max(spread, floor)
    if gain > noise:
        verdict = PARTLY if single else HOLDS
    elif gain < -noise:
        verdict = DOES_NOT_HOLD
    else:
        verdict = NOT_SHOWN
    noise_text = (
        f"one seed, so the stated margin {noise:,.{digits}g}{unit} and at most partly"
        if single
        else f"seed spread {noise:,.{digits}g}{unit} over {len(claimed)} and {len(other)} seeds"
    )
    return Comparison(verdict, f"difference {gain:+,.{digits}g}{unit} in the claimed direction; {noise_text}")


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]


def claims_rows(judged: list[tuple[Claim, Finding]]) -> list[str]:
    """The Markdown table of judged claims: the paper's value beside ours, the criterion beside the verdict."""
    rows = [[claim.text, claim.paper or "–", finding.measured, claim.criterion, f"**{finding.verdict}**"] for claim, finding in judged]
    return markdown_table(["claim", "paper", "measured here", "criterion", "verdict"], rows)


def claims_markdown(title: str, intro: list[str], judged: list[tuple[Claim, Finding]]) -> str:
    """A claims file: each claim with the numbers measured, the criterion and the verdict."""
    return "\n".join([f"# {title}", "", *intro, "", *claims_rows(judged), ""])
