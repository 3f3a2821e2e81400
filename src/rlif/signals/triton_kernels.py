"""Triton kernels for the token signals: one read of each logits row, no float32 logits block.

`rlif.signals.hidden_signals(backend="triton")` (the default on CUDA when Triton imports) lets the matmul write a
chunk's logits in the compute dtype (bf16 on GPU) and reduces each row in one pass. A row program reads BLOCK logits
per iteration as LANES lanes of ELEMS = 8 consecutive logits (one 16-byte load of bf16 per lane), and each lane keeps
its own online state over its elements:
    m       the lane's running max
    rest    sum of exp(z - m) over the lane's elements below m (the log1p trick of rlif.signals: the max
            elements, exp(0) = 1 each, are counted in `ties` instead, so a sum far below 1 keeps its precision)
    ties    how many of the lane's elements equal m
    dot     sum exp(z - m) (z - m)        (the max elements add 0)
    rest_t  as rest, for exp((z - m) / T)
    sum_z   sum of z

When a tile moves a lane's max from m to m', its sums rescale once for the tile: rest' = (rest + ties) exp(m - m'),
ties' = 0, dot' = exp(m - m') (dot + (m - m')(rest + ties)); then the tile's elements add exp(z - m'). The lanes are
combined once at the row max M after the loop (a lane's max elements join the ordinary ones with weight
exp(m - M), except one at M), so the loop has no reduction across threads. Exponentials are base 2 (`exp2`: one
ex2.approx.ftz instruction each; a term below 2^-126 of the max flushes to 0).

The backward kernel rebuilds softmax(z / T) = exp((z - max) / T - log_norm_t) from the saved row max and
log-normalizer and writes (onehot - softmax) * g / T over the logits, in place.

The PyTorch path in rlif.signals is the reference and the CPU fallback; tests run these kernels on CPU under
Triton's interpreter (TRITON_INTERPRET=1) against it and the float64 reference.
"""

from __future__ import annotations

