"""Summaries of evaluation records (`rlif.eval.records`): the one summarizer of `rlif eval`, `rlif select` and
training's evaluations.

`summarize` turns a set of records into flat metrics (accuracy, self-certainty, length, task features, label-free
agreement, ...); `summarize_records` adds pass@k, the Best-of-N table, calibration and (code) the execution
statistics for an evaluation folder;
`format_summary` prints them as Markdown tables.
"""

from __future__ import annotations

import math
from collections import Counter

from rlif.code.passk import mean_pass_at_k
from rlif.data.answers import AnswerFormat, agreement
from rlif.eval.best_of_n import best_of_n
from rlif.eval.calibration import calibration_report, separation

PASS_AT_K = (1, 5, 10)


def summarize(records: list[dict], prefix: str, answer_format: AnswerFormat | None = None) -> dict[str, float]:
    """Accuracy, answer rate, self-certainty, entropy, length and truncation of a set of responses.

    Also, when the records have them: `ref_logprob` and `kl_ref` (mean of mean_logprob - ref_logprob: for
    sampled answers the usual estimate of the per-token KL to the reference); each task feature's mean
    (`features`, e.g. step_by_step) and, for a boolean feature, the accuracy with and without it
    (`accuracy/step_by_step`, `accuracy/not_step_by_step`); `sc_auroc`, how well self-certainty ranks
    correct answers above incorrect ones (`rlif.calibration.separation`); and, given the `answer_format`
    and several samples per problem, `agreement`: the mean share of a problem's samples that give its
    most common answer (label-free).
    """
    if not records:
        return {}
    mean = lambda key, rows=records: sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
    metrics = {
        f"{prefix}accuracy": mean("correct"),
        f"{prefix}answer_rate": sum(r["answer"] is not None for r in records) / len(records),
        f"{prefix}self_certainty": mean("self_certainty"),
    }
    for name, key in (("entropy", "entropy"), ("len_mean", "num_tokens"), ("truncated", "truncated")):
        if all(key in r for r in records):  # rlif writes them; a responses file of one's own may not (`rlif select`)
            metrics[f"{prefix}{name}"] = mean(key)
    if all("tests_passed" in r for r in records):  # code: the share of each problem's tests passed
        metrics[f"{prefix}tests_passed"] = mean("tests_passed")
    if all("ref_logprob" in r for r in records):
        metrics[f"{prefix}ref_logprob"] = mean("ref_logprob")
        metrics[f"{prefix}kl_ref"] = sum(r["mean_logprob"] - r["ref_logprob"] for r in records) / len(records)
    features = sorted({key for r in records for key in r.get("features", {})})
    for feature in features:
        values = [r["features"].get(feature) for r in records if isinstance(r.get("features", {}).get(feature), (bool, int, float))]
        if values:
            metrics[f"{prefix}{feature}"] = sum(float(v) for v in values) / len(values)
        if values and all(isinstance(v, bool) for v in values):
            for name, wanted in ((feature, True), (f"not_{feature}", False)):
                rows = [r for r in records if r.get("features", {}).get(feature) is wanted]
                if rows:
                    metrics[f"{prefix}accuracy/{name}"] = mean("correct", rows)

    calibration = separation([r["self_certainty"] for r in records], [r["correct"] for r in records])
    if calibration is not None:
        metrics[f"{prefix}sc_auroc"] = calibration.auroc
    by_problem: dict = {}
    for r in records:
        by_problem.setdefault(r["problem"], []).append(r["answer"])
    if answer_format is not None and any(len(answers) > 1 for answers in by_problem.values()):
        shares = [agreement(answers, answer_format.equivalent) for answers in by_problem.values()]
        metrics[f"{prefix}agreement"] = sum(shares) / len(shares)
    return metrics


def summarize_records(records: list[dict], answer_format, *, borda_p: float | None = None, seed: int = 0) -> dict:
    """Accuracy of greedy and sampled responses, pass@k and the Best-of-N table (>= 2 samples), calibration, and
    for code the execution statistics."""

    greedy = [r for r in records if r["sample"] < 0]
    sampled = [r for r in records if r["sample"] >= 0]
    summary: dict = {"problems": len({r["problem"] for r in records}), "metrics": {**summarize(greedy, "greedy/", answer_format), **summarize(sampled, "sampled/", answer_format)}}
    if sampled:
        summary["pass_at_k"] = pass_at_k_table(sampled)
    if len({r["sample"] for r in sampled}) >= 2:
        summary["best_of_n"] = best_of_n(records, answer_format.equivalent, borda_p=borda_p, seed=seed)
    summary["calibration"] = calibration_report(records)
    execution = execution_report(records)
    if execution is not None:
        summary["execution"] = execution
    return summary


