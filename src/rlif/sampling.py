"""Sampling responses with a KV cache: the rollout and evaluation engine.

Why not `model.generate`:
- Each prompt is prefilled once and its cache repeated for its n samples (generate prefills n copies).
- Finished sequences leave the batch at once, so they stop costing compute.
- Randomness is keyed, not streamed: the uniform number that picks token t of sample j of a prompt is a hash
  of (seed, prompt key, j, t), and the token is the inverse-CDF draw from softmax(z / T) at that number. A
  sample therefore does not depend on batch size, prompt order, which rows already finished, or how many
  processes share the batch: one process and K processes draw the same responses.
- Self-certainty, entropy and log-prob of every sampled token come out of the sampling pass itself, so
  Best-of-N selection needs no second forward.
The sampler draws from exactly softmax(z / T), optionally restricted to the top-p nucleus; nothing in the
model's generation_config (top-k, repetition penalty, ...) applies.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from rlif.signals import TokenSignals, block_signals

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def keyed_uniform(seed: int, prompt_keys: np.ndarray, sample_ids: np.ndarray, position: int) -> np.ndarray:
    """Uniform floats in [0, 1), one per row, from splitmix64 of (seed, prompt key, sample id, position)."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN
        for part in (prompt_keys.astype(np.uint64), sample_ids.astype(np.uint64), np.uint64(position)):
            x = _splitmix(x ^ (part + _GOLDEN))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _splitmix(x):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def draw_tokens(logits: Tensor, uniforms: Tensor, temperature: float, top_p: float = 1.0) -> Tensor:
    """Inverse-CDF draw from softmax(logits / T) (restricted to the top-p nucleus when top_p < 1).

    logits: (A, V); uniforms: (A,) in [0, 1). Returns (A,) token ids.
    """
    z = logits.float()  # (A, V)
    weights = (z - z.max(dim=-1, keepdim=True).values).mul_(1.0 / temperature).exp_()  # (A, V)
    return draw_from_weights(weights, uniforms, top_p)


def draw_from_weights(weights: Tensor, uniforms: Tensor, top_p: float = 1.0, cdf_out: Tensor | None = None) -> Tensor:
    """Inverse-CDF draw from unnormalized weights (A, V) >= 0 (the draw scales by their total); `weights` is kept.

    `cdf_out` (A, V), when given, holds the CDF (a reused block: on CPU a fresh one costs page faults).
    """
    probs, order = weights, None
    if top_p < 1.0:
        probs = weights / weights.sum(-1, keepdim=True)  # the nucleus threshold is on normalized mass
        probs, order = probs.sort(dim=-1, descending=True)  # (A, V)
        mass_before = probs.cumsum(-1) - probs  # (A, V): mass of strictly more likely tokens
        probs = probs.masked_fill(mass_before >= top_p, 0.0)  # the most likely token always stays
    cdf = torch.cumsum(probs, -1, out=cdf_out) if cdf_out is not None else probs.cumsum(-1)  # (A, V)
    target = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]  # (A, 1), scaled: no renormalization needed
    tokens = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)  # (A, 1)
    tokens = _skip_zero_mass(tokens, probs)
    if order is not None:
        tokens = order.gather(-1, tokens)
    return tokens.squeeze(-1)


def _skip_zero_mass(tokens: Tensor, probs: Tensor) -> Tensor:
    """searchsorted can land on a zero-probability entry when the CDF is flat at the draw; step back."""
    chosen = probs.gather(-1, tokens)  # (A, 1)
    if bool((chosen > 0).all()):
        return tokens
    nonzero = probs > 0  # (A, V)
    positions = torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)
    last_nonzero_before = torch.where(nonzero & (positions <= tokens), positions, -1).max(-1, keepdim=True).values
    return torch.where(chosen > 0, tokens, last_nonzero_before)


@dataclass
class Samples:
    """n samples per prompt; sample j of prompt i is row i * n + j."""

    responses: list[list[int]]  # generated tokens, up to and including the first EOS
    truncated: list[bool]  # hit max_new_tokens without EOS
    num_samples: int  # n
    self_certainty: Tensor | None = None  # (rows,) mean over response tokens, temperature 1
    entropy: Tensor | None = None  # (rows,)
    logprob: Tensor | None = None  # (rows,) mean log-prob of the sampled tokens at the sampling temperature
    token_signals: TokenSignals | None = None  # (rows, longest response) per token, 0 after each response

    def response_mask(self) -> Tensor:
        """(rows, longest response) 1 on the tokens of each response, as `token_signals` is laid out."""
        lengths = torch.tensor([len(r) for r in self.responses])  # (rows,)
        width = max(1, int(lengths.max())) if len(self.responses) else 1
        return (torch.arange(width)[None, :] < lengths[:, None]).long()  # (rows, width)


