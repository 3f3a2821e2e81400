"""Training-curve plots from a run's metrics.jsonl (PNG, matplotlib's headless backend)."""

from __future__ import annotations

from pathlib import Path

from rlif.runlog import read_jsonl

TRAINING_PANELS = [
    ("eval/greedy/accuracy", "eval accuracy (greedy)"),
    ("eval/sampled/accuracy", "eval accuracy (sampled)"),
    ("reward/mean", "reward (mean)"),
    ("rollout/accuracy", "sampled accuracy"),
    ("signals/self_certainty", "self-certainty"),
    ("signals/entropy", "entropy"),
    ("signals/kl_ref", "KL to reference"),
    ("rollout/len_mean", "response length"),
    ("loss/clip_frac", "clip fraction"),
    ("optim/grad_norm", "grad norm"),
]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write RUN/plots/training.png from RUN/metrics.jsonl; returns the files written."""
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    panels = [(label, [(key, label)]) for key, label in TRAINING_PANELS]
    written = plot_panels(records, panels, run_dir / "plots" / "training.png", title=run_dir.name, max_columns=4)
    return [written] if written else []


def plot_panels(records: list[dict], panels: list[tuple[str, list[tuple[str, str]]]], path: Path, title: str = "",
                max_columns: int = 3) -> Path | None:
    """Panels holding several series each: [(panel title, [(metric key, series label), ...]), ...].

    A series is drawn where records have the key (x = step); panels without any data are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def points(key):
        return [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]

    present = [(name, [(key, label) for key, label in series if points(key)]) for name, series in panels]
    present = [(name, series) for name, series in present if series]
    if not present:
        return None
    columns = min(max_columns, len(present))
    rows = (len(present) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis, (name, series) in zip(axes.flat, present):
        for key, label in series:
            xy = points(key)
            axis.plot([p[0] for p in xy], [p[1] for p in xy], marker="." if len(xy) < 40 else None, label=label)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(present) :]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