def pass_at_k_table(sampled: list[dict], ks: tuple[int, ...] = PASS_AT_K) -> dict[str, float]:
    """The unbiased pass@k (Chen et al. 2021; `rlif.code.passk`) over problems, for each k <= the samples per problem."""
    counts: dict[int, list[int]] = {}
    for r in sampled:
        counts.setdefault(r["problem"], []).append(bool(r["correct"]))
    n = min(len(correct) for correct in counts.values())
    pairs = [(len(correct), sum(correct)) for correct in counts.values()]
    return {f"pass@{k}": mean_pass_at_k(pairs, k) for k in ks if k <= n}


def execution_report(records: list[dict]) -> dict | None:
    """For records of executed programs (code): statuses, sandboxes, and the isolation every run had."""
    if not records or not all("status" in r and "isolation" in r for r in records):
        return None
    common = set(records[0]["isolation"]).intersection(*(r["isolation"] for r in records[1:]))
    return {
        "statuses": dict(Counter(r["status"] for r in records).most_common()),
        "sandboxes": dict(Counter(r.get("sandbox") for r in records).most_common()),
        "isolation": [name for name in records[0]["isolation"] if name in common],
    }


def format_summary(summary: dict) -> str:
    """The report as Markdown tables: accuracy (with a binomial standard error) and calibration."""
    problems = summary["problems"]
    lines = [f"problems: {problems}", "", "| answers | accuracy | ± s.e. |", "|---|---|---|"]

    def row(name: str, value: float | None, count: int) -> None:
        if value is not None:
            error = math.sqrt(value * (1 - value) / count) if count else float("nan")
            lines.append(f"| {name} | {value:.3f} | {error:.3f} |")

    metrics = summary["metrics"]
    best = summary.get("best_of_n")
    if best is None:
        row("greedy", metrics.get("greedy/accuracy"), problems)
        if "sampled/accuracy" in metrics:
            row("sampled (mean over samples)", metrics["sampled/accuracy"], problems)
    else:
        n, accuracy = best["num_samples"], best["accuracy"]
        names = {
            "greedy": "greedy",
            "sample_mean": "one sample (mean)",
            "majority": f"majority vote of {n}",
            "self_certainty": f"max self-certainty of {n}",
            "borda": f"Borda, p = {best['borda_p']:g}, of {n}",
            "mean_logprob": f"max mean log-prob of {n}",
            "random": f"random answered of {n}",
            f"pass@{n}": f"pass@{n} (oracle)",
        }
        for key, name in names.items():
            row(name, accuracy.get(key), problems)
    if summary.get("pass_at_k"):
        lines.append("unbiased pass@k of the samples: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["pass_at_k"].items()))
    for key, label in (("answer_rate", "answer rate"), ("tests_passed", "tests passed (mean share)"), ("len_mean", "mean length (tokens)"), ("truncated", "truncated")):
        parts = [f"{group} {metrics[f'{group}/{key}']:.3g}" for group in ("greedy", "sampled") if f"{group}/{key}" in metrics]
        if parts:
            lines.append(f"{label}: " + ", ".join(parts))
    lines += ["", "| responses | n | correct | mean SC correct | mean SC incorrect | AUROC | effect size r |", "|---|---|---|---|---|---|---|"]
    fmt = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
    for group, stats in summary["calibration"].items():
        lines.append(
            f"| {group} | {stats['responses']} | {stats['correct']} | {fmt(stats['self_certainty_correct'])} | "
            f"{fmt(stats['self_certainty_incorrect'])} | {fmt(stats['auroc'])} | {fmt(stats['effect_size_r'])} |"
        )
    execution = summary.get("execution")
    if execution:
        statuses = ", ".join(f"{status} {count}" for status, count in execution["statuses"].items())
        sandboxes = ", ".join(f"{name} {count}" for name, count in execution["sandboxes"].items())
        lines += ["", f"programs run: {statuses}; sandbox: {sandboxes}", f"isolation of every run: {', '.join(execution['isolation'])}"]
    return "\n".join(lines)
