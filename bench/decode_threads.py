"""Torch threads for the native engine's decode loop on a CPU: the main job's rollout with 1 thread vs torch's default.

    python bench/decode_threads.py                 # the testbed base model, 16 prompts x G=8 x 80 tokens, 5 rounds

What `rollout.cpu_threads` chooses between (rlif.sampling.native.decode_threads): one rollout of the README's main job
(the shipped testbed model, its first 16 training prompts, G = 8, temperature 0.9, up to 80 new tokens) drawn with the
decode loop on 1 thread and on torch's default (one per core), alternating in every round. Prints wall seconds and the
process's CPU seconds (medians), the ratio to the default, and the load average before and after: on a shared machine
extra threads spin-wait for cores other jobs hold, which costs CPU time and, under load, wall time. The draws are the
same either way (the test suite checks the tokens; the floats may differ in their last bits).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, versions  # noqa: E402

from rlif.config import load_config
from rlif.data.prompts import prepare_prompts
from rlif.models.load import eos_token_ids, load_model, load_tokenizer
from rlif.sampling.native import sample

REPO = Path(__file__).resolve().parents[1]


def rollout(model, encoded, eos, config, threads: int) -> int:
    samples = sample(model, encoded, num_samples=config.rollout.group_size, max_new_tokens=config.rollout.max_new_tokens,
                     eos_ids=eos, temperature=config.rollout.temperature, seed=1, batch_size=config.rollout.generation_batch_size,
                     track_signals=True, cpu_threads=threads)
    return sum(len(r) for r in samples.responses)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "testbed" / "intuitor.yaml"))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    tokenizer, model = load_tokenizer(config.model.path), load_model(config.model.path).eval()
    prompts = prepare_prompts(config.data, tokenizer, config.data.path, limit=args.prompts)
    encoded = [tokenizer(text, add_special_tokens=False).input_ids for text in prompts.rendered]
    eos = eos_token_ids(tokenizer, model)
    default = torch.get_num_threads()
    variants = {"1 thread": 1, f"default ({default} threads)": 0}
    load_before = os.getloadavg()
    rollout(model, encoded, eos, config, 1)  # warm-up
    results = {name: [] for name in variants}
    for round_index in range(args.rounds):
        names = list(variants) if round_index % 2 == 0 else list(variants)[::-1]
        for name in names:
            wall, cpu = time.perf_counter(), time.process_time()
            tokens = rollout(model, encoded, eos, config, variants[name])
            results[name].append((time.perf_counter() - wall, time.process_time() - cpu, tokens))
    load_after = os.getloadavg()
    base = statistics.median(w for w, _, _ in results[f"default ({default} threads)"])
    rows = []
    for name, runs in results.items():
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        rows.append([name, f"{wall:.2f} s", f"{cpu:.2f} s", f"{statistics.median(r[2] / r[0] for r in runs):.0f}", f"{wall / base:.2f}x"])
    print(f"\nmain job rollout: {args.prompts} prompts x G={config.rollout.group_size} x {config.rollout.max_new_tokens} tokens; "
          f"{os.cpu_count()} cores; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; {versions()}")
    print(table(["decode threads", "wall (median)", "CPU time (median)", "completion tokens/s", "wall vs default"], rows))
    return {"results": results, "load": (load_before, load_after)}


if __name__ == "__main__":
    main()
