"""Rollout throughput: rlif's KV-cache sampler vs Hugging Face `generate`, same model, prompts, lengths, sampling.

    python bench/rollout.py                  # CPU: a tiny decoder with the real Qwen2.5 vocabulary, 4 prompts x G=4 x 64 tokens
    python bench/rollout.py --gpu-shape      # random-init Qwen2.5-0.5B, bf16, 16 prompts x G=8 x 256 tokens (the issue's shape)

Both draw from softmax(z / T) with top-k off and top-p 1 over the same left-padded GSM8K chat prompts, G samples per
prompt, until EOS or `--tokens` (a random-init model almost never samples EOS out of 151,936 tokens, so both produce
full-length responses). Completion tokens/s counts each response up to its EOS. Variants alternate in every round;
the table reports medians and the ratio to `hf-generate` measured in the same run.
  hf-generate         model.generate(num_return_sequences=G), dynamic cache (what TRL's GRPOTrainer calls)
  hf-generate-static  the same with cache_implementation="static" (compiled decode step; GPU only, --static)
  rlif                rlif.sampling.sample with per-token signals (what the trainer runs; decode="dynamic")
  rlif-no-signals     the same without signals
  rlif-static         rlif with decode="static": fixed-shape KV cache, finished rows ride along, no host waits
  rlif-compiled       rlif with decode="compiled": static + torch.compile (CUDA graphs on GPU; --static)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, device_name, load_prompts, load_tokenizer, profile_call, profile_report, sync, table, versions  # noqa: E402


VARIANTS = ["hf-generate", "rlif", "rlif-no-signals", "rlif-static", "hf-generate-static", "rlif-compiled"]  # the last two: --static


def hf_generate(model, tokenizer, texts, args, static=False):
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    extra = {"cache_implementation": "static"} if static else {}
    out = model.generate(
        **batch, do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0, max_new_tokens=args.tokens,
        num_return_sequences=args.group, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids(tokenizer), **extra,
    )
    completions = out[:, batch.input_ids.shape[1]:].tolist()
    eos = set(eos_ids(tokenizer))
    return sum(next((i + 1 for i, t in enumerate(row) if t in eos), len(row)) for row in completions)


def rlif_sample(model, tokenizer, prompt_ids, args, track_signals=True, decode="dynamic"):
    from rlif.sampling.native import sample

    samples = sample(
        model, prompt_ids, num_samples=args.group, max_new_tokens=args.tokens, eos_ids=eos_ids(tokenizer),
        temperature=args.temperature, seed=0, batch_size=len(prompt_ids) * args.group, track_signals=track_signals,
        decode=decode,
    )
    return sum(len(r) for r in samples.responses)


def eos_ids(tokenizer):
    return [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-shape", action="store_true", help="random-init Qwen2.5-0.5B, 16 prompts x G=8 x 256 tokens, bf16")
    parser.add_argument("--model", default=None, help="cpu-tiny | qwen2.5-0.5b | qwen2.5-1.5b")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--group", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--static", action="store_true", help="also time the compiled paths: generate with the static cache, rlif-compiled (first calls compile)")
    parser.add_argument("--profile", default=None, choices=VARIANTS,
                        help="after the rounds, one call of VARIANT under torch.profiler: operators issued per new token "
                             "and, on a GPU, the share of the wall time spent in kernels and the top kernels")
    parser.add_argument("--top", type=int, default=12, help="kernels listed by --profile")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available()
    defaults = dict(model="qwen2.5-0.5b", prompts=16, group=8, tokens=256) if args.gpu_shape else dict(model="cpu-tiny", prompts=4, group=4, tokens=64)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    tokenizer = load_tokenizer()
    model = build_model(args.model, dtype=dtype).to(device)
    texts, prompt_ids = load_prompts(tokenizer, args.prompts)
    variants = {
        "hf-generate": lambda: hf_generate(model, tokenizer, texts, args),
        "rlif": lambda: rlif_sample(model, tokenizer, prompt_ids, args),
        "rlif-no-signals": lambda: rlif_sample(model, tokenizer, prompt_ids, args, track_signals=False),
        "rlif-static": lambda: rlif_sample(model, tokenizer, prompt_ids, args, decode="static"),
    }
    if args.static:
        variants["hf-generate-static"] = lambda: hf_generate(model, tokenizer, texts, args, static=True)
        variants["rlif-compiled"] = lambda: rlif_sample(model, tokenizer, prompt_ids, args, decode="compiled")
    if args.profile is not None and args.profile not in variants:
        parser.error(f"--profile {args.profile} is timed only with --static")
    # Warm-up (kernels, allocator pools; the static cache compiles here): not timed.
    for name, fn in variants.items():
        start = time.perf_counter()
        with torch.no_grad():
            fn()
        sync()
        print(f"  warm-up {name}: {time.perf_counter() - start:.2f} s", file=sys.stderr)
    results = {name: [] for name in variants}
    for round_index in range(args.rounds):
        names = list(variants) if round_index % 2 == 0 else list(variants)[::-1]
        for name in names:
            sync()
            start = time.perf_counter()
            with torch.no_grad():
                tokens = variants[name]()
            sync()
            seconds = time.perf_counter() - start
            results[name].append((seconds, tokens))
            print(f"  round {round_index + 1} {name}: {seconds:.2f} s, {tokens} tokens", file=sys.stderr)

    print(f"\nrollout: {args.model}, {args.prompts} prompts x G={args.group} x {args.tokens} new tokens, T={args.temperature}, {dtype}")
    print(f"prompt tokens: {min(map(len, prompt_ids))}-{max(map(len, prompt_ids))}; device: {device_name()}; {versions()}")
    base = statistics.median(t / s for s, t in results["hf-generate"])
    rows = []
    for name, runs in results.items():
        seconds = statistics.median(s for s, _ in runs)
        rate = statistics.median(t / s for s, t in runs)
        rows.append([name, f"{seconds:.2f} s", f"{rate:.0f}", f"{rate / base:.2f}x"])
    print(table(["variant", "time (median)", "completion tokens/s", "vs hf-generate"], rows))
    if args.profile:
        with torch.no_grad():
            profiled = profile_call(variants[args.profile], device, args.top)
        # every row runs to the last token on a random-init model: a call is args.tokens decode steps
        print(profile_report(profiled, args.profile, args.tokens, "decode step"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
