"""Keyed randomness: every random number rlif draws is a hash of integers that name it, not a position in a stream.

`seed_for(run seed, step, ...)` derives a call's seed; the sampler's uniform for token t of sample j of a prompt
is splitmix64 of (seed, prompt key, j, t). So a resumed run, another batch size or another process count draws
the same numbers.
"""

from __future__ import annotations

from torch import Tensor

_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment


def keyed_uniform(seed: int, prompt_keys: Tensor, sample_ids: Tensor, position: int) -> Tensor:
    """(A,) float64 uniforms in [0, 1), one per row, from splitmix64 of (seed, prompt key, sample id, position),
    on the keys' device (int64 products wrap mod 2^64, as the uint64 arithmetic of splitmix64 does)."""
    return uniform_at(row_stream(seed, prompt_keys, sample_ids), position)


def row_stream(seed: int, prompt_keys: Tensor, sample_ids: Tensor) -> Tensor:
    """(A,) int64 hash state of each row's stream: `keyed_uniform` before the position is mixed in."""
    return _mix(_mix(_int64(seed * _GOLDEN), prompt_keys), sample_ids)


def uniform_at(stream: Tensor, position: int) -> Tensor:
    """(A,) float64 uniforms in [0, 1) of each row's stream at `position`."""
    return _shift_right(_mix(stream, position), 11).double() * (1.0 / (1 << 53))


def _mix(x, part):
    """One splitmix64 round of x ^ (part + golden), on int64 bit patterns."""
    x = x ^ (part + _int64(_GOLDEN))
    x = (x ^ _shift_right(x, 30)) * _int64(0xBF58476D1CE4E5B9)
    x = (x ^ _shift_right(x, 27)) * _int64(0x94D049BB133111EB)
    return x ^ _shift_right(x, 31)


def _int64(constant: int) -> int:
    """A 64-bit pattern (the integer mod 2^64) as the signed integer torch.int64 stores it."""
    constant &= 0xFFFFFFFFFFFFFFFF
    return constant - (1 << 64) if constant >= 1 << 63 else constant


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, step, process, call), stable across runs."""
    seed = _GOLDEN
    for part in parts:
        seed = (seed ^ (int(part) + 0x9E3779B97F4A7C15 + (seed << 6) + (seed >> 2))) & ((1 << 63) - 1)
    return seed
