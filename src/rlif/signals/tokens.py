"""Per-token signals of a causal LM over its own responses.

For a response token o_t, the distribution that scores it is the one predicting it: the logits
z_t at position t-1 of prompt+response. From z_t (vocabulary size V) we compute

    log-prob      log p_t(o_t)                                  at the sampling temperature T
    self-certainty sc_t = KL(U || p_t) = logsumexp(z_t) - mean(z_t) - log V      (T = 1)
    entropy       H_t = logsumexp(z_t) - sum_j p_t(j) z_t,j                     (T = 1)

The log-prob uses the temperature the rollout was sampled with (it is the behaviour policy of the
PPO ratio and of the KL term); self-certainty and entropy are the paper's definitions on the raw
logits, so a reward, `rlif score` and Best-of-N selection all see the same number.

These functions work on a block of logits; `rlif.signals.chunked` applies them to a whole batch of hidden
states in chunks, so the float32 logits of the batch never exist.

Numerics (float32 per chunk): with m = max z, s = z - m and e = sum over all but the argmax of exp(s),
    logsumexp(z) = m + log1p(e)
    H = log1p(e) - sum_j exp(s_j) s_j / (1 + e)        (a sum of two non-negative terms: no cancellation)
so entropy and log-probs of very peaked distributions keep their relative precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

DEFAULT_CHUNK_TOKENS = 2048


@dataclass
class TokenSignals:
    """Signals at response positions, zero where `response_mask` is 0."""

    logprobs: Tensor  # (B, T) log-prob of the sampled token at the rollout temperature
    self_certainty: Tensor | None  # (B, T) KL(U || p_t), temperature 1 (None when only log-probs were computed)
    entropy: Tensor | None  # (B, T) H(p_t), temperature 1


def logit_signals(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """(log-prob of target at `temperature`, self-certainty, entropy) for each row of `logits`.

    logits: (N, V) any float dtype; targets: (N,) int64. Returns three (N,) float32 tensors
    (float64 for float64 logits). `logits` is not modified.
    """
    z = logits.to(_signal_dtype(logits.dtype), copy=True)  # (N, V), consumed below
    block = block_signals(z, targets, temperature)
    return block.logprobs, block.self_certainty, block.entropy


class BlockSignals(NamedTuple):
    logprobs: Tensor  # (N,) log-prob of the target at temperature T
    self_certainty: Tensor | None  # (N,) temperature 1; None when only log-probs were asked for
    entropy: Tensor | None  # (N,) temperature 1
    row_max: Tensor  # (N,) max_j z_j
    log_norm_t: Tensor  # (N,) logsumexp((z - row_max) / T), between 0 and log V
    targets: Tensor  # (N,) the scored tokens (drawn here when `targets` was a function)


def block_signals(
    z: Tensor,
    targets: Tensor | Callable[[Tensor], Tensor],
    temperature: float = 1.0,
    *,
    logprobs_only: bool = False,
    scratch: Tensor | None = None,
) -> BlockSignals:
    """`logit_signals` on a float32/float64 block of logits (N, V) that it overwrites.

    One more (N, V) block is used, `scratch` when given (reuse one: on CPU a fresh block costs more
    in page faults than an exp pass over it); none with `logprobs_only` and given targets, which
    skips self-certainty and entropy. `targets` may be a function that draws them from the
    unnormalized weights exp((z - max) / T) (the sampler: one exp serves the draw and the log-prob).
    `row_max` and `log_norm_t` let a backward pass rebuild
    softmax(z / T) = exp((z - row_max) / T - log_norm_t) with one exp and the forward's rounding.
    """
    vocab_size = z.shape[-1]
    inv_t = 1.0 / temperature
    z_max, argmax = z.max(dim=-1, keepdim=True)  # (N, 1)
    s = z.sub_(z_max)  # (N, V), <= 0, in place
    if logprobs_only and not callable(targets):
        s_target = s.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
        weights_t = s.mul_(inv_t).exp_() if temperature != 1.0 else s.exp_()  # (N, V) exp(s / T), in place
        rest_t = weights_t.scatter_(-1, argmax, 0.0).sum(-1)  # (N,) without the max term (exactly 1)
        weights_t.scatter_(-1, argmax, 1.0)  # z is left holding exp((z - max) / T)
        log_norm_t = torch.log1p(rest_t)  # (N,) logsumexp(s / T); log1p keeps peaked rows precise
        return BlockSignals(s_target * inv_t - log_norm_t, None, None, z_max.squeeze(-1), log_norm_t, targets)
    mean_s = None if logprobs_only else s.mean(-1)  # (N,)
    weights_t = torch.empty_like(s) if scratch is None else scratch  # (N, V), the one extra block
    weights_t = torch.exp(s, out=weights_t) if temperature == 1.0 else torch.mul(s, inv_t, out=weights_t).exp_()
    if callable(targets):
        targets = targets(weights_t)  # (N,), reads the weights and leaves them as they are
    s_target = s.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    rest_t = weights_t.scatter_(-1, argmax, 0.0).sum(-1)  # (N,) without the max term (exactly 1)
    log_norm_t = torch.log1p(rest_t)  # (N,) logsumexp(s / T); log1p keeps peaked rows precise
    logprobs = s_target * inv_t - log_norm_t  # (N,)
    self_certainty = entropy = None
    if not logprobs_only:
        if temperature == 1.0:
            exp_s, rest, log_norm = weights_t, rest_t, log_norm_t
        else:
            exp_s = torch.exp(s, out=weights_t).scatter_(-1, argmax, 0.0)  # (N, V), reuses the block
            rest = exp_s.sum(-1)  # (N,) sum of exp(s) without the max term
            log_norm = torch.log1p(rest)  # (N,) logsumexp(z) - max(z)
        self_certainty = log_norm - mean_s - math.log(vocab_size)  # (N,)
        entropy = log_norm - exp_s.mul_(s).sum(-1) / (1.0 + rest)  # (N,); the max term has s = 0
    return BlockSignals(logprobs, self_certainty, entropy, z_max.squeeze(-1), log_norm_t, targets)


def _signal_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = -1) -> Tensor:
    """Mean of `values` where `mask` is 1 (over `dim`, or over everything when dim is None)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)
