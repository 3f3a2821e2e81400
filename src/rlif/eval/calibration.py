"""Does self-certainty tell right answers from wrong ones? AUROC and the Mann-Whitney effect size.

Both come from scipy's Mann-Whitney U test of the scores of correct vs incorrect answers:
    AUROC = U / (n_correct * n_incorrect)     (ties count one half)
    r     = Z / sqrt(n_correct + n_incorrect)  (Rosenthal's effect size r, the one the INTUITOR paper reports:
                                                base ~0.00, INTUITOR 0.45, GRPO 0.35 on MATH-500)
Z is the normal approximation of U with the tie correction, signed so that r > 0 when correct answers score higher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy.stats import mannwhitneyu, norm


@dataclass(frozen=True)
class Separation:
    auroc: float  # P(score of a random correct answer > score of a random incorrect one), ties 1/2
    effect_size_r: float  # Z / sqrt(N)
    p_value: float  # two-sided
    n_correct: int
    n_incorrect: int


def separation(scores: Sequence[float], correct: Sequence[bool]) -> Separation | None:
    """How well `scores` rank correct above incorrect answers; None when either group is empty."""

    positives = [float(s) for s, c in zip(scores, correct) if c]
    negatives = [float(s) for s, c in zip(scores, correct) if not c]
    if not positives or not negatives:
        return None
    result = mannwhitneyu(positives, negatives, alternative="two-sided", method="asymptotic", use_continuity=False)
    n1, n2 = len(positives), len(negatives)
    auroc = result.statistic / (n1 * n2)
    z = _z_score(result.pvalue) * (1 if auroc >= 0.5 else -1)
    return Separation(auroc=auroc, effect_size_r=z / math.sqrt(n1 + n2), p_value=float(result.pvalue), n_correct=n1, n_incorrect=n2)


def _z_score(two_sided_p: float) -> float:
    return float(norm.isf(two_sided_p / 2))


def calibration_report(records: Sequence[dict]) -> dict[str, dict]:
    """Separation of correct from incorrect answers by self-certainty, for greedy and for sampled responses.

    `records` are evaluation records (sample -1 = greedy) with self_certainty and correct. Per group:
    counts, mean self-certainty of correct and incorrect answers, and AUROC / effect size r / p-value
    (None when all answers are correct or all wrong).
    """
    report = {}
    for group, members in (("greedy", [r for r in records if r["sample"] < 0]), ("sampled", [r for r in records if r["sample"] >= 0])):
        if not members:
            continue
        scores = [float(r["self_certainty"]) for r in members]
        correct = [bool(r["correct"]) for r in members]
        right = [s for s, c in zip(scores, correct) if c]
        wrong = [s for s, c in zip(scores, correct) if not c]
        result = separation(scores, correct)
        report[group] = {
            "responses": len(members),
            "correct": len(right),
            "self_certainty_correct": sum(right) / len(right) if right else None,
            "self_certainty_incorrect": sum(wrong) / len(wrong) if wrong else None,
            "auroc": result.auroc if result else None,
            "effect_size_r": result.effect_size_r if result else None,
            "p_value": result.p_value if result else None,
        }
    return report


