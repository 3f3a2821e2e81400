"""The token signals of a whole batch from its final hidden states and the lm_head weight, in chunks.

The float32 logits of the batch never exist: rows are processed in chunks (`rlif.signals.tokens` on each
chunk's logits, or the Triton kernels of `rlif.signals.triton_kernels` on CUDA), and the backward of the
log-prob recomputes logits in blocks instead of storing them (see `_ChunkedSignals`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from rlif.signals import triton_kernels
from rlif.signals.tokens import DEFAULT_CHUNK_TOKENS, BlockSignals, _signal_dtype, block_signals


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

    Forward: rows in chunks. Two (chunk, V) float32 blocks (one with `logprobs_only` on GPU) are allocated
    once and reused by every chunk (on CPU a fresh block costs more than a pass over it): the matmul writes
    the chunk's logits into the first, and the signals are computed in place with the second as scratch.
    With the Triton backend, one block in the matmul's dtype is all. The forward keeps each row's max and
    log-normalizer (2N floats) for the backward.

    Backward, two ways:
    - only the hidden states need a gradient (a frozen head: LoRA) and only log-probs were asked for: the
      gradient is g_t (onehot - softmax(z_t / T)) W / T, and everything but the per-row scalar g_t is known
      in the forward, where the chunk's logits are at hand. The forward turns them into (onehot - softmax) / T
      and multiplies by W once (the (N, d) result is saved instead of the hidden states); the backward scales
      rows. No recomputed logits, no matmul in the backward.
    - otherwise (the head trains): the logits are recomputed in blocks of vocabulary COLUMNS over all N rows
      (the same number of elements as a chunk of rows), softmax(z / T) rebuilt with one exp from the saved
      max and log-normalizer, and each block's (cols, d) slice of the weight gradient written once from one
      matmul over all rows. Row chunks would instead add a (V, d) product into the whole weight gradient per
      chunk: a read and a write of V x d floats each time, with a short inner dimension.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, compute_dtype, logprobs_only, use_triton, hidden_grad_only):
        n, vocab = hidden.shape[0], weight.shape[0]
        out_dtype = _signal_dtype(compute_dtype)
        logprobs = torch.empty(n, dtype=out_dtype, device=hidden.device)
        row_max, log_norm_t = torch.empty_like(logprobs), torch.empty_like(logprobs)
        self_certainty = None if logprobs_only else torch.empty_like(logprobs)
        entropy = None if logprobs_only else torch.empty_like(logprobs)
        # hidden_grad_only (set by hidden_signals only with logprobs_only): d logp / d hidden up to each row's g
        hidden_grad = torch.empty(hidden.shape, dtype=out_dtype, device=hidden.device) if hidden_grad_only else None
        rows_per_block = min(chunk_size, n)
        # Triton reduces the matmul's own output (bf16 on GPU): no float32 block at all.
        block_dtype = compute_dtype if use_triton else out_dtype
        logits_block = torch.empty(rows_per_block, vocab, dtype=block_dtype, device=hidden.device)  # (c, V)
        on_cpu = hidden.device.type == "cpu"
        scratch = None if (logprobs_only and not on_cpu) or use_triton else torch.empty_like(logits_block)  # (c, V)
        low_block = None  # (c, V) in the matmul dtype, for the hidden-grad product of a float32 block
        if hidden_grad_only and block_dtype != compute_dtype:
            low_block = torch.empty(logits_block.shape, dtype=compute_dtype, device=hidden.device)
        ones = torch.ones(rows_per_block, dtype=out_dtype, device=hidden.device) if hidden_grad_only and use_triton else None
        weight_c = weight.to(compute_dtype)  # converted once, not per chunk
        bias_c = None if bias is None else bias.to(compute_dtype)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for start in range(0, n, chunk_size):
                rows = slice(start, start + chunk_size)
                c = hidden[rows].shape[0]
                z = _chunk_logits(hidden[rows], weight_c, bias_c, compute_dtype, logits_block[:c], scratch if on_cpu else None)
                if use_triton:  # the kernel writes into the outputs' rows: no copies after it
                    outputs = (logprobs, self_certainty, entropy, row_max, log_norm_t)
                    rows_out = tuple(None if t is None else t[rows] for t in outputs)
                    block = BlockSignals(*triton_kernels.forward(z, targets[rows], temperature, logprobs_only, out=rows_out), targets[rows])
                else:
                    block = block_signals(z, targets[rows], temperature, logprobs_only=logprobs_only, scratch=None if scratch is None else scratch[:c])
                    logprobs[rows], row_max[rows], log_norm_t[rows] = block.logprobs, block.row_max, block.log_norm_t
                    if not logprobs_only:
                        self_certainty[rows], entropy[rows] = block.self_certainty, block.entropy
                if hidden_grad_only:
                    if use_triton:  # z still holds the logits; g = 1 for every row
                        grad_z = triton_kernels.backward_in_place(z, targets[rows], temperature, block.row_max, block.log_norm_t, ones[:c])
                    else:  # block_signals(logprobs_only) left exp((z - max) / T) in z
                        grad_z = _logprob_grad_from_weights_(z, targets[rows], temperature, block.log_norm_t)
                    grad_z = grad_z if low_block is None else low_block[:c].copy_(grad_z)
                    hidden_grad[rows] = grad_z @ weight_c  # (c, d)
        if hidden_grad_only:
            ctx.save_for_backward(hidden_grad)
        else:
            ctx.save_for_backward(hidden, weight, bias, targets, row_max, log_norm_t)
        ctx.temperature, ctx.chunk_size, ctx.compute_dtype, ctx.use_triton = temperature, chunk_size, compute_dtype, use_triton
        ctx.hidden_grad_only, ctx.hidden_dtype = hidden_grad_only, hidden.dtype
        if logprobs_only:
            return logprobs
        ctx.mark_non_differentiable(self_certainty, entropy)
        return logprobs, self_certainty, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, *_grad_signals):
        if ctx.hidden_grad_only:
            (hidden_grad,) = ctx.saved_tensors
            grad_hidden = (hidden_grad * grad_logprobs[:, None].to(hidden_grad.dtype)).to(ctx.hidden_dtype)
            return grad_hidden, None, None, None, None, None, None, None, None, None
        hidden, weight, bias, targets, row_max, log_norm_t = ctx.saved_tensors
        temperature, chunk_size, dtype, use_triton = ctx.temperature, ctx.chunk_size, ctx.compute_dtype, ctx.use_triton
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        n, vocab = hidden.shape[0], weight.shape[0]
        accumulate = _signal_dtype(dtype)
        grad_hidden = torch.zeros(hidden.shape, dtype=accumulate, device=hidden.device) if need_hidden else None
        grad_weight = torch.empty(weight.shape, dtype=accumulate, device=weight.device) if need_weight else None
        grad_bias = torch.empty(vocab, dtype=accumulate, device=weight.device) if need_bias else None
        cols = _vocab_block(chunk_size, n, vocab)
        block_dtype = dtype if use_triton else accumulate  # Triton writes the gradient over the matmul's own output
        grad_block = torch.empty(n * cols, dtype=block_dtype, device=hidden.device)  # (n, cols) flat: views stay contiguous
        low_block = torch.empty(n * cols, dtype=dtype, device=hidden.device) if block_dtype != dtype else None
        hidden_c = hidden.to(dtype)  # (n, d), converted once
        weight_c = weight.to(dtype)
        bias_c = None if bias is None else bias.to(dtype)
        scale = grad_logprobs.to(accumulate) / temperature  # (n,) g / T
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for start in range(0, vocab, cols):
                part = slice(start, start + cols)
                c = weight_c[part].shape[0]
                z = grad_block[: n * c].view(n, c)  # (n, c): columns start..start+c of every row's logits
                _chunk_logits(hidden_c, weight_c[part], None if bias_c is None else bias_c[part], dtype, z)
                # d logp / d z * g = (onehot(target) - softmax(z / T)) g / T; targets outside the block match no column
                if use_triton:
                    grad_z = triton_kernels.backward_in_place(z, targets - start, temperature, row_max, log_norm_t, grad_logprobs)
                else:
                    grad_z = z.sub_(row_max[:, None]).mul_(1.0 / temperature).sub_(log_norm_t[:, None]).exp_().mul_(-scale[:, None])
                    column = targets - start  # (n,) the target's column in this block, if it is here
                    inside = (column >= 0) & (column < c)
                    grad_z.scatter_add_(-1, column.clamp(0, c - 1)[:, None], torch.where(inside, scale, 0.0)[:, None])
                grad_z_c = grad_z if low_block is None else low_block[: n * c].view(n, c).copy_(grad_z)  # matmul dtype
                if need_hidden:
                    _add_product(grad_hidden, grad_z_c, weight_c[part])  # (n, d) += (n, c) @ (c, d)
                if need_weight:
                    _write_product(grad_weight[part], grad_z_c.T, hidden_c)  # (c, d), this block's rows only
                if need_bias:
                    grad_bias[part] = grad_z.sum(0, dtype=accumulate)
        grad_hidden = grad_hidden.to(hidden.dtype) if need_hidden else None
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None, None


def _vocab_block(chunk_size: int, rows: int, vocab: int) -> int:
    """Columns per backward block: chunk_size x V elements over `rows` rows (multiples of 128 when that many fit)."""
    cols = min(vocab, max(1, chunk_size * vocab // max(rows, 1)))
    return cols - cols % 128 if 128 <= cols < vocab else cols


def _logprob_grad_from_weights_(weights: Tensor, targets: Tensor, temperature: float, log_norm_t: Tensor) -> Tensor:
    """(onehot(target) - softmax(z / T)) / T, in place over weights = exp((z - max) / T) (N, V)."""
    weights.mul_(torch.exp(-log_norm_t)[:, None] * (-1.0 / temperature))  # -softmax(z / T) / T
    return weights.scatter_add_(-1, targets[:, None], torch.full_like(log_norm_t[:, None], 1.0 / temperature))


def _add_product(total: Tensor, a: Tensor, b: Tensor) -> None:
    """total += a @ b. A bf16/fp16 product is added from the matmul's own float32 accumulator where the backend
    can write float32 (cuBLAS, torch >= 2.8); elsewhere it is rounded to a's dtype first, then added."""
    if a.dtype == total.dtype:
        total.addmm_(a, b)
    elif _float32_output_matmul(total.device, a.dtype):
        torch.addmm(total, a, b, out_dtype=total.dtype, out=total)
    else:
        total += (a @ b).to(total.dtype)


