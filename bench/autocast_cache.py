"""What autocast's cache of weight casts holds at the end of the update's forward (why training turns it off there).

    python bench/autocast_cache.py                    # random-init Qwen2.5-0.5B on CPU, bf16 autocast, 1 x (8 + 8) tokens

Under autocast each float32 weight a matmul reads is cast to bf16; with the cache on (torch's default), the casts of
weights that require grad are kept until the outermost autocast context exits, so at the end of the update's forward
a bf16 copy of every decoder weight is held, at the update's memory peak, although each is read once. Each setting
runs in a fresh process: resident memory before the forward, at its end (autocast still on) and after autocast exits.
On a GPU, `bench/profile_update.py --variants base,cached-casts` shows the same in the update's peak memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, current_rss_bytes, gib, table  # noqa: E402

from rlif.models.load import enable_activation_checkpointing
from rlif.signals.model import SignalModel


def measure(model_name: str, cached: bool) -> list[int]:
    model = build_model(model_name)
    enable_activation_checkpointing(model)  # as training runs the update
    signal_model = SignalModel(model).train()
    generator = torch.Generator().manual_seed(0)
    prompt, response = (torch.randint(0, 1000, (1, 8), generator=generator) for _ in range(2))
    before = current_rss_bytes()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cached):
        signal_model(prompt, torch.ones_like(prompt), response, torch.ones_like(response), logprobs_only=True)
        at_end = current_rss_bytes()
    return [before, at_end, current_rss_bytes()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="cpu-tiny | cpu-wide | qwen2.5-0.5b | qwen2.5-1.5b")
    parser.add_argument("--worker", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT", *measure(args.model, args.worker == "on"))
        return {}
    results = {}
    for setting in ("on", "off"):
        out = subprocess.run([sys.executable, __file__, f"--model={args.model}", f"--worker={setting}"], capture_output=True,
                             text=True, check=True)
        results[setting] = [int(x) for x in out.stdout.split("RESULT")[-1].split()]
    print(f"\nautocast cache, {args.model}, bf16 autocast on CPU, one forward of the update (activation checkpointing)")
    rows = [[f"cache {setting}", gib(b), f"+{gib(e - b)}", f"+{gib(a - b)}"] for setting, (b, e, a) in results.items()]
    print(table(["autocast", "resident before", "at the forward's end", "after autocast exits"], rows))
    return results


if __name__ == "__main__":
    main()
