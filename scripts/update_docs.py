"""Rewrite the generated documentation: every figure in it comes from a command's output.

    python scripts/update_docs.py                          # docs/configuration.md, from the config dataclasses
    python scripts/update_docs.py --check                  # exit 1 if it is stale (tests/test_config.py runs this)
    python scripts/update_docs.py --comparisons            # also both worlds' comparison tables and curves in docs/testbed.md,
        # from runs/testbed-compare and runs/testbed-compare-scaffolded (`rlif compare configs/testbed/compare.yaml`, and
        # `... compare-scaffolded.yaml`)
    python scripts/update_docs.py --main-job RUN FULL      # also the main job's figures in README.md and docs/testbed.md:
        # RUN = the folder `rlif train configs/testbed/intuitor.yaml` wrote (it stops by its label-free rule), FULL = the
        # folder of the same with run.stop_rule=none run.output_dir=runs/testbed-intuitor-full (all 60 steps)

tests/test_docs.py runs the main job and checks the figures in README.md and docs/testbed.md against what it computed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from rlif.config import config_reference
from rlif.data.jsonl import read_log

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "configuration.md"
README, TESTBED = REPO / "README.md", REPO / "docs" / "testbed.md"

HEADER = """# Configuration reference

A run is one YAML file with one mapping per section (`train: {lr: 1.0e-5}`) plus `section.field=value` overrides on the
command line (`rlif train CONFIG train.lr=1e-5 run.resume=true`). Every field is typed and validated when the config is
loaded, before any model: unknown keys (with the closest known one), duplicate keys, wrong types, non-finite numbers and
out-of-range values are errors that name the file and line (YAML) or the override, the field, the value and what is
allowed. `rlif config show CONFIG [overrides]` prints the resolved config; `rlif config docs` prints this table.

## What a config can execute

A config names code to run in three places, and rlif runs it with your permissions, so read a config you did not write
before training with it, as you would a script:
- `reward.name: package.module:function` imports that module and calls the function on every rollout (the plug-in
  mechanism for your own rewards);
- `data.answer_format: package.module:attribute` imports that module for its answer format;
- `model.trust_remote_code: true` lets transformers run the Python files in the model folder (off by default).
Nothing else in a run folder is executed: checkpoints hold weights in safetensors and the trainer state in a form whose
loading cannot run code (`rlif.rl.checkpoint`), so resuming a run folder someone shares runs no code from it.

## Every field

This table is generated from the config dataclasses (`src/rlif/config.py`) by `python scripts/update_docs.py`; a test
fails when it is stale.

"""


def render() -> str:
    return HEADER + config_reference() + "\n"


def replace_between(text: str, name: str, content: str) -> str:
    """`text` with what stands between <!-- name:start --> and <!-- name:end --> replaced by `content`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{content}\n{end}{tail}"


def _f(value, digits=3) -> str:
    return "-" if value is None else f"{0.0 if abs(value) < 0.5 * 10**-digits else value:.{digits}f}"


def main_job_evaluations(run_dir: Path) -> list[dict]:
    return [m for m in read_log(Path(run_dir) / "metrics.jsonl") if "eval/greedy/accuracy" in m]


def main_job_table(run_dir: Path) -> str:
    """The main job's held-out evaluations, one row per evaluation step (docs/testbed.md)."""
    lines = ["| step | greedy acc. | sampled acc. | step-by-step share (greedy) | length (sampled) | self-certainty (sampled) "
             "| SC AUROC (sampled) | KL to initial (sampled) | agreement (sampled) |", "|---|---|---|---|---|---|---|---|---|"]
    for e in main_job_evaluations(run_dir):
        g, s = (lambda k: e.get(f"eval/greedy/{k}")), (lambda k: e.get(f"eval/sampled/{k}"))
        lines.append(f"| {e['step']} | {_f(g('accuracy'))} | {_f(s('accuracy'))} | {_f(g('step_by_step'))} | {_f(s('len_mean'), 1)} | "
                     f"{_f(s('self_certainty'))} | {_f(s('sc_auroc'))} | {_f(s('kl_ref'))} | {_f(s('agreement'))} |")
    return "\n".join(lines)


