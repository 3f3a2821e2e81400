"""Triton kernels for the token signals: one read of each logits row, no float32 logits block.

`rlif.signals.hidden_signals(backend="triton")` (the default on CUDA when Triton imports) lets the matmul write a
chunk's logits in the compute dtype (bf16 on GPU) and reduces each row in one pass with an online maximum:

    m       running max;  rest = sum of exp(z - m) over all but one element at the max (the log1p trick of
            rlif.signals, kept exact under rescaling: when the max moves from m to m', the old max becomes an
            ordinary element, rest' = (rest + 1) exp(m - m'))
    dot     sum exp(z - m) (z - m)        (the max term is 0);  dot' = exp(m - m') (dot + (m - m')(rest + 1))
    rest_t  as rest, for exp((z - m) / T)
    sum_z   sum of z

The backward kernel rebuilds softmax(z / T) = exp((z - max) / T - log_norm_t) from the saved row max and
log-normalizer and writes (onehot - softmax) * g / T over the logits, in place.

The PyTorch path in rlif.signals is the reference and the CPU fallback; tests run these kernels on CPU under
Triton's interpreter (TRITON_INTERPRET=1) against it and the float64 reference.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernels():
    """Built on first use, so TRITON_INTERPRET set by a test before the first call takes effect."""
    global triton, tl  # module globals: Triton's interpreter patches `tl` where the kernel looks it up
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(
        logits_ptr, row_stride, targets_ptr, vocab, inv_t,
        logprobs_ptr, sc_ptr, entropy_ptr, row_max_ptr, log_norm_t_ptr,
        log_vocab, WITH_SIGNALS: tl.constexpr, TEMPERED: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * row_stride
        m = -float("inf")
        rest = 0.0
        dot = 0.0
        rest_t = 0.0
        sum_z = 0.0
        for start in range(0, vocab, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            valid = offsets < vocab
            z = tl.load(base + offsets, mask=valid, other=-float("inf")).to(tl.float32)
            tile_max = tl.max(z, axis=0)
            tile_arg = tl.argmax(z, axis=0)  # first index of the tile's max
            new_max = tile_max > m
            m_new = tl.maximum(m, tile_max)
            shift = tl.where(m == -float("inf"), 0.0, m - m_new)  # <= 0; 0 on the first tile (nothing to rescale)
            keep = tl.where(m == -float("inf"), 0.0, 1.0)
            scale = tl.exp(shift)
            # When the max moves, the old max (weight 1 at the old scale) joins the ordinary elements.
            old_rest = tl.where(new_max, keep * (rest + 1.0), rest)
            rest = old_rest * scale
            finite = valid & (z > -float("inf"))
            s = tl.where(finite, z - m_new, 0.0)
            # the new max itself (carried by log1p) is left out
            included = tl.where(tile_max > m, finite & (offsets != start + tile_arg), finite)
            e = tl.where(included, tl.exp(s), 0.0)
            rest += tl.sum(e, axis=0)
            if WITH_SIGNALS:
                dot = scale * (dot + shift * old_rest)
                dot += tl.sum(e * s, axis=0)
                sum_z += tl.sum(tl.where(finite, z, 0.0), axis=0)
            if TEMPERED:
                old_rest_t = tl.where(new_max, keep * (rest_t + 1.0), rest_t)
                rest_t = old_rest_t * tl.exp(shift * inv_t)
                rest_t += tl.sum(tl.where(included, tl.exp(s * inv_t), 0.0), axis=0)
            m = m_new
        target = tl.load(targets_ptr + row)
        s_target = tl.load(base + target).to(tl.float32) - m
        # log1p(rest) to full relative precision (Goldberg): log(u) * rest / (u - 1), u = 1 + rest rounded.
        u = 1.0 + rest
        log_norm = tl.where(u == 1.0, rest, tl.log(u) * rest / (u - 1.0))
        if TEMPERED:
            u_t = 1.0 + rest_t
            log_norm_t = tl.where(u_t == 1.0, rest_t, tl.log(u_t) * rest_t / (u_t - 1.0))
        else:
            log_norm_t = log_norm
        tl.store(logprobs_ptr + row, s_target * inv_t - log_norm_t)
        tl.store(row_max_ptr + row, m)
        tl.store(log_norm_t_ptr + row, log_norm_t)
        if WITH_SIGNALS:
            tl.store(sc_ptr + row, log_norm - (sum_z / vocab - m) - log_vocab)
            tl.store(entropy_ptr + row, log_norm - dot / (1.0 + rest))

    @triton.jit
    def backward_kernel(
        logits_ptr, row_stride, targets_ptr, vocab, inv_t, row_max_ptr, log_norm_t_ptr, scale_ptr, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * row_stride
        m = tl.load(row_max_ptr + row)
        log_norm_t = tl.load(log_norm_t_ptr + row)
        scale = tl.load(scale_ptr + row)  # g / T
        target = tl.load(targets_ptr + row)
        for start in range(0, vocab, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            valid = offsets < vocab
            z = tl.load(base + offsets, mask=valid, other=0.0).to(tl.float32)
            p = tl.exp((z - m) * inv_t - log_norm_t)
            grad = (tl.where(offsets == target, 1.0, 0.0) - p) * scale
            tl.store(base + offsets, grad.to(logits_ptr.dtype.element_ty), mask=valid)

    return forward_kernel, backward_kernel


def _block_size(vocab: int) -> int:
    return min(4096, 1 << max(4, math.ceil(math.log2(max(vocab, 1)))))


def forward(logits: Tensor, targets: Tensor, temperature: float, logprobs_only: bool):
    """Per-row (logprobs, self_certainty, entropy, row_max, log_norm_t) of a (c, V) logits block (any float dtype)."""
    forward_kernel, _ = _kernels()
    rows, vocab = logits.shape
    out = torch.empty(5, rows, dtype=torch.float32, device=logits.device)
    forward_kernel[(rows,)](
        logits, logits.stride(0), targets, vocab, 1.0 / temperature,
        out[0], out[1], out[2], out[3], out[4], math.log(vocab),
        WITH_SIGNALS=not logprobs_only, TEMPERED=temperature != 1.0, BLOCK=_block_size(vocab),
    )
    logprobs, sc, entropy, row_max, log_norm_t = out
    return logprobs, None if logprobs_only else sc, None if logprobs_only else entropy, row_max, log_norm_t


def backward_in_place(logits: Tensor, targets: Tensor, temperature: float, row_max: Tensor, log_norm_t: Tensor, grad: Tensor) -> Tensor:
    """Overwrite a (c, V) logits block with d logp / d z * grad = (onehot - softmax(z / T)) * grad / T."""
    _, backward_kernel = _kernels()
    rows, vocab = logits.shape
    scale = (grad.float() / temperature).contiguous()
    backward_kernel[(rows,)](
        logits, logits.stride(0), targets, vocab, 1.0 / temperature, row_max.contiguous(), log_norm_t.contiguous(), scale,
        BLOCK=_block_size(vocab),
    )
    return logits
