"""`rlif compare CONFIG`: train every method over several seeds with the same budget; one table, one plot.

A comparison file (YAML) names a base training config and what each method changes:
    base: configs/testbed/intuitor.yaml      # a training config, as `rlif train` takes
    output_dir: runs/compare
    seeds: [0, 1, 2]
    common: {train: {steps: 40}}             # merged into every run (optional)
    methods:                                 # label -> config sections merged on top
      INTUITOR: {reward: {name: self_certainty}}
      GRPO: {reward: {name: correctness}}

Run (method, seed) trains into OUTPUT/<method>/seed_<seed> with train.seed = seed. Every run is
validated before the first one starts; finished runs are skipped and interrupted ones resumed, so
the command can be re-run after a kill. At the end (or with --aggregate-only) it writes
    OUTPUT/comparison.md    the table (mean +- sd over seeds) and the label-free checkpoint-choice table
    OUTPUT/comparison.json  every run's numbers
    OUTPUT/curves.png       evaluation curves of all methods (mean over seeds, band = +- sd)
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from rlif import metrics as m
from rlif.config import Config, config_from_dict, read_yaml
from rlif.data import jsonl
from rlif.errors import ConfigError
from rlif.rl.checkpoint import latest_checkpoint
from rlif.rl.train import stopped_by_rule, train
from rlif.runs.checkpoint_choice import RULES, choose, eval_points
from rlif.runs.plots import plot_comparison


@dataclass
class Comparison:
    path: Path  # the comparison file
    base: dict  # the base training config's sections
    output_dir: Path
    seeds: list[int]
    common: dict
    methods: dict[str, dict]
    overrides: list[str]  # section.field=value applied to every run (command line)

    def run_dir(self, method: str, seed: int) -> Path:
        return self.output_dir / slug(method) / f"seed_{seed}"

    def config(self, method: str, seed: int, resume: bool = False) -> Config:
        raw = merge(merge(self.base, self.common), self.methods[method])
        run = [f"train.seed={seed}", f"run.output_dir={self.run_dir(method, seed)}"]
        run += ["run.resume=true"] if resume else ["run.overwrite=true"]
        try:
            return config_from_dict(raw, [*self.overrides, *run], source=f"{self.path} (method {method!r}, seed {seed})")
        except ConfigError as error:
            raise ConfigError(f"{self.path}, method {method!r}: {error}") from None


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "method"


def merge(base: dict, update: dict) -> dict:
    """Deep merge of config sections: `update` wins, nested mappings merge key by key."""
    merged = dict(base)
    for key, value in (update or {}).items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


_KEYS = {"base", "output_dir", "seeds", "common", "methods"}


def load_comparison(path: str | Path, overrides: list[str] = ()) -> Comparison:
    """Read and validate a comparison file; every run's config is built (and validated) here."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"comparison file {path} does not exist")
    raw = read_yaml(path)[0] or {}  # duplicate keys, invalid YAML and non-UTF-8 text name the file and line
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(sorted(_KEYS))}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_KEYS))}")
    for key in ("base", "methods", "seeds"):
        if key not in raw:
            raise ConfigError(f"{path}: missing key {key!r}")
    base_path = Path(raw["base"])
    if not base_path.is_file():
        raise ConfigError(f"{path}: base config {base_path} does not exist")
    methods, seeds = raw["methods"], raw["seeds"]
    if not isinstance(methods, dict) or not methods or not all(isinstance(v, dict) for v in methods.values()):
        raise ConfigError(f"{path}: methods must map a label to config sections, e.g. GRPO: {{reward: {{name: correctness}}}}")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len({slug(m) for m in methods}) != len(methods):
        raise ConfigError(f"{path}: two method labels map to the same folder name: {', '.join(methods)}")
    comparison = Comparison(
        path=path,
        base=read_yaml(base_path)[0] or {},
        output_dir=Path(raw.get("output_dir") or f"runs/{path.stem}"),
        seeds=seeds,
        common=raw.get("common") or {},
        methods=methods,
        overrides=list(overrides),
    )
    for method in methods:
        for seed in seeds:
            comparison.config(method, seed)
    return comparison


