"""`rlif report RUN_DIR`: a short markdown report and plots of any training run.

Reads what `rlif train` wrote (config.yaml, metrics.jsonl, eval/step_N.jsonl) and writes
    RUN/report.md          before / best / after table of the held-out evaluation, label-free checkpoint
                           choice (`rlif.checkpoint_choice`), a few held-out answers before and after
    RUN/plots/eval.png     evaluation curves: accuracy (greedy and sampled), task features (e.g. the
                           step-by-step rate), response length, self-certainty, KL to the initial model,
                           answer agreement, calibration AUROC
    RUN/plots/training.png per-step training curves (`rlif.plots.plot_run`)
`rlif train` calls it at the end of every run.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from rlif.plots import plot_panels, plot_run
from rlif.runlog import read_jsonl
from rlif.checkpoint_choice import ACCURACY, choose, eval_points, labeled_best

# Evaluation summary fields (`rlif.evaluate.summarize`) and how the report names them; anything else
# without a "/" is a task feature (AnswerFormat.describe), shown as a share.
FIELD_NAMES = {
    "accuracy": "accuracy",
    "answer_rate": "answered",
    "self_certainty": "self-certainty",
    "entropy": "entropy",
    "len_mean": "length (tokens)",
    "truncated": "truncated",
    "sc_auroc": "self-certainty AUROC for correctness",
    "agreement": "agreement with the problem's most common answer",
    "ref_logprob": "log-prob under the initial model",
    "kl_ref": "log-ratio to the initial model per token (for samples: a KL estimate)",
}


def features(points: list[dict]) -> list[str]:
    """Task features present in the evaluation metrics (e.g. step_by_step)."""
    found = set()
    for point in points:
        for key in point:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "eval" and parts[2] not in FIELD_NAMES:
                found.add(parts[2])
    return sorted(found)


def eval_panels(feature_names: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    both = lambda field: [(f"eval/greedy/{field}", "greedy"), (f"eval/sampled/{field}", "sampled")]  # noqa: E731
    return [
        ("held-out accuracy", both("accuracy")),
        *[(f"{name} (share of answers)", both(name)) for name in feature_names],
        ("response length (tokens)", both("len_mean") + [("rollout/len_mean", "training rollouts")]),
        ("self-certainty", both("self_certainty") + [("signals/self_certainty", "training rollouts")]),
        ("KL to the initial model", [("eval/sampled/kl_ref", "held-out samples"), ("signals/kl_ref", "training rollouts (k3)")]),
        ("answer agreement (label-free)", [("eval/sampled/agreement", "held-out samples"), ("rollout/agreement", "training groups")]),
        ("self-certainty AUROC for correctness", both("sc_auroc")),
    ]


def _number(value) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{0.0 if abs(value) < 5e-4 else value:.3f}"  # no "-0.000"


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.md and RUN/plots/*.png; returns the report's path."""
    run_dir = Path(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    points = eval_points(metrics)
    plot_run(run_dir)
    feature_names = features(points)
    plot_panels(metrics, eval_panels(feature_names), run_dir / "plots" / "eval.png", title=f"{run_dir.name}: evaluation")

    lines = [f"# Run report: {run_dir.name}", ""]
    lines += _setup(config, metrics)
    if not points:
        lines += ["No held-out evaluation in this run (set eval.path to get before/after numbers).", ""]
    else:
        lines += _before_after(points, feature_names)
        lines += _checkpoint_choice(points)
    lines += ["## Curves", "", "![evaluation](plots/eval.png)", "", "![training](plots/training.png)", ""]
    if points:
        lines += _answers_before_after(run_dir, points[0]["step"], points[-1]["step"])
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _setup(config: dict, metrics: list[dict]) -> list[str]:
    if not config:
        return []
    model, data, rollout, train, reward, evaluation = (config.get(k, {}) for k in ("model", "data", "rollout", "train", "reward", "eval"))
    steps = max((m["step"] for m in metrics), default=0)
    reward_name = reward.get("name")
    if reward.get("weights"):
        reward_name += " " + ", ".join(f"{w:g} x {k}" for k, w in reward["weights"].items())
    seconds = sum(m.get("time/step_s", 0.0) for m in metrics)
    lines = [
        f"- model: `{model.get('path')}`; reward: `{reward_name}`; seed {train.get('seed')}",
        f"- {steps} steps of {train.get('prompts_per_step')} prompts x {rollout.get('group_size')} responses from `{data.get('path')}`; "
        f"lr {train.get('lr')}, kl_coef {train.get('kl_coef')}, temperature {rollout.get('temperature')}",
        f"- training steps took {seconds / 60:.1f} min in total (evaluations not included)",
    ]
    if evaluation.get("path"):
        lines.append(
            f"- held-out evaluation: `{evaluation['path']}` (first {evaluation.get('limit') or 'all'} problems), greedy and "
            f"{evaluation.get('num_samples')} samples per problem at the rollout temperature, before training, every "
            f"{evaluation.get('every') or 'N/A'} steps and after the last"
        )
    return lines + [""]


def _before_after(points: list[dict], feature_names: list[str]) -> list[str]:
    first, last = points[0], points[-1]
    best = next(p for p in points if p["step"] == labeled_best(points))
    header = f"| held-out | step {first['step']} (before) | step {best['step']} (best greedy accuracy) | step {last['step']} (last) |"
    summary = [f"greedy accuracy {_number(first[ACCURACY])} -> {_number(last[ACCURACY])} (best {_number(best[ACCURACY])} at step {best['step']})"]
    for name in feature_names:
        key = f"eval/greedy/{name}"
        if key in first and key in last:
            summary.append(f"{name} share (greedy) {_number(first[key])} -> {_number(last[key])}")
    lines = ["## Before and after", "", "In short: " + "; ".join(summary) + ".", "", header, "|---|---|---|---|"]
    fields = ["accuracy", *feature_names]
    fields += [f"accuracy/{name}" for f in feature_names for name in (f, f"not_{f}")]
    fields += [f for f in FIELD_NAMES if f != "accuracy"]
    for decoding in ("greedy", "sampled"):
        for field in fields:
            key = f"eval/{decoding}/{field}"
            if not any(key in p for p in (first, best, last)):
                continue
            if field in FIELD_NAMES:
                name = FIELD_NAMES[field]
            elif field.startswith("accuracy/"):
                feature = field.split("/", 1)[1]
                name = f"accuracy of {feature.replace('not_', 'non-')} answers" if feature.startswith("not_") else f"accuracy of {feature} answers"
            else:
                name = f"share of {field} answers"
            lines.append(f"| {decoding}: {name} | {_number(first.get(key))} | {_number(best.get(key))} | {_number(last.get(key))} |")
    return lines + [""]


def _checkpoint_choice(points: list[dict]) -> list[str]:
    choices = choose(points)
    if not choices:
        return []
    best = labeled_best(points)
    lines = [
        "## Label-free checkpoint choice",
        "",
        f"Each rule (`rlif.checkpoint_choice`) picks an evaluation step from label-free signals; the labeled best is step {best}.",
        "",
        "| rule | picked step | greedy accuracy there | gap to the labeled best |",
        "|---|---|---|---|",
    ]
    for name, choice in choices.items():
        lines.append(f"| {name} | {choice['step']} | {choice['accuracy']:.3f} | {choice['gap']:.3f} |")
    return lines + [""]


def _answers_before_after(run_dir: Path, first_step: int, last_step: int, count: int = 4) -> list[str]:
    before = [r for r in read_jsonl(run_dir / "eval" / f"step_{first_step:06d}.jsonl") if r["sample"] < 0][:count]
    after = {r["problem"]: r for r in read_jsonl(run_dir / "eval" / f"step_{last_step:06d}.jsonl") if r["sample"] < 0}
    if not before:
        return []
    lines = ["## Held-out answers before and after (greedy)", ""]
    for record in before:
        lines.append(f"**{record['prompt']}** (label {record['label']})")
        lines.append("")
        for step, answer in ((first_step, record), (last_step, after.get(record["problem"]))):
            if answer is None:
                continue
            verdict = "correct" if answer["correct"] else "wrong"
            lines += [f"step {step} ({verdict}, self-certainty {answer['self_certainty']:.3f}):", "```", answer["response"], "```"]
        lines.append("")
    return lines
