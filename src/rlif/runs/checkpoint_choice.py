"""Choosing a checkpoint without labels.

A self-certainty reward can keep rising while accuracy falls, so "train for the budget and keep the last
checkpoint" can be the wrong choice, and the accuracy that would tell us is exactly what a label-free
method does not have. Each rule here picks one evaluation step of a run from label-free signals only,
read from the run's evaluation metrics (held-out prompts, their labels unused):
  eval/sampled/agreement       share of a problem's sampled answers that give its most common answer
  eval/sampled/self_certainty  mean self-certainty of sampled answers
  eval/sampled/kl_ref          mean log-prob of sampled answers under the policy minus under the
                               initial model: an estimate of the per-token KL to the initial model

Rules (step 0, the untrained model, is a candidate: not training is a valid choice; ties go to the
earliest step):
  last                  the last evaluation (what a fixed budget gives)
  max_self_certainty    the most self-certain evaluation (the naive rule: the reward itself)
  max_agreement         the evaluation whose sampled answers agree most (self-consistency)
  agreement_within_kl   max_agreement among evaluations whose KL to the initial model is at most
                        `kl_budget` nats per token (the policy may sharpen, but not drift far)
  agreement_early_stop  online: stop at the first evaluation whose agreement is lower than the one
                        before and keep that one before (needs no future evaluations: a stopping rule)

`pick_gap` scores a rule with labels, for reporting only: the greedy accuracy of the labeled-best
evaluation minus the greedy accuracy at the rule's pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rlif.metrics import GREEDY_ACCURACY as ACCURACY
from rlif.metrics import SAMPLED_AGREEMENT as AGREEMENT
from rlif.metrics import SAMPLED_KL_REF as KL_REF
from rlif.metrics import SAMPLED_SELF_CERTAINTY as SELF_CERTAINTY

DEFAULT_KL_BUDGET = 0.05

Rule = Callable[[list[dict]], int]


def eval_points(metrics: list[dict]) -> list[dict]:
    """The metric records of a run that carry evaluation results, in step order (one per step)."""
    by_step = {record["step"]: record for record in metrics if ACCURACY in record}
    return [by_step[step] for step in sorted(by_step)]


def _argmax(points: list[dict], key: str) -> int:
    usable = [p for p in points if isinstance(p.get(key), (int, float))]
    if not usable:
        raise ValueError(f"no evaluation has {key!r} (sampled evaluation answers are needed: eval.num_samples >= 2)")
    best = max(p[key] for p in usable)
    return next(p["step"] for p in usable if p[key] == best)


def last(points: list[dict]) -> int:
    return points[-1]["step"]


def max_self_certainty(points: list[dict]) -> int:
    return _argmax(points, SELF_CERTAINTY)


def max_agreement(points: list[dict]) -> int:
    return _argmax(points, AGREEMENT)


def agreement_within_kl(points: list[dict], kl_budget: float = DEFAULT_KL_BUDGET) -> int:
    # Step 0 has KL 0 by construction, so there is always a candidate.
    within = [p for p in points if p["step"] == points[0]["step"] or p.get(KL_REF, float("inf")) <= kl_budget]
    return _argmax(within, AGREEMENT)


def agreement_early_stop(points: list[dict]) -> int:
    for before, now in zip(points, points[1:]):
        if now[AGREEMENT] < before[AGREEMENT]:
            return before["step"]
    return points[-1]["step"]


RULES: dict[str, Rule] = {
    "last": last,
    "max_self_certainty": max_self_certainty,
    "max_agreement": max_agreement,
    "agreement_within_kl": agreement_within_kl,
    "agreement_early_stop": agreement_early_stop,
}


def labeled_best(points: list[dict]) -> int:
    """The step with the highest greedy accuracy (uses labels: for judging the rules only)."""
    return _argmax(points, ACCURACY)


def pick_gap(points: list[dict], step: int) -> float:
    """Greedy accuracy of the labeled-best evaluation minus that of evaluation `step` (>= 0; 0 is a perfect pick)."""
    accuracy = {p["step"]: p[ACCURACY] for p in points}
    return max(accuracy.values()) - accuracy[step]


def choose(points: list[dict]) -> dict[str, dict]:
    """Every rule's pick for one run, with its accuracy and gap to the labeled best (for reports)."""
    accuracy = {p["step"]: p[ACCURACY] for p in points}
    choices = {}
    for name, rule in RULES.items():
        try:
            step = rule(points)
        except (ValueError, KeyError):  # the run lacks the signal (e.g. no sampled evaluation)
            continue
        choices[name] = {"step": step, "accuracy": accuracy[step], "gap": pick_gap(points, step)}
    return choices


# ---------------------------------------------------------------------------------------------
# Stopping a run (run.stop_rule): the online rules, from the label-free signals alone

STOP_RULES = ("agreement_early_stop", "agreement_within_kl")
LABEL_FREE = (AGREEMENT, SELF_CERTAINTY, KL_REF)


@dataclass(frozen=True)
class StopDecision:
    stop: bool  # stop the run after this evaluation
    chosen_step: int  # the evaluation step to keep (0: the model before training)
    reason: str  # for people: why


def label_free(point: dict) -> dict:
    """An evaluation's step and label-free signals only: what a stop rule may read."""
    return {"step": point["step"], **{key: point[key] for key in LABEL_FREE if key in point}}


def stop_decision(rule: str, points: list[dict], kl_budget: float = DEFAULT_KL_BUDGET) -> StopDecision:
    """After the latest evaluation of `points` (every evaluation so far, in step order), whether `rule` stops the run
    and which evaluation it keeps. Only the label-free signals are read (`label_free`)."""
    points = [label_free(p) for p in points]
    now = points[-1]
    if rule == "agreement_early_stop":
        chosen = agreement_early_stop(points)
        if chosen != now["step"]:
            before = next(p for p in points if p["step"] == chosen)
            return StopDecision(True, chosen, f"agreement fell from {before[AGREEMENT]:.3f} (step {chosen}) to "
                                              f"{points[points.index(before) + 1][AGREEMENT]:.3f}; keeping step {chosen}")
        return StopDecision(False, chosen, f"agreement has not fallen (step {chosen}: {now[AGREEMENT]:.3f})")
    if rule == "agreement_within_kl":
        chosen = agreement_within_kl(points, kl_budget)
        if now["step"] != points[0]["step"] and now.get(KL_REF, float("inf")) > kl_budget:
            return StopDecision(True, chosen, f"KL to the initial model {now.get(KL_REF, float('nan')):.3f} > budget "
                                              f"{kl_budget:g} at step {now['step']}; keeping the most self-consistent "
                                              f"evaluation within it, step {chosen}")
        return StopDecision(False, chosen, f"within the KL budget {kl_budget:g}; most self-consistent so far: step {chosen}")
    raise ValueError(f"unknown stop rule {rule!r}: expected one of {', '.join(STOP_RULES)}")