import functools
import math
import os

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
    global triton, tl, exp2, _tile  # module globals: the interpreter looks names up there (and patches `tl` there)
    import triton
    import triton.language as tl

    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter runs no libdevice calls

        @triton.jit
        def exp2(x):
            return tl.exp2(x)

    else:  # ex2.approx.ftz: one instruction, where tl.exp adds range checks and rescales to keep subnormal results
        from triton.language.extra.cuda import libdevice

        exp2 = libdevice.exp2

    @triton.jit
    def _tile(m, rest, ties, dot, rest_t, sum_z, z, z_sum, inv_t_log2e,
              WITH_SIGNALS: tl.constexpr, TEMPERED: tl.constexpr, NEED_REST: tl.constexpr):
        """Each lane's state after its ELEMS new logits z (LANES, ELEMS); z_sum: the same with padding as 0.
        Exponentials in base 2 (inv_t_log2e = log2(e) / T): each is then one instruction (ex2)."""
        LOG2E: tl.constexpr = 1.4426950408889634
        m_new = tl.maximum(m, tl.max(z, axis=1))  # (LANES,)
        # The lane max moved: its old elements (the ties at the old max among them) rescale once per tile.
        moved = m_new > m
        ordinary = rest + ties  # sum exp(z - m) over the lane's elements so far, the max elements included
        f = exp2((m - m_new) * LOG2E)  # 0 from -inf; unused where the max stayed
        if WITH_SIGNALS:  # dot' = f (dot + (m - m') ordinary); nothing to rescale before the first finite element
            dot = tl.where(moved, tl.where(m == -float("inf"), 0.0, f * (dot + (m - m_new) * ordinary)), dot)
        if NEED_REST:
            rest = tl.where(moved, ordinary * f, rest)
        if TEMPERED:
            rest_t = tl.where(moved, (rest_t + ties) * exp2((m - m_new) * inv_t_log2e), rest_t)
        ties = tl.where(moved, 0.0, ties)
        s = z - m_new[:, None]  # <= 0; exactly 0 at the elements equal to the lane max
        at_max = z == m_new[:, None]  # the max elements count in `ties`, not in the exp sums: log1p's precision
        if WITH_SIGNALS:
            s = tl.maximum(s, -1e30)  # -inf logits: exp 0 and a finite product with it
        if NEED_REST:
            e = exp2(s * LOG2E)
            rest += tl.sum(tl.where(at_max, 0.0, e), axis=1)
        if TEMPERED:
            rest_t += tl.sum(tl.where(at_max, 0.0, exp2(s * inv_t_log2e)), axis=1)
        ties += tl.sum(tl.where(at_max, 1.0, 0.0), axis=1)
        if WITH_SIGNALS:
            dot += tl.sum(e * s, axis=1)
            sum_z += tl.sum(z_sum, axis=1)
        return m_new, rest, ties, dot, rest_t, sum_z

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
        # BLOCK logits per iteration: each of the LANES lanes reads ELEMS consecutive ones (one 16-byte load of bf16)
        # and runs the recurrences over them with its own max, rescaling its sums once per tile when its max moves;
        # the lanes are combined once after the loop, so the loop has no reduction across threads.
        ELEMS: tl.constexpr = 8
        LOG2E: tl.constexpr = 1.4426950408889634
        LANES: tl.constexpr = BLOCK // ELEMS
        offsets = tl.arange(0, LANES)[:, None] * ELEMS + tl.arange(0, ELEMS)[None, :]  # (LANES, ELEMS)
        m = tl.full([LANES], -float("inf"), tl.float32)
        rest = tl.zeros([LANES], tl.float32)  # sum exp(z - m) over the lane's elements below its max m
        ties = tl.zeros([LANES], tl.float32)  # how many of its elements equal m (exp(0) = 1 each)
        dot = tl.zeros([LANES], tl.float32)  # sum exp(z - m) (z - m)
        rest_t = tl.zeros([LANES], tl.float32)  # as rest, for exp((z - m) / T)
        sum_z = tl.zeros([LANES], tl.float32)
        full = vocab - vocab % BLOCK
        for start in range(0, full, BLOCK):  # whole tiles: no masks
            z = tl.load(base + start + offsets).to(tl.float32)
            m, rest, ties, dot, rest_t, sum_z = _tile(m, rest, ties, dot, rest_t, sum_z, z, z, inv_t * LOG2E,
                                                     WITH_SIGNALS, TEMPERED, NEED_REST)
        if full < vocab:  # the ragged end: padding reads as -inf (no weight) and adds 0 to sum_z
            valid = full + offsets < vocab
            z = tl.load(base + full + offsets, mask=valid, other=-float("inf")).to(tl.float32)
            m, rest, ties, dot, rest_t, sum_z = _tile(m, rest, ties, dot, rest_t, sum_z, z, tl.where(valid, z, 0.0),
                                                     inv_t * LOG2E, WITH_SIGNALS, TEMPERED, NEED_REST)
        # Per lane, rest + ties - 1 is the sum over its elements but one max element (exact: ties is a whole number
        # >= 1 wherever the lane saw a finite logit), the quantity the combination below works with.
        rest = rest + (ties - 1.0)
        rest_t = rest_t + (ties - 1.0)
        # Combine the lanes at the row max. Every lane's own max joins the ordinary elements (weight 1), except one
        # lane's at the row max: that one is the max term log1p leaves out.
        row_max = tl.max(m, axis=0)
        lanes = tl.arange(0, LANES)
        holder = tl.min(tl.where(m == row_max, lanes, LANES), axis=0)
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


# Logits per iteration of a row program and warps of the forward kernel; bench/signals.py (`fused#BLOCKxWARPS`) sets
# them to compare. 1024 x 4 was the fastest of three for the previous (per-logit rescaling) kernel at the shape
# on an H100 (bench/results/h100-2026-11-26); the tiled kernel has not run on a GPU yet.
FORWARD_LAUNCH = (1024, 4)


def _block_size(vocab: int, largest: int = 4096) -> int:
    return min(largest, 1 << max(4, math.ceil(math.log2(max(vocab, 1)))))


def forward(logits: Tensor, targets: Tensor, temperature: float, logprobs_only: bool, out: tuple | None = None):
    """Per-row (logprobs, self_certainty, entropy, row_max, log_norm_t) of a (c, V) logits block (any float dtype).

    `out`: five contiguous (c,) tensors the kernel writes them into (self-certainty and entropy None with
    `logprobs_only`), e.g. the rows of the whole batch's outputs, so no copy follows; by default new ones."""
    forward_kernel, _ = _kernels()
    rows, vocab = logits.shape
    if out is None:
        out = tuple(torch.empty(5, rows, dtype=torch.float32, device=logits.device))
    logprobs, sc, entropy, row_max, log_norm_t = out
    unused = logprobs  # with logprobs_only the kernel stores no self-certainty or entropy
    forward_kernel[(rows,)](
        logits, logits.stride(0), targets, vocab, 1.0 / temperature,
        logprobs, unused if sc is None else sc, unused if entropy is None else entropy, row_max, log_norm_t, math.log(vocab),
        WITH_SIGNALS=not logprobs_only, TEMPERED=temperature != 1.0, NEED_REST=not logprobs_only or temperature == 1.0,
        BLOCK=_block_size(vocab, FORWARD_LAUNCH[0]),
        num_warps=FORWARD_LAUNCH[1],
    )
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