def main_job_summary(run_dir: Path, full_dir: Path) -> str:
    """The README's headline: what the main job keeps (it stops by its label-free rule), and where the same run goes
    without the rule (`full_dir`: run.stop_rule=none, all 60 steps)."""
    chosen = json.loads((Path(run_dir) / "chosen_checkpoint.json").read_text())
    evaluations = {e["step"]: e for e in main_job_evaluations(run_dir)}
    first, kept, stopped = evaluations[0], evaluations[chosen["step"]], evaluations[max(evaluations)]
    full = main_job_evaluations(full_dir)[-1]
    row = lambda name, key: f"| {name} | {_f(first[key])} | {_f(stopped[key])} | {_f(kept[key])} | {_f(full[key])} |"  # noqa: E731
    return "\n".join([
        "The main job, seed 0 (`rlif train configs/testbed/intuitor.yaml`), on 200 held-out problems. Its label-free stop "
        f"rule (`run.stop_rule: {chosen['rule']}`, which reads no label) stopped it at step {chosen['stopped_at']} and kept "
        f"step {chosen['step']}; the last column is the same run without the rule (`run.stop_rule=none`), after "
        f"{full['step']} steps:",
        "",
        f"| held-out | before (step 0) | at the stop (step {stopped['step']}) | kept (step {kept['step']}) | "
        f"without the rule (step {full['step']}) |",
        "|---|---|---|---|---|",
        row("greedy accuracy", "eval/greedy/accuracy"),
        row("share of greedy answers given step by step", "eval/greedy/step_by_step"),
        row("self-certainty of sampled answers (the reward)", "eval/sampled/self_certainty"),
        row("KL to the initial model (sampled, nats per token)", "eval/sampled/kl_ref"),
        "",
        "INTUITOR did what its reward asks (the answers' self-certainty rose), and on this testbed that is the wrong "
        "move: the model dropped its accurate step-by-step answers for more self-certain direct ones "
        "([why](docs/testbed.md#the-main-job-intuitor-for-60-steps)). [docs/testbed.md](docs/testbed.md) compares every "
        "method on this world and on a second one where the accurate style is also the more self-certain one.",
    ])


def main_job_example(run_dir: Path) -> str:
    """A held-out problem before and after: the first whose greedy answer was step by step and right before training."""
    evaluations = main_job_evaluations(run_dir)
    first, last = evaluations[0]["step"], evaluations[-1]["step"]
    before = {r["problem"]: r for r in read_log(Path(run_dir) / "eval" / f"step_{first:06d}.jsonl") if r["sample"] < 0}
    after = {r["problem"]: r for r in read_log(Path(run_dir) / "eval" / f"step_{last:06d}.jsonl") if r["sample"] < 0}
    problem = next(p for p, r in sorted(before.items()) if r["correct"] and r.get("features", {}).get("step_by_step"))
    old, new = before[problem], after[problem]
    left, right = old["response"].splitlines(), new["response"].splitlines()
    width = 36
    heading = f"step {first}, self-certainty {old['self_certainty']:.3f}:"
    lines = [f"{old['prompt']} (label {old['label']})", f"{heading:<{width}}step {last}, self-certainty {new['self_certainty']:.3f}:"]
    for i in range(max(len(left), len(right))):
        lines.append(f"{(left[i] if i < len(left) else ''):<{width}}{right[i] if i < len(right) else ''}".rstrip())
    return "```\n" + "\n".join(lines) + "\n```"


COMPARISONS = {"columns": REPO / "runs" / "testbed-compare", "scaffolded": REPO / "runs" / "testbed-compare-scaffolded"}


def comparison_tables(out: Path) -> tuple[str, str]:
    """(the results table, the label-free choice table) of an `rlif compare` output folder's comparison.md."""
    lines = (out / "comparison.md").read_text().splitlines()
    tables, current = [], []
    for line in lines + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    return tables[0], tables[1]


def render_comparisons() -> str:
    """docs/testbed.md with both worlds' comparison and checkpoint-choice tables."""
    text = TESTBED.read_text()
    for world, out in COMPARISONS.items():
        results, choice = comparison_tables(out)
        text = replace_between(text, f"compare-{world}", results)
        text = replace_between(text, f"choice-{world}", choice)
    return text


def render_main_job(run_dir: Path, full_dir: Path) -> dict[Path, str]:
    """README.md and docs/testbed.md with the main job's figures: `run_dir` as the main job ran (it stops by its rule),
    `full_dir` the same with run.stop_rule=none (all 60 steps: the trajectory docs/testbed.md tabulates)."""
    readme = replace_between(README.read_text(), "main-job", main_job_summary(run_dir, full_dir))
    testbed = replace_between(TESTBED.read_text(), "main-job-table", main_job_table(full_dir))
    testbed = replace_between(testbed, "main-job-example", main_job_example(full_dir))
    return {README: readme, TESTBED: testbed}


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        sys.exit(0 if DOC.read_text() == render() else 1)
    DOC.write_text(render())
    print(f"updated {DOC}")
    if "--comparisons" in sys.argv[1:]:
        TESTBED.write_text(render_comparisons())
        for world, out in COMPARISONS.items():  # the curves docs/testbed.md shows
            shutil.copyfile(out / "curves.png", REPO / "docs" / "testbed" / f"compare-{world}-curves.png")
        print(f"updated {TESTBED} and docs/testbed/compare-*-curves.png")
    if "--main-job" in sys.argv[1:]:
        at = sys.argv.index("--main-job")
        for path, text in render_main_job(Path(sys.argv[at + 1]), Path(sys.argv[at + 2])).items():
            path.write_text(text)
            print(f"updated {path}")
        figure = REPO / "docs" / "testbed" / "main-job-eval.png"  # the held-out curves docs/testbed.md shows
        shutil.copyfile(Path(sys.argv[at + 2]) / "plots" / "eval.png", figure)
        print(f"updated {figure}")
