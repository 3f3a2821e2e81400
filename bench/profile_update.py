"""Where the update's time goes: the step's forward + backward over its micro-batches and the optimizer step.

    python bench/profile_update.py                 # CPU: tiny decoder with the real vocabulary, 16 rows x (40 + 32) tokens
    python bench/profile_update.py --gpu-shape     # random-init Qwen2.5-0.5B, 128 rows x (about 100 + 256) tokens, bf16 autocast

The GPU shape is bench/step.py's (16 prompts x G = 8 x 256 tokens, micro-batch 8, float32 weights, bf16 autocast,
gradient checkpointing), where the update took 5.6 of the step's 9.8 s on an H100 (bench/results/h100-2026-11-26).
The rows are random tokens (a random-init model never samples EOS, so every response has the full length there too),
prompts left-padded to lengths drawn between 0.6x and 1.4x --prompt, the loss the training loss with random
advantages. Variants, each timed alone (median over --repeats after one warm-up):

  base             the bench/step.py shape
  mb16, mb32       larger micro-batches (fewer launches per token)
  no-ckpt          gradient checkpointing off
  bf16-weights     bfloat16 weights, no autocast (no per-forward weight casts, no float32 gradient accumulation)
  compiled         the decoder layers compiled (model.compile_layers: torch.compile, forward and backward)
  cached-casts     autocast's cache of bf16 weight copies on, which training turns off for the update (GPU: memory)

Then the optimizer step alone (clip + AdamW), foreach vs fused (on CUDA), time and peak memory above the held state;
and a torch.profiler trace of one base update: the operators the host issued per micro-batch and, on a GPU, the
summed time of the CUDA kernels against the update's wall time (GPU busy: near 100% means kernel-bound, low means the
host issuing kernels is the limit) and the top kernels.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, device_name, gib, profile_call, profile_report, table, timed, versions  # noqa: E402
from update_batches import update  # noqa: E402

from rlif.models.load import enable_activation_checkpointing
from rlif.rl.rollout import Rollout
from rlif.signals.model import SignalModel
from rlif.signals.batching import length_batches

VARIANTS = ["base", "compiled", "mb32", "bf16-weights", "no-ckpt", "mb16", "cached-casts"]  # in order of interest: a stage cut short keeps the first


def synthetic_rollout(rows: int, prompt: int, tokens: int, vocab: int, seed: int = 0) -> Rollout:
    """`rows` full-length responses after left-padded prompts of 0.6x..1.4x `prompt` tokens."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(int(0.6 * prompt), int(1.4 * prompt) + 1, (rows,), generator=gen)
    width = int(lengths.max())
    prompt_mask = (torch.arange(width)[None, :] >= width - lengths[:, None]).long()  # (rows, P) left-padded
    prompt_ids = torch.randint(0, vocab, (rows, width), generator=gen) * prompt_mask
    response_ids = torch.randint(0, vocab, (rows, tokens), generator=gen)
    return Rollout(prompt_ids, prompt_mask, response_ids, torch.ones_like(response_ids), torch.arange(rows), 1,
                   [""] * rows, [""] * rows, torch.ones(rows, dtype=torch.bool))


def setting(variant: str, micro_batch: int) -> dict:
    return {"micro_batch": {"mb16": 16, "mb32": 32}.get(variant, micro_batch), "checkpointing": variant != "no-ckpt",
            "dtype": torch.bfloat16 if variant == "bf16-weights" else torch.float32, "compiled": variant == "compiled",
            "cached_casts": variant == "cached-casts"}


def build(args, dtype: torch.dtype, checkpointing: bool, device: torch.device, autocast: bool, cached_casts: bool) -> SignalModel:
    model = build_model(args.model, dtype=dtype).to(device)
    if checkpointing:
        enable_activation_checkpointing(model)  # as training enables it
    signal_model = SignalModel(model, chunk_size=2048).train()
    if autocast:  # around the forward, as accelerate's prepare puts it in training (the backward runs outside; no cache)
        context = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cached_casts)
        signal_model.forward = context(signal_model.forward)
    return signal_model


def run_update(signal_model, rollout, micro_batch: int, advantages, compiled: bool = False):
    batches = length_batches(rollout.prompt_mask, rollout.response_mask, micro_batch)
    update(signal_model, rollout, batches, advantages, temperature=0.9, compile_layers=compiled)


