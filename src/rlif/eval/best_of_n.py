"""Best-of-N selection: pick one of N sampled answers to a problem without looking at the label.

Rules (each returns the index of the chosen sample, or None when no sample states an answer):
- `majority_vote`: the most frequent answer (self-consistency).
- `max_score` with self-certainty: the most self-certain answered sample (arXiv 2502.18581); with
  mean log-prob: the most likely one.
- `borda_vote`: rank the N samples by self-certainty (rank 1 = most certain); the sample at rank r gives
  (N - r + 1)^p votes to its answer; the answer with most votes wins. p = 0 is majority vote, a large p
  is max self-certainty. Default p: 0.3 for N <= 16, 1.2 for N >= 32 (the paper's suggestions; between
  the two, 0.3 is kept).
- `random_pick`: a uniformly random answered sample, seeded per problem.
`pass_at_n` is the oracle (any sample correct), not a rule.

Conventions, so every result is deterministic:
- Samples without an extracted answer take part in nothing but the Borda ranking (they hold a rank but
  their votes go nowhere): a rule never picks "no answer" while some sample has one.
- Answers vote together when the answer format calls them equivalent ("1,000" and "1000"; "\\frac12"
  and "0.5"): each answer joins the first earlier group whose first answer is equivalent to it.
- Ties: between groups with equal votes, the group whose first sample has the lowest index wins; between
  equal scores, the lower sample index wins (also when ranking for Borda). The chosen sample of a group
  is its first one.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

Same = Callable[[str, str], bool]  # are two extracted answers the same answer?


def default_borda_p(num_samples: int) -> float:
    """The paper's suggested Borda power: 0.3 for N <= 16, 1.2 for N >= 32 (0.3 in between)."""
    return 1.2 if num_samples >= 32 else 0.3


def answer_groups(answers: Sequence[str | None], same: Same) -> list[int | None]:
    """Per sample: the index of the first sample of its answer group (None for a sample without an answer)."""
    representatives: list[int] = []
    groups: list[int | None] = []
    for i, answer in enumerate(answers):
        if answer is None:
            groups.append(None)
            continue
        group = next((r for r in representatives if same(answer, answers[r])), None)
        if group is None:
            representatives.append(i)
            group = i
        groups.append(group)
    return groups


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float], same: Same) -> int | None:
    """The first sample of the answer group with the largest total weight (ties: the earliest group)."""
    totals: dict[int, float] = {}
    for group, weight in zip(answer_groups(answers, same), weights):
        if group is not None:
            totals[group] = totals.get(group, 0.0) + weight
    if not totals:
        return None
    return max(sorted(totals), key=lambda group: totals[group])  # max keeps the first of equal totals


def majority_vote(answers: Sequence[str | None], same: Same) -> int | None:
    return weighted_vote(answers, [1.0] * len(answers), same)


def borda_ranks(scores: Sequence[float]) -> list[int]:
    """Rank of each sample, 1 = highest score; equal scores are ranked by sample index."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    ranks = [0] * len(scores)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def borda_vote(answers: Sequence[str | None], scores: Sequence[float], p: float, same: Same) -> int | None:
    """Borda voting: the sample at rank r (by score) gives (N - r + 1)^p votes to its answer."""
    n = len(answers)
    weights = [float(n - rank + 1) ** p for rank in borda_ranks(scores)]
    return weighted_vote(answers, weights, same)


def max_score(answers: Sequence[str | None], scores: Sequence[float]) -> int | None:
    """The answered sample with the highest score (ties: the lowest index)."""
    answered = [i for i, answer in enumerate(answers) if answer is not None]
    if not answered:
        return None
    return max(answered, key=lambda i: (scores[i], -i))


def random_pick(answers: Sequence[str | None], seed: int, problem: int) -> int | None:
    """A uniformly random answered sample; the same (seed, problem) always picks the same one."""
    answered = [i for i, answer in enumerate(answers) if answer is not None]
    if not answered:
        return None
    return random.Random(f"rlif-select:{seed}:{problem}").choice(answered)


def pass_at_n(correct: Sequence[bool]) -> bool:
    return any(correct)


# ---------------------------------------------------------------------------------------------
# Applied to evaluation records (rlif.evaluate.generate_records: one dict per response)

RULES = ("majority", "self_certainty", "borda", "mean_logprob", "random")


def best_of_n(records: Sequence[dict], same: Same, *, borda_p: float | None = None, seed: int = 0) -> dict:
    """Each rule's pick per problem and its accuracy, side by side with greedy, the mean sample and pass@N.

    `records` hold a problem's sampled responses (sample >= 0) and optionally its greedy one (sample -1),
    each with answer, correct, self_certainty and mean_logprob. Returns {"num_problems", "num_samples",
    "borda_p", "accuracy": {name: value}, "problems": [per-problem picks]}.
    """
    by_problem: dict[int, dict[int, dict]] = {}
    for record in records:
        by_problem.setdefault(int(record["problem"]), {})[int(record["sample"])] = record
    sizes = {sum(1 for s in samples if s >= 0) for samples in by_problem.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every problem needs the same number (>= 1) of sampled responses; found {sorted(sizes)}")
    n = sizes.pop()
    p = default_borda_p(n) if borda_p is None else borda_p
    rows = []
    for problem in sorted(by_problem):
        samples = [by_problem[problem][j] for j in range(n)]
        answers = [s["answer"] for s in samples]
        correct = [bool(s["correct"]) for s in samples]
        certainty = [float(s["self_certainty"]) for s in samples]
        logprob = [float(s["mean_logprob"]) for s in samples]
        picks = {
            "majority": majority_vote(answers, same),
            "self_certainty": max_score(answers, certainty),
            "borda": borda_vote(answers, certainty, p, same),
            "mean_logprob": max_score(answers, logprob),
            "random": random_pick(answers, seed, problem),
        }
        row = {"problem": problem, "label": samples[0].get("label")}
        greedy = by_problem[problem].get(-1)
        if greedy is not None:
            row["greedy"] = {"answer": greedy["answer"], "correct": bool(greedy["correct"])}
        for rule, index in picks.items():
            row[rule] = {"sample": index, "answer": None if index is None else answers[index], "correct": index is not None and correct[index]}
        row["sample_accuracy"] = sum(correct) / n
        row["pass@n"] = pass_at_n(correct)
        rows.append(row)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    accuracy = {}
    if all("greedy" in row for row in rows):
        accuracy["greedy"] = mean([row["greedy"]["correct"] for row in rows])
    accuracy["sample_mean"] = mean([row["sample_accuracy"] for row in rows])
    for rule in RULES:
        accuracy[rule] = mean([row[rule]["correct"] for row in rows])
    accuracy[f"pass@{n}"] = mean([row["pass@n"] for row in rows])
    return {"num_problems": len(rows), "num_samples": n, "borda_p": p, "accuracy": accuracy, "problems": rows}
