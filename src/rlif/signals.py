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

import functools
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from rlif import triton_signals

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


def _chunk_logits(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, compute_dtype: torch.dtype, out: Tensor, spare: Tensor | None = None
) -> Tensor:
    """Logits of `hidden` (n, d) written into `out` (n, V), float32 (float64 for float64) whatever the matmul's dtype.

    With `spare` (a free block of at least n * V elements), the matmul runs as weight @ hidden.T into it and is
    transposed into `out`: on CPU that is faster than hidden @ weight.T for chunks of a few hundred rows.
    """
    hidden, weight = hidden.to(compute_dtype), weight.to(compute_dtype)
    bias = None if bias is None else bias.to(compute_dtype)
    if spare is not None and out.dtype == compute_dtype:
        columns = spare.reshape(-1)[: out.numel()].view(out.shape[1], out.shape[0])  # (V, n)
        out.copy_(torch.mm(weight, hidden.T, out=columns).T)
        return out if bias is None else out.add_(bias)
    if out.dtype != compute_dtype:  # bf16/fp16 matmul: round once, then widen into the float32 block
        out.copy_(hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T))
    elif bias is None:
        torch.mm(hidden, weight.T, out=out)
    else:
        torch.addmm(bias, hidden, weight.T, out=out)
    return out


class _ChunkedSignals(torch.autograd.Function):
    """Signals for rows of hidden states; gradient flows through the log-prob only.

    Two (chunk, V) float32 blocks (one with `logprobs_only` on GPU) are allocated once and reused by
    every chunk (on CPU a fresh block costs more than a pass over it): the matmul writes the chunk's
    logits into the first, and the signals are computed in place with the second as scratch. With
    the Triton backend, one block in the matmul's dtype is all. The forward keeps each row's max and log-normalizer (2N
    floats), so the backward rebuilds each chunk's softmax(z / T) from one recomputed matmul and one
    exp, in the matmul's own block.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, compute_dtype, logprobs_only, use_triton):
        n, vocab = hidden.shape[0], weight.shape[0]
        out_dtype = _signal_dtype(compute_dtype)
        logprobs = torch.empty(n, dtype=out_dtype, device=hidden.device)
        row_max, log_norm_t = torch.empty_like(logprobs), torch.empty_like(logprobs)
        self_certainty = None if logprobs_only else torch.empty_like(logprobs)
        entropy = None if logprobs_only else torch.empty_like(logprobs)
        rows_per_block = min(chunk_size, n)
        # Triton reduces the matmul's own output (bf16 on GPU): no float32 block at all.
        block_dtype = compute_dtype if use_triton else out_dtype
        logits_block = torch.empty(rows_per_block, vocab, dtype=block_dtype, device=hidden.device)  # (c, V)
        on_cpu = hidden.device.type == "cpu"
        scratch = None if (logprobs_only and not on_cpu) or use_triton else torch.empty_like(logits_block)  # (c, V)
        weight_c = weight.to(compute_dtype)  # converted once, not per chunk
        bias_c = None if bias is None else bias.to(compute_dtype)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for start in range(0, n, chunk_size):
                rows = slice(start, start + chunk_size)
                c = hidden[rows].shape[0]
                z = _chunk_logits(hidden[rows], weight_c, bias_c, compute_dtype, logits_block[:c], scratch if on_cpu else None)
                if use_triton:
                    block = BlockSignals(*triton_signals.forward(z, targets[rows], temperature, logprobs_only), targets[rows])
                else:
                    block = block_signals(z, targets[rows], temperature, logprobs_only=logprobs_only, scratch=None if scratch is None else scratch[:c])
                logprobs[rows], row_max[rows], log_norm_t[rows] = block.logprobs, block.row_max, block.log_norm_t
                if not logprobs_only:
                    self_certainty[rows], entropy[rows] = block.self_certainty, block.entropy
        ctx.save_for_backward(hidden, weight, bias, targets, row_max, log_norm_t)
        ctx.temperature, ctx.chunk_size, ctx.compute_dtype, ctx.use_triton = temperature, chunk_size, compute_dtype, use_triton
        if logprobs_only:
            return logprobs
        ctx.mark_non_differentiable(self_certainty, entropy)
        return logprobs, self_certainty, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, *_grad_signals):
        hidden, weight, bias, targets, row_max, log_norm_t = ctx.saved_tensors
        temperature, chunk_size, dtype = ctx.temperature, ctx.chunk_size, ctx.compute_dtype
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        accumulate = _signal_dtype(dtype)
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=accumulate, device=weight.device) if need_bias else None
        rows_per_block = min(chunk_size, hidden.shape[0])
        use_triton = ctx.use_triton
        block_dtype = dtype if use_triton else accumulate  # Triton writes the gradient over the matmul's own output
        grad_block = torch.empty(rows_per_block, weight.shape[0], dtype=block_dtype, device=hidden.device)  # (c, V)
        low_block = torch.empty(grad_block.shape, dtype=dtype, device=hidden.device) if block_dtype != dtype else None
        spare = torch.empty_like(grad_block) if hidden.device.type == "cpu" and low_block is None else None  # (c, V)
        weight_c = weight.to(dtype)  # converted once, not per chunk
        bias_c = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                hidden_c = hidden[rows].to(dtype)  # (c, d)
                c = hidden_c.shape[0]
                scale = (grad_logprobs[rows] / temperature).to(accumulate)[:, None]  # (c, 1)
                # d logp / d z = (onehot(target) - softmax(z / T)) / T, built in the logits' own block
                grad_z = _chunk_logits(hidden_c, weight_c, bias_c, dtype, grad_block[:c], spare)  # (c, V)
                if use_triton:
                    triton_signals.backward_in_place(grad_z, targets[rows], temperature, row_max[rows], log_norm_t[rows], grad_logprobs[rows])
                else:
                    grad_z.sub_(row_max[rows, None]).mul_(1.0 / temperature).sub_(log_norm_t[rows, None]).exp_()  # softmax(z / T)
                    grad_z.mul_(-scale).scatter_add_(-1, targets[rows, None], scale)
                grad_z_c = grad_z if low_block is None else low_block[:c].copy_(grad_z)  # (c, V) in the matmul dtype
                if need_hidden:
                    grad_hidden[rows] = (grad_z_c @ weight_c).to(hidden.dtype)
                if need_weight:
                    _add_product(grad_weight, grad_z_c.T, hidden_c)  # (V, d), accumulated in place
                if need_bias:
                    grad_bias += grad_z.sum(0, dtype=accumulate)
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


def _add_product(total: Tensor, a: Tensor, b: Tensor) -> None:
    """total += a @ b. A bf16/fp16 product is added from the matmul's own float32 accumulator where the backend
    can write float32 (cuBLAS, torch >= 2.8); elsewhere it is rounded to a's dtype first, then added."""
    if a.dtype == total.dtype:
        total.addmm_(a, b)
    elif _float32_output_matmul(total.device, a.dtype):
        torch.addmm(total, a, b, out_dtype=total.dtype, out=total)
    else:
        total += (a @ b).to(total.dtype)


