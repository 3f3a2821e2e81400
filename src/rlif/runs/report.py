"""`rlif report RUN_DIR` and `rlif plot RUN_DIR`: a short markdown report and the plots of a training run.

Reads what `rlif train` wrote (config.yaml, metrics.jsonl, eval/step_N.jsonl) and writes
    RUN/report.md          before / best / after table of the held-out evaluation, label-free checkpoint
                           choice (`rlif.runs.checkpoint_choice`), a few held-out answers before and after
    RUN/plots/eval.png     evaluation curves: accuracy (greedy and sampled), task features (e.g. the
                           step-by-step rate), response length, self-certainty, KL to the initial model,
                           answer agreement, calibration AUROC
    RUN/plots/training.png per-step training curves (`rlif.runs.plots.plot_training`)
`rlif train` calls it at the end of every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from rlif import metrics as m
from rlif.data import jsonl
from rlif.errors import DataError
from rlif.files import write_text_atomic
from rlif.runs.checkpoint_choice import choose, eval_points, labeled_best
from rlif.runs.plots import plot_evaluation, plot_training


def features(points: list[dict]) -> list[str]:
    """Task features present in the evaluation metrics (e.g. step_by_step): eval fields that are not EVAL_FIELDS."""
    found = set()
    for point in points:
        for key in point:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "eval" and parts[2] not in m.EVAL_FIELDS:
                found.add(parts[2])
    return sorted(found)


def _number(value) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{0.0 if abs(value) < 5e-4 else value:.3f}"  # no "-0.000"


def run_title(run_dir: Path, config: dict) -> str:
    """The run's name and method for figure titles: "testbed-intuitor (reward self_certainty)"."""
    reward = (config.get("reward") or {}).get("name")
    return f"{run_dir.name} (reward {reward})" if reward else run_dir.name


def check_run_dir(run_dir: Path) -> None:
    """A training run folder holds config.yaml and metrics.jsonl; refuse anything else with what was found."""
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such folder; expected a training run folder (the run.output_dir of `rlif train`)")
    missing = [name for name in ("config.yaml", "metrics.jsonl") if not (run_dir / name).is_file()]
    if missing:
        hint = " (it is an `rlif eval` folder: its summary is summary.json and calibration.png)" if (run_dir / "settings.json").is_file() else ""
        raise DataError(f"{run_dir}: not a training run folder, no {' or '.join(missing)}{hint}")


