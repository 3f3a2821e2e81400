"""Every figure rlif draws (PNG, through matplotlib's `Figure`, which needs no display and no global backend).

- `plot_training`: RUN/plots/training.png, the per-step training curves of metrics.jsonl;
- `plot_evaluation`: RUN/plots/eval.png, the held-out evaluation curves;
- `plot_calibration`: calibration.png of an evaluation, self-certainty of correct vs incorrect answers;
- `plot_comparison`: curves.png of `rlif compare`, every method's mean over seeds with a band of one sd.
Each panel has a y-axis label with its unit; a panel that repeats another one, or whose values never change, is left
out (and the figure says so underneath), so every panel on the page says something.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from rlif import metrics as m
from rlif.eval.calibration import calibration_report

# (panel title, y-axis label, [(metric key, series label), ...]); a series label of None means the panel's only line
Panel = tuple[str, str, list[tuple[str, str | None]]]

TRAINING_PANELS: list[Panel] = [
    ("reward", "reward (mean over the step's responses)", [(m.REWARD_MEAN, None)]),
    ("accuracy of the training samples", "share correct (labels)", [(m.ROLLOUT_ACCURACY, None)]),
    ("self-certainty of the training samples", "nats per token", [(m.SELF_CERTAINTY, None)]),
    ("entropy of the training samples", "nats per token", [(m.ENTROPY, None)]),
    ("KL to the initial model (training samples, k3)", "nats per token", [(m.KL_REF, None)]),
    ("answer agreement within groups (label-free)", "share", [(m.ROLLOUT_AGREEMENT, None)]),
    ("response length", "tokens", [(m.LEN_MEAN, "mean"), (m.LEN_MAX, "longest")]),
    ("responses cut at the token limit", "share", [(m.TRUNCATED, None)]),
    ("PPO ratio clipped", "share of tokens", [(m.CLIP_FRAC, None)]),
    ("gradient norm (before clipping)", "L2 norm", [(m.GRAD_NORM, None)]),
    ("learning rate", "lr", [(m.LR, None)]),
]


def evaluation_panels(features: Sequence[str]) -> list[Panel]:
    """Held-out evaluation curves; `features` are the task's boolean features (e.g. step_by_step)."""

    def both(field: str) -> list[tuple[str, str]]:
        return [(m.eval_key("greedy", field), "greedy"), (m.eval_key("sampled", field), "sampled")]

    def panel(field: str) -> Panel:
        words, unit = m.EVAL_FIELDS[field]
        return (f"held-out {words}", unit, both(field))

    return [
        panel("accuracy"),
        *[(f"held-out answers given {m.feature_words(f)}", "share of answers", both(f)) for f in features],
        ("response length", "tokens", both("len_mean") + [(m.LEN_MEAN, "training samples")]),
        ("self-certainty", "nats per token", both("self_certainty") + [(m.SELF_CERTAINTY, "training samples")]),
        ("KL to the initial model", "nats per token",
         [(m.SAMPLED_KL_REF, "held-out samples"), (m.KL_REF, "training samples (k3)")]),
        ("answer agreement (label-free)", "share", [(m.SAMPLED_AGREEMENT, "held-out samples"), (m.ROLLOUT_AGREEMENT, "training groups")]),
        panel("sc_auroc"),
    ]


def plot_training(records: list[dict], path: Path, title: str) -> Path | None:
    return plot_panels(records, TRAINING_PANELS, path, title=f"{title}: training", max_columns=4)


def plot_evaluation(records: list[dict], features: Sequence[str], path: Path, title: str) -> Path | None:
    return plot_panels(records, evaluation_panels(features), path, title=f"{title}: held-out evaluation", max_columns=4)


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [p[0] for p in points], [float(p[1]) for p in points]


