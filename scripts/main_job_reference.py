"""Regenerate tests/data/main_job_short_metrics.jsonl: a short variant of the README's main job (seed 0, CPU).

    python scripts/main_job_reference.py          # rewrites the reference file

`tests/test_main_job_reference.py` runs the same short job and requires every field (timing fields aside) to equal
the reference. Regenerate it only when a change is meant to change what training computes, and say so in the commit.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "data" / "main_job_short_metrics.jsonl"
CONFIG = REPO / "configs" / "testbed" / "intuitor.yaml"
# 4 steps with evaluations (16 held-out problems, greedy + 4 samples) before training, at step 2 and at step 4
# (no stop rule: it would end the run at the first fall of agreement; its own tests cover it)
OVERRIDES = ["run.stop_rule=none", "train.steps=4", "eval.limit=16", "eval.every=2", "run.save_every=2", "run.progress=false", "run.overwrite=true"]


def run_short_job(output_dir: Path) -> Path:
    """Train the short job into `output_dir`; returns its metrics.jsonl."""
    from rlif.config import load_config
    from rlif.rl.train import train

    config = load_config(CONFIG, [*OVERRIDES, f"run.output_dir={output_dir}"])
    return train(config) / "metrics.jsonl"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        shutil.copyfile(run_short_job(Path(folder) / "run"), REFERENCE)
    print(f"wrote {REFERENCE}")
