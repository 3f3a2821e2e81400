"""GPU check: real INTUITOR steps on the Qwen2.5-1.5B architecture at long responses, and the largest update
micro-batch that fits, so the paper configs' memory settings rest on a measurement.

On a GPU (one call, a few minutes; stops probing at --time-budget):
    python bench/gpu_check.py --output $OUT/gpu_check.json
On CPU, the smoke mode runs the same code on a tiny Qwen2 with the real tokenizer (tests/test_gpu_check.py):
    python bench/gpu_check.py --smoke --output /tmp/gpu_check.json

1. steps: `rlif.train.train` itself on the Qwen2.5-1.5B architecture with RANDOM weights (compute and memory do not
   depend on the weights; bench/qwen2.5/), set up as configs/paper/intuitor-qwen2.5-1.5b.yaml (fp32 master
   weights, bf16 autocast, gradient checkpointing, KL reference resident) with MATH prompts through the chat template,
   G = 7 and responses of --response-tokens tokens (a random model almost never samples EOS, so every response runs to
   the limit). Reports time per step and per phase, completion tokens/s and peak GPU memory. Checkpoint writing is
   switched off: it is not what is measured (18 GB of weights and optimizer state for 1.5B).
2. micro-batches: the update's forward and backward exactly as train.py runs them (SignalModel + policy_loss), on
   sequences of --prompt-tokens + --response-tokens tokens, with the policy's gradients and AdamW state and the
   reference model resident, at micro-batch 1, 2, 4, ... until out of memory or out of time: seconds, tokens/s and
   peak memory of each; the largest that fits is the train.micro_batch_size to use at that response length.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import ARCHITECTURES, tokenizer_dir  # noqa: E402  (Qwen2.5 architecture + tokenizer, no weights)

ARCHITECTURE = ARCHITECTURES["qwen2.5-1.5b"]
MATH_TRAIN = REPO / "data" / "math" / "train.jsonl"
GIB = 1024**3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, a few tokens: checks the script, measures nothing")
    parser.add_argument("--architecture", type=Path, default=ARCHITECTURE, help="a transformers config.json (no weights)")
    parser.add_argument("--response-tokens", type=int, default=1024, help="length of every response (max_new_tokens)")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="prompt length in the micro-batch probe (the configs' maximum)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step in the real steps")
    parser.add_argument("--group-size", type=int, default=7, help="responses per prompt (G)")
    parser.add_argument("--steps", type=int, default=3, help="real INTUITOR steps (the first includes warm-up)")
    parser.add_argument("--micro-batch", type=int, default=8, help="train.micro_batch_size of the real steps")
    parser.add_argument("--probe", default="1,2,4,8,16,32,64", help="micro-batch sizes to try, ascending")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and optimizer state dtype")
    parser.add_argument("--time-budget", type=float, default=120.0, help="seconds from the start; the probe stops when they are spent")
    parser.add_argument("--output", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--work", type=Path, default=None, help="keep the model, config and run here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.response_tokens, args.prompt_tokens, args.prompts, args.group_size = 8, 16, 2, 2
        args.steps, args.micro_batch, args.probe = 2, 2, "1,2"
    return args


def make_model_folder(args, folder: Path, device: torch.device) -> int:
    """The architecture with random weights (bf16 on disk), plus the tokenizer; returns the parameter count."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    fields = json.loads(args.architecture.read_text())
    if args.smoke:  # same family and vocabulary, 2 small layers
        fields.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "max_window_layers": 2})
    config = AutoConfig.for_model(**fields)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir()).save_pretrained(folder)
    count = sum(p.numel() for p in model.parameters())
    del model
    return count


def run_steps(args, model_dir: Path, work: Path, cuda: bool) -> dict:
    """--steps training steps through `rlif.rl.step.train_step` (what `rlif train` runs, without evaluation and
    checkpoint writing, which are not what is measured); per-step times and the peak memory."""
    import yaml

    from rlif.config import load_config
    from rlif.rl.train import set_up, step_prompts
    from rlif.rl.step import train_step

    prompts = work / "prompts.jsonl"  # the first problems of MATH train: enough for the steps, quick to tokenize
    lines = MATH_TRAIN.read_text(encoding="utf-8").splitlines()[: 2 * args.prompts * args.steps]
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = {
        "model": {"path": str(model_dir), "dtype": args.dtype, "mixed_precision": "bf16" if cuda else "no",
                  "gradient_checkpointing": True},
        "data": {"path": str(prompts), "max_prompt_tokens": 512},
        "rollout": {"group_size": args.group_size, "temperature": 0.9, "max_new_tokens": args.response_tokens,
                    "generation_batch_size": args.prompts * args.group_size},
        "train": {"prompts_per_step": args.prompts, "steps": args.steps, "lr": 3e-6, "kl_coef": 0.005,
                  "micro_batch_size": args.micro_batch, "score_batch_size": 16},
        "run": {"output_dir": str(work / "run"), "progress": False, "save_every": 10**6, "sample_every": 10**6},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(raw))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    _, run = set_up(load_config(work / "config.yaml"))
    steps = []
    for step in range(1, run.num_steps + 1):
        metrics = train_step(run.state, step, step_prompts(run.state, run.prompts, step)).metrics
        steps.append({"step": step, "step_s": metrics["time/step_s"], "generate_s": metrics["time/generate_s"],
                      "score_s": metrics["time/score_s"], "update_s": metrics["time/update_s"],
                      "tokens_per_s": metrics["time/tokens_per_s"], "response_len_mean": metrics["rollout/len_mean"],
                      "truncated": metrics["rollout/truncated"], "reward_mean": metrics["reward/mean"],
                      "loss_policy": metrics["loss/policy"], "kl": metrics["signals/kl_ref"]})
    wall = time.perf_counter() - start
    return {"steps": steps, "train_wall_s": wall, "peak_memory_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
            "config": raw}


