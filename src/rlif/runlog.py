"""Run directory logging: metrics.jsonl, samples.jsonl, optional tracker, progress bar. Rank 0 writes."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tqdm.auto import tqdm


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}, ensure_ascii=False) + "\n")
        file.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class RunLogger:
    """Writes per-step metrics and samples; prints a progress bar (or one line per step)."""

    def __init__(self, run_dir: Path, accelerator, total_steps: int, start_step: int, progress: bool, tracker: str):
        self.run_dir = run_dir
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.tracker = tracker
        self.bar = None
        if self.main and progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        append_jsonl(self.run_dir / "metrics.jsonl", {"step": step, **metrics})
        if self.tracker != "none":
            self.accelerator.log({k: _jsonable(v) for k, v in metrics.items()}, step=step)
        summary = {label: metrics[key] for label, key in _SUMMARY.items() if key in metrics}
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in summary.items()}, refresh=False)
            self.bar.update(1)
        else:
            print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()), file=sys.stderr, flush=True)

    def samples(self, step: int, records: list[dict]) -> None:
        if self.main:
            for record in records:
                append_jsonl(self.run_dir / "samples.jsonl", {"step": step, **record})

    def write(self, message: str) -> None:
        if self.main:
            (self.bar.write if self.bar is not None else lambda m: print(m, file=sys.stderr, flush=True))(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_SUMMARY = {  # progress-bar label -> metric
    "reward": "reward/mean",
    "acc": "rollout/accuracy",
    "sc": "signals/self_certainty",
    "kl": "signals/kl_ref",
    "len": "rollout/len_mean",
}
