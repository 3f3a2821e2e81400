"""One INTUITOR training step with each rollout engine: rlif's native sampler vs the colocated vLLM engine.

    python bench/engine_step.py                          # the README's main job (testbed model), 4 steps per engine
    python bench/engine_step.py --config CONFIG --steps 3 [section.field=value ...]

Both engines train their own copy of the policy from the same config (`rlif.rl.train.set_up`, then
`rlif.rl.step.train_step`, what `rlif train` runs), alternating step by step in one process; the table reports the
median step time and its parts (generation; scoring: the trainer's pass over the rollout, which the vLLM engine needs
for pi_old and self-certainty, and the reference's pass; update, with the weight sync into vLLM), completion tokens/s,
and the log-prob mismatch between the engine and the trainer. Needs vLLM (`.ci/vllm` builds such an environment; on a
GPU, `pip install 'rlif[vllm]'`). On a GPU at the paper's shapes:

    python bench/engine_step.py --config configs/paper/intuitor-qwen2.5-1.5b.yaml --steps 3 train.prompts_per_step=16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, versions  # noqa: E402

from rlif.config import load_config
from rlif.rl.step import train_step
from rlif.rl.train import set_up, step_prompts

REPO = Path(__file__).resolve().parents[1]
PARTS = ["time/step_s", "time/generate_s", "time/score_s", "time/update_s", "time/tokens_per_s"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "testbed" / "intuitor.yaml"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    runs = {}
    with tempfile.TemporaryDirectory() as work:
        for engine in ("native", "vllm"):
            config = load_config(args.config, [*args.overrides, f"rollout.engine={engine}", f"train.steps={args.steps}",
                                               "eval.path=null", f"run.output_dir={work}/{engine}", "run.progress=false"])
            runs[engine] = set_up(config)[1]
        results = {engine: [] for engine in runs}
        for step in range(1, args.steps + 1):
            for engine in (runs if step % 2 else reversed(list(runs))):
                run = runs[engine]
                results[engine].append(train_step(run.state, step, step_prompts(run.state, run.prompts, step)).metrics)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    print(f"\n{args.config}, {args.steps} steps per engine (median; the first step includes warm-up); {device}; {versions()}")
    rows = []
    for engine, steps in results.items():
        row = [engine] + [f"{statistics.median(s[key] for s in steps):.2f}" for key in PARTS]
        mismatch = [s.get("rollout/logprob_mismatch_max") for s in steps]
        row.append("-" if mismatch[0] is None else f"{max(mismatch):.1e}")
        rows.append(row)
    print(table(["engine", "step s", "generate s", "score s", "update s", "completion tokens/s", "log-prob mismatch (max)"], rows))
    return results


if __name__ == "__main__":
    main()