def is_complete(run_dir: Path, steps: int) -> bool:
    """Trained to the budget (or stopped by run.stop_rule), with its report written."""
    latest = latest_checkpoint(run_dir)
    finished = stopped_by_rule(run_dir) is not None or (latest is not None and latest[0] >= steps)
    return finished and (run_dir / "report.md").exists()


def run_comparison(comparison: Comparison, only: list[str] | None = None, progress: bool = True) -> Path:
    """Train every (method, seed) not yet complete, then aggregate; returns the output folder."""

    methods = [m for m in comparison.methods if not only or m in only]
    unknown = set(only or []) - set(comparison.methods)
    if unknown:
        raise ConfigError(f"--only {', '.join(sorted(unknown))}: not a method of {comparison.path} ({', '.join(comparison.methods)})")
    runs = [(m, s) for m in methods for s in comparison.seeds]
    for k, (method, seed) in enumerate(runs, start=1):
        run_dir = comparison.run_dir(method, seed)
        steps = comparison.config(method, seed).train.steps
        if is_complete(run_dir, steps):
            print(f"[{k}/{len(runs)}] {method} seed {seed}: complete, skipped ({run_dir})", flush=True)
            continue
        resume = latest_checkpoint(run_dir) is not None
        print(f"[{k}/{len(runs)}] {method} seed {seed}: {'resuming' if resume else 'training'} -> {run_dir}", flush=True)
        config = comparison.config(method, seed, resume=resume)
        config.run.progress = progress
        train(config)
    return aggregate(comparison)


# ---------------------------------------------------------------------------------------------
# Aggregation

# Table columns: (label, metric key, at which evaluation). "best" is the best evaluation after step 0.
COLUMNS = [
    ("greedy acc. (best)", m.eval_key("greedy", "accuracy"), "best"),
    ("greedy acc. (last)", m.eval_key("greedy", "accuracy"), "last"),
    ("sampled acc. (best)", m.eval_key("sampled", "accuracy"), "best"),
    ("sampled acc. (last)", m.eval_key("sampled", "accuracy"), "last"),
    ("step-by-step (greedy, last)", m.eval_key("greedy", "step_by_step"), "last"),
    ("length (sampled, last)", m.eval_key("sampled", "len_mean"), "last"),
    ("self-certainty (sampled, last)", m.eval_key("sampled", "self_certainty"), "last"),
    ("SC AUROC (sampled, last)", m.eval_key("sampled", "sc_auroc"), "last"),
    ("KL to initial (sampled, last)", m.eval_key("sampled", "kl_ref"), "last"),
]


def column_value(points: list[dict], key: str, at: str) -> float | None:
    """A run's number for one column: at its last evaluation, or its best after step 0."""
    if at == "last":
        return points[-1].get(key)
    values = [p[key] for p in points[1:] if key in p]
    return max(values) if values else None


CURVES = [  # (metric, panel title, y-axis label)
    (m.eval_key("greedy", "accuracy"), "held-out accuracy (greedy answers)", "share correct"),
    (m.eval_key("sampled", "accuracy"), "held-out accuracy (sampled answers)", "share correct"),
    (m.eval_key("greedy", "step_by_step"), "greedy answers given step by step", "share of answers"),
    (m.eval_key("sampled", "len_mean"), "response length (sampled answers)", "tokens"),
    (m.eval_key("sampled", "self_certainty"), "self-certainty (sampled answers)", "nats per token"),
    (m.eval_key("sampled", "kl_ref"), "KL to the initial model (sampled answers)", "nats per token"),
]