def _cache_argument(model) -> str:
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@torch.no_grad()
def sample(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    num_samples: int = 1,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    prompt_keys: Sequence[int] | None = None,
    batch_size: int = 64,
    track_signals: bool = False,
    progress=None,
) -> Samples:
    """Sample `num_samples` responses to each prompt (token id lists, unpadded).

    `prompt_keys` (default: the prompt's index) names each prompt in the random stream: give the same key
    to the same prompt and you get the same samples wherever it is batched. `batch_size` counts sequences
    per decode batch (prompts per batch = batch_size // num_samples, at least 1).
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    keys = np.asarray(prompt_keys if prompt_keys is not None else range(len(prompts)), dtype=np.int64)
    rows = len(prompts) * num_samples
    # Written one step at a time with one indexing op each: no per-row Python work per token.
    tokens_out = torch.zeros(rows, max_new_tokens, dtype=torch.long)  # (rows, max_new_tokens)
    lengths = torch.zeros(rows, dtype=torch.long)  # (rows,)
    truncated = torch.zeros(rows, dtype=torch.bool)  # (rows,)
    per_token = torch.zeros(rows, max_new_tokens, 3) if track_signals else None  # logprob, self-certainty, entropy
    eos = torch.tensor(list(eos_ids), device=device)
    cache_kw = _cache_argument(model)
    was_training = model.training
    model.eval()

    # Similar lengths share a batch: little left padding.
    by_length = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    prompts_per_batch = max(1, batch_size // num_samples)
    for start in range(0, len(by_length), prompts_per_batch):
        batch = by_length[start : start + prompts_per_batch]
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.full((len(batch), width), 0, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        for r, i in enumerate(batch):
            input_ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i], dtype=torch.long)
            attention[r, width - len(prompts[i]) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (B, W)

        # ---- prefill once per prompt, then repeat the cache for its samples ----
        cache = DynamicCache()
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        logits = out.logits[:, -1]  # (B, V)
        if num_samples > 1:
            cache.batch_repeat_interleave(num_samples)
            logits = logits.repeat_interleave(num_samples, 0)
            attention = attention.repeat_interleave(num_samples, 0)
        next_position = attention.sum(-1, keepdim=True)  # (A, 1) position id of the next token
        row_ids = torch.tensor([i * num_samples + j for i in batch for j in range(num_samples)])  # (A,) output rows
        row_keys = np.repeat(keys[batch], num_samples)  # (A,)
        row_sample = np.tile(np.arange(num_samples), len(batch))  # (A,)
        # Two (A, V) float32 blocks reused by every step of this batch: the draw's weights and its CDF.
        scratch = torch.empty(2, *logits.shape, device=device) if track_signals else None

        # ---- decode: draw, record, drop finished rows, extend ----
        for t in range(max_new_tokens):
            if greedy:
                tokens = logits.argmax(-1)  # (A,)
            else:
                uniforms = torch.from_numpy(keyed_uniform(seed, row_keys, row_sample, t)).to(device)
            if track_signals:
                # In place on this step's logits (not needed again); one exp((z - max) / T) serves the draw
                # and the log-prob.
                num_rows = logits.shape[0]
                draw = tokens if greedy else (lambda weights: draw_from_weights(weights, uniforms, top_p, scratch[1, :num_rows]))
                step = block_signals(logits.float(), draw, 1.0 if greedy else temperature, scratch=scratch[0, :num_rows])
                tokens = step.targets  # (A,)
                per_token[row_ids, t] = torch.stack([step.logprobs, step.self_certainty, step.entropy], -1).cpu()
            elif not greedy:
                tokens = draw_tokens(logits, uniforms, temperature, top_p)  # (A,)
            tokens_out[row_ids, t] = tokens.cpu()
            lengths[row_ids] = t + 1
            finished = torch.isin(tokens, eos)  # (A,)
            if t == max_new_tokens - 1:
                truncated[row_ids] = ~finished.cpu()
                if progress is not None:
                    progress.update(len(row_ids))
                break
            if bool(finished.any()):
                if progress is not None:
                    progress.update(int(finished.sum()))
                keep = (~finished).nonzero().squeeze(-1)  # (A',)
                if keep.numel() == 0:
                    break
                cache.batch_select_indices(keep)
                tokens, attention, next_position = tokens[keep], attention[keep], next_position[keep]
                keep_cpu = keep.cpu()
                row_ids, row_keys, row_sample = row_ids[keep_cpu], row_keys[keep_cpu.numpy()], row_sample[keep_cpu.numpy()]
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)  # (A, W + t + 1)
            out = model(
                input_ids=tokens[:, None],
                attention_mask=attention,
                position_ids=next_position,
                use_cache=True,
                **{cache_kw: cache},
            )
            logits = out.logits[:, -1]  # (A, V)
            next_position = next_position + 1
    model.train(was_training)

    responses = [tokens_out[r, :n].tolist() for r, n in enumerate(lengths.tolist())]
    samples = Samples(responses=responses, truncated=truncated.tolist(), num_samples=num_samples)
    if track_signals:
        width = max(1, int(lengths.max())) if rows else 1
        per_token = per_token[:, :width]  # (rows, T), zero after each response
        samples.token_signals = TokenSignals(per_token[..., 0], per_token[..., 1], per_token[..., 2])
        means = (per_token.double().sum(1) / lengths.clamp(min=1)[:, None]).float()  # (rows, 3)
        samples.logprob, samples.self_certainty, samples.entropy = means[:, 0], means[:, 1], means[:, 2]
    return samples