def probe_micro_batches(args, model_dir: Path, device: torch.device, deadline: float) -> list[dict]:
    """Forward + backward of the update at growing micro-batches, with the training state resident."""
    from rlif.rl.loss import policy_loss
    from rlif.models.load import enable_activation_checkpointing, load_model
    from rlif.signals.model import SignalModel

    cuda = device.type == "cuda"
    policy = load_model(str(model_dir), args.dtype).to(device)
    enable_activation_checkpointing(policy)
    policy.train()
    reference = load_model(str(model_dir), args.dtype).requires_grad_(False).to(device).eval()  # resident, as in training
    model = SignalModel(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-12)
    for p in policy.parameters():  # materialize gradients and AdamW state (the update's steady state)
        p.grad = torch.zeros_like(p)
    optimizer.step()
    vocab = policy.config.vocab_size
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    results = []
    for size in [int(s) for s in args.probe.split(",")]:
        if time.perf_counter() > deadline:
            results.append({"micro_batch": size, "skipped": "time budget spent"})
            break
        generator = torch.Generator().manual_seed(size)
        prompt_ids = torch.randint(0, vocab, (size, args.prompt_tokens), generator=generator).to(device)
        response_ids = torch.randint(0, vocab, (size, args.response_tokens), generator=generator).to(device)
        prompt_mask, response_mask = torch.ones_like(prompt_ids), torch.ones_like(response_ids)
        advantages = torch.randn(size, generator=generator).to(device)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            with autocast:
                signals = model(prompt_ids, prompt_mask, response_ids, response_mask, temperature=0.9)
            old = signals.logprobs.detach()
            terms = policy_loss(signals.logprobs, old, advantages, response_mask, clip_eps=0.2, kl_coef=0.005,
                                ref_logprobs=old - 0.01, total_tokens=float(size * args.response_tokens))
            terms.loss.backward()
            if cuda:
                torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            del prompt_ids, response_ids
            gc.collect()
            torch.cuda.empty_cache()
            results.append({"micro_batch": size, "fits": False})
            break
        seconds = time.perf_counter() - start
        tokens = size * (args.prompt_tokens + args.response_tokens)
        results.append({"micro_batch": size, "fits": True, "seconds": seconds, "tokens_per_s": tokens / seconds,
                        "peak_memory_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None})
        del signals, terms, old
        optimizer.zero_grad(set_to_none=False)
    del model, policy, reference, optimizer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    import accelerate
    import transformers

    report = {
        "mode": "smoke (CPU, tiny model: checks the script, measures nothing)" if args.smoke else "measurement",
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__},
        "architecture": str(args.architecture),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="rlif-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        report["parameters"] = make_model_folder(args, work / "model", device)
        # The probe first: it is quick, and the steps (minutes, mostly generation) cannot then starve it.
        report["micro_batches"] = probe_micro_batches(args, work / "model", device, start + args.time_budget)
        report.update(run_steps(args, work / "model", work, cuda))
    fitting = [r["micro_batch"] for r in report["micro_batches"] if r.get("fits")]
    report["largest_micro_batch"] = max(fitting) if fitting else 0
    report["wall_s"] = time.perf_counter() - start
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))
    print(summary(report))
    return report


def summary(report: dict) -> str:
    s = report["settings"]
    gib = lambda v: "n/a" if v is None else f"{v:.1f} GiB"
    lines = [f"# rlif GPU check: {report['device']} ({report['mode']})",
             (f"{report['parameters'] / 1e9:.2f} B parameters, {s['dtype']} weights, bf16 autocast on GPU; "
              f"{s['prompts']} prompts x G={s['group_size']}, {s['response_tokens']} response tokens"),
             "", "| step | step s | generate s | score s | update s | completion tokens/s | mean length |", "|---|---|---|---|---|---|---|"]
    for r in report["steps"]:
        lines.append(f"| {r['step']} | {r['step_s']:.1f} | {r['generate_s']:.1f} | {r['score_s']:.1f} | {r['update_s']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | {r['response_len_mean']:.0f} |")
    lines += [f"peak memory over the steps: {gib(report['peak_memory_gib'])}", "",
              f"| micro-batch ({s['prompt_tokens']}+{s['response_tokens']} tokens) | fits | s | tokens/s | peak memory |", "|---|---|---|---|---|"]
    for r in report["micro_batches"]:
        if r.get("fits"):
            lines.append(f"| {r['micro_batch']} | yes | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {gib(r['peak_memory_gib'])} |")
        else:
            lines.append(f"| {r['micro_batch']} | {r.get('skipped', 'no (out of memory)')} | | | |")
    bound = " (every size tried fits: the limit is higher)" if report["micro_batches"] and report["micro_batches"][-1].get("fits") else ""
    lines.append(f"largest micro-batch that fits: {report['largest_micro_batch']}{bound}; wall time {report['wall_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
    sys.exit(0)
