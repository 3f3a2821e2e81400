"""The update's micro-batches: in row order, grouped by length (`rlif.scoring.length_batches`, what training does) and
filled to a token budget (train.micro_batch_tokens).

    python bench/update_batches.py                       # the README main job's first rollouts (testbed, CPU)
    python bench/update_batches.py --config CONFIG --rollouts 3 --rounds 3

Samples `--rollouts` rollouts of one training step's shape from the config's model and prompts (prompts_per_step x
group_size, the config's temperature and max_new_tokens), then runs the update's forward and backward over each
rollout's micro-batches (train.micro_batch_size rows, trimmed of their padding as training trims them; by tokens: as
many rows as fit the cells of micro_batch_size rows of the step's longest prompt and answer, the same memory bound)
each way, alternating, `--rounds` times. Prints the token cells each way computes (rows x (longest prompt + longest response)
per micro-batch, summed; deterministic) and the median time, with the ratio of each round against the row-order run of
the same round. The loss is the training loss (`rlif.grpo.policy_loss`) with random advantages: the cost of a forward
and backward does not depend on the values.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, table, versions  # noqa: E402

from rlif.config import load_config
from rlif.models.load import load_model, load_tokenizer
from rlif.rl.rollout import generate_rollout
from rlif.sampling.keys import seed_for
from rlif.signals.model import SignalModel
from rlif.signals.batching import length_batches, trim_padding
from rlif.rl.step import accumulate_gradients
from rlif.data.prompts import prepare_prompts

MAIN_JOB = Path(__file__).resolve().parent.parent / "configs" / "testbed" / "intuitor.yaml"


def row_order(prompt_mask, response_mask, batch_size):
    return list(torch.arange(response_mask.shape[0]).split(batch_size))


def by_tokens(prompt_mask, response_mask, batch_size):
    """train.micro_batch_tokens at the budget that `batch_size` rows of the step's longest prompt and answer need:
    no more memory than row batches at their worst."""
    budget = batch_size * int(prompt_mask.sum(1).max() + response_mask.sum(1).max())
    return length_batches(prompt_mask, response_mask, batch_size, max_tokens=budget)


def update(signal_model, rollout, batches, advantages, temperature, compile_layers: bool = False) -> int:
    """Forward + backward over `batches` of the rollout's rows with training's own loop
    (`rlif.train.accumulate_gradients`), from zero gradients: the step's gradient is left in the parameters.
    Returns the token cells computed."""
    signal_model.zero_grad(set_to_none=True)
    device = next(signal_model.parameters()).device
    accumulate_gradients(signal_model, rollout, advantages, batches, total_tokens=int(rollout.response_mask.sum()),
                         device=device, temperature=temperature, clip_eps=0.2, kl_coef=0.0, compile_layers=compile_layers)
    trimmed = [trim_padding(*rollout.select(rows).values()) for rows in batches]  # as the loop trims them
    return sum(mb[0].shape[0] * (mb[0].shape[1] + mb[2].shape[1]) for mb in trimmed)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(MAIN_JOB))
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts sampled (the update runs over each)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    tokenizer = load_tokenizer(config.model.path)
    model = load_model(config.model.path, config.model.dtype)
    prompts = prepare_prompts(config.data, tokenizer, config.data.path)
    signal_model = SignalModel(model, chunk_size=config.train.chunk_tokens)
    per_step = config.train.prompts_per_step
    rollouts = []
    for k in range(args.rollouts):
        indices = list(range(k * per_step, (k + 1) * per_step))
        with torch.no_grad():
            rollouts.append(generate_rollout(
                model, tokenizer, [prompts.records[i].prompt for i in indices], [prompts.rendered[i] for i in indices],
                group_size=config.rollout.group_size, temperature=config.rollout.temperature, top_p=config.rollout.top_p,
                max_new_tokens=config.rollout.max_new_tokens, batch_size=config.rollout.generation_batch_size,
                seed=seed_for(config.train.seed, k + 1), eos_ids=[tokenizer.eos_token_id],
            ))
    lengths = torch.cat([r.response_mask.sum(1) for r in rollouts]).float()
    advantages = [torch.randn(r.response_ids.shape[0], generator=torch.Generator().manual_seed(k)) for k, r in enumerate(rollouts)]
    size = config.train.micro_batch_size
    ways = {"row order": row_order, "by length": length_batches, "by tokens": by_tokens}
    seconds = {name: [] for name in ways}
    cells = {}
    for round_index in range(args.rounds):
        for name in (list(ways) if round_index % 2 == 0 else list(ways)[::-1]):
            start = time.perf_counter()
            cells[name] = sum(update(signal_model, r, ways[name](r.prompt_mask, r.response_mask, size), a, config.rollout.temperature)
                              for r, a in zip(rollouts, advantages))
            seconds[name].append(time.perf_counter() - start)
    tokens = int(sum(r.response_mask.sum() + r.prompt_mask.sum() for r in rollouts))
    forwards = {name: sum(len(way(r.prompt_mask, r.response_mask, size)) for r in rollouts) for name, way in ways.items()}
    print(f"\nupdate micro-batches: {args.config}, {args.rollouts} rollouts x {rollouts[0].response_ids.shape[0]} rows, "
          f"micro-batch {size}; response lengths {int(lengths.min())}-{int(lengths.max())} (mean {lengths.mean():.1f}); "
          f"{args.rounds} alternating rounds")
    print(f"device: {device_name()}; {versions()}")
    rows = []
    for name in ways:
        ratio = statistics.median(a / b for a, b in zip(seconds[name], seconds["row order"]))
        rows.append([name, str(forwards[name]), f"{cells[name]:,}", f"{tokens / cells[name]:.2f}",
                     f"{statistics.median(seconds[name]):.2f} s", f"{ratio:.2f}x"])
    print(table(["micro-batches", "forwards", "token cells computed", "real tokens / cells", "update time (median)",
                 "time vs row order"], rows))
    return {"tokens": tokens, "cells": cells, "seconds": seconds, "forwards": forwards}


if __name__ == "__main__":
    main()