def grid_layout(count: int, max_columns: int) -> tuple[int, int]:
    """(rows, columns) for `count` panels: the fewest rows of at most `max_columns`, then as few columns as fill them
    (7 panels in 4 columns: 2 x 4; 5 in 3: 2 x 3)."""
    rows = -(-count // max_columns)
    return rows, -(-count // rows)


def plot_panels(records: list[dict], panels: list[Panel], path: Path, title: str = "", max_columns: int = 3) -> Path | None:
    """Draw the panels that have data into one PNG (x = step); returns its path, or None when nothing has data."""
    drawn, left_out, seen = [], [], []
    for name, ylabel, series in panels:
        lines = [(key, label, *_series(records, key)) for key, label in series]
        lines = [line for line in lines if line[2]]
        if not lines:
            continue
        values = [tuple(line[3]) for line in lines]
        if all(len(set(v)) == 1 for v in values) and sum(len(v) for v in values) > 1:
            left_out.append(f"{name} (always {values[0][0]:.3g})")
            continue
        if values in seen:
            left_out.append(f"{name} (the same values as another panel)")
            continue
        seen.append(values)
        drawn.append((name, ylabel, lines))
    if not drawn:
        return None
    rows, columns = grid_layout(len(drawn), max_columns)
    note = 0.4 if left_out else 0.0  # inches kept free below the panels for the "not drawn" line
    height = 3.1 * rows + note
    figure = Figure(figsize=(4.4 * columns, height), layout="constrained")
    figure.get_layout_engine().set(rect=(0, note / height, 1, 1 - note / height))
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for axis, (name, ylabel, lines) in zip(axes, drawn):
        for _key, label, steps, values in lines:
            axis.plot(steps, values, marker="." if len(steps) < 40 else None, label=label)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("optimizer step", fontsize=8)
        axis.set_ylabel(ylabel, fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        if len(lines) > 1:
            axis.legend(fontsize=7)
    for axis in axes[len(drawn):]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=11)
    if left_out:
        figure.text(0.01, 0.005, "not drawn: " + "; ".join(left_out), fontsize=7, color="0.35", va="bottom", wrap=True)
    return _save(figure, path)


def plot_calibration(records: Sequence[dict], path, title: str = "") -> Path | None:
    """Histograms of self-certainty for correct vs incorrect answers, greedy and sampled side by side."""
    report = calibration_report(records)
    groups = [g for g in ("greedy", "sampled") if g in report]
    if not groups:
        return None
    figure = Figure(figsize=(5 * len(groups), 3.8), layout="constrained")
    for axis, group in zip(figure.subplots(1, len(groups), squeeze=False).flat, groups):
        members = [r for r in records if (r["sample"] < 0) == (group == "greedy")]
        scores = [float(r["self_certainty"]) for r in members]
        lo, hi = min(scores), max(scores)
        bins = np.linspace(lo, hi, 31) if hi > lo else 10
        for correct, color in ((True, "tab:green"), (False, "tab:red")):
            values = [float(r["self_certainty"]) for r in members if bool(r["correct"]) == correct]
            if values:
                label = f"{'correct' if correct else 'incorrect'} (n={len(values)})"
                axis.hist(values, bins=bins, density=True, alpha=0.5, color=color, label=label)
        stats = report[group]
        answers = "greedy answers" if group == "greedy" else "sampled answers"
        if stats["auroc"] is not None:
            axis.set_title(f"{answers}: AUROC {stats['auroc']:.3f}, effect size r {stats['effect_size_r']:.3f}", fontsize=9)
        else:
            axis.set_title(f"{answers}: all {'correct' if stats['correct'] else 'incorrect'}", fontsize=9)
        axis.set_xlabel("self-certainty (nats per token, mean over the response)", fontsize=8)
        axis.set_ylabel("density", fontsize=8)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, Path(path))


def plot_comparison(runs: dict[str, list[list[dict]]], curves: list[tuple[str, str, str]], path: Path, title: str = "") -> Path | None:
    """One panel per (metric key, title, y label) of `curves`: per method (`runs`: method -> each seed's evaluation
    points), the mean over seeds at the steps every seed evaluated, and a band of one standard deviation."""
    panels = [(key, name, ylabel) for key, name, ylabel in curves if any(key in p for seeds in runs.values() for points in seeds for p in points)]
    if not panels:
        return None
    rows, columns = grid_layout(len(panels), 3)
    figure = Figure(figsize=(4.6 * columns, 3.2 * rows + 0.5), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for axis, (key, name, ylabel) in zip(axes, panels):
        for method, seeds in runs.items():
            series = [{p["step"]: p[key] for p in points if key in p} for points in seeds]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            values = np.array([[s[step] for step in steps] for s in series])  # (seeds, evaluations)
            mean, sd = values.mean(0), values.std(0, ddof=1) if len(series) > 1 else np.zeros(len(steps))
            (line,) = axis.plot(steps, mean, marker=".", label=method)
            axis.fill_between(steps, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("optimizer step", fontsize=8)
        axis.set_ylabel(ylabel, fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 7), fontsize=8)
    if title:
        figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