def _write_product(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out = a @ b, `out` float32 (float64) whatever a's dtype, with the precision of `_add_product`."""
    if a.dtype == out.dtype:
        torch.mm(a, b, out=out)
    else:
        _add_product(out.zero_(), a, b)


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
    `weight` and `bias`; the backward's blocks (all N rows x some vocabulary columns) hold as many elements.
    With `logprobs_only` and a frozen head (weight and bias without grad, as under LoRA) the forward also
    saves d logp / d hidden, (N, d) float32, and keeps neither `hidden` nor `weight` for the backward.

    backend: "torch" (the reference, any device), "triton" (rlif.signals.triton_kernels: one pass per row over the
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
    if backend == "triton" and not triton_kernels.available():
        raise ImportError("backend='triton' needs the triton package")
    use_triton = backend == "triton" or (backend == "auto" and hidden.is_cuda and dtype != torch.float64 and triton_kernels.available())
    # A frozen head (LoRA) under autograd: the forward prepares the whole hidden-state gradient (see _ChunkedSignals).
    frozen_head = not weight.requires_grad and (bias is None or not bias.requires_grad)
    hidden_grad_only = logprobs_only and frozen_head and hidden.requires_grad and torch.is_grad_enabled()
    args = (hidden, weight, bias, targets, float(temperature), int(chunk_size), dtype, logprobs_only, use_triton, hidden_grad_only)
    if logprobs_only:
        return _ChunkedSignals.apply(*args), None, None
    return _ChunkedSignals.apply(*args)


