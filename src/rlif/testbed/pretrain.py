"""Pretrain the testbed's base model: a tiny Llama that adds numbers, imperfectly, in two styles.

`rlif testbed pretrain` builds a character tokenizer (with a chat template) and a ~1M-parameter Llama,
then trains it by next-token prediction on responses to freshly generated problems: half answered
directly, half column by column, and a fraction `noise` of them holding one error (a dropped carry or a
wrong answer digit). The held-out test problems are never trained on. Everything is seeded and runs on
the CPU, so running the command again rebuilds the shipped model (`rlif.testbed.BASE_MODEL_DIR`; with `world="scaffolded"`,
`rlif.testbed.task.SCAFFOLDED.model_dir`).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from rlif.data.prompts import PromptRecord
from rlif.eval.generate import generate_records
from rlif.eval.summary import summarize
from rlif.testbed.task import (
    ARITHMETIC,
    COLUMNS,
    Difficulty,
    World,
    get_world,
    held_out_problems,
    noisy_response,
    prompt_text,
    random_problem,
)
from rlif.testbed.tiny import char_tokenizer, tiny_causal_lm


@dataclass
class PretrainConfig:
    steps: int = 5000
    """Optimizer steps."""
    batch_size: int = 32
    """Examples per step (each a fresh random problem)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warmup over 3% of the steps, cosine decay to 0)."""
    step_by_step_fraction: float = 0.5
    """Share of examples answered column by column (the rest answer directly)."""
    noise: float = 0.1
    """Share of examples holding one error (a dropped carry, or one wrong answer digit)."""
    hidden_size: int = 128
    """Model width (Llama; 4 heads, MLP 4x wider)."""
    num_layers: int = 4
    """Decoder layers."""
    seed: int = 0
    """Seeds the weights and the example stream."""
    eval_problems: int = 500
    """Held-out problems answered greedily at the end (accuracy per style goes into pretrain.json)."""
    eval_every: int = 0
    """Also answer the first 100 held-out problems every this many steps, to log the learning curve (0: never)."""
    world: str = "columns"
    """The testbed world (`rlif.testbed.task.WORLDS`): how step-by-step lines are written; it sets the alphabet and positions."""


def _examples(tokenizer, rng: random.Random, count: int, config: PretrainConfig, difficulty: Difficulty, excluded: set, world: World):
    """Token ids and loss targets (-100 on the prompt) of `count` fresh examples, shortest first."""
    rows = []
    while len(rows) < count:
        problem = random_problem(rng, difficulty)
        if problem in excluded:
            continue
        step_by_step = rng.random() < config.step_by_step_fraction
        response = noisy_response(problem, rng, step_by_step, config.noise, world)
        prompt_ids = tokenizer(render(tokenizer, prompt_text(problem)), add_special_tokens=False).input_ids
        response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append((prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids))
    return sorted(rows, key=lambda row: len(row[0]))


def _pad(rows, pad_id: int):
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    targets = torch.full((len(rows), width), -100)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (ids, labels) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        targets[i, : len(ids)] = torch.tensor(labels)
        attention[i, : len(ids)] = 1
    return input_ids, attention, targets  # (B, L) each, right-padded


def _batch_loss(model, rows, pad_id: int, micro_batches: int = 2) -> float:
    """Backward of the token-mean loss over `rows`, run as length-sorted micro-batches (less padding)."""
    total_tokens = sum(sum(t != -100 for t in labels) for _, labels in rows)
    size = -(-len(rows) // micro_batches)
    loss_sum = 0.0
    for start in range(0, len(rows), size):
        input_ids, attention, targets = _pad(rows[start : start + size], pad_id)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]  # (b, L-1, V): position t predicts t+1
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100, reduction="sum")
        (loss / total_tokens).backward()
        loss_sum += loss.item()
    return loss_sum / total_tokens


def render(tokenizer, prompt: str) -> str:
    """The prompt as the RL configs render it: chat template, no system prompt."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def pretrain(output_dir: str | Path, config: PretrainConfig | None = None, progress: bool = True) -> dict:
    """Train the base model and save it (model, tokenizer, pretrain.json) to `output_dir`; returns the summary."""
    config = config or PretrainConfig()

    output_dir = Path(output_dir)
    difficulty = Difficulty()
    world = get_world(config.world)
    tokenizer = char_tokenizer(world.alphabet)
    model = tiny_causal_lm(
        len(tokenizer), hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=4,
        max_positions=world.max_positions, seed=config.seed,
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    excluded = set(held_out_problems(difficulty))
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=max(1, int(0.03 * config.steps)), num_training_steps=config.steps)
    losses, curve = [], []
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(1, config.steps + 1), desc="pretrain", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        rows = _examples(tokenizer, rng, config.batch_size, config, difficulty, excluded, world)
        losses.append(_batch_loss(model, rows, tokenizer.pad_token_id))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}", refresh=False)
        if config.eval_every and step % config.eval_every == 0 and step < config.steps:
            model.eval()
            curve.append({"step": step, **evaluate_styles(model, tokenizer, 100, world=world)})
            model.train()
            bar.write(json.dumps(curve[-1]))
    bar.close()
    model.eval()
    summary = {
        "config": asdict(config),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),  # float sums depend on it: same threads, same weights
        "train_seconds": round(time.perf_counter() - start, 1),
        "loss_every_100_steps": [round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 5) for i in range(0, len(losses), 100)],
        "held_out_greedy_during_training": curve,
        "held_out_greedy": evaluate_styles(model, tokenizer, config.eval_problems, progress, world),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def evaluate_styles(model, tokenizer, count: int, progress: bool = False, world: World = COLUMNS) -> dict:
    """Greedy accuracy on the first `count` held-out problems, overall and per answer style (budget: the world's)."""

    problems = held_out_problems()[:count]
    records = [PromptRecord(prompt_text(p), str(sum(p)), "held-out") for p in problems]
    with tqdm(total=len(records), desc="evaluate", unit="answer", disable=not progress, dynamic_ncols=True) as bar:
        results = generate_records(
            model, tokenizer, records, [render(tokenizer, r.prompt) for r in records], ARITHMETIC,
            max_new_tokens=world.eval_max_new_tokens, eos_ids=[tokenizer.eos_token_id], greedy=True, progress=bar,
        )
    return {key: round(value, 4) for key, value in summarize(results, "").items()}