def mean_sd(values: list[float | None], decimals: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.mean(values)
    mean = 0.0 if abs(mean) < 0.5 * 10**-decimals else mean  # no "-0.000"
    if len(values) == 1:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def _decimals(key: str) -> int:
    return 1 if key.endswith("len_mean") else 3


def aggregate(comparison: Comparison) -> Path:
    """Write comparison.md, comparison.json and curves.png from the runs that are complete (a run still training
    or interrupted is left out; the table says how many seeds each method has)."""
    runs = {}
    for method in comparison.methods:
        for seed in comparison.seeds:
            run_dir = comparison.run_dir(method, seed)
            if is_complete(run_dir, comparison.config(method, seed).train.steps):
                runs[(method, seed)] = eval_points(jsonl.read_log(run_dir / "metrics.jsonl"))
    out = comparison.output_dir
    out.mkdir(parents=True, exist_ok=True)
    table = _results_table(comparison, runs)
    choice_table, choices = _choice_table(comparison, runs)
    by_method = {method: [runs[(method, s)] for s in comparison.seeds if (method, s) in runs] for method in comparison.methods}
    plot_comparison({k: v for k, v in by_method.items() if v}, CURVES, out / "curves.png", title=f"{comparison.path.name} ({comparison.output_dir.name}): mean ± sd over seeds {comparison.seeds}")
    command = f"rlif compare {comparison.path}" + "".join(f" {o}" for o in comparison.overrides)
    text = [
        f"# Comparison: {comparison.path}",
        "",
        f"`{command}`: {len(comparison.methods)} methods x seeds {comparison.seeds}, the same budget for each. "
        "Held-out evaluation; mean ± sd over seeds. best = the best evaluation after step 0; last = after the last step.",
        "",
        *table,
        "",
        "![curves](curves.png)",
        "",
        *choice_table,
    ]
    (out / "comparison.md").write_text("\n".join(text) + "\n")
    numbers = {
        f"{method}/seed_{seed}": {
            "columns": {label: column_value(points, key, at) for label, key, at in COLUMNS},
            "evaluations": [{k: v for k, v in p.items() if k == "step" or k.startswith("eval/")} for p in points],
            "checkpoint_choice": choices.get((method, seed), {}),
        }
        for (method, seed), points in runs.items()
    }
    (out / "comparison.json").write_text(json.dumps(numbers, indent=1) + "\n")
    return out


def _results_table(comparison: Comparison, runs: dict) -> list[str]:
    lines = ["| method | " + " | ".join(label for label, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    if runs:  # the untrained model: every run's step-0 evaluation
        cells = [mean_sd([points[0].get(key) for points in runs.values()], _decimals(key)) if at == "last" else "-" for _, key, at in COLUMNS]
        lines.append("| base model (step 0) | " + " | ".join(cells) + " |")
    for method in comparison.methods:
        method_runs = [runs[(method, s)] for s in comparison.seeds if (method, s) in runs]
        if not method_runs:
            continue
        cells = [mean_sd([column_value(points, key, at) for points in method_runs], _decimals(key)) for _, key, at in COLUMNS]
        seeds = f" ({len(method_runs)} of {len(comparison.seeds)} seeds)" if len(method_runs) != len(comparison.seeds) else ""
        lines.append(f"| {method}{seeds} | " + " | ".join(cells) + " |")
    return lines


def _choice_table(comparison: Comparison, runs: dict) -> tuple[list[str], dict]:
    choices = {run: choose(points) for run, points in runs.items() if len(points) > 1}
    if not choices:
        return [], {}
    methods = [m for m in comparison.methods if any((m, s) in choices for s in comparison.seeds)]
    lines = [
        "## Label-free checkpoint choice",
        "",
        "Gap = greedy accuracy of the labeled-best evaluation minus greedy accuracy at the rule's pick (0 = picked the best); "
        "mean ± sd over seeds per method, then over all runs, and the share of runs where the rule picked the labeled best "
        "(rules: `rlif.checkpoint_choice`).",
        "",
        "| rule | " + " | ".join(methods) + " | all runs | picked the best |",
        "|---" * (len(methods) + 3) + "|",
    ]
    for rule in RULES:
        cells = []
        for method in methods:
            cells.append(mean_sd([c[rule]["gap"] for (m, _), c in choices.items() if m == method and rule in c]))
        gaps = [c[rule]["gap"] for c in choices.values() if rule in c]
        if not gaps:
            continue
        hits = sum(g == 0 for g in gaps)
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {mean_sd(gaps)} | {hits}/{len(gaps)} |")
    return lines, choices


