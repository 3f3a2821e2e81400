"""Token signals: the naive path vs rlif's chunked `hidden_signals`, time and peak extra memory.

    python bench/signals.py                       # CPU: Qwen2.5-0.5B head (d 896, V 151,936), 1,024 tokens
    python bench/signals.py --preset issue        # the issue's shape: 16,384 tokens, Qwen2.5-1.5B head, bf16 (GPU)

Variants (each measured in a fresh subprocess, so one variant's allocations cannot hide another's):
  matmul      the lm_head matmul alone, logits (N, V) in the compute dtype: the time floor
  naive       full logits -> float32 log_softmax -> log-prob, self-certainty, entropy
  fused       rlif.signals.hidden_signals, `--chunk` rows at a time (the forward of the scoring passes)
  naive+bwd   naive log-prob forward + backward to the hidden states and the weight (the update)
  fused+bwd   hidden_signals(logprobs_only=True) forward + recomputing backward
  naive+hbwd, fused+hbwd         the same with the head frozen (LoRA): gradient to the hidden states only; rlif's
              forward then prepares it and the backward only scales rows (no recomputed logits)
  fused-torch, fused-torch+bwd, fused-torch+hbwd   the same with backend="torch" (on CUDA, `fused` runs the Triton kernels)
  Any fused variant takes a chunk size after '@' (`fused@2048`) to compare chunk sizes in one run, and the Triton
  forward kernel's lanes per row and warps after '#' (`fused@2048#4096x8`; default rlif.signals.triton_kernels.FORWARD_LAUNCH).

Peak extra memory: on CPU, the subprocess builds its inputs, runs one small warm-up, resets the kernel's peak
resident-set counter (/proc/self/clear_refs), reads its resident set size, runs the variant once and reads the peak
(VmHWM); extra = peak - before. Every byte torch allocates and writes on CPU is resident, so this counts the blocks a
variant materializes at once. On CUDA: torch.cuda.max_memory_allocated minus the memory allocated before.
The memory ratio compares working memory: peak extra minus the variant's outputs (the same for naive and fused; with
a trained head they include the (V, d) weight gradient, which would otherwise hide what the blocks cost).
Times: all variants in one process, alternating call by call (`--repeats` calls each per round, one process per
round); ratios are medians of each call's time over the adjacent call of the baseline, so the machine's changing load
hits both alike.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from rlif.signals import triton_kernels as triton_signals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import current_rss_bytes, device_name, gib, peak_rss_bytes, reset_peak_rss, sync, table, timed, versions  # noqa: E402

PRESETS = {
    "cpu": dict(tokens=1024, d=896, vocab=151936, chunk=128, dtype="float32"),
    "issue": dict(tokens=16384, d=1536, vocab=151936, chunk=512, dtype="bfloat16"),  # chunk 512: < 1 GiB of blocks
}
FORWARD = ["matmul", "naive", "fused"]
DEFAULT_LAUNCH = triton_signals.FORWARD_LAUNCH
BACKWARD = ["naive+bwd", "fused+bwd"]
FROZEN_HEAD = ["naive+hbwd", "fused+hbwd"]


def naive_signals(hidden, weight, targets, temperature=1.0):
    """What a straightforward implementation does: the whole (N, V) float32 log-softmax at once."""
    logits = hidden @ weight.T  # (N, V) in the compute dtype
    logp = torch.log_softmax(logits.float() / temperature if temperature != 1.0 else logits.float(), dim=-1)  # (N, V)
    logprobs = logp.gather(-1, targets[:, None]).squeeze(-1)
    if temperature != 1.0:
        logp = torch.log_softmax(logits.float(), dim=-1)
    self_certainty = -logp.mean(-1) - math.log(logp.shape[-1])
    entropy = -(logp.exp() * logp).sum(-1)
    return logprobs, self_certainty, entropy


def make_inputs(args, device):
    from transformers.utils import logging  # noqa: F401  (import cost outside the measurement)

    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.d, generator=generator).to(device, dtype)
    weight = (torch.randn(args.vocab, args.d, generator=generator) * 0.02 * math.sqrt(args.d) / 4).to(device, dtype)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=generator).to(device)
    return hidden, weight, targets


def run_variant(variant, hidden, weight, targets, args):
    from rlif.signals.chunked import hidden_signals

    temperature = args.temperature
    variant, _, launch = variant.partition("#")
    # The Triton forward kernel's lanes per row and warps (e.g. fused#4096x8); variants alternate in one process.
    triton_signals.FORWARD_LAUNCH = tuple(int(x) for x in launch.split("x")) if launch else DEFAULT_LAUNCH
    variant, _, chunk = variant.partition("@")
    chunk = int(chunk) if chunk else args.chunk
    backend = "torch" if variant.startswith("fused-torch") else "auto"
    if variant == "matmul":
        return hidden @ weight.T
    if variant == "naive":
        with torch.no_grad():
            return naive_signals(hidden, weight, targets, temperature)
    if variant in ("fused", "fused-torch"):
        with torch.no_grad():
            return hidden_signals(hidden, weight, targets, temperature=temperature, chunk_size=chunk, backend=backend)
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_(not variant.endswith("+hbwd"))  # +hbwd: frozen head, as under LoRA
    upstream = torch.ones(h.shape[0], device=h.device)
    if variant.startswith("naive"):
        logits = h @ w.T
        logp = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    else:
        logp = hidden_signals(h, w, targets, temperature=temperature, chunk_size=chunk, logprobs_only=True, backend=backend)[0]
    (logp * upstream).sum().backward()
    return logp.detach(), h.grad, w.grad


def worker(args) -> dict:
    """`--worker memory:VARIANT`: peak extra memory of one call; `--worker timing:V1,V2,...`: interleaved times."""
    mode, _, names = args.worker.partition(":")
    device = torch.device(args.device)
    hidden, weight, targets = make_inputs(args, device)
    small = argparse.Namespace(**{**vars(args), "tokens": 8})
    small_inputs = make_inputs(small, device)
    for variant in names.split(","):
        run_variant(variant, *small_inputs, small)  # load kernels, threads, allocator pools
    sync()
    if mode == "memory":
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            result = run_variant(names, hidden, weight, targets, args)
            sync()
            extra = torch.cuda.max_memory_allocated() - before
        else:
            import gc

            gc.collect()
            if not reset_peak_rss():
                raise RuntimeError("cannot reset the peak resident set size (/proc/self/clear_refs): peak memory unmeasurable")
            before = current_rss_bytes()
            result = run_variant(names, hidden, weight, targets, args)
            extra = peak_rss_bytes() - before
        outputs = sum(t.numel() * t.element_size() for t in (result if isinstance(result, tuple) else (result,)) if t is not None)
        del result
        return {"variant": names, "extra_bytes": extra, "output_bytes": outputs}
    # Timing: variants alternate call by call, so a change in the machine's load hits them alike.
    times = {variant: [] for variant in names.split(",")}
    for _ in range(args.repeats):
        for variant in times:
            seconds, _, result = timed(lambda: run_variant(variant, hidden, weight, targets, args), 1, warmup=0)
            del result
            times[variant].append(seconds)
    return {"seconds": times}


def parse_variants(text: str) -> list[str]:
    """The comma-separated --variants, checked (bench/gpu_check.sh's list is tested against this)."""
    known = FORWARD + BACKWARD + FROZEN_HEAD + ["fused-torch", "fused-torch+bwd", "fused-torch+hbwd"]
    variants = text.split(",")
    for variant in variants:
        rest, _, launch = variant.partition("#")
        name, _, chunk = rest.partition("@")
        bad_launch = launch and (not name.startswith("fused") or len(launch.split("x")) != 2 or not launch.replace("x", "").isdigit())
        if name not in known or (chunk and (not name.startswith("fused") or not chunk.isdigit())) or bad_launch:
            raise ValueError(f"--variants: unknown variant {variant!r}; expected one of {known}, fused ones optionally "
                             "@CHUNK and #LANESxWARPS")
    return variants


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--d", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(FORWARD + BACKWARD + FROZEN_HEAD))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset or ("issue" if args.device == "cuda" else "cpu")]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    try:
        variants = parse_variants(args.variants)
    except ValueError as error:
        parser.error(str(error))
    passthrough = [f"--{k}={getattr(args, k)}" for k in ("tokens", "d", "vocab", "chunk", "dtype", "temperature", "device", "repeats")]

    def call(worker_arg):
        out = subprocess.run([sys.executable, __file__, f"--worker={worker_arg}", *passthrough], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{worker_arg} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    extra, working = {}, {}
    for variant in variants:  # one fresh process per variant: no allocation of one can hide another's
        record = call(f"memory:{variant}")
        extra[variant], working[variant] = record["extra_bytes"], record["extra_bytes"] - record["output_bytes"]
        print(f"  peak extra memory {variant}: {gib(extra[variant])} (working {gib(working[variant])})", file=sys.stderr)
    seconds = {variant: [] for variant in variants}
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        record = call("timing:" + ",".join(order))
        for variant, values in record["seconds"].items():
            seconds[variant] += values
        print(f"  round {round_index + 1}: " + ", ".join(f"{v} {statistics.median(t):.3f} s" for v, t in record["seconds"].items()), file=sys.stderr)
    results = {v: {"extra_bytes": extra[v], "working_bytes": working[v], "seconds": seconds[v]} for v in variants}

    def ratio(variant, baseline):
        """Median over calls of time / the baseline's adjacent call (calls alternate)."""
        return statistics.median(a / b for a, b in zip(seconds[variant], seconds[baseline]))

    print(f"\nsignals: N={args.tokens} tokens, d={args.d}, V={args.vocab}, {args.dtype}, chunk={args.chunk}, T={args.temperature}, "
          f"{args.rounds} rounds x {args.repeats} alternating calls")
    print(f"device: {device_name()}; {versions()}")
    rows = []
    for variant in variants:
        name = variant.partition("#")[0].partition("@")[0]
        baseline = "naive" + name[name.index("+"):] if "+" in name else "naive"  # naive+bwd, naive+hbwd or naive
        row = [variant, f"{statistics.median(seconds[variant]) * 1000:.1f} ms", gib(extra[variant]), gib(working[variant])]
        if baseline in seconds and variant != "matmul":  # the matmul's output is its logits: no working memory to compare
            floor = 2**20  # below 1 MiB the resident-set counter cannot tell
            less = f"{working[baseline] / working[variant]:.1f}x less" if working[variant] >= floor else f"> {working[baseline] / floor:.0f}x less"
            row += [f"{ratio(variant, baseline):.2f}x", less]
        else:
            row += ["", ""]
        if "matmul" in seconds:
            row.append(f"{ratio(variant, 'matmul'):.2f}x")
        rows.append(row)
    headers = ["variant", "time (median)", "peak extra memory", "working (- outputs)", "time vs naive", "working memory vs naive"]
    if "matmul" in seconds:
        headers.append("time vs matmul")
    print(table(headers, rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": device_name(), "versions": versions(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