@functools.cache
def _float32_output_matmul(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether addmm adds a `dtype` product into a float32 tensor in place on `device` (tried once, and checked)."""
    try:
        total = torch.ones(2, 3, device=device)
        ones = torch.ones(2, 4, dtype=dtype, device=device), torch.ones(4, 3, dtype=dtype, device=device)
        torch.addmm(total, *ones, out_dtype=torch.float32, out=total)
        return bool((total == 5).all())
    except (RuntimeError, TypeError):
        return False


def hidden_signals(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
    compute_dtype: torch.dtype | None = None,
    logprobs_only: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Signals for N rows of final hidden states (N, d) against an lm_head weight (V, d).

    Peak extra memory is two (chunk_size, V) float32 blocks whatever N is (one with `logprobs_only` on GPU,
    which returns None for self-certainty and entropy and skips their passes; plus, for bf16/fp16
    matmuls, the chunk's logits in that dtype). The log-prob is differentiable with respect to `hidden`,
    `weight` and `bias`.

    backend: "torch" (the reference, any device), "triton" (rlif.triton_signals: one pass per row over the
    matmul's own output, no float32 block; CUDA, or CPU under TRITON_INTERPRET=1 for tests) or "auto"
    (triton on CUDA when it imports, else torch).
    """
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden (N, d) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = compute_dtype or hidden.dtype
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and not triton_signals.available():
        raise ImportError("backend='triton' needs the triton package")
    use_triton = backend == "triton" or (backend == "auto" and hidden.is_cuda and dtype != torch.float64 and triton_signals.available())
    args = (hidden, weight, bias, targets, float(temperature), int(chunk_size), dtype, logprobs_only, use_triton)
    if logprobs_only:
        return _ChunkedSignals.apply(*args), None, None
    return _ChunkedSignals.apply(*args)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = -1) -> Tensor:
    """Mean of `values` where `mask` is 1 (over `dim`, or over everything when dim is None)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)
