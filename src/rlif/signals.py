"""Per-token signals of a causal LM over its own responses.

For a response token o_t, the distribution that scores it is the one predicting it: the logits
z_t at position t-1 of prompt+response. From z_t (vocabulary size V) we compute

    log-prob      log p_t(o_t)                                  at the sampling temperature T
    self-certainty sc_t = KL(U || p_t) = logsumexp(z_t) - mean(z_t) - log V      (T = 1)
    entropy       H_t = logsumexp(z_t) - sum_j p_t(j) z_t,j                     (T = 1)

The log-prob uses the temperature the rollout was sampled with (it is the behaviour policy of the
PPO ratio and of the KL term); self-certainty and entropy are the paper's definitions on the raw
logits, so a reward, `rlif score` and Best-of-N selection all see the same number.

Logits are never materialized for a whole batch: rows are processed in chunks from the final
hidden states and the lm_head weight, and the backward of the log-prob recomputes each chunk's
logits instead of storing them.

Numerics (float32 per chunk): with m = max z, s = z - m and e = sum over all but the argmax of exp(s),
    logsumexp(z) = m + log1p(e)
    H = log1p(e) - sum_j exp(s_j) s_j / (1 + e)        (a sum of two non-negative terms: no cancellation)
so entropy and log-probs of very peaked distributions keep their relative precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_CHUNK_TOKENS = 2048


@dataclass
class TokenSignals:
    """Signals at response positions, zero where `response_mask` is 0."""

    logprobs: Tensor  # (B, T) log-prob of the sampled token at the rollout temperature
    self_certainty: Tensor  # (B, T) KL(U || p_t), temperature 1
    entropy: Tensor  # (B, T) H(p_t), temperature 1


def logit_signals(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """(log-prob of target at `temperature`, self-certainty, entropy) for each row of `logits`.

    logits: (N, V) any float dtype; targets: (N,) int64. Returns three (N,) float32 tensors
    (float64 for float64 logits).
    """
    z = logits.to(_signal_dtype(logits.dtype))  # (N, V)
    vocab_size = z.shape[-1]
    z_max, argmax = z.max(dim=-1, keepdim=True)  # (N, 1)
    s = z - z_max  # (N, V), <= 0
    exp_s = s.exp()  # (N, V)
    rest = exp_s.scatter(-1, argmax, 0.0).sum(-1)  # (N,) sum of exp(s) without the max term
    log_norm = torch.log1p(rest)  # (N,) logsumexp(z) - max(z)
    self_certainty = log_norm - s.mean(-1) - math.log(vocab_size)  # (N,)
    entropy = log_norm - (exp_s * s).sum(-1) / (1.0 + rest)  # (N,)
    s_target = s.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    if temperature == 1.0:
        logprobs = s_target - log_norm
    else:
        logprobs = s_target / temperature - torch.logsumexp(s / temperature, dim=-1)
    return logprobs, self_certainty, entropy


def _signal_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, compute_dtype: torch.dtype) -> Tensor:
    logits = hidden.to(compute_dtype) @ weight.to(compute_dtype).T  # (n, V)
    if bias is not None:
        logits = logits + bias.to(compute_dtype)
    return logits


class _ChunkedSignals(torch.autograd.Function):
    """Signals for rows of hidden states; gradient flows through the log-prob only."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, compute_dtype):
        n = hidden.shape[0]
        logprobs = torch.empty(n, dtype=_signal_dtype(compute_dtype), device=hidden.device)
        self_certainty = torch.empty_like(logprobs)
        entropy = torch.empty_like(logprobs)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for start in range(0, n, chunk_size):
                rows = slice(start, start + chunk_size)
                logits = _chunk_logits(hidden[rows], weight, bias, compute_dtype)  # (c, V)
                logprobs[rows], self_certainty[rows], entropy[rows] = logit_signals(logits, targets[rows], temperature)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.temperature, ctx.chunk_size, ctx.compute_dtype = temperature, chunk_size, compute_dtype
        ctx.mark_non_differentiable(self_certainty, entropy)
        return logprobs, self_certainty, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_sc, _grad_entropy):
        hidden, weight, bias, targets = ctx.saved_tensors
        temperature, chunk_size, dtype = ctx.temperature, ctx.chunk_size, ctx.compute_dtype
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        accumulate = _signal_dtype(dtype)
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=accumulate, device=weight.device) if need_bias else None
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                z = _chunk_logits(hidden[rows], weight, bias, dtype).to(accumulate) / temperature  # (c, V)
                # d logp / d z = (onehot(target) - softmax(z / T)) / T
                grad_z = -torch.softmax(z, dim=-1)  # (c, V)
                grad_z.scatter_add_(-1, targets[rows, None], torch.ones_like(grad_z[:, :1]))
                grad_z *= grad_logprobs[rows, None] / temperature
                if need_hidden:
                    grad_hidden[rows] = (grad_z.to(dtype) @ weight.to(dtype)).to(hidden.dtype)
                if need_weight:
                    grad_weight += grad_z.T @ hidden[rows].to(accumulate)
                if need_bias:
                    grad_bias += grad_z.sum(0)
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def hidden_signals(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
    compute_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Signals for N rows of final hidden states (N, d) against an lm_head weight (V, d).

    Peak extra memory is a few (chunk_size, V) float32 blocks whatever N is; the log-prob is
    differentiable with respect to `hidden`, `weight` and `bias`.
    """
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden (N, d) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    dtype = compute_dtype or hidden.dtype
    return _ChunkedSignals.apply(hidden, weight, bias, targets, float(temperature), int(chunk_size), dtype)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = -1) -> Tensor:
    """Mean of `values` where `mask` is 1 (over `dim`, or over everything when dim is None)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)