def peak_memory(device: torch.device) -> str:
    return gib(torch.cuda.max_memory_allocated()) if device.type == "cuda" else "n/a"


def optimizer_steps(signal_model, device: torch.device, repeats: int) -> list[list[str]]:
    """Clip + AdamW step over gradients of the parameters' shapes: foreach vs fused (CUDA), time and peak memory."""
    params = [p for p in signal_model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    def step(optimizer):
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    rows = []
    for fused in ([False, True] if device.type == "cuda" else [False]):
        optimizer = torch.optim.AdamW(params, lr=1e-6, fused=fused)
        step(optimizer)  # the state exists from here on, as in training after step 1
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        _, times, _ = timed(functools.partial(step, optimizer), repeats, warmup=0)
        extra = gib(torch.cuda.max_memory_allocated() - held) if device.type == "cuda" else "n/a"
        rows.append(["fused" if fused else "foreach", f"{statistics.median(times) * 1e3:.1f} ms", extra])
        del optimizer  # its state before the next one's
    for p in params:
        p.grad = None
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-shape", action="store_true")
    parser.add_argument("--model", default=None, help="cpu-tiny | qwen2.5-0.5b | qwen2.5-1.5b")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--prompt", type=int, help="mean prompt tokens")
    parser.add_argument("--tokens", type=int, help="response tokens")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--top", type=int, default=15, help="kernels listed from the profile (GPU)")
    args = parser.parse_args(argv)
    defaults = dict(model="qwen2.5-0.5b", rows=128, prompt=100, tokens=256) if args.gpu_shape else dict(model="cpu-tiny", rows=16, prompt=40, tokens=32)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}: expected some of {', '.join(VARIANTS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = device.type == "cuda"
    print(f"update: {args.model}, {args.rows} rows x (about {args.prompt} prompt + {args.tokens} response) tokens, "
          f"{'bf16 autocast' if autocast else 'no autocast'}, {args.repeats} timed updates per variant")
    print(f"device: {device_name()}; {versions()}", flush=True)
    rollout = None
    results, rows = {}, []
    for variant in variants:  # each variant's figures print as they come: a run cut short keeps the first ones
        chosen = setting(variant, args.micro_batch)
        signal_model = build(args, chosen["dtype"], chosen["checkpointing"], device, autocast and chosen["dtype"] == torch.float32,
                             chosen["cached_casts"])
        if rollout is None:
            rollout = synthetic_rollout(args.rows, args.prompt, args.tokens, signal_model.model.config.vocab_size)
            advantages = torch.randn(args.rows, generator=torch.Generator().manual_seed(1))
            tokens = int(rollout.prompt_mask.sum() + rollout.response_mask.sum())

        call = functools.partial(run_update, signal_model, rollout, chosen["micro_batch"], advantages, chosen["compiled"])

        start = time.perf_counter()
        call()  # warm-up: kernels compiled (and the layers, for "compiled"), allocator grown
        warm_up = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _, times, _ = timed(call, args.repeats, warmup=0)  # warmed up above
        results[variant] = times
        rows.append([variant, str(chosen["micro_batch"]), "on" if chosen["checkpointing"] else "off", str(chosen["dtype"]).removeprefix("torch."),
                     f"{statistics.median(times):.2f} s", f"{tokens / statistics.median(times):,.0f}", peak_memory(device)])
        print(f"  {variant}: update {[round(t, 2) for t in times]} s (warm-up {warm_up:.1f} s), peak {rows[-1][-1]}", flush=True)
        if variant == "base":
            print("\noptimizer step (clip + AdamW) over the base model's parameters:")
            print(table(["AdamW", "time (median)", "peak memory above the held state"], optimizer_steps(signal_model, device, args.repeats)))
            try:
                profiled = profile_call(call, device, args.top)
                print(profile_report(profiled, "base update", -(-args.rows // chosen["micro_batch"]), "micro-batch"))
            except Exception as error:  # the profile is one reading among several: the variants still run
                print(f"torch.profiler failed: {error!r}")
            print(flush=True)
        del signal_model, call  # freed before the next variant's model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    base = statistics.median(results[variants[0]])
    for row, variant in zip(rows, variants):
        row.append(f"{statistics.median(results[variant]) / base:.2f}x")
    print(table(["variant", "micro-batch", "checkpointing", "weights", "update (median)", "tokens/s", "peak memory",
                 f"time vs {variants[0]}"], rows))
    return {"seconds": results}


if __name__ == "__main__":
    main()