def write_plots(run_dir: str | Path) -> list[Path]:
    """RUN/plots/training.png and RUN/plots/eval.png from RUN/metrics.jsonl; returns the files written."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    records = jsonl.read_log(run_dir / "metrics.jsonl")
    title = run_title(run_dir, yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    written = [plot_training(records, run_dir / "plots" / "training.png", title),
               plot_evaluation(records, features(eval_points(records)), run_dir / "plots" / "eval.png", title)]
    return [path for path in written if path is not None]


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.md and RUN/plots/*.png; returns the report's path."""
    run_dir = Path(run_dir)
    plots = write_plots(run_dir)
    metrics = jsonl.read_log(run_dir / "metrics.jsonl")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    points = eval_points(metrics)
    lines = [f"# Run report: {run_title(run_dir, config)}", ""]
    lines += _setup(config, metrics)
    if not points:
        lines += ["No held-out evaluation in this run (set eval.path to get before/after numbers).", ""]
    else:
        lines += _before_after(points, features(points))
        lines += _stop_rule(run_dir, points)
        lines += _checkpoint_choice(points)
    if plots:
        lines += ["## Curves", ""] + [f"![{path.stem}](plots/{path.name})\n" for path in plots]
    if points:
        lines += _answers_before_after(run_dir, points[0]["step"], points[-1]["step"])
    return write_text_atomic(run_dir / "report.md", "\n".join(lines))


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
    accuracy = m.GREEDY_ACCURACY
    summary = [f"greedy accuracy {_number(first[accuracy])} -> {_number(last[accuracy])}"]
    columns = [(f"step {first['step']} (before training)", first)]
    if best["step"] == first["step"]:
        summary[0] += " (best = before training)"
    else:
        summary[0] += f" (best {_number(best[accuracy])} at step {best['step']})"
        if best is not last:
            columns.append((f"step {best['step']} (best greedy accuracy)", best))
    columns.append((f"step {last['step']} (last)", last))
    for name in feature_names:
        key = m.eval_key("greedy", name)
        if key in first and key in last:
            summary.append(f"share of greedy answers given {m.feature_words(name)} {_number(first[key])} -> {_number(last[key])}")
    lines = ["## Before and after", "", "In short: " + "; ".join(summary) + ".", "",
             "| held-out | " + " | ".join(label for label, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    fields = ["accuracy", *feature_names]
    fields += [f"accuracy/{name}" for f in feature_names for name in (f, f"not_{f}")]
    fields += [f for f in m.EVAL_FIELDS if f != "accuracy"]
    for decoding in ("greedy", "sampled"):
        for field in fields:
            key = m.eval_key(decoding, field)
            if not any(key in p for _, p in columns):
                continue
            if field == "kl_ref" and decoding == "greedy":
                name = "log-prob ratio to the initial model (greedy answers: not a KL estimate)"
            elif field in m.EVAL_FIELDS:
                name = m.EVAL_FIELDS[field][0]
            elif field.startswith("accuracy/"):
                feature = field.split("/", 1)[1]
                style = f"not given {m.feature_words(feature[4:])}" if feature.startswith("not_") else f"given {m.feature_words(feature)}"
                name = f"accuracy of answers {style}"
            else:
                name = f"share of answers given {m.feature_words(field)}"
            lines.append(f"| {decoding}: {name} | " + " | ".join(_number(p.get(key)) for _, p in columns) + " |")
    return lines + [""]


def _stop_rule(run_dir: Path, points: list[dict]) -> list[str]:
    """What run.stop_rule kept (RUN/chosen_checkpoint.json), with the labels' verdict on it."""
    path = run_dir / "chosen_checkpoint.json"
    if not path.is_file():
        return []
    chosen = json.loads(path.read_text())
    accuracy = {p["step"]: p.get(m.GREEDY_ACCURACY) for p in points}
    best = labeled_best(points)
    stopped = f"stopped the run at step {chosen['stopped_at']}" if chosen.get("stopped_at") is not None else "did not stop the run"
    return [
        "## What a user keeps (label-free stop rule)", "",
        f"`run.stop_rule: {chosen['rule']}` {stopped} and keeps **step {chosen['step']}** (`{chosen['checkpoint']}`): "
        f"{chosen['reason']}.", "",
        f"Greedy accuracy there: {_number(accuracy.get(chosen['step']))}; the labeled best is step {best} "
        f"({_number(accuracy.get(best))}), the last evaluation step {points[-1]['step']} ({_number(points[-1].get(m.GREEDY_ACCURACY))}). "
        "The rule read no label; the accuracies are the labels' verdict on its choice.", "",
    ]


def _checkpoint_choice(points: list[dict]) -> list[str]:
    choices = choose(points)
    if not choices:
        return []
    best = labeled_best(points)
    lines = [
        "## Label-free checkpoint choice",
        "",
        f"Each rule (`rlif.runs.checkpoint_choice`) picks an evaluation step from label-free signals; the labeled best is step {best}.",
        "",
        "| rule | picked step | greedy accuracy there | gap to the labeled best |",
        "|---|---|---|---|",
    ]
    for name, choice in choices.items():
        lines.append(f"| {name} | {choice['step']} | {choice['accuracy']:.3f} | {choice['gap']:.3f} |")
    return lines + [""]


def _answers_before_after(run_dir: Path, first_step: int, last_step: int, count: int = 4) -> list[str]:
    before = [r for r in jsonl.read_log(run_dir / "eval" / f"step_{first_step:06d}.jsonl") if r["sample"] < 0][:count]
    after = {r["problem"]: r for r in jsonl.read_log(run_dir / "eval" / f"step_{last_step:06d}.jsonl") if r["sample"] < 0}
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
