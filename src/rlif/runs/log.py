"""Run directory logging: metrics.jsonl, samples.jsonl, the experiment trackers (rlif.runs.trackers), progress bar.
Rank 0 writes."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

from rlif import metrics as m
from rlif.data import jsonl
from rlif.runs import trackers


class RunLogger:
    """Writes per-step metrics and samples; prints a progress bar (or one line per step)."""

    def __init__(self, run_dir: Path, accelerator, total_steps: int, start_step: int, progress: bool):
        self.run_dir = run_dir
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.bar = None
        if self.main and progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        jsonl.append(self.run_dir / "metrics.jsonl", [{"step": step, **metrics}])
        trackers.log(self.accelerator, step, metrics)
        summary = {label: metrics[key] for label, key in _SUMMARY.items() if key in metrics}
        if step == 0:  # the evaluation before training: not an optimizer step (its own bar showed its progress)
            self.write("before training: " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()))
        elif self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in summary.items()}, refresh=False)
            self.bar.update(1)
        else:
            print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()), file=sys.stderr, flush=True)

    def samples(self, step: int, records: list[dict]) -> None:
        if self.main:
            jsonl.append(self.run_dir / "samples.jsonl", [{"step": step, **record} for record in records])
            trackers.log_samples(self.accelerator, step, records)

    def write(self, message: str) -> None:
        if self.main:
            (self.bar.write if self.bar is not None else lambda m: print(m, file=sys.stderr, flush=True))(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_SUMMARY = {  # progress-bar label -> metric
    "reward": m.REWARD_MEAN,
    "acc": m.ROLLOUT_ACCURACY,
    "sc": m.SELF_CERTAINTY,
    "kl": m.KL_REF,
    "len": m.LEN_MEAN,
    "eval_acc": m.GREEDY_ACCURACY,
}
