"""Triton kernels for the token signals: one read of each logits row, no float32 logits block.

`rlif.signals.hidden_signals(backend="triton")` (the default on CUDA when Triton imports) lets the matmul write a
chunk's logits in the compute dtype (bf16 on GPU) and reduces each row in one pass. Each of a program's BLOCK lanes
keeps its own online state over its elements (lane k reads k, k + BLOCK, ...):

    m       the lane's running max;  rest = sum of exp(z - m) over the lane's elements but its max (the log1p trick
            of rlif.signals, kept exact under rescaling: when the max moves from m to z, the old max becomes an
            ordinary element, rest' = (rest + 1) exp(m - z))
    dot     sum exp(z - m) (z - m)        (the max term is 0);  dot' = exp(m - z) (dot + (m - z)(rest + 1))
    rest_t  as rest, for exp((z - m) / T)
    sum_z   sum of z

and the lanes are combined once at the row max M after the loop (a lane's max joins the ordinary elements with
weight exp(m - M), except one lane's at M), so the loop itself has no reduction across threads.

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
        log_vocab, WITH_SIGNALS: tl.constexpr, TEMPERED: tl.constexpr, NEED_REST: tl.constexpr, BLOCK: tl.constexpr,
    ):
        # NEED_REST = WITH_SIGNALS or not TEMPERED: the temperature-1 sums are needed (passed in, not computed here,
        # so no Triton version has to fold boolean operators on constexprs).
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * row_stride
        # Each of the BLOCK lanes runs the recurrences over its own elements (lane k reads k, k + BLOCK, ...), with
        # its own max; the lanes are combined once after the loop, so the loop is elementwise: no reduction across
        # threads per tile, one read of each logit.
        m = tl.full([BLOCK], -float("inf"), tl.float32)
        rest = tl.zeros([BLOCK], tl.float32)
        dot = tl.zeros([BLOCK], tl.float32)
        rest_t = tl.zeros([BLOCK], tl.float32)
        sum_z = tl.zeros([BLOCK], tl.float32)
        for start in range(0, vocab, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            z = tl.load(base + offsets, mask=offsets < vocab, other=-float("inf")).to(tl.float32)
            live = z > -float("inf")  # padding and -inf logits change nothing
            d = z - m  # +inf at a lane's first finite element
            new_max = live & (d > 0)
            # exp(-|d|): the new element's weight (d <= 0), or the old max's rescale factor exp(m - z) (d > 0).
            e = tl.exp(-tl.abs(d))
            if WITH_SIGNALS:
                # dot = sum exp(s) s, s = z - lane max; a moving max joins the old one (weight 1) and rescales.
                moved = tl.where(m == -float("inf"), 0.0, e * (dot - d * (rest + 1.0)))
                dot = tl.where(live, tl.where(new_max, moved, dot + e * d), dot)
                sum_z += tl.where(live, z, 0.0)
            if NEED_REST:
                rest = tl.where(live, tl.where(new_max, (rest + 1.0) * e, rest + e), rest)  # first: (0 + 1) * 0
            if TEMPERED:
                e_t = tl.exp(-tl.abs(d) * inv_t)
                rest_t = tl.where(live, tl.where(new_max, (rest_t + 1.0) * e_t, rest_t + e_t), rest_t)
            m = tl.where(new_max, z, m)
        # Combine the lanes at the row max. Every lane's own max joins the ordinary elements (weight 1), except one
        # lane's at the row max: that one is the max term log1p leaves out.
        row_max = tl.max(m, axis=0)
        lanes = tl.arange(0, BLOCK)
        holder = tl.min(tl.where(m == row_max, lanes, BLOCK), axis=0)
        joins = tl.where(lanes == holder, 0.0, 1.0)
        has = m > -float("inf")
        shift = tl.where(has, m - row_max, 0.0)  # <= 0
        if NEED_REST:
            rest_all = tl.sum(tl.where(has, (rest + joins) * tl.exp(shift), 0.0), axis=0)
        if TEMPERED:
            rest_all_t = tl.sum(tl.where(has, (rest_t + joins) * tl.exp(shift * inv_t), 0.0), axis=0)
        else:
            rest_all_t = rest_all
        target = tl.load(targets_ptr + row)
        s_target = tl.load(base + target).to(tl.float32) - row_max
        # log1p(rest) to full relative precision (Goldberg): log(u) * rest / (u - 1), u = 1 + rest rounded.
        u_t = 1.0 + rest_all_t
        log_norm_t = tl.where(u_t == 1.0, rest_all_t, tl.log(u_t) * rest_all_t / (u_t - 1.0))
        tl.store(logprobs_ptr + row, s_target * inv_t - log_norm_t)
        tl.store(row_max_ptr + row, row_max)
        tl.store(log_norm_t_ptr + row, log_norm_t)
        if WITH_SIGNALS:
            u = 1.0 + rest_all
            log_norm = tl.where(u == 1.0, rest_all, tl.log(u) * rest_all / (u - 1.0))
            dot_all = tl.sum(tl.where(has, tl.exp(shift) * (dot + shift * (rest + 1.0)), 0.0), axis=0)
            tl.store(sc_ptr + row, log_norm - (tl.sum(sum_z, axis=0) / vocab - row_max) - log_vocab)
            tl.store(entropy_ptr + row, log_norm - dot_all / (1.0 + rest_all))

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


# Lanes per row program and warps of the forward kernel; bench/signals.py (`fused#BLOCKxWARPS`) sets them to compare.
# 1024 x 4: 13.9 ms against 14.6 ms for 2048 x 4 and 4096 x 8 at the shape on an H100 (bench/results/h100-2026-11-26).
FORWARD_LAUNCH = (1024, 4)


def _block_size(vocab: int, largest: int = 4096) -> int:
    return min(largest, 1 << max(4, math.ceil(math.log2(max(vocab, 1)))))


def forward(logits: Tensor, targets: Tensor, temperature: float, logprobs_only: bool):
    """Per-row (logprobs, self_certainty, entropy, row_max, log_norm_t) of a (c, V) logits block (any float dtype)."""
    forward_kernel, _ = _kernels()
    rows, vocab = logits.shape
    out = torch.empty(5, rows, dtype=torch.float32, device=logits.device)
    forward_kernel[(rows,)](
        logits, logits.stride(0), targets, vocab, 1.0 / temperature,
        out[0], out[1], out[2], out[3], out[4], math.log(vocab),
        WITH_SIGNALS=not logprobs_only, TEMPERED=temperature != 1.0, NEED_REST=not logprobs_only or temperature == 1.0,
        BLOCK=_block_size(vocab, FORWARD_LAUNCH[0]),
        num_warps=FORWARD_LAUNCH[1],
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
